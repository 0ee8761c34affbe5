"""Prompts in, sampled responses out: token ids, masks, sampler log-probs, finish reasons."""

from drgrpo.rollout.engine import (
    RolloutEngine,
    Rollouts,
    concat_rollouts,
    left_pad,
    pack_rollouts,
)
from drgrpo.rollout.hf import HFRolloutEngine
from drgrpo.rollout.prompts import TokenRule

__all__ = [
    "HFRolloutEngine",
    "RolloutEngine",
    "Rollouts",
    "TokenRule",
    "concat_rollouts",
    "left_pad",
    "pack_rollouts",
]
