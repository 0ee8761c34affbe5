"""Shared machinery of generated (unbounded) tasks: per-index draws and a hash-based split.

A problem is held out iff `stable_unit(prompt) < heldout_fraction`. The split depends on the
problem text only, so no seed's training stream ever contains any seed's held-out problem.
Training example i is drawn from an RNG seeded by (seed, i), re-drawing while it lands in the
held-out part; held-out example j likewise from an RNG seeded by j alone, so every seed is
evaluated on the same problems and runs with different seeds stay comparable.
"""

from __future__ import annotations

import functools
import random
from abc import abstractmethod

from drgrpo.tasks.base import Example, Task, check_float, check_int, stable_unit

MAX_DRAWS = 10_000
"""Draws per index before giving up: only a problem space too small for the split runs out."""

DISTINCT_PATIENCE = 2_000
"""Consecutive repeated held-out draws after which the held-out space counts as exhausted."""


class GeneratedTask(Task):
    """A task whose problems come from `_draw(rng)`; subclasses are frozen dataclasses with
    the knobs `seed`, `heldout_fraction` and `heldout_size`."""

    seed: int
    heldout_fraction: float
    heldout_size: int

    @abstractmethod
    def _draw(self, rng: random.Random) -> Example:
        """One problem from the task's distribution, using only `rng` for randomness."""

    def _check_split(self) -> None:
        check_float(
            "heldout_fraction",
            self.heldout_fraction,
            0.01,
            0.5,
            hint=" (the share of the problem space reserved for evaluation)",
        )
        check_int("heldout_size", self.heldout_size, 1)

    def is_heldout(self, example: Example) -> bool:
        """Whether `example` belongs to the held-out part of the problem space."""
        return stable_unit(example.prompt) < self.heldout_fraction

    def _draw_where(self, rng: random.Random, heldout: bool, what: str) -> Example:
        for _ in range(MAX_DRAWS):
            example = self._draw(rng)
            if self.is_heldout(example) == heldout:
                return example
        raise ValueError(
            f"{self.name}: no {what} problem in {MAX_DRAWS} draws; the problem space is too "
            "small for this heldout_fraction: widen the ranges or change heldout_fraction"
        )

    def train_example(self, i: int) -> Example:
        i = check_int("i", i, 0)
        rng = random.Random(f"{self.name}/train/{self.seed}/{i}")
        return self._draw_where(rng, heldout=False, what="training")

    def heldout(self, n: int | None = None) -> list[Example]:
        """The first n held-out problems (`heldout_size` when n is None), distinct from each
        other as long as the held-out space has that many."""
        n = self.heldout_size if n is None else check_int("n", n, 0)
        return list(_heldout_prefix(self, n))


@functools.lru_cache(maxsize=16)
def _heldout_prefix(task: GeneratedTask, n: int) -> tuple[Example, ...]:
    # Dedupe by prompt while walking a fixed stream of indices, so heldout(m) is a prefix of
    # heldout(n) for m < n. A small space is detected by a long run of repeats; its distinct
    # problems are then cycled, which keeps the length promise without looping forever.
    found: list[Example] = []
    seen: set[str] = set()
    repeats = 0
    j = 0
    while len(found) < n and repeats < DISTINCT_PATIENCE:
        rng = random.Random(f"{task.name}/heldout/{j}")
        example = task._draw_where(rng, heldout=True, what="held-out")
        j += 1
        if example.prompt in seen:
            repeats += 1
            continue
        seen.add(example.prompt)
        found.append(example)
        repeats = 0
    distinct = len(found)
    while len(found) < n:
        found.append(found[len(found) % distinct])
    return tuple(found)
