"""The one rule for text <-> tokens, used by training, evaluation, SFT and the exported model.

    prompt text   = the run's template applied to the example's question (`templates.py`:
                    qwen_math | r1 | none | a format string | chat); chat messages in the
                    data always go through the tokenizer's chat template
    prompt ids    = tokenizer.encode(text)     (the tokenizer's own special tokens: a BOS where
                    its convention adds one, none for Qwen-style tokenizers; never an EOS;
                    chat-rendered text adds none, its template wrote them)
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
from drgrpo.rollout.templates import PromptTemplate

NO_TEMPLATE = PromptTemplate.parse("none")


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
    template: PromptTemplate = NO_TEMPLATE
    """How a question becomes prompt text (`rollout.prompt_template`)."""

    def __post_init__(self) -> None:
        if not self.stop_ids:
            raise ValueError("a token rule needs at least one stop id")
        if self.eos_id not in self.stop_ids:
            raise ValueError(f"eos id {self.eos_id} must be one of the stop ids {self.stop_ids}")

    @classmethod
    def from_tokenizer(
        cls, tokenizer, generation_config=None, extra_stop_ids: Iterable[int] = (),
        template: PromptTemplate | str = NO_TEMPLATE,
    ) -> TokenRule:  # fmt: skip
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
        if isinstance(template, str):
            template = PromptTemplate.parse(template)
        return cls(pad_id=pad, stop_ids=frozenset(stops), eos_id=eos, template=template)

    def prompt_text(self, tokenizer, example) -> tuple[str, bool]:
        """(the prompt text of a task example, whether to add the tokenizer's special tokens)."""
        template = self.template
        if getattr(example, "messages", None):
            # Chat messages can only be rendered by the chat template.
            template = template if template.uses_chat_template else PromptTemplate.chat()
            return template.render(list(example.messages), tokenizer), False
        return template.render(example.prompt, tokenizer), template.encode_special_tokens

    def encode_examples(self, tokenizer, examples: Iterable) -> list[list[int]]:
        """Prompt ids of task examples: the template, then the encoding rule."""
        out = []
        for ex in examples:
            text, special = self.prompt_text(tokenizer, ex)
            out.append(self.encode_prompt(tokenizer, text, add_special_tokens=special))
        return out

    def encode_prompt(self, tokenizer, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Prompt ids by the tokenizer's own convention (BOS or not; none added for chat-rendered
        text), never ending in a stop id the text does not spell."""
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
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
