"""Math word problems from a local JSONL or Parquet file, scored with math_verify.

    prompt     prompt_template with {question} replaced by the row's question
    reference  the row's answer, e.g. "\\frac{1}{2}"
    solution   the row's solution_field text, or None

A completion scores 1.0 iff the content of its last `\\boxed{...}` or `<answer>...</answer>`
is mathematically equal to the reference (see math_grading). The held-out rows are those whose
question hashes lowest, so the split survives reordering the file and does not depend on the
seed; the seed only orders the training rows, reshuffled each epoch.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from drgrpo.tasks.base import Example, Task, check_common, check_float, check_int, stable_unit
from drgrpo.tasks.math_grading import (
    MAX_MATH_CHARS,
    answers_match,
    extract_answer,
    load_math_verify,
)

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class _Row:
    index: int
    question: str
    answer: str
    solution: str | None


@dataclass(frozen=True)
class MathTask(Task):
    """Question/answer rows from a file; reward by math_verify equivalence of the last answer."""

    name: ClassVar[str] = "math"

    path: str
    """Local .jsonl, .json or .parquet file with one problem per row."""
    question_field: str = "problem"
    """Column holding the question text."""
    answer_field: str = "answer"
    """Column holding the reference answer (a string or a number)."""
    solution_field: str | None = None
    """Column holding a worked solution used as the SFT target; None if there is none."""
    prompt_template: str = "{question}"
    """Prompt text; `{question}` is replaced literally, other braces (e.g. \\boxed{}) are kept."""
    heldout_fraction: float = 0.1
    """Share of distinct questions held out for evaluation (ignored if heldout_size is set)."""
    heldout_size: int | None = None
    """Exact number of distinct questions held out; None to use heldout_fraction."""
    seed: int = 0
    """Seed of the per-epoch shuffle of the training rows."""
    timeout_s: float = 2.0
    """Time limit for judging one completion (enforced in the main thread only)."""
    format_reward: float = 0.0
    """Reward for a completion with a non-empty final answer that is wrong (the paper uses 0)."""

    _train: tuple[_Row, ...] = field(init=False, repr=False, compare=False)
    _heldout: tuple[_Row, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._check_knobs()
        check_common(self)
        load_math_verify()  # fail at construction, not at the first reward, if the extra is missing
        rows = _load_rows(self.path, self.question_field, self.answer_field, self.solution_field)
        train, heldout = self._split(rows)
        object.__setattr__(self, "_train", train)
        object.__setattr__(self, "_heldout", heldout)

    def _check_knobs(self) -> None:
        for knob in ("path", "question_field", "answer_field"):
            if not isinstance(getattr(self, knob), str) or not getattr(self, knob):
                raise ValueError(f"{knob} must be a non-empty string, got {getattr(self, knob)!r}")
        if self.solution_field is not None and (
            not isinstance(self.solution_field, str) or not self.solution_field
        ):
            raise ValueError(
                f"solution_field must be a column name or None, got {self.solution_field!r}"
            )
        if not isinstance(self.prompt_template, str) or "{question}" not in self.prompt_template:
            raise ValueError(
                f"prompt_template must contain '{{question}}', got {self.prompt_template!r}"
            )
        check_float("heldout_fraction", self.heldout_fraction, 0.0, 1.0, hi_open=True)
        if self.heldout_size is not None:
            check_int("heldout_size", self.heldout_size, 0)
        check_float("timeout_s", self.timeout_s, 0.01, 600.0)

    def _split(self, rows: list[_Row]) -> tuple[tuple[_Row, ...], tuple[_Row, ...]]:
        distinct = len({row.question for row in rows})
        count = self.heldout_size
        if count is None:
            count = round(self.heldout_fraction * distinct)
        if count >= distinct:
            raise ValueError(
                f"math task: {self.path} has {distinct} distinct questions and {count} would be "
                "held out, leaving none to train on; lower heldout_size or heldout_fraction"
            )
        held: dict[str, _Row] = {}
        for row in sorted(rows, key=lambda row: (stable_unit(row.question), row.index)):
            if len(held) == count:
                break
            held.setdefault(row.question, row)
        # A question repeated in the file stays on one side of the split.
        train = tuple(row for row in rows if row.question not in held)
        return train, tuple(held.values())

    @property
    def num_train(self) -> int:
        return len(self._train)

    def _example(self, row: _Row) -> Example:
        return Example(
            prompt=self.prompt_template.replace("{question}", row.question),
            reference=row.answer,
            solution=row.solution,
            meta={"index": row.index},
        )

    def train_example(self, i: int) -> Example:
        i = check_int("i", i, 0)
        epoch, position = divmod(i, len(self._train))
        return self._example(
            self._train[_epoch_order(self.seed, epoch, len(self._train))[position]]
        )

    def heldout(self, n: int | None = None) -> list[Example]:
        """The first n held-out rows (all of them when n is None), in a fixed order."""
        rows = self._heldout if n is None else self._heldout[: check_int("n", n, 0)]
        return [self._example(row) for row in rows]

    def verify(self, completion: str, reference: str) -> float:
        """1.0 iff the last boxed / <answer> content equals `reference` per math_verify."""
        if not isinstance(completion, str) or not isinstance(reference, str):
            return 0.0
        if len(completion) > MAX_MATH_CHARS:
            return 0.0
        answer = extract_answer(completion)
        if answer is None:
            return 0.0
        try:
            correct = answers_match(answer, reference, self.timeout_s)
        except Exception:  # sympy raises a zoo of types on odd input; a reward must not
            correct = False
        return 1.0 if correct else self.format_reward


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"math/{seed}/{epoch}").shuffle(order)
    return tuple(order)


def _load_rows(
    path: str, question_field: str, answer_field: str, solution_field: str | None
) -> list[_Row]:
    file = Path(path)
    builder = _BUILDERS.get(file.suffix.lower())
    if builder is None:
        raise ValueError(
            f"math task: {path} must end in .jsonl, .json or .parquet (got {file.suffix!r})"
        )
    if not file.is_file():
        raise ValueError(f"math task: data file {path} does not exist; check path=")
    datasets = _datasets()
    try:
        table = datasets.load_dataset(builder, data_files=str(file), split="train")
    except Exception as err:
        bad = _first_bad_json_line(file) if file.suffix.lower() == ".jsonl" else None
        where = f" line {bad} is not a JSON object;" if bad else ""
        raise ValueError(
            f"math task: could not read {path}:{where} fix the file ({type(err).__name__}: {err})"
        ) from err
    fields = [question_field, answer_field] + ([solution_field] if solution_field else [])
    missing = [name for name in fields if name not in table.column_names]
    if missing:
        raise ValueError(
            f"math task: {path} has no field {missing[0]!r}; its fields are "
            f"{table.column_names}: set question_field/answer_field/solution_field to match"
        )
    questions, answers = table[question_field], table[answer_field]
    solutions = table[solution_field] if solution_field else [None] * len(questions)
    if not questions:
        raise ValueError(f"math task: {path} has no rows")
    rows = []
    for i, (question, answer, solution) in enumerate(
        zip(questions, answers, solutions, strict=True)
    ):
        where = f"math task: {path} row {i + 1}"
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        for name, value in ((question_field, question), (answer_field, answer)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: {name!r} is {value!r}; fix the row or drop it")
        if solution is not None and not isinstance(solution, str):
            raise ValueError(f"{where}: {solution_field!r} is {solution!r}; it must be text")
        rows.append(_Row(i, question, answer.strip(), solution or None))
    return rows


def _first_bad_json_line(file: Path) -> int | None:
    """1-based number of the first non-blank line that is not a JSON object (JSONL only)."""
    with file.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    return number
            except ValueError:
                return number
    return None


def _datasets():
    try:
        import datasets
    except ImportError as err:
        raise ImportError("the math task needs datasets: pip install 'drgrpo[math]'") from err
    return datasets
