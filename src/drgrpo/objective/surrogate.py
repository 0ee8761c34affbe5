"""The per-token policy-gradient surrogate: a ratio (token or sequence level) and a policy loss.

Ratio (``ratio_level``):
    token      rho_it = exp(logp_it - logp_old_it)                                    PPO, GRPO
    sequence   s_i    = exp((1/|y_i|) sum_t (logp_it - logp_old_it))                  GSPO
               rho_it = sg[s_i] * exp(logp_it - sg[logp_it])    (value s_i, d rho_it/d logp_it = s_i)
GSPO (Zheng et al. 2025, arXiv 2507.18071) clips the length-normalised sequence ratio; the token
form above is its "GSPO-token" trick (verl's compute_policy_loss_gspo): every token of rollout i
carries the value s_i and the gradient s_i * grad logp_it. Aggregated with 1/|y_i| (GSPO's
seq_mean_token_mean) this is exactly the paper's gradient s_i A_i (1/|y_i|) sum_t grad logp_it,
and it equals TRL's importance_sampling_level="sequence" (which differentiates s_i itself).

Policy loss (``policy_loss``):
    ppo_clip   L_t = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A)   PPO-clip (Schulman 2017)
    cispo      L_t = -sg[clip(rho_t, 1 - eps_low, 1 + eps_high)] * A * logp_t  CISPO (MiniMax-M1, 2025)

eps_low == eps_high is the symmetric clip of PPO, GRPO and Dr.GRPO; eps_high > eps_low is DAPO's
clip-higher (Yu et al. 2025, eps_low 0.2, eps_high 0.28). ``dual_clip_c`` (Ye et al. 2020) caps the
loss of a negative-advantage token at -c * A when rho is very large. With no clip at all
(REINFORCE, RLOO) the surrogate is the importance-weighted policy gradient L_t = -rho_t * A, whose
gradient at rho = 1 is -A * grad log pi: plain REINFORCE.
CISPO clips the (stop-gradient) importance weight instead of the update, so no token loses its
gradient: dL_t/dlogp_t = -clip(rho_t) * A for every token (MiniMax-M1 sets no lower bound,
eps_low = 1 here, and tunes eps_high only). Its loss value is not PPO's; its gradient is.
"""

from __future__ import annotations

import torch

RATIO_LEVELS = ("token", "sequence")
POLICY_LOSSES = ("ppo_clip", "cispo")


def log_ratio(
    logprobs: torch.Tensor,  # (N, T)
    old_logprobs: torch.Tensor,  # (N, T)
    ratio_level: str = "token",
    loss_mask: torch.Tensor | None = None,  # (N, T), needed for ratio_level="sequence"
) -> torch.Tensor:  # (N, T) log rho_it, with the gradient of the module docstring
    """log rho_it (token) or log s_i + logp_it - sg[logp_it] (sequence, GSPO-token)."""
    d = logprobs - old_logprobs.detach()  # (N, T)
    if ratio_level == "token":
        return d
    if ratio_level != "sequence":
        raise ValueError(f"unknown ratio_level {ratio_level!r}; choose one of {RATIO_LEVELS}")
    if loss_mask is None:
        raise ValueError("ratio_level='sequence' needs loss_mask (the mean runs over |y_i| tokens)")
    valid = loss_mask.bool()
    lengths = valid.sum(dim=-1, keepdim=True).clamp(min=1)  # (N, 1) |y_i|
    log_s = torch.where(valid, d.detach(), 0.0).sum(dim=-1, keepdim=True) / lengths  # (N, 1)
    return log_s + (logprobs - logprobs.detach())


def policy_loss_per_token(
    logprobs: torch.Tensor,  # (N, T) under the policy being optimised
    old_logprobs: torch.Tensor,  # (N, T) under the policy that sampled the rollouts
    advantages: torch.Tensor,  # (N,) one per rollout, or (N, T) one per token
    *,
    clip_eps_low: float | None = 0.2,
    clip_eps_high: float | None = 0.2,
    dual_clip_c: float | None = None,
    policy_loss: str = "ppo_clip",
    ratio_level: str = "token",
    loss_mask: torch.Tensor | None = None,  # (N, T), needed for ratio_level="sequence"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (loss per token (N, T), clipped (N, T) bool: where the clip took over)."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (N, 1) broadcasts over tokens
    advantages = advantages.detach()
    if (clip_eps_low is None) != (clip_eps_high is None):
        raise ValueError("set both clip_eps_low and clip_eps_high, or neither (no clip)")
    ratio = torch.exp(log_ratio(logprobs, old_logprobs, ratio_level, loss_mask))  # (N, T)
    if policy_loss == "cispo":
        return _cispo(logprobs, ratio, advantages, clip_eps_low, clip_eps_high, dual_clip_c)
    if policy_loss != "ppo_clip":
        raise ValueError(f"unknown policy_loss {policy_loss!r}; choose one of {POLICY_LOSSES}")
    unclipped = -ratio * advantages
    if clip_eps_low is None:
        return unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
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


def _cispo(logprobs, ratio, advantages, clip_eps_low, clip_eps_high, dual_clip_c):
    if dual_clip_c is not None:
        raise ValueError("dual_clip_c is a PPO-clip knob; CISPO has no dual clip (set it to None)")
    weight = ratio.detach()  # (N, T) sg[rho]
    if clip_eps_low is not None:
        weight = torch.clamp(weight, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    was_clipped = weight != ratio.detach()
    return -weight * advantages * logprobs, was_clipped
