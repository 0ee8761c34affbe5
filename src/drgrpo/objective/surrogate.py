"""The per-token policy-gradient surrogate: PPO-clip, DAPO's clip-higher, dual clip, or no clip.

    rho_t = exp(logprobs_t - old_logprobs_t)
    L_t   = -min(rho_t * A, clip(rho_t, 1 - eps_low, 1 + eps_high) * A)     PPO-clip (Schulman et al. 2017)

eps_low == eps_high is the symmetric clip of PPO, GRPO and Dr.GRPO; eps_high > eps_low is DAPO's
clip-higher (Yu et al. 2025, eps_low 0.2, eps_high 0.28). ``dual_clip_c`` (Ye et al. 2020) caps the
loss of a negative-advantage token at -c * A when rho is very large. With no clip at all
(REINFORCE, RLOO) the surrogate is the importance-weighted policy gradient L_t = -rho_t * A, whose
gradient at rho = 1 is -A * grad log pi: plain REINFORCE.
"""

from __future__ import annotations

import torch


def policy_loss_per_token(
    logprobs: torch.Tensor,  # (N, T) under the policy being optimised
    old_logprobs: torch.Tensor,  # (N, T) under the policy that sampled the rollouts
    advantages: torch.Tensor,  # (N,) one per rollout, or (N, T) one per token
    *,
    clip_eps_low: float | None = 0.2,
    clip_eps_high: float | None = 0.2,
    dual_clip_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (loss per token (N, T), clipped (N, T) bool: where the clip took over)."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (N, 1) broadcasts over tokens
    advantages = advantages.detach()
    ratio = torch.exp(logprobs - old_logprobs.detach())  # (N, T)
    unclipped = -ratio * advantages
    if clip_eps_low is None and clip_eps_high is None:
        return unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    if clip_eps_low is None or clip_eps_high is None:
        raise ValueError("set both clip_eps_low and clip_eps_high, or neither (no clip)")
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    clipped_loss = -clipped_ratio * advantages
    loss = torch.maximum(unclipped, clipped_loss)  # -min(a, b) == max(-a, -b)
    was_clipped = clipped_loss > unclipped
    if dual_clip_c is not None:
        cap = -dual_clip_c * advantages  # only binds where A < 0
        capped = torch.minimum(loss, cap)
        negative = advantages < 0
        was_clipped = was_clipped | (negative & (cap < loss))
        loss = torch.where(negative, capped, loss)
    return loss, was_clipped
