"""From per-token losses to one scalar: the length aggregation, with its normalizer passed in.

    seq_mean_token_mean   loss = (1/Z) sum_i (1/|y_i|) sum_t L_it m_it     Z = number of sequences
                          GRPO (Shao et al. 2024); "bias B" in the lesson: a long rollout's tokens
                          each get 1/|y_i| of the weight
    token_mean            loss = (1/Z) sum_i sum_t L_it m_it               Z = number of response tokens
                          DAPO (Yu et al. 2025), PPO
    constant              loss = (1/Z) sum_i sum_t L_it m_it               Z = a constant
                          Dr.GRPO (Liu et al. 2025), REINFORCE, RLOO; Z is either
                            num_sequences               N   (the lesson: sum / K for one group)
                            num_sequences_x_max_tokens  N * L_max (the paper's code, TRL's dr_grpo)

Z is computed ONCE from the whole batch of one optimizer step (``compute_normalizer``) and passed
in, so that any split into micro-batches whose losses are summed gives exactly the same loss and
gradient. |y_i| is a property of one sequence, so it never depends on the split. Counts are plain
sums, so several processes can all-reduce them before calling ``compute_normalizer``.
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "constant")
CONSTANT_NORMALIZERS = ("num_sequences", "num_sequences_x_max_tokens")


def compute_normalizer(
    aggregation: str,
    *,
    num_sequences: int,
    num_tokens: int,
    max_tokens: int | None = None,
    constant_normalizer: str = "num_sequences",
) -> float:
    """Z for ``aggregate``, from counts over the whole optimizer-step batch (all processes)."""
    if aggregation == "seq_mean_token_mean":
        z = num_sequences
    elif aggregation == "token_mean":
        z = num_tokens
    elif aggregation == "constant":
        if constant_normalizer == "num_sequences":
            z = num_sequences
        elif constant_normalizer == "num_sequences_x_max_tokens":
            if not max_tokens:
                raise ValueError("num_sequences_x_max_tokens needs max_tokens (L_max) > 0")
            z = num_sequences * max_tokens
        else:
            raise ValueError(
                f"unknown constant_normalizer {constant_normalizer!r}; "
                f"choose one of {CONSTANT_NORMALIZERS}"
            )
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")
    # A batch with no response token at all contributes nothing; Z = 1 keeps the loss finite.
    return float(max(z, 1))


def aggregate(
    loss_per_token: torch.Tensor,  # (N, T)
    loss_mask: torch.Tensor,  # (N, T) bool or 0/1: the tokens the loss sees
    *,
    aggregation: str,
    normalizer: float,
) -> torch.Tensor:  # scalar
    mask = loss_mask.to(loss_per_token.dtype)
    per_sequence = (loss_per_token * mask).sum(dim=-1)  # (N,)
    if aggregation == "seq_mean_token_mean":
        lengths = mask.sum(dim=-1).clamp(min=1.0)  # (N,) |y_i|
        per_sequence = per_sequence / lengths
    elif aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")
    return per_sequence.sum() / normalizer
