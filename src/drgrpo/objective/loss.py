"""The whole objective for one (micro-)batch: policy term + KL term, aggregated the same way.

    loss = Agg_Z( L^pg_it ) + beta * Agg_Z( KL_it )          (kl_placement = "loss")
    r_i <- r_i - beta * sum_t KL_it  before advantages       (kl_placement = "reward")

Agg_Z is ``aggregate`` with the normalizer Z computed once per optimizer-step batch.
"""

from __future__ import annotations

import torch

from drgrpo.objective.aggregate import aggregate
from drgrpo.objective.kl import kl_per_token
from drgrpo.objective.presets import ObjectiveSpec
from drgrpo.objective.surrogate import policy_loss_per_token


def objective_loss(
    spec: ObjectiveSpec,
    logprobs: torch.Tensor,  # (N, T)
    old_logprobs: torch.Tensor,  # (N, T)
    advantages: torch.Tensor,  # (N,) or (N, T)
    response_mask: torch.Tensor,  # (N, T)
    normalizer: float,
    ref_logprobs: torch.Tensor | None = None,  # (N, T), needed when the KL term is in the loss
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return (loss, stats). Stats are detached sums over this batch's response tokens, so that
    they add up across micro-batches: pg_loss, kl_loss, kl_sum, clipped_tokens, tokens."""
    # Padding may hold any value (even -inf); where the mask is off, the old and reference
    # log-probs are replaced by the current ones (ratio 1, KL 0) so that no inf * 0 = NaN
    # reaches the loss or its gradient.
    valid = response_mask.bool()
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
    )
    pg_loss = aggregate(pg_tok, response_mask, aggregation=spec.aggregation, normalizer=normalizer)
    loss = pg_loss
    mask = response_mask.to(logprobs.dtype)
    stats = {
        "pg_loss": pg_loss.detach(),
        "clipped_tokens": (clipped.to(mask.dtype) * mask).sum().detach(),
        "tokens": mask.sum().detach(),
    }
    if ref_logprobs is not None:
        kl_tok = kl_per_token(logprobs, ref_logprobs, spec.kl_estimator)  # (N, T)
        stats["kl_sum"] = (kl_tok * mask).sum().detach()
        if spec.kl_placement == "loss" and spec.kl_coef > 0:
            kl_loss = aggregate(
                kl_tok, response_mask, aggregation=spec.aggregation, normalizer=normalizer
            )
            loss = loss + spec.kl_coef * kl_loss
            stats["kl_loss"] = kl_loss.detach()
    elif spec.kl_placement == "loss" and spec.kl_coef > 0:
        raise ValueError("kl_coef > 0 with kl_placement='loss' needs ref_logprobs")
    return loss, stats


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
