"""The whole objective for one (micro-)batch: policy term + KL term, aggregated the same way.

    loss = Agg_Z( sg[w_it] * L^pg_it ) + beta * Agg_Z( KL_it )      (kl_placement = "loss")
    r_i <- r_i - beta * sum_t KL_it  before advantages               (kl_placement = "reward")

Agg_Z is ``aggregate`` over the loss_mask with the normalizer Z computed once per optimizer-step
batch. w_it is the behaviour-correction weight (objective/correction.py; 1 when it is off, and
MIS's rejected tokens also leave the KL term); it never changes Z or |y_i|.
"""

from __future__ import annotations

import torch

from drgrpo.objective.aggregate import aggregate
from drgrpo.objective.correction import behavior_weights
from drgrpo.objective.gae import (
    gae_advantages_and_returns,
    scale_token_advantages,
    token_level_rewards,
)
from drgrpo.objective.kl import kl_per_token
from drgrpo.objective.presets import ObjectiveSpec
from drgrpo.objective.surrogate import policy_loss_per_token


def objective_loss(
    spec: ObjectiveSpec,
    logprobs: torch.Tensor,  # (N, T)
    old_logprobs: torch.Tensor,  # (N, T)
    advantages: torch.Tensor,  # (N,) or (N, T)
    loss_mask: torch.Tensor,  # (N, T) the tokens the loss sees
    normalizer: float,
    ref_logprobs: torch.Tensor | None = None,  # (N, T), needed when the KL term is in the loss
    *,
    sampler_logprobs: torch.Tensor | None = None,  # (N, T) the rollout engine's, for correction
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return (loss, stats). Stats are detached sums over this batch's loss tokens, so that
    they add up across micro-batches: pg_loss, kl_loss, kl_sum, clipped_tokens, tokens, and with
    sampler_logprobs: mismatch_kl_sum, behavior_corrected_tokens."""
    # Padding may hold any value (even -inf, in any of the inputs); where the mask is off, every
    # log-prob is replaced by 0 (ratio 1, KL 0, CISPO's log pi 0) so that no inf - inf or
    # inf * 0 = NaN reaches the loss or its gradient (which is exactly 0 there).
    valid = loss_mask.bool()
    logprobs = torch.where(valid, logprobs, 0.0)
    old_logprobs = torch.where(valid, old_logprobs, logprobs.detach())
    if ref_logprobs is not None:
        ref_logprobs = torch.where(valid, ref_logprobs, logprobs.detach())
    pg_tok, clipped = policy_loss_per_token(
        logprobs,
        old_logprobs,
        advantages,
        clip_eps_low=spec.clip_eps_low,
        clip_eps_high=spec.clip_eps_high,
        dual_clip_c=spec.dual_clip_c,
        policy_loss=spec.policy_loss,
        ratio_level=spec.ratio_level,
        loss_mask=loss_mask,
    )
    mask = loss_mask.to(logprobs.dtype)
    pg_tok, kept, stats = _behavior_corrected(
        spec, pg_tok, old_logprobs, sampler_logprobs, loss_mask
    )
    # Z (normalizer) and |y_i| come from loss_mask as given: correction re-weights, never re-counts
    pg_loss = aggregate(pg_tok, loss_mask, aggregation=spec.aggregation, normalizer=normalizer)
    loss = pg_loss
    stats.update(
        pg_loss=pg_loss.detach(),
        clipped_tokens=(clipped.to(mask.dtype) * mask).sum().detach(),
        tokens=mask.sum().detach(),
    )
    if ref_logprobs is not None:
        kl_tok = kl_per_token(logprobs, ref_logprobs, spec.kl_estimator)  # (N, T)
        stats["kl_sum"] = (kl_tok * mask).sum().detach()
        if spec.kl_placement == "loss" and spec.kl_coef > 0:
            kl_tok = torch.where(kept, kl_tok, 0.0)  # MIS-rejected tokens leave the KL term too
            kl_loss = aggregate(
                kl_tok, loss_mask, aggregation=spec.aggregation, normalizer=normalizer
            )
            loss = loss + spec.kl_coef * kl_loss
            stats["kl_loss"] = kl_loss.detach()
    elif spec.kl_placement == "loss" and spec.kl_coef > 0:
        raise ValueError("kl_coef > 0 with kl_placement='loss' needs ref_logprobs")
    return loss, stats


def _behavior_corrected(spec, pg_tok, old_logprobs, sampler_logprobs, loss_mask):
    """(pg_tok times the behaviour weights, tokens kept, their stats); unchanged without
    sampler_logprobs (the trainer sampled itself: pi_sampler = pi_old)."""
    if sampler_logprobs is None:
        if spec.behavior_correction != "none":
            raise ValueError(
                f"behavior_correction={spec.behavior_correction!r} needs sampler_logprobs (the "
                "rollout engine's log-probs); when the trainer samples itself they equal "
                "old_logprobs: use behavior_correction=none"
            )
        return pg_tok, loss_mask.bool(), {}
    sampler_logprobs = torch.where(loss_mask.bool(), sampler_logprobs, old_logprobs)
    weights, kept, stats = behavior_weights(
        old_logprobs, sampler_logprobs, loss_mask, correction=spec.behavior_correction,
        level=spec.behavior_level, cap=spec.behavior_cap, lower=spec.behavior_lower,
    )  # fmt: skip
    return pg_tok * weights, kept, dict(stats)


def kl_penalized_rewards(
    rewards: torch.Tensor,  # (N,)
    logprobs: torch.Tensor,  # (N, T) of the sampling policy
    ref_logprobs: torch.Tensor,  # (N, T)
    response_mask: torch.Tensor,  # (N, T)
    *,
    kl_coef: float,
    estimator: str = "k1",
) -> torch.Tensor:  # (N,)
    """r_i - beta * sum_t KL_it: the KL-in-reward placement of PPO-RLHF and RLOO (no gradient)."""
    kl_tok = kl_per_token(logprobs.detach(), ref_logprobs, estimator)
    return rewards - kl_coef * (kl_tok * response_mask.to(kl_tok.dtype)).sum(dim=-1)


@torch.no_grad()
def critic_advantages(
    spec: ObjectiveSpec,
    outcome: torch.Tensor,  # (N,) verifier rewards (after any overlong shaping)
    values: torch.Tensor,  # (N, T) the critic's V_it at rollout time
    response_mask: torch.Tensor,  # (N, T) sampled tokens: the outcome goes on the last one
    loss_mask: torch.Tensor,  # (N, T) the tokens the loss (and the whitening) sees
    old_logprobs: torch.Tensor | None = None,  # (N, T) the sampling policy, for KL in the reward
    ref_logprobs: torch.Tensor | None = None,  # (N, T)
) -> tuple[torch.Tensor, torch.Tensor]:  # advantages (N, T), returns (N, T)
    """PPO's advantages for baseline=value, in order: token rewards (KL per token when
    kl_placement=reward), GAE(gae_gamma, gae_lambda) with returns, then ``scale`` over the batch's
    loss tokens. The statistics of the scale are this batch's: call it on the whole batch."""
    if spec.baseline != "value":
        raise ValueError(f"critic_advantages is for baseline=value, not {spec.baseline!r}")
    kl_tok = None
    if spec.kl_coef > 0 and spec.kl_placement == "reward":
        if old_logprobs is None or ref_logprobs is None:
            raise ValueError("KL in the reward needs old_logprobs and ref_logprobs")
        kl_tok = kl_per_token(old_logprobs, ref_logprobs, spec.kl_estimator)
    rewards = token_level_rewards(outcome, response_mask, kl_tok, spec.kl_coef)
    adv, returns = gae_advantages_and_returns(
        rewards, values, loss_mask, spec.gae_gamma, spec.gae_lambda
    )
    adv = scale_token_advantages(
        adv, loss_mask, spec.scale, std_ddof=spec.std_ddof, eps=spec.adv_eps
    )
    return adv, returns
