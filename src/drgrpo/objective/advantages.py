"""Advantages from outcome rewards: one baseline knob, one scale knob.

    A_i = (r_i - b_i) / s_i

baseline b_i (``baseline``):
    none           b_i = 0                                  REINFORCE (Williams 1992)
    group_mean     b_i = mean_{j in g(i)} r_j               GRPO (Shao et al. 2024), DAPO, Dr.GRPO
    leave_one_out  b_i = mean_{j in g(i), j != i} r_j       RLOO (Ahmadian et al. 2024)
    value          b_i = V(x_i), given by the caller        PPO (Schulman et al. 2017)
scale s_i (``scale``):
    none           s_i = 1                                  Dr.GRPO (Liu et al. 2025), RLOO, REINFORCE
    group_std      s_i = std_{j in g(i)} r_j + eps          GRPO, DAPO  ("bias A" in the lesson)
    batch_std      s_i = std_{all j} r_j + eps              PPO-style batch normalisation
    batch_whiten   A_i = (c_i - mean_w c) / (std_w c + eps)   REINFORCE++ (Hu et al. 2025)
                   with c_i = r_i - b_i and mean/std over the batch's response TOKENS (rollout i
                   weighted by its length |y_i|, given as ``lengths``): verl's masked_whiten of
                   the broadcast advantage, as in its reinforce_plus_plus(_baseline) estimators.
                   Group mean then batch whitening is REINFORCE++-baseline.

Rows are groups laid out contiguously: rollout n belongs to group n // K (N = B * K).
``std_ddof=0`` is the population std the lesson's table uses ([1,1,1,0] -> +0.58 x3, -1.73);
``std_ddof=1`` is the sample std of TRL and oat.
"""

from __future__ import annotations

import torch

BASELINES = ("none", "group_mean", "leave_one_out", "value")
SCALES = ("none", "group_std", "batch_std", "batch_whiten")


def compute_advantages(
    rewards: torch.Tensor,  # (N,)
    group_size: int,
    *,
    baseline: str = "group_mean",
    scale: str = "none",
    std_ddof: int = 0,
    eps: float = 1e-6,
    values: torch.Tensor | None = None,  # (N,) only for baseline="value"
    lengths: torch.Tensor | None = None,  # (N,) response tokens |y_i|, only for batch_whiten
) -> torch.Tensor:  # (N,)
    """Return one advantage per rollout; see the module docstring for the formulas."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    n = rewards.shape[0]
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"{n} rewards do not split into groups of {group_size}")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {BASELINES}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES}")
    grouped = rewards.reshape(-1, group_size)  # (B, K)
    # Group statistics are taken on rewards shifted by each group's first reward: exact in real
    # arithmetic, and a group of equal rewards (say all 0.7) then gives exactly 0, where the
    # rounding error of a plain float32 mean, divided by std + eps, would give |A| ~ 0.05.
    shifted = grouped - grouped[:, :1]  # (B, K)

    if baseline == "none":
        centred = grouped
    elif baseline == "group_mean":
        centred = shifted - shifted.mean(dim=1, keepdim=True)
    elif baseline == "leave_one_out":
        if group_size < 2:
            raise ValueError("leave_one_out needs group_size >= 2 (there is no 'other' rollout)")
        others = (shifted.sum(dim=1, keepdim=True) - shifted) / (group_size - 1)
        centred = shifted - others
    else:  # value
        if values is None or values.shape != rewards.shape:
            raise ValueError("baseline='value' needs values of the same shape as rewards (N,)")
        centred = grouped - values.reshape(-1, group_size)

    if scale == "group_std":
        if group_size - std_ddof < 1:
            raise ValueError(f"group_std with std_ddof={std_ddof} needs group_size > {std_ddof}")
        std = shifted.std(dim=1, keepdim=True, correction=std_ddof)
        centred = centred / (std + eps)
    elif scale == "batch_std":
        shifted_all = rewards - rewards[0]
        std = shifted_all.std(correction=std_ddof) if n - std_ddof >= 1 else rewards.new_zeros(())
        centred = centred / (std + eps)
    elif scale == "batch_whiten":
        centred = _whiten_over_tokens(centred.reshape(n), lengths, std_ddof, eps)
    return centred.reshape(n)


def _whiten_over_tokens(
    centred: torch.Tensor,  # (N,) c_i
    lengths: torch.Tensor | None,  # (N,) |y_i|
    std_ddof: int,
    eps: float,
) -> torch.Tensor:  # (N,)
    if lengths is None or lengths.shape != centred.shape:
        raise ValueError(
            "scale='batch_whiten' needs lengths (N,): each rollout's number of response tokens "
            "(loss_mask.sum(-1)), since the statistics are over the batch's tokens"
        )
    w = lengths.to(centred.dtype)  # (N,) each token of rollout i carries c_i
    count = w.sum()
    if count == 0:
        return torch.zeros_like(centred)
    mean = (w * centred).sum() / count
    dof = count - std_ddof
    var = (w * (centred - mean) ** 2).sum() / dof if dof > 0 else count * 0
    return (centred - mean) / (var.sqrt() + eps)
