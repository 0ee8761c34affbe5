"""Built-in reward functions: `fn(completion, example, **args) -> float`, pure and picklable by
import path, so that the reward pool can run them in its worker processes.

`example` is the dict every reward function sees (`Example.reward_input()`): every dataset
column, plus "prompt", "messages" and "reference" (the extracted answer).

    math_verify   drgrpo's grader: the last \\boxed{} or <answer></answer>, whichever comes
                  later, equal to the reference per math-verify; `format_reward` for a
                  well-formed wrong answer.
    boxed         the boxed grader of the paper's code (sail-sg/understand-r1-zero,
    answer_tag    math_grader.py: boxed_reward_fn, answer_tag_reward_fn), re-written here.
    format        1.0 iff the completion has a non-empty final answer marker (no grading).

Where the paper's graders differ from `math_verify` (all deliberate, to match its runs):
- boxed reads only `\\boxed{}` / `\\fbox{}` (the last one); <answer> tags are ignored.
- answer_tag is strict about format, as the paper's evaluation is: the completion must contain
  the literal "</think> <answer>" and a "</answer>"; the answer is the text after the last
  "<answer>" with "</answer>" removed, and a \\boxed{} inside it is unwrapped. A right answer
  in the wrong format scores 0, where math_verify would give 1.
- Equivalence: first a MATH-style normalized string match (units, \\left/\\right, dfrac,
  spaces, a trailing period, `x=` in front), then math-verify. math-verify alone already
  accepts most of these; the string match adds a few (`\\boxed{3.}` for 3). The paper's
  "fast" mode uses the PRM800K sympy grader instead of math-verify, which is not ported: it
  refuses unreduced fractions (2/4 vs 1/2) and non-integers against integer references,
  which math-verify accepts, so a few answers score 1 here and 0 there.
- No format reward: a well-formed wrong answer scores 0 ("to avoid hacking", the paper's code).
Timeouts: the paper runs its graders in a multiprocessing.Pool with a 1 s get() timeout that
never kills a stuck worker; here the reward pool kills and replaces it.
"""

from __future__ import annotations

import re

from drgrpo.tasks.answers import last_boxed
from drgrpo.tasks.math_grading import MAX_MATH_CHARS, answers_match, extract_answer

DEFAULT_TIMEOUT_S = 1.0
"""Per-answer limit of math-verify inside a grader (the pool's hard limit is the backstop)."""

_R1_TAG = "</think> <answer>"


def _reference(example: dict) -> str | None:
    reference = example.get("reference") if isinstance(example, dict) else None
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        reference = str(reference)
    return reference if isinstance(reference, str) and reference.strip() else None


def math_verify_reward(
    completion: str, example: dict, format_reward: float = 0.0, timeout_s: float = DEFAULT_TIMEOUT_S
) -> float:
    """1.0 iff the last boxed / <answer> content equals the reference per math-verify;
    `format_reward` when there is an answer that is wrong; 0.0 without an answer."""
    reference = _reference(example)
    if not isinstance(completion, str) or reference is None or len(completion) > MAX_MATH_CHARS:
        return 0.0
    answer = extract_answer(completion)
    if answer is None:
        return 0.0
    try:
        correct = answers_match(answer, reference.strip(), timeout_s)
    except Exception:  # sympy raises a zoo of types on odd input; a grader must not
        correct = False
    return 1.0 if correct else format_reward


def format_reward(completion: str, example: dict) -> float:
    """1.0 iff the completion ends its reasoning with a non-empty \\boxed{} or <answer>."""
    ok = isinstance(completion, str) and len(completion) <= MAX_MATH_CHARS
    return 1.0 if ok and extract_answer(completion) is not None else 0.0


def boxed_reward(completion: str, example: dict, timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
    """The paper's boxed grader: 1.0 iff the last \\boxed{} content equals the reference."""
    if not isinstance(completion, str) or len(completion) > MAX_MATH_CHARS:
        return 0.0
    answer = last_boxed(completion)
    return 0.0 if answer is None else _r1_grade(answer, example, timeout_s)


def answer_tag_reward(
    completion: str, example: dict, timeout_s: float = DEFAULT_TIMEOUT_S
) -> float:
    """The paper's answer-tag grader (strict format, see the module docstring)."""
    if not isinstance(completion, str) or len(completion) > MAX_MATH_CHARS:
        return 0.0
    if _R1_TAG not in completion or "</answer>" not in completion:
        return 0.0
    answer = completion.split("<answer>")[-1].replace("</answer>", "")
    if "\\boxed" in answer:
        answer = last_boxed(answer)
        if answer is None:
            return 0.0
    return _r1_grade(answer, example, timeout_s)


def _r1_grade(answer: str, example: dict, timeout_s: float) -> float:
    reference = _reference(example)
    if reference is None:
        return 0.0
    if "\\boxed" in reference:
        reference = last_boxed(reference) or reference
    given, gold = normalize_math_answer(answer), normalize_math_answer(reference)
    if not given:
        return 0.0
    if given == gold:
        return 1.0
    try:
        return 1.0 if answers_match(answer.strip(), reference.strip(), timeout_s) else 0.0
    except Exception:  # as in math_verify_reward
        return 0.0


_UNIT_TEXT = re.compile(r"\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]*\}\s*$")
_DROP = (r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", "$", r"\%", "%", r"^\circ", r"^{\circ}")
_FRAC = re.compile(r"\\[dt]frac")
_LEADING_VAR = re.compile(r"^[a-zA-Z]\s*=\s*")


def normalize_math_answer(text: str) -> str:
    """A MATH-style normal form for string comparison (Hendrycks et al. 2021, the MATH
    dataset's is_equiv): units, spacing commands and cosmetic LaTeX removed."""
    text = text.strip()
    text = _UNIT_TEXT.sub("", text) if not _UNIT_TEXT.fullmatch(text) else text
    for piece in _DROP:
        text = text.replace(piece, "")
    text = _FRAC.sub(r"\\frac", text)
    text = _LEADING_VAR.sub("", text)
    text = re.sub(r"\s+", "", text).rstrip(".")
    if text.startswith("."):
        text = "0" + text  # .5 and 0.5
    return text
