"""DAPO's data side (Yu et al. 2025, arXiv 2503.14476): overlong reward shaping, dynamic sampling.

Soft overlong punishment (DAPO eq. 13), with L_max = max_new_tokens and L_cache the window:
    R_len(y) = 0                                   |y| <= L_max - L_cache
             = (L_max - L_cache - |y|) / L_cache    L_max - L_cache < |y| <= L_max
             = -1                                   |y| > L_max
added to the verifier reward, times ``penalty`` (verl's overlong_buffer.penalty_factor, 1 in the
paper), BEFORE the advantages: r_i <- r_i + penalty * R_len(y_i). It is linear from 0 at the start
of the window to -1 at L_max, so a truncated response (|y| = L_max) gets the full -penalty.
DAPO uses L_max = 20480 with L_cache = 4096 (a fifth); here L_cache = round(fraction * L_max).

Dynamic sampling (DAPO section 3.2): a group whose K rewards all agree has zero advantage under a
group baseline and teaches nothing; such groups are dropped and generation continues until the
batch holds B informative groups (the trainer draws; ``informative_groups`` decides).
"""

from __future__ import annotations

import torch


def overlong_cache_tokens(fraction: float, max_tokens: int) -> int:
    """L_cache from the ``overlong_cache_fraction`` knob and L_max (max_new_tokens)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"overlong_cache_fraction must be in [0, 1), got {fraction}")
    return int(round(fraction * max_tokens))


def overlong_penalty(
    lengths: torch.Tensor,  # (N,) response lengths |y_i| in tokens (EOS included)
    max_tokens: int,  # L_max
    cache_tokens: int,  # L_cache
    penalty: float = 1.0,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:  # (N,) dtype, in [-penalty, 0]
    """penalty * R_len(y_i) of the module docstring (0 everywhere when cache_tokens == 0)."""
    if not 0 <= cache_tokens <= max_tokens:
        raise ValueError(
            f"overlong cache ({cache_tokens} tokens) must be between 0 and max_tokens ({max_tokens})"
        )
    lengths = lengths.to(dtype)
    if cache_tokens == 0:
        return torch.zeros_like(lengths)
    start = max_tokens - cache_tokens  # last length with no punishment
    inside = (start - lengths) / cache_tokens  # (N,) in [-1, 0) inside the window
    r = torch.where(lengths <= start, torch.zeros_like(lengths), inside)
    r = torch.where(lengths > max_tokens, torch.full_like(lengths, -1.0), r)
    return penalty * r


def informative_groups(
    rewards: torch.Tensor,  # (N,) with N = B * K, groups contiguous
    group_size: int,
) -> torch.Tensor:  # (B,) bool
    """True for each group whose K rewards do not all agree (exact comparison)."""
    if rewards.dim() != 1 or group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"rewards must be (B * K,) with K = {group_size}; got shape {tuple(rewards.shape)}"
        )
    grouped = rewards.reshape(-1, group_size)  # (B, K)
    return (grouped != grouped[:, :1]).any(dim=1)
