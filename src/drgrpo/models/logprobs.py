"""Per-token log-probabilities (and entropies) of response tokens under a causal LM.

The vocabulary projection is the memory peak of RL training: N*T rows times V columns in fp32
is 10 GB for 64 x 256 tokens at Qwen's V=151936. So the base model runs once, and the head is
applied to row chunks, each recomputed in backward (activation checkpointing) instead of
keeping every chunk's logits alive until backward.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, so a left-padded prompt starts at position 0.

    Padding slots get position 0 (they are masked, the value only has to be valid). The
    rollout engine uses the same rule, which keeps its logprobs equal to ours.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(token_t | prefix) for the response columns `input_ids[:, response_start:]`.

    `input_ids` is (N, P+T): left-padded prompts then right-padded responses, and
    `response_start` is P. Returns `(logprobs, entropy)`, both (N, T) in fp32 (fp64 for an fp64
    model), computed from logits / temperature; `entropy` is None unless `with_entropy`.
    Positions where `attention_mask` is 0 are exactly 0 in both. Differentiable w.r.t. the
    model's parameters.
    """
    if not 0 < response_start < input_ids.shape[1]:
        raise ValueError(
            f"response_start must be in [1, {input_ids.shape[1] - 1}] (the first response "
            f"token needs a prompt token before it), got {response_start}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    hidden = model.get_decoder()(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state
    # The hidden state at column j predicts the token at column j + 1.
    hidden = hidden[:, response_start - 1 : -1]
    n, t, h = hidden.shape
    stats = _chunked_head_stats(
        model.get_output_embeddings(),
        hidden.reshape(n * t, h),
        input_ids[:, response_start:].reshape(n * t),
        temperature,
        chunk_size,
        with_entropy,
    ).reshape(-1, n, t)

    valid = attention_mask[:, response_start:].bool()
    logprobs = stats[0].masked_fill(~valid, 0.0)
    entropy = stats[1].masked_fill(~valid, 0.0) if with_entropy else None
    return logprobs, entropy


def _chunked_head_stats(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    chunk_size: int,
    with_entropy: bool,
) -> torch.Tensor:
    """`_chunk_stats` over row chunks; under autograd each chunk's logits are rebuilt in backward."""
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    pieces = []
    for lo in range(0, hidden.shape[0], chunk_size):
        args = (head, hidden[lo : lo + chunk_size], targets[lo : lo + chunk_size])
        if recompute:
            # The head has no randomness, so there is no RNG state to save and restore.
            piece = checkpoint(
                _chunk_stats,
                *args,
                temperature,
                with_entropy,
                use_reentrant=False,
                preserve_rng_state=False,
            )
        else:
            piece = _chunk_stats(*args, temperature, with_entropy)
        pieces.append(piece)
    return torch.cat(pieces, dim=-1)


def _chunk_stats(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    with_entropy: bool,
) -> torch.Tensor:
    """(1 or 2, rows): log-prob of each target and optionally the entropy, in >= fp32."""
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    log_normalizer = logits.logsumexp(dim=-1)
    logprob = logits.gather(-1, targets[:, None]).squeeze(-1) - log_normalizer
    if not with_entropy:
        return logprob[None]
    # H = log Z - sum_v p_v * logit_v, with p = softmax(logits).
    probs = torch.exp(logits - log_normalizer[:, None])
    entropy = log_normalizer - (probs * logits).sum(dim=-1)
    return torch.stack([logprob, entropy])
