"""What every rollout engine returns, and the interface an engine implements.

The trainer only sees `Rollouts`, so an HF decode loop, vLLM or a test double are
interchangeable. Rewards are not here: rollouts know tokens, not tasks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Rollouts:
    """A batch of N sampled responses, as padded tensors.

    Shapes: prompts are (N, P) left-padded, responses (N, T) right-padded, both with the pad id.
    """

    prompt_ids: torch.Tensor
    """(N, P) long, left-padded with the pad id."""
    prompt_mask: torch.Tensor
    """(N, P) bool, True on real prompt tokens."""
    response_ids: torch.Tensor
    """(N, T) long, right-padded with the pad id."""
    response_mask: torch.Tensor
    """(N, T) bool, True on sampled tokens. A sampled EOS is inside; padding after it is not."""
    sampler_logprobs: torch.Tensor
    """(N, T) float32: log-softmax(logits / temperature) at the sampled token, taken before any
    truncation (top-p), so it is the policy's own log-prob; 0 on padding. At temperature 0
    (greedy) it is taken at temperature 1."""
    finish_reason: list[str]
    """Per row: "stop" when the row sampled a stop id (its last token), "length" when it hit
    max_new_tokens."""

    @property
    def response_start(self) -> int:
        """Column of the first response token in `input_ids` (P)."""
        return self.prompt_ids.shape[1]

    @property
    def input_ids(self) -> torch.Tensor:
        """(N, P+T): prompts then responses, the layout `sequence_logprobs` takes."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(N, P+T) bool, matching `input_ids`."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def response_lengths(self) -> torch.Tensor:
        """(N,) long: tokens in each response, EOS included."""
        return self.response_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> Rollouts:
        tensors = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **tensors)


class RolloutEngine(Protocol):
    """Samples responses to tokenized prompts; the trainer calls `sync_weights` after each update."""

    def generate(
        self,
        prompt_ids: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Rollouts:
        """One response per prompt (ids from `TokenRule.encode_prompt`); `temperature=0` is greedy.

        Give `seed` or `generator` (not both) for reproducible sampling.
        """
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights (a copy step for vLLM)."""
        ...


def left_pad(
    sequences: list[list[int]], pad_id: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) with each sequence right-aligned in a (N, max_len) tensor."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = True
    return ids.to(device), mask.to(device)


def pack_rollouts(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    sampler_logprobs: list[list[float]],
    finish_reason: list[str],
    pad_id: int,
) -> Rollouts:
    """`Rollouts` from per-row lists, for engines that return ragged outputs (vLLM, tests).

    Each response lists its tokens with the EOS, when one was sampled, as its last element.
    """
    if not len(prompt_ids) == len(response_ids) == len(sampler_logprobs) == len(finish_reason):
        raise ValueError(
            "prompt_ids, response_ids, sampler_logprobs, finish_reason differ in length"
        )
    prompts, prompt_mask = left_pad(prompt_ids, pad_id)
    width = max(1, max(len(r) for r in response_ids))
    responses = torch.full((len(response_ids), width), pad_id, dtype=torch.long)
    logprobs = torch.zeros((len(response_ids), width), dtype=torch.float32)
    for row, (tokens, lps) in enumerate(zip(response_ids, sampler_logprobs, strict=True)):
        responses[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        logprobs[row, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
    lengths = torch.tensor([len(r) for r in response_ids])
    response_mask = torch.arange(width)[None, :] < lengths[:, None]
    return Rollouts(prompts, prompt_mask, responses, response_mask, logprobs, list(finish_reason))


def concat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """One `Rollouts` from several (chunks generated one after the other), rows in order:
    prompts left-padded and responses right-padded to the widest part."""
    if len(parts) == 1:
        return parts[0]
    p = max(r.prompt_ids.shape[1] for r in parts)
    t = max(r.response_ids.shape[1] for r in parts)

    def widen(x: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
        extra = width - x.shape[1]
        return torch.nn.functional.pad(x, (extra, 0) if left else (0, extra), value=value)

    return Rollouts(
        prompt_ids=torch.cat([widen(r.prompt_ids, p, pad_id, True) for r in parts]),
        prompt_mask=torch.cat([widen(r.prompt_mask, p, False, True) for r in parts]),
        response_ids=torch.cat([widen(r.response_ids, t, pad_id, False) for r in parts]),
        response_mask=torch.cat([widen(r.response_mask, t, False, False) for r in parts]),
        sampler_logprobs=torch.cat([widen(r.sampler_logprobs, t, 0.0, False) for r in parts]),
        finish_reason=[f for r in parts for f in r.finish_reason],
    )
