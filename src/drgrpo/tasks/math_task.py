"""Problems from the user's data (`drgrpo.tasks.data`), scored by a grader or a reward spec.

    prompt     prompt_template with {question} replaced by the row's question (text rows), or
               the row's chat messages (`Example.messages`, rendered by the caller's template)
    reference  the row's answer, cut out by answer_format (e.g. GSM8K's "#### 42" -> "42")
    solution   the row's solution_field text, or None

Evaluation: the rows of `eval_path` (all, or the first `eval_limit`) when it is set; otherwise
the rows whose question hashes lowest, so the split survives reordering the file and does not
depend on the seed. The seed only orders the training rows, reshuffled each epoch.

Rewards: `rewards` (a spec, `drgrpo.tasks.reward_spec`) when set; otherwise the `grader` alone,
which is also the correctness check. A completion is correct iff the check scores 1.0, never
by a threshold: with format_reward=0.5 a well-formed wrong answer scores 0.5 and is not correct.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass, field
from typing import ClassVar

from drgrpo.tasks.base import Example, Task, check_common, check_float, check_int, stable_unit
from drgrpo.tasks.data import Columns, Row, read_rows
from drgrpo.tasks.graders import answer_tag_reward, boxed_reward, math_verify_reward
from drgrpo.tasks.math_grading import load_math_verify
from drgrpo.tasks.reward_spec import TASK_VERIFIER, load_reward_function, parse_rewards

GRADERS = ("math_verify", "boxed", "answer_tag")
_COLUMN_KNOBS = {"question_field": "question", "answer_field": "answer",
                 "solution_field": "solution", "id_field": "id", "source_field": "source",
                 "answer_format": "answer_format", "answer_regex": "answer_regex"}  # fmt: skip
"""Task knob -> `Columns` field; also the keys eval_fields may override."""


@dataclass(frozen=True)
class MathTask(Task):
    """Question/answer rows from the user's data; reward by a grader or a reward spec."""

    name: ClassVar[str] = "math"

    path: str
    """Training data: a .jsonl/.json/.parquet/.csv file, a save_to_disk folder, a folder of data
    files, or the name of a dataset in the local Hugging Face cache (read offline)."""
    split: str = "train"
    """Split to read when `path` holds several (a DatasetDict folder, a cached dataset)."""
    subset: str | None = None
    """Configuration of a cached or folder dataset with several (e.g. GSM8K's "main")."""
    question_field: str = "problem"
    """Column holding the question: text, or chat messages (a list of {role, content})."""
    answer_field: str = "answer"
    """Column holding the reference answer (text or a number), see answer_format."""
    answer_format: str = "none"
    """How the reference is cut out of answer_field: none | gsm8k | boxed | answer_tag | regex."""
    answer_regex: str | None = None
    """With answer_format=regex: a regex with one group around the answer (last match wins)."""
    solution_field: str | None = None
    """Column holding a worked solution used as the SFT target; None if there is none."""
    id_field: str | None = None
    """Column holding a row id (kept in meta["id"] and in logs); None to use the row number."""
    source_field: str | None = None
    """Column naming the row's source (e.g. the benchmark), for per-source evaluation."""
    eval_path: str | None = None
    """Separate evaluation data (same forms as path); None to hold out part of `path`."""
    eval_split: str = "train"
    """Split of eval_path to read when it holds several (e.g. "test")."""
    eval_limit: int | None = None
    """Evaluate only the first eval_limit rows of eval_path; None for all of them."""
    eval_fields: dict | None = field(default=None, hash=False)
    """Column mapping of eval_path where it differs from the training data's, e.g.
    {question_field: question, answer_format: gsm8k}; None to use the same mapping."""
    cache_dir: str | None = None
    """Hugging Face hub cache to read dataset names from; None for the default (~/.cache)."""
    prompt_template: str = "{question}"
    """Prompt text; `{question}` is replaced literally, other braces (e.g. \\boxed{}) are kept.
    Chat-message questions take no template (put instructions in a system message)."""
    heldout_fraction: float = 0.1
    """Share of distinct questions held out for evaluation (ignored if heldout_size or
    eval_path is set)."""
    heldout_size: int | None = None
    """Exact number of distinct questions held out; None to use heldout_fraction."""
    seed: int = 0
    """Seed of the per-epoch shuffle of the training rows."""
    timeout_s: float = 1.0
    """Time limit of math-verify for one answer (main thread: SIGALRM; the reward pool adds a
    hard limit that kills a stuck worker)."""
    grader: str = "math_verify"
    """Built-in grader when `rewards` is not set: math_verify | boxed | answer_tag (the paper's)."""
    format_reward: float = 0.0
    """math_verify grader only: reward for a non-empty final answer that is wrong (paper: 0)."""
    rewards: list | None = field(default=None, hash=False)
    """Reward spec (drgrpo.tasks.reward_spec): a list of {fn, weight, name, correct, ...};
    None for the grader alone."""

    _train: tuple[Row, ...] = field(init=False, repr=False, compare=False)
    _heldout: tuple[Row, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._check_knobs()
        check_common(self)
        # Fail at construction, before any model is loaded: a bad spec, a reward function that
        # does not import, a missing extra.
        for term in parse_rewards(self.reward_spec()):
            if term.fn != TASK_VERIFIER:
                load_reward_function(term.fn)
        load_math_verify()
        columns = self._columns()
        rows = read_rows(
            self.path, columns, split=self.split, subset=self.subset, cache_dir=self.cache_dir
        )
        if self.eval_path is None:
            train, heldout = self._split(rows)
        else:
            eval_columns = self._columns(self.eval_fields)
            heldout = tuple(read_rows(
                self.eval_path, eval_columns, split=self.eval_split, subset=self.subset,
                limit=self.eval_limit, cache_dir=self.cache_dir,
            ))  # fmt: skip
            train = tuple(rows)
        if self.prompt_template != "{question}":
            chat = next((r for r in (*train, *heldout) if not isinstance(r.question, str)), None)
            if chat is not None:
                raise ValueError(
                    f"math task: row {chat.index + 1} has chat messages, which take no "
                    "prompt_template; drop prompt_template or put it in a system message"
                )
        object.__setattr__(self, "_train", train)
        object.__setattr__(self, "_heldout", heldout)

    def _columns(self, overrides: dict | None = None) -> Columns:
        kwargs = {role: getattr(self, knob) for knob, role in _COLUMN_KNOBS.items()}
        kwargs.update({_COLUMN_KNOBS[knob]: value for knob, value in (overrides or {}).items()})
        return Columns(**kwargs)

    def _check_knobs(self) -> None:
        for knob in ("path", "split", "eval_split"):
            if not isinstance(getattr(self, knob), str) or not getattr(self, knob):
                raise ValueError(f"{knob} must be a non-empty string, got {getattr(self, knob)!r}")
        if not isinstance(self.prompt_template, str) or "{question}" not in self.prompt_template:
            raise ValueError(
                f"prompt_template must contain '{{question}}', got {self.prompt_template!r}"
            )
        check_float("heldout_fraction", self.heldout_fraction, 0.0, 1.0, hi_open=True)
        if self.heldout_size is not None:
            check_int("heldout_size", self.heldout_size, 0)
        if self.eval_limit is not None:
            check_int("eval_limit", self.eval_limit, 1)
        if self.eval_path is None and (self.eval_limit is not None or self.eval_fields):
            raise ValueError("eval_limit and eval_fields apply to eval_path; set eval_path too")
        if self.eval_fields is not None:
            if not isinstance(self.eval_fields, dict):
                raise ValueError(f"eval_fields must be a dict, got {self.eval_fields!r}")
            unknown = sorted(set(self.eval_fields) - set(_COLUMN_KNOBS))
            if unknown:
                raise ValueError(
                    f"eval_fields: unknown key {unknown[0]!r}; valid: {', '.join(_COLUMN_KNOBS)}"
                )
        check_float("timeout_s", self.timeout_s, 0.01, 600.0)
        if self.grader not in GRADERS:
            raise ValueError(f"grader must be one of {', '.join(GRADERS)}, got {self.grader!r}")
        if self.format_reward and (self.rewards is not None or self.grader != "math_verify"):
            raise ValueError(
                "format_reward belongs to the math_verify grader alone; with rewards=[...] or "
                "another grader add a term instead: {fn: format, weight: 0.1}"
            )

    def reward_spec(self) -> list[dict]:
        if self.rewards is not None:
            return list(self.rewards)
        args = {"timeout_s": self.timeout_s}
        if self.grader == "math_verify":
            args["format_reward"] = self.format_reward
        return [{"fn": self.grader, "name": "correct_" + self.grader, "correct": True,
                 "args": args}]  # fmt: skip

    def _split(self, rows: list[Row]) -> tuple[tuple[Row, ...], tuple[Row, ...]]:
        keys = [_question_key(row) for row in rows]
        distinct = len(set(keys))
        count = self.heldout_size
        if count is None:
            count = round(self.heldout_fraction * distinct)
        if count >= distinct:
            raise ValueError(
                f"math task: {self.path} has {distinct} distinct questions and {count} would be "
                "held out, leaving none to train on; lower heldout_size or heldout_fraction"
            )
        held: dict[str, Row] = {}
        ranked = sorted(zip(keys, rows, strict=True), key=lambda p: (stable_unit(p[0]), p[1].index))
        for key, row in ranked:
            if len(held) == count:
                break
            held.setdefault(key, row)
        # A question repeated in the file stays on one side of the split.
        train = tuple(row for key, row in zip(keys, rows, strict=True) if key not in held)
        return train, tuple(held.values())

    @property
    def num_train(self) -> int:
        return len(self._train)

    def _example(self, row: Row) -> Example:
        meta = {"index": row.index}
        meta.update({k: v for k, v in (("id", row.id), ("source", row.source)) if v is not None})
        if isinstance(row.question, str):
            prompt, messages = self.prompt_template.replace("{question}", row.question), None
        else:
            messages = row.question
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return Example(prompt=prompt, reference=row.answer, solution=row.solution, meta=meta,
                       messages=messages, row=row.columns)  # fmt: skip

    def train_example(self, i: int) -> Example:
        i = check_int("i", i, 0)
        epoch, position = divmod(i, len(self._train))
        return self._example(
            self._train[_epoch_order(self.seed, epoch, len(self._train))[position]]
        )

    def heldout(self, n: int | None = None) -> list[Example]:
        """The first n evaluation rows (all of them when n is None), in a fixed order."""
        rows = self._heldout if n is None else self._heldout[: check_int("n", n, 0)]
        return [self._example(row) for row in rows]

    def verify(self, completion: str, reference: str) -> float:
        """The grader's reward for `completion` against `reference` (1.0 iff correct)."""
        if not isinstance(reference, str):
            return 0.0
        example = {"reference": reference}
        if self.grader == "boxed":
            return boxed_reward(completion, example, self.timeout_s)
        if self.grader == "answer_tag":
            return answer_tag_reward(completion, example, self.timeout_s)
        return math_verify_reward(completion, example, self.format_reward, self.timeout_s)


def _question_key(row: Row) -> str:
    return row.question if isinstance(row.question, str) else json.dumps(row.question)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"math/{seed}/{epoch}").shuffle(order)
    return tuple(order)
