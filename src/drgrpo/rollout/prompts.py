"""The one rule for text <-> tokens, used by training, evaluation, SFT and the exported model.

    prompt ids    = tokenizer.encode(prompt)   (the tokenizer's own special tokens: a BOS where
                    its convention adds one, none for Qwen-style tokenizers; never an EOS)
    stop ids      = {tokenizer EOS} | generation_config.eos_token_id (an id or a list) | extra
    response text = decode(response ids within the mask, minus the stop id that ended the row),
                    special tokens kept: the verifier sees what the model wrote
    SFT target    = solution ids + [the tokenizer's EOS]

Because prompts are encoded by the tokenizer's own convention, `tokenizer(prompt)` followed by
`model.generate` in plain transformers sees exactly the ids drgrpo trains on.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from drgrpo.rollout.engine import Rollouts


@dataclass(frozen=True)
class TokenRule:
    """How one tokenizer turns prompts into ids and sampled ids back into text."""

    pad_id: int
    """Fills padding slots (masks say which slots are real). May equal a stop id (Qwen2.5-Math
    ships pad == eos): padding is never read, the stop token is kept by the response mask."""
    stop_ids: frozenset[int]
    """Sampling any of these ends a row (the stop token is part of the response)."""
    eos_id: int
    """Appended to SFT targets: the stop token the model is taught to emit."""

    def __post_init__(self) -> None:
        if not self.stop_ids:
            raise ValueError("a token rule needs at least one stop id")
        if self.eos_id not in self.stop_ids:
            raise ValueError(f"eos id {self.eos_id} must be one of the stop ids {self.stop_ids}")

    @classmethod
    def from_tokenizer(
        cls, tokenizer, generation_config=None, extra_stop_ids: Iterable[int] = ()
    ) -> TokenRule:
        """The rule of a HF tokenizer (plus the model's generation_config, when it has one)."""
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError(
                "the tokenizer has no eos token: responses could never end. Set "
                "tokenizer.eos_token (e.g. to the chat end-of-turn token) and save it again"
            )
        stops = {eos, *extra_stop_ids, *_ids(getattr(generation_config, "eos_token_id", None))}
        pad = tokenizer.pad_token_id
        if pad is None:
            # Padding is masked everywhere, so any id works; the eos id is never sampled as pad.
            pad = eos
        return cls(pad_id=pad, stop_ids=frozenset(stops), eos_id=eos)

    def encode_prompt(self, tokenizer, text: str) -> list[int]:
        """Prompt ids by the tokenizer's own convention (BOS or not), never ending in a stop id
        the text does not spell."""
        ids = tokenizer.encode(text, add_special_tokens=True)
        plain = tokenizer.encode(text, add_special_tokens=False)
        if ids and ids[-1] in self.stop_ids and (not plain or plain[-1] != ids[-1]):
            ids = ids[:-1]  # some tokenizers append EOS; a prompt must leave the answer open
        if not ids:
            raise ValueError(f"prompt {text!r} encodes to no tokens")
        return ids

    def encode_prompts(self, tokenizer, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode_prompt(tokenizer, t) for t in texts]

    def sft_target(self, tokenizer, solution: str) -> list[int]:
        """The response ids an SFT example teaches: the solution, then EOS."""
        return tokenizer.encode(solution, add_special_tokens=False) + [self.eos_id]

    def response_text(self, tokenizer, ids: list[int], stopped: bool) -> str:
        """The text a verifier sees: `ids` (a row's tokens within its mask) without the stop token
        that ended it (`stopped`), special tokens kept."""
        if stopped and ids and ids[-1] in self.stop_ids:
            ids = ids[:-1]
        return tokenizer.decode(ids, skip_special_tokens=False)

    def decode_rollouts(self, tokenizer, rollouts: Rollouts) -> list[str]:
        """`response_text` of every row of `rollouts`."""
        lengths = rollouts.response_lengths.tolist()
        rows = rollouts.response_ids.tolist()
        return [
            self.response_text(tokenizer, row[:n], finish == "stop")
            for row, n, finish in zip(rows, lengths, rollouts.finish_reason, strict=True)
        ]


def _ids(value: int | Collection[int] | None) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]
