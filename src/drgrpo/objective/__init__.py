"""drgrpo.objective: the Dr.GRPO objective and its lineage as pure tensor math (imports torch only).

Shapes: B prompts, K rollouts per prompt (a group), N = B * K rollouts, T response tokens.

    advantages = compute_advantages(rewards, K, baseline=..., scale=...)          # (N,)
    z          = compute_normalizer(spec.aggregation, num_sequences=N, num_tokens=mask.sum(), ...)
    loss, st   = objective_loss(spec, logprobs, old_logprobs, advantages, response_mask, z)
"""

from drgrpo.objective.advantages import BASELINES, SCALES, compute_advantages
from drgrpo.objective.aggregate import (
    AGGREGATIONS,
    CONSTANT_NORMALIZERS,
    aggregate,
    compute_normalizer,
)
from drgrpo.objective.formula import render_formula
from drgrpo.objective.kl import KL_ESTIMATORS, kl_per_token
from drgrpo.objective.loss import kl_penalized_rewards, objective_loss
from drgrpo.objective.presets import (
    KNOBS,
    PRESETS,
    ObjectiveSpec,
    resolve_objective,
)
from drgrpo.objective.surrogate import policy_loss_per_token

__all__ = [
    "AGGREGATIONS",
    "BASELINES",
    "CONSTANT_NORMALIZERS",
    "KL_ESTIMATORS",
    "KNOBS",
    "PRESETS",
    "SCALES",
    "ObjectiveSpec",
    "aggregate",
    "compute_advantages",
    "compute_normalizer",
    "kl_penalized_rewards",
    "kl_per_token",
    "objective_loss",
    "policy_loss_per_token",
    "render_formula",
    "resolve_objective",
]
