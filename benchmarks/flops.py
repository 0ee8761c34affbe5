"""Model FLOPs an RL step must do, counted from the architecture and the real token counts.

Only matrix multiplications are counted (2 FLOPs per multiply-add); norms, activations, softmax,
RoPE and the embedding lookup are left out, as in the usual MFU convention (PaLM, appendix B).

One forward of a token at position k of its row (0-based, k + 1 keys to attend to), per layer:

    q, k, v projections   2 * h * (q_dim + 2 * kv_dim)
    attention scores      2 * (k + 1) * q_dim          (QK^T, all heads)
    attention values      2 * (k + 1) * q_dim          (softmax(QK^T) V)
    output projection     2 * q_dim * h
    gated MLP             3 * 2 * h * i                (gate, up, down)

plus the vocabulary projection, 2 * h * V, only at the positions whose next-token distribution
is needed. Padding is not work the step must do, so it is never counted.

A row with p prompt tokens and c response tokens (EOS included) needs:

    rollout     the forward of its first p + c - 1 tokens (the last sampled token is never fed
                back), the head at c positions (one per sampled token)
    training    the same forward once more and its backward (2x), so 3x
    reference   the same forward again, no grad, when the KL term needs reference log-probs

So one RL step is (4 + [KL]) x the row's forward, whatever a library recomputes on top (e.g.
activation checkpointing), which is the library's cost, not the step's.

A group's K rows share their prompt, and a prompt's forward does not depend on the response
after it: the step must run each distinct prompt once, not K times. `rl_step_flops(group=K)`
counts it so (the headline MFU of benchmarks/vs_trl.py); `group=1` counts every row's prompt,
the usual convention (reported as `*_mfu_rowwise`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    """The shapes that matter for FLOPs of a Llama-style decoder."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> Arch:
        """From a transformers config (LlamaConfig and its relatives) or a dict of its fields."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        return cls(
            hidden=hidden,
            layers=get("num_hidden_layers"),
            heads=heads,
            kv_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or hidden // heads,
            intermediate=get("intermediate_size"),
            vocab=get("vocab_size"),
        )

    @property
    def params_per_token_matmul(self) -> int:
        """Weights one token multiplies by in one layer (projections and MLP)."""
        q, kv, h = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden
        return h * (q + 2 * kv) + q * h + 3 * h * self.intermediate


def forward_flops(arch: Arch, tokens: int, head_positions: int) -> int:
    """One causal forward over `tokens` real tokens of one row, the head at `head_positions`."""
    if tokens <= 0:
        return 0
    q_dim = arch.heads * arch.head_dim
    dense = 2 * arch.params_per_token_matmul * tokens
    # sum over positions k = 0 .. tokens-1 of (k + 1) keys, times 4 * q_dim (scores and values)
    attention = 4 * q_dim * tokens * (tokens + 1) // 2
    return arch.layers * (dense + attention) + 2 * arch.hidden * arch.vocab * head_positions


def row_forward_flops(arch: Arch, prompt_len: int, response_len: int) -> int:
    """The forward an RL step needs per pass over one (prompt, response) row."""
    return forward_flops(arch, prompt_len + response_len - 1, response_len)


@dataclass(frozen=True)
class StepFlops:
    rollout: int
    train: int
    reference: int

    @property
    def total(self) -> int:
        return self.rollout + self.train + self.reference


def rl_step_flops(
    arch: Arch, rows: Iterable[tuple[int, int]], *, with_reference: bool, group: int = 1
) -> StepFlops:
    """FLOPs of one RL step over rows of (prompt_len, response_len): rollout, 3x training, reference.

    Rows come in groups of `group` consecutive rows with the same prompt; each group's prompt
    forward (its first prompt_len tokens) is counted once. `group=1`: every row's is counted.
    """
    rows = [tuple(r) for r in rows]
    if len(rows) % group:
        raise ValueError(f"{len(rows)} rows are not whole groups of {group}")
    fwd = 0
    for g in range(0, len(rows), group):
        if len({p for p, _ in rows[g : g + group]}) != 1:
            raise ValueError(f"rows {g}..{g + group - 1} of one group have different prompts")
        members = [(p, c) for p, c in rows[g : g + group] if c > 0]
        if not members:
            continue
        p = members[0][0]
        prompt = forward_flops(arch, p, 0)
        fwd += prompt + sum(row_forward_flops(arch, p, c) - prompt for _, c in members)
    return StepFlops(rollout=fwd, train=3 * fwd, reference=fwd if with_reference else 0)
