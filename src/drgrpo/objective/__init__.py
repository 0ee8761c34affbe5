"""drgrpo.objective: the Dr.GRPO objective and its lineage as pure tensor math (imports torch only).

Shapes: B prompts, K rollouts per prompt (a group), N = B * K rollouts, T response tokens.

    rewards    = rewards + overlong_penalty(lengths, L_max, L_cache, spec.overlong_penalty)  # DAPO
    advantages = compute_advantages(rewards, K, baseline=..., scale=..., lengths=...)   # (N,)
      or, with a critic (baseline=value), token rewards -> GAE -> scale in one call:
    adv, ret   = critic_advantages(spec, rewards, values, response_mask, loss_mask,
                                   old_logprobs, ref_logprobs)                          # (N, T)
    z          = compute_normalizer(spec.aggregation, num_sequences=N, num_tokens=mask.sum(), ...)
    loss, st   = objective_loss(spec, logprobs, old_logprobs, advantages, loss_mask, z,
                                ref_logprobs=..., sampler_logprobs=...)
    v_loss, vs = value_loss(new_values, values, ret, loss_mask, z, aggregation=..., clip_eps=...)
"""

from drgrpo.objective.advantages import BASELINES, SCALES, compute_advantages
from drgrpo.objective.aggregate import (
    AGGREGATIONS,
    CONSTANT_NORMALIZERS,
    aggregate,
    compute_normalizer,
)
from drgrpo.objective.correction import (
    BEHAVIOR_CORRECTIONS,
    BEHAVIOR_LEVELS,
    behavior_weights,
    mismatch_kl_per_token,
)
from drgrpo.objective.formula import render_formula
from drgrpo.objective.gae import (
    gae_advantages_and_returns,
    scale_token_advantages,
    token_level_rewards,
    whiten,
)
from drgrpo.objective.kl import KL_ESTIMATORS, kl_per_token
from drgrpo.objective.loss import critic_advantages, kl_penalized_rewards, objective_loss
from drgrpo.objective.presets import (
    KNOBS,
    PRESETS,
    ObjectiveSpec,
    resolve_objective,
)
from drgrpo.objective.shaping import informative_groups, overlong_cache_tokens, overlong_penalty
from drgrpo.objective.surrogate import POLICY_LOSSES, RATIO_LEVELS, policy_loss_per_token
from drgrpo.objective.value_loss import explained_variance, value_loss

__all__ = [
    "AGGREGATIONS",
    "BASELINES",
    "BEHAVIOR_CORRECTIONS",
    "BEHAVIOR_LEVELS",
    "CONSTANT_NORMALIZERS",
    "KL_ESTIMATORS",
    "KNOBS",
    "POLICY_LOSSES",
    "PRESETS",
    "RATIO_LEVELS",
    "SCALES",
    "ObjectiveSpec",
    "aggregate",
    "behavior_weights",
    "compute_advantages",
    "critic_advantages",
    "compute_normalizer",
    "explained_variance",
    "gae_advantages_and_returns",
    "informative_groups",
    "kl_penalized_rewards",
    "kl_per_token",
    "mismatch_kl_per_token",
    "objective_loss",
    "overlong_cache_tokens",
    "overlong_penalty",
    "policy_loss_per_token",
    "render_formula",
    "resolve_objective",
    "scale_token_advantages",
    "token_level_rewards",
    "value_loss",
    "whiten",
]
