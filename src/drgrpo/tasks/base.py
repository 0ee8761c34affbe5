"""The task interface: a deterministic prompt source plus a pure verifier.

A task knows no model, tokenizer or rollout. It hands out `Example`s (prompt text, the reference
the verifier compares against, an optional SFT solution) and scores a completion with
`verify(completion, reference) -> float in [0, 1]`, which never raises and stays fast on
adversarial input, because the policy being trained is an adversary of its reward.
"""

from __future__ import annotations

import hashlib
import math
import operator
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

ANSWER_PREFIX = "answer:"
"""Marker that starts the final-answer line of the built-in tasks' responses."""

MAX_COMPLETION_CHARS = 4096
"""Longer completions score 0.0 unread (arithmetic and countdown): caps verifier work."""


@dataclass(frozen=True)
class Example:
    """One problem: what the model sees, what the verifier checks, and an optional SFT target."""

    prompt: str
    """Text the model is conditioned on (the caller adds BOS; no special tokens here)."""
    reference: str
    """What `Task.verify` compares against, e.g. "51"."""
    solution: str | None
    """The SFT target response (the caller appends EOS); None if the task has none."""
    meta: dict
    """Small JSON-able info, e.g. {"k": 3} for difficulty; {"index", "id", "source"} for data."""
    messages: tuple[dict, ...] | None = None
    """Chat messages ({role, content}) when the dataset's prompt is a conversation: render them
    with the tokenizer's chat template (add_generation_prompt=True); `prompt` is then a plain
    "role: content" rendering, for logs and for tokenizers without a template."""
    row: dict = field(default_factory=dict, compare=False, repr=False)
    """Every column of the dataset row (empty for generated tasks), for reward functions."""

    def reward_input(self) -> dict:
        """What a reward function sees: every dataset column, then the keys "prompt",
        "messages", "reference" (and meta's "id" / "source" when set), which take precedence
        over columns of the same name."""
        out = dict(self.row)
        out.update(prompt=self.prompt, messages=self.messages, reference=self.reference)
        out.update({k: self.meta[k] for k in ("id", "source") if self.meta.get(k) is not None})
        return out


class Task(ABC):
    """A prompt source and a verifier. Concrete tasks are frozen dataclasses of their knobs."""

    name: ClassVar[str]

    @property
    def num_train(self) -> int | None:
        """Number of distinct training examples; None for generated (unbounded) tasks."""
        return None

    @abstractmethod
    def train_example(self, i: int) -> Example:
        """Training example `i` (any i >= 0), a pure function of the knobs (seed included)."""

    @abstractmethod
    def heldout(self, n: int | None = None) -> list[Example]:
        """The first `n` held-out examples, disjoint from every training example."""

    @abstractmethod
    def verify(self, completion: str, reference: str) -> float:
        """Reward in [0, 1] for `completion`, 1.0 iff correct; never raises, fast on
        adversarial input."""

    def reward_spec(self) -> list[dict]:
        """The task's reward terms (`drgrpo.tasks.reward_spec`): by default its own verifier,
        which is also the correctness check (a completion is correct iff it scores 1.0)."""
        return [{"fn": "task", "name": "verifier", "correct": True}]


def stable_unit(text: str) -> float:
    """A uniform-looking number in [0, 1) from `text`, equal on every machine and process.

    Python's hash() is salted per process, so it cannot decide a train/held-out split.
    """
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def last_answer(completion: object, max_chars: int = MAX_COMPLETION_CHARS) -> str | None:
    """Text after `answer:` on the last line that starts with it, or None.

    Only the last answer line counts: earlier ones are drafts, and letting any of them score
    would reward a policy for listing several guesses.
    """
    if not isinstance(completion, str) or len(completion) > max_chars:
        return None
    for line in reversed(completion.split("\n")):
        line = line.strip()
        if line.startswith(ANSWER_PREFIX):
            return line[len(ANSWER_PREFIX) :].strip()
    return None


def check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    """`value` as an int in [lo, hi], or a ValueError that says what to pass instead."""
    bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    try:
        as_int = operator.index(value)  # rejects floats and strings, accepts numpy ints
    except TypeError:
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}") from None
    if isinstance(value, bool) or as_int < lo or (hi is not None and as_int > hi):
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return as_int


def check_float(
    name: str, value: object, lo: float, hi: float, hi_open: bool = False, hint: str = ""
) -> float:
    """`value` as a finite float in [lo, hi] (or [lo, hi)), else a ValueError naming the fix."""
    bound = f"in [{lo}, {hi})" if hi_open else f"in [{lo}, {hi}]"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and lo <= value and (value < hi if hi_open else value <= hi)
    if not ok:
        raise ValueError(f"{name} must be a number {bound}, got {value!r}{hint}")
    return float(value)


def check_common(task: object) -> None:
    """Validate the knobs every task shares: `seed` and `format_reward`."""
    check_int("seed", task.seed, 0)
    check_float(
        "format_reward",
        task.format_reward,
        0.0,
        1.0,
        hi_open=True,
        hint=" (a well-formed wrong answer must score below a correct one; 0.0 turns it off)",
    )
