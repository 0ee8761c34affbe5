"""PPO's clipped value loss and the explained variance of a critic.

    V^clip_it = clip(V_it, V^old_it - eps_v, V^old_it + eps_v)
    L^V_it    = 0.5 * max((V_it - G_it)^2, (V^clip_it - G_it)^2)
    loss_V    = Agg_Z(L^V_it)        the same aggregate() and normalizer Z as the policy term

(PPO2 baselines, Schulman et al. 2017; TRL's PPOTrainer with cliprange_value = 0.2; verl's
compute_value_loss.) value_clip_eps = None drops the clip: L^V_it = 0.5 * (V_it - G_it)^2.
G_it are the returns of ``gae_advantages_and_returns``; V^old_it the critic's values at rollout.

    explained_variance = 1 - Var_m(G - V) / Var_m(G)      over the response tokens
1 is a perfect critic, 0 one no better than a constant, < 0 worse than a constant.
"""

from __future__ import annotations

import torch

from drgrpo.objective.aggregate import aggregate


def value_loss(
    values: torch.Tensor,  # (N, T) V_it of the critic being trained (with gradient)
    old_values: torch.Tensor,  # (N, T) V^old_it, the critic's values when the rollouts were scored
    returns: torch.Tensor,  # (N, T) G_it
    loss_mask: torch.Tensor,  # (N, T)
    normalizer: float,
    *,
    aggregation: str,
    clip_eps: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return (loss, stats); stats are detached sums over this batch's tokens (they add up
    across micro-batches): value_loss, value_clipped_tokens, value_sq_error_sum."""
    valid = loss_mask.bool()
    # padding may hold anything: old values and returns are replaced by the current values there
    old_values = torch.where(valid, old_values.detach(), values.detach())
    returns = torch.where(valid, returns.detach(), values.detach())
    unclipped = (values - returns) ** 2  # (N, T)
    if clip_eps is None:
        per_token, clipped = 0.5 * unclipped, torch.zeros_like(valid)
    else:
        v_clip = torch.clamp(values, old_values - clip_eps, old_values + clip_eps)
        clipped_sq = (v_clip - returns) ** 2
        per_token = 0.5 * torch.maximum(unclipped, clipped_sq)
        clipped = clipped_sq > unclipped  # where the clipped branch is the one taken
    loss = aggregate(per_token, loss_mask, aggregation=aggregation, normalizer=normalizer)
    m = loss_mask.to(values.dtype)
    stats = {
        "value_loss": loss.detach(),
        "value_clipped_tokens": (clipped.to(m.dtype) * m).sum().detach(),
        "value_sq_error_sum": (unclipped.detach() * m).sum(),
    }
    return loss, stats


@torch.no_grad()
def explained_variance(
    values: torch.Tensor,  # (N, T)
    returns: torch.Tensor,  # (N, T)
    loss_mask: torch.Tensor,  # (N, T)
) -> torch.Tensor:  # scalar; NaN when the returns do not vary
    """1 - Var(G - V) / Var(G) over the response tokens (both population variances)."""
    valid = loss_mask.bool()
    n = valid.sum()
    if n == 0:
        return values.new_tensor(float("nan"))
    g = returns[valid]
    r = g - values[valid]
    var_g = ((g - g.mean()) ** 2).mean()
    var_r = ((r - r.mean()) ** 2).mean()
    if var_g == 0:
        return values.new_tensor(float("nan"))
    return 1 - var_r / var_g
