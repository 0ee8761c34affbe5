"""Answer extraction and equivalence for the math task, with math_verify under a time limit.

sympy can spend minutes on a ten-character answer (`9^{9^{9}}`, `100!!`), so every comparison
runs under a deadline (`drgrpo.tasks.deadline`: a repeating SIGALRM timer, so a deadline that
lands inside a garbage-collector callback and is dropped there fires again). Only the main
thread may set it; in any other thread the comparison runs without it, and answers that look
expensive are instead compared as plain strings (a conservative fallback: it may miss an
equivalent exotic answer, but it cannot hang).

What no signal stops (a long C call such as a huge integer power, a caller that swallows
BaseException) is stopped by the reward pool (drgrpo.tasks.reward_pool), which runs these
graders in worker processes and kills a call past its hard limit. The in-process deadline here
remains for callers that cannot start processes, and as the graders' own, gentler limit.
"""

from __future__ import annotations

import functools
import logging
import re

from drgrpo.tasks.deadline import can_use_alarm, time_limit

MAX_MATH_CHARS = 100_000
"""Longer completions score 0.0 unread (long chains of thought stay well below this)."""
MAX_ANSWER_CHARS = 1_000
"""Longer extracted answers score 0.0 without reaching sympy."""
MAX_ANSWER_DEPTH = 8
"""Deeper bracket nesting scores 0.0: the LaTeX parser slows down sharply with depth."""
NO_SIGNAL_MAX_CHARS = 64
"""Without a deadline (worker threads), answers reach sympy only if at most this long..."""
_RISKY = re.compile(r"!|\\(?:binom|choose|sum|prod|int|lim|operatorname)")
"""...and contain none of these (factorials, big operators, opaque functions)..."""
_SAFE_POWER = re.compile(r"\^(?:[0-9a-zA-Z]|\{[0-9a-zA-Z]{1,2}\})")
"""...and at most one power, with a literal exponent of one or two characters."""

_BOXED = "\\boxed"
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_SPACES = re.compile(r"\s+")


class _Deadline(BaseException):
    """Raised by the SIGALRM handler. A BaseException, because math_verify and sympy catch
    Exception in many places and would otherwise swallow it and carry on."""


def extract_answer(completion: str) -> str | None:
    """Content of the last answer marker: `\\boxed{...}` (balanced braces) or
    `<answer>...</answer>`, whichever starts later; None if absent, unbalanced or empty."""
    boxed_at = completion.rfind(_BOXED + "{")
    tag_at = completion.rfind(_ANSWER_OPEN)
    if boxed_at > tag_at:
        start = boxed_at + len(_BOXED) + 1
        depth = 1
        for end in range(start, len(completion)):
            char = completion[end]
            depth += (char == "{") - (char == "}")
            if depth == 0:
                return completion[start:end].strip() or None
        return None
    if tag_at >= 0:
        start = tag_at + len(_ANSWER_OPEN)
        end = completion.find(_ANSWER_CLOSE, start)
        if end >= 0:
            return completion[start:end].strip() or None
    return None


def _nesting_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")}]":
            depth -= 1
    return deepest


def _looks_expensive(answer: str) -> bool:
    powers = answer.count("^")
    return (
        len(answer) > NO_SIGNAL_MAX_CHARS
        or _RISKY.search(answer) is not None
        or powers > 1
        or (powers == 1 and _SAFE_POWER.search(answer) is None)
    )


def _normalize(text: str) -> str:
    return _SPACES.sub("", text)


def answers_match(answer: str, reference: str, timeout_s: float) -> bool:
    """Whether `answer` equals `reference` mathematically (math_verify), judged within
    `timeout_s` seconds in the main thread; False on timeout, parse failure or any error."""
    if len(answer) > MAX_ANSWER_CHARS or _nesting_depth(answer) > MAX_ANSWER_DEPTH:
        return False
    if _normalize(answer) == _normalize(reference):
        return True
    if not can_use_alarm():
        return not _looks_expensive(answer) and _sympy_match(answer, reference)
    try:
        with time_limit(timeout_s, _Deadline):
            return _sympy_match(answer, reference)
    except _Deadline:
        return False


def _sympy_match(answer: str, reference: str) -> bool:
    mv = load_math_verify()
    gold = _parse_gold(reference)
    if not gold:
        return False
    # Wrapping in \boxed makes math_verify's LaTeX extraction take the text as one answer.
    pred = mv.parse("\\boxed{" + answer + "}", _extraction_config(), parsing_timeout=None)
    return bool(pred) and mv.verify(gold, pred, timeout_seconds=None)


@functools.lru_cache(maxsize=4096)
def _parse_gold(reference: str) -> list:
    # A group of K completions shares one reference: parse it once. A timeout raises through
    # here, and lru_cache does not store raised calls.
    return load_math_verify().parse(
        "\\boxed{" + reference + "}", _extraction_config(), parsing_timeout=None
    )


@functools.cache
def load_math_verify():
    try:
        import math_verify
    except ImportError as err:
        raise ImportError("the math task needs math-verify: pip install 'drgrpo[math]'") from err
    # With its own (signal) timeouts off, math_verify warns once that the caller must time
    # out for it; this module does, so that warning would only mislead.
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(
            lambda record: not record.getMessage().startswith("Timeout is disabled")
        )
    return math_verify


@functools.cache
def _extraction_config() -> list:
    mv = load_math_verify()
    return [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
