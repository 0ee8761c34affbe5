"""Running-sum arithmetic, the main built-in task, sized for a character-level ~1M-parameter model.

Prompt and SFT solution for 12+34+5 (recheck lines appear with probability `recheck_prob`):

    prompt    12+34+5=
    solution  12+34=46
              +5=51
              check 46+5=51
              answer: 51

The first line adds the first two numbers, each later line adds the next number to the partial
sum just written. Only the last `answer:` line is scored, so intermediate and recheck lines are
free: response length can drift independently of correctness.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import ClassVar

from drgrpo.tasks.base import Example, check_common, check_float, check_int, last_answer
from drgrpo.tasks.generated import GeneratedTask

_INT = re.compile(r"-?[0-9]{1,32}", re.ASCII)
"""An answer: ASCII digits only (int() would also take unicode digits and underscores)."""


@dataclass(frozen=True)
class ArithmeticTask(GeneratedTask):
    """Sum k numbers, writing one partial sum per line, then `answer: <sum>`."""

    name: ClassVar[str] = "arithmetic"

    k_min: int = 2
    """Fewest numbers in a problem."""
    k_max: int = 5
    """Most numbers in a problem (k is uniform in k_min..k_max)."""
    digits_min: int = 1
    """Fewest digits of each number."""
    digits_max: int = 1
    """Most digits of each number (drawn per number, uniform in digits_min..digits_max)."""
    recheck_prob: float = 0.0
    """Probability that the SFT solution repeats each step as a `check a+b=s` line."""
    heldout_fraction: float = 0.1
    """Share of the problem space reserved for evaluation, chosen by a hash of the prompt."""
    heldout_size: int = 500
    """Number of held-out problems heldout() returns when called without n."""
    seed: int = 0
    """Seed of the training stream (the held-out problems do not depend on it)."""
    format_reward: float = 0.0
    """Reward for a well-formed `answer: <int>` line with a wrong value (the paper uses 0)."""
    slip_prob: float = 0.0
    """Probability that an SFT solution slips: one partial sum is written off by one and carried
    on, so its answer is wrong. With `recheck_after_slip` this builds a base policy whose typical
    failure is a long wrong answer (the length-bias ablation, docs/length-bias.md)."""
    recheck_after_slip: float | None = None
    """Recheck probability on the lines after a slip (None: `recheck_prob`)."""

    def __post_init__(self) -> None:
        check_int("k_min", self.k_min, 2, 10)
        check_int("k_max", self.k_max, self.k_min, 10)
        check_int("digits_min", self.digits_min, 1, 9)
        check_int("digits_max", self.digits_max, self.digits_min, 9)
        check_float("recheck_prob", self.recheck_prob, 0.0, 1.0)
        check_float("slip_prob", self.slip_prob, 0.0, 1.0)
        if self.recheck_after_slip is not None:
            check_float("recheck_after_slip", self.recheck_after_slip, 0.0, 1.0)
        self._check_split()
        check_common(self)

    def _draw(self, rng: random.Random) -> Example:
        k = rng.randint(self.k_min, self.k_max)
        numbers = []
        for _ in range(k):
            digits = rng.randint(self.digits_min, self.digits_max)
            numbers.append(rng.randint(10 ** (digits - 1), 10**digits - 1))
        # A slip (SFT traces only) is drawn only when slip_prob > 0, so that the default draws,
        # hence the problems and every earlier run, stay exactly as they were.
        slip_at = -1
        if self.slip_prob > 0 and rng.random() < self.slip_prob:
            slip_at = rng.randint(1, k - 1)  # the partial sum after number slip_at (0-based)
        slip = rng.choice((-1, 1)) if slip_at >= 0 else 0
        total = numbers[0] + numbers[1] + (slip if slip_at == 1 else 0)
        lines = [f"{numbers[0]}+{numbers[1]}={total}"]
        # Draw the recheck coins even when recheck_prob is 0, so that changing only
        # recheck_prob keeps the same problems (and the same held-out set).
        if rng.random() < self._recheck(slip_at, 1):
            lines.append(f"check {numbers[0]}+{numbers[1]}={total}")
        for i, x in enumerate(numbers[2:], start=2):
            new = total + x + (slip if slip_at == i else 0)
            lines.append(f"+{x}={new}")
            if rng.random() < self._recheck(slip_at, i):
                lines.append(f"check {total}+{x}={new}")
            total = new
        lines.append(f"answer: {total}")
        return Example(
            prompt="+".join(map(str, numbers)) + "=",
            reference=str(sum(numbers)),
            solution="\n".join(lines),
            meta={"k": k},
        )

    def _recheck(self, slip_at: int, line: int) -> float:
        """The recheck probability of the check line after partial sum `line`."""
        if 0 <= slip_at <= line and self.recheck_after_slip is not None:
            return self.recheck_after_slip
        return self.recheck_prob

    def verify(self, completion: str, reference: str) -> float:
        """1.0 iff the last `answer:` line holds exactly the integer `reference`."""
        answer = last_answer(completion)
        if answer is None or not _INT.fullmatch(answer):
            return 0.0
        if not isinstance(reference, str) or not _INT.fullmatch(reference.strip()):
            return 0.0
        return 1.0 if int(answer) == int(reference) else self.format_reward
