"""Countdown: combine the given numbers with + - * / and parentheses to hit the target.

Prompt and SFT solution (one line per operation of a random expression, then the expression):

    prompt    nums 3 7 25 target 46=
    solution  3*7=21
              25+21=46
              answer: 25+3*7

The verifier reads the last `answer:` line with its own recursive-descent parser (never eval),
in exact rational arithmetic. Each given number may be used at most once; unused ones are fine.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

from drgrpo.tasks.base import Example, check_common, check_int, last_answer
from drgrpo.tasks.generated import GeneratedTask

MAX_EXPR_CHARS = 200
"""Longer answer expressions score 0.0 unparsed."""
MAX_DEPTH = 16
"""Deepest parenthesis nesting the parser follows (bounds its recursion)."""
MAX_LITERAL_DIGITS = 6
"""Longest integer literal the parser accepts."""
MAX_MAGNITUDE = 10**12
"""Bound on numerator and denominator of every intermediate value (bounds big-int work)."""

_REFERENCE = re.compile(r"nums((?: [0-9]{1,6})+) target ([0-9]{1,9})", re.ASCII)
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


class _Reject(Exception):
    """The expression is malformed, too big, or divides by zero."""


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ;
    factor := integer | '(' expr ')'. Spaces between tokens are allowed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0
        self.literals: list[int] = []

    def peek(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expr(self) -> Fraction:
        value = self.term()
        while (op := self.peek()) in ("+", "-"):
            self.pos += 1
            rhs = self.term()
            value = _bounded(value + rhs if op == "+" else value - rhs)
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while (op := self.peek()) in ("*", "/"):
            self.pos += 1
            rhs = self.factor()
            if op == "/" and rhs == 0:
                raise _Reject("division by zero")
            value = _bounded(value * rhs if op == "*" else value / rhs)
        return value

    def factor(self) -> Fraction:
        char = self.peek()
        if char == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Reject("nested too deeply")
            self.pos += 1
            value = self.expr()
            if self.peek() != ")":
                raise _Reject("missing )")
            self.pos += 1
            self.depth -= 1
            return value
        start = self.pos
        while self.pos < len(self.text) and "0" <= self.text[self.pos] <= "9":
            self.pos += 1
        digits = self.text[start : self.pos]
        if not digits or len(digits) > MAX_LITERAL_DIGITS:
            raise _Reject("expected an integer of at most 6 ASCII digits")
        self.literals.append(int(digits))
        return Fraction(int(digits))


def _bounded(value: Fraction) -> Fraction:
    if abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
        raise _Reject("intermediate value too large")
    return value


def evaluate(text: str) -> tuple[Fraction, list[int]] | None:
    """Value of an integer expression with + - * / and parentheses, and its integer literals
    in order; None if it is malformed, too long, too deep, too large or divides by zero."""
    if not isinstance(text, str) or len(text) > MAX_EXPR_CHARS:
        return None
    parser = _Parser(text)
    try:
        value = parser.expr()
        if parser.peek() != "":
            raise _Reject("trailing characters")
    except _Reject:
        return None
    return value, parser.literals


def _parse_reference(reference: str) -> tuple[list[int], int] | None:
    match = _REFERENCE.fullmatch(reference) if isinstance(reference, str) else None
    if match is None:
        return None
    return [int(x) for x in match.group(1).split()], int(match.group(2))


@dataclass(frozen=True)
class CountdownTask(GeneratedTask):
    """Reach a target from a few small numbers; the reference is "nums 3 7 25 target 46"."""

    name: ClassVar[str] = "countdown"

    count_min: int = 3
    """Fewest given numbers."""
    count_max: int = 4
    """Most given numbers (the count is uniform in count_min..count_max)."""
    value_min: int = 1
    """Smallest given number."""
    value_max: int = 25
    """Largest given number."""
    target_max: int = 999
    """Largest target; the generating expression is redrawn until its value is in 1..target_max."""
    ops: str = "+-*/"
    """Operators the generating expression may use (the verifier accepts all four)."""
    heldout_fraction: float = 0.1
    """Share of the problem space reserved for evaluation, chosen by a hash of the prompt."""
    heldout_size: int = 500
    """Number of held-out problems heldout() returns when called without n."""
    seed: int = 0
    """Seed of the training stream (the held-out problems do not depend on it)."""
    format_reward: float = 0.0
    """Reward for a parseable answer expression that is wrong or breaks the rules."""

    def __post_init__(self) -> None:
        check_int("count_min", self.count_min, 2, 6)
        check_int("count_max", self.count_max, self.count_min, 6)
        check_int("value_min", self.value_min, 1, 999)
        check_int("value_max", self.value_max, self.value_min, 999)
        check_int("target_max", self.target_max, 2, 10**6)
        if not isinstance(self.ops, str) or not self.ops or set(self.ops) - set("+-*/"):
            raise ValueError(f"ops must be a non-empty string of + - * /, got {self.ops!r}")
        self._check_split()
        check_common(self)

    def _draw(self, rng: random.Random) -> Example:
        for attempt in range(1000):
            if attempt % 10 == 0:  # some number sets admit no valid target; draw new ones
                count = rng.randint(self.count_min, self.count_max)
                numbers = [rng.randint(self.value_min, self.value_max) for _ in range(count)]
            found = self._random_solution(rng, numbers)
            if found is not None:
                expression, target, steps = found
                body = f"nums {' '.join(map(str, numbers))} target {target}"
                return Example(
                    prompt=body + "=",
                    reference=body,
                    solution="\n".join([*steps, f"answer: {expression}"]),
                    meta={"count": count},
                )
        raise ValueError(
            f"countdown: found no expression with a target in 1..{self.target_max} that is "
            "not one of the given numbers; raise target_max, widen the values or allow '+'"
        )

    def _random_solution(
        self, rng: random.Random, numbers: list[int]
    ) -> tuple[str, int, list[str]] | None:
        """Combine random pairs until one expression is left. Every intermediate value must be
        a positive integer (the countdown rules) and the target must not be a given number."""
        # (text, precedence of its top operator, value); a literal binds tightest.
        pool = [(str(x), 3, x) for x in numbers]
        steps = []
        while len(pool) > 1:
            left = pool.pop(rng.randrange(len(pool)))
            right = pool.pop(rng.randrange(len(pool)))
            op = rng.choice(self.ops)
            value = _apply(op, left[2], right[2])
            if value is None:
                return None
            steps.append(f"{left[2]}{op}{right[2]}={value}")
            pool.append((_join(left, op, right), _PRECEDENCE[op], value))
        text, _, target = pool[0]
        if not 1 <= target <= self.target_max or target in numbers:
            return None
        return text, target, steps

    def verify(self, completion: str, reference: str) -> float:
        """1.0 iff the last `answer:` line is an expression over the given numbers, each used
        at most once, whose exact value is the target."""
        parsed = _parse_reference(reference)
        answer = last_answer(completion)
        if parsed is None or answer is None:
            return 0.0
        result = evaluate(answer)
        if result is None:
            return 0.0
        numbers, target = parsed
        value, literals = result
        if Counter(literals) - Counter(numbers) or value != target:
            return self.format_reward
        return 1.0


def _apply(op: str, a: int, b: int) -> int | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b if a > b else None
    if op == "*":
        return a * b
    return a // b if b > 1 and a % b == 0 else None


def _join(left: tuple[str, int, int], op: str, right: tuple[str, int, int]) -> str:
    # Parenthesise only where precedence demands: a looser left operand, and a right operand
    # that is looser or equally loose under - and / (which do not associate to the right).
    prec = _PRECEDENCE[op]
    left_text = f"({left[0]})" if left[1] < prec else left[0]
    tight = right[1] > prec or (right[1] == prec and op in "+*")
    right_text = right[0] if tight else f"({right[0]})"
    return f"{left_text}{op}{right_text}"
