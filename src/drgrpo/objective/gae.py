"""PPO's token-level advantages: per-token rewards, GAE with returns, and batch whitening.

Token rewards (PPO-RLHF shaping, Ouyang et al. 2022; Stiennon et al. 2020):
    r_it = -beta * KL_it  +  [t = last response token of i] * R_i
GAE (Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE"), per rollout i:
    delta_t = r_t + gamma * V_{t+1} - V_t        V_{t+1} = 0 after the last response token
    A_t     = delta_t + gamma * lam * A_{t+1}     A_{t+1} = 0 after the last response token
    G_t     = A_t + V_t                           (the value target, "returns")
PPO-RLHF uses gamma = 1, lam = 0.95 (TRL's PPOTrainer, verl's compute_gae_advantage_return).
Whitening over the batch's response tokens (verl ``masked_whiten``, TRL ``masked_whiten``):
    x <- (x - mean_m x) / (std_m x + eps)        (+ mean_m x again when shift_mean=False)

Responses are right-padded: the mask of row i is 1 on its first |y_i| columns and 0 after, so
padding (whatever it holds) never enters a sum. Rows are independent; nothing here has a gradient.
"""

from __future__ import annotations

import torch


def token_level_rewards(
    outcome: torch.Tensor,  # (N,) one verifier reward per rollout
    response_mask: torch.Tensor,  # (N, T) 1 on response tokens (EOS included), right-padded
    kl_per_token: torch.Tensor | None = None,  # (N, T) KL_it of the sampling policy vs pi_ref
    kl_coef: float = 0.0,
) -> torch.Tensor:  # (N, T)
    """r_it: -kl_coef * KL_it on every response token, plus R_i on the last one (0 on padding)."""
    if outcome.dim() != 1 or response_mask.dim() != 2 or outcome.shape[0] != response_mask.shape[0]:
        raise ValueError(
            f"outcome must be (N,) and response_mask (N, T); got {tuple(outcome.shape)} and "
            f"{tuple(response_mask.shape)}"
        )
    mask = response_mask.to(outcome.dtype)  # (N, T)
    lengths = response_mask.sum(dim=-1)  # (N,)
    # A row with no response token has no last token: its outcome goes nowhere (it gets no loss).
    last = torch.nn.functional.one_hot((lengths - 1).clamp(min=0), response_mask.shape[1])
    last = last.to(outcome.dtype) * (lengths > 0).unsqueeze(-1).to(outcome.dtype)  # (N, T)
    rewards = outcome.unsqueeze(-1) * last
    if kl_per_token is not None and kl_coef != 0:
        # where() and not a product: padding may hold inf or NaN
        rewards = rewards - kl_coef * torch.where(response_mask.bool(), kl_per_token.detach(), 0.0)
    return rewards * mask


@torch.no_grad()
def gae_advantages_and_returns(
    token_rewards: torch.Tensor,  # (N, T) r_it, e.g. from token_level_rewards
    values: torch.Tensor,  # (N, T) V(s_it) of the critic that scored the rollouts
    loss_mask: torch.Tensor,  # (N, T) 1 on response tokens, right-padded
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:  # advantages (N, T), returns (N, T); 0 on padding
    """GAE(gamma, lam) and the value targets G_t = A_t + V_t, one backward pass over columns."""
    if token_rewards.shape != values.shape or values.shape != loss_mask.shape:
        raise ValueError(
            f"token_rewards, values and loss_mask must share one (N, T) shape; got "
            f"{tuple(token_rewards.shape)}, {tuple(values.shape)}, {tuple(loss_mask.shape)}"
        )
    valid = loss_mask.bool()
    rewards = torch.where(valid, token_rewards, 0.0)
    values = torch.where(valid, values, 0.0)  # (N, T): V after the last token is 0
    n, t_max = values.shape
    next_value = values.new_zeros(n)  # (N,) V_{t+1}
    next_adv = values.new_zeros(n)  # (N,) A_{t+1}
    advantages = torch.zeros_like(values)
    for t in reversed(range(t_max)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(valid[:, t], adv_t, 0.0)
        # A masked column is skipped (V_{t+1}, A_{t+1} carry over it, as in verl): right of the
        # last token nothing was ever set, so the last real token sees V_{t+1} = A_{t+1} = 0.
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_adv = torch.where(valid[:, t], adv_t, next_adv)
    returns = torch.where(valid, advantages + values, 0.0)
    return advantages, returns


def masked_mean_std(
    x: torch.Tensor,  # (N, T)
    mask: torch.Tensor,  # (N, T)
    std_ddof: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:  # scalars
    """Mean and std of x over the masked entries (std with n - std_ddof in the denominator)."""
    m = mask.to(x.dtype)
    count = m.sum()
    if count == 0:
        raise ValueError("cannot whiten over a mask with no entry (a batch with no response token)")
    xm = torch.where(mask.bool(), x, 0.0)
    mean = xm.sum() / count
    dof = count - std_ddof
    var = (torch.where(mask.bool(), x - mean, 0.0) ** 2).sum() / dof if dof > 0 else count * 0
    return mean, var.sqrt()


@torch.no_grad()
def whiten(
    x: torch.Tensor,  # (N, T)
    mask: torch.Tensor,  # (N, T) which entries the statistics are taken over
    *,
    shift_mean: bool = True,
    std_ddof: int = 1,
    eps: float = 1e-8,
) -> torch.Tensor:  # (N, T), 0 where the mask is off
    """(x - mean) / (std + eps) over the masked entries; shift_mean=False adds the mean back.

    verl's masked_whiten uses the unbiased variance (std_ddof=1, the default here) and
    rsqrt(var + 1e-8) where this uses std + eps: the same map up to ~eps / std.
    """
    mean, std = masked_mean_std(x, mask, std_ddof)
    out = (x - mean) / (std + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, 0.0)


def scale_token_advantages(
    advantages: torch.Tensor,  # (N, T) e.g. GAE advantages
    loss_mask: torch.Tensor,  # (N, T)
    scale: str,
    *,
    std_ddof: int = 0,
    eps: float = 1e-6,
) -> torch.Tensor:  # (N, T)
    """The ``scale`` knob for per-token advantages (baseline=value), over the response tokens:
    none: unchanged; batch_std: A / (std_m A + eps); batch_whiten: (A - mean_m A) / (std_m A + eps).
    """
    if scale == "none":
        return torch.where(loss_mask.bool(), advantages, 0.0)
    if scale == "batch_std":
        _, std = masked_mean_std(advantages, loss_mask, std_ddof)
        return torch.where(loss_mask.bool(), advantages / (std + eps), 0.0)
    if scale == "batch_whiten":
        return whiten(advantages, loss_mask, std_ddof=std_ddof, eps=eps)
    raise ValueError(
        f"scale={scale!r} does not apply to per-token (GAE) advantages; use none, batch_std or "
        "batch_whiten"
    )
