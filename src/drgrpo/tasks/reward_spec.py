"""The reward spec: a plain JSON list of reward terms, saved in the run config with the task.

    task.options.rewards:
      - {fn: math_verify, correct: true}                    # a built-in grader decides correctness
      - {fn: "my_rewards.py:length_penalty", weight: 0.1, range: [-1, 0]}
      - {fn: "mypkg.rewards:style", weight: 0.5, name: style, isolate: true}

Keys of a term (only `fn` is required):
    fn        a built-in name (math_verify | boxed | answer_tag | format | task), an import path
              "pkg.module:function", or a file "path/to/file.py:function" (relative to the
              working directory, as written; the reward pool's workers load it the same way)
    weight    multiplies the term in the total reward (default 1.0)
    name      metric name, reward/<name>/mean (default: the function's name)
    correct   this term is the correctness check: a completion is correct iff the term's value
              equals the top of its range (True for a bool). Exactly one term has it.
    batched   the function takes (completions, examples) lists and returns a list; default:
              the function's own `batched` attribute, else False
    optional  None means "not applicable" (skipped in the sum, as in TRL); otherwise None is a
              fault. A dict return's None components are skipped likewise.
    range     [low, high]: a value outside it is a fault (default [0, 1])
    isolate   run in the reward pool's worker processes under a hard time limit (default: true
              for built-in graders, false for user functions; batched terms run in process)
    args      keyword arguments passed to the function (JSON values)

A function is called as fn(completion, example, **args) (or with lists when batched), where
`example` is `Example.reward_input()`: every dataset column plus prompt, messages, reference.
It returns a real number (bool, int, float), a dict of named components (each checked against
the range; the term's value is their sum; logged as reward/<name>/<key>/mean), or None.
The total is sum(weight * value) over the terms that apply.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BUILTIN_REWARDS = {
    "math_verify": "drgrpo.tasks.graders:math_verify_reward",
    "boxed": "drgrpo.tasks.graders:boxed_reward",
    "answer_tag": "drgrpo.tasks.graders:answer_tag_reward",
    "format": "drgrpo.tasks.graders:format_reward",
}
TASK_VERIFIER = "task"
"""The task's own `verify(completion, reference)`, run in process (it needs the task object)."""

_KEYS = ("fn", "weight", "name", "correct", "batched", "optional", "range", "isolate", "args")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_RESERVED = {"mean", "std", "faults", "errors", "timeouts", "bad_values", "total", "correct"}


@dataclass(frozen=True)
class RewardTerm:
    """One parsed entry of the spec (see the module docstring for each key)."""

    fn: str
    weight: float = 1.0
    name: str = ""
    correct: bool = False
    batched: bool | None = None
    optional: bool = False
    low: float = 0.0
    high: float = 1.0
    isolate: bool | None = None
    args: dict = field(default_factory=dict, hash=False)

    @property
    def builtin(self) -> bool:
        return self.fn in BUILTIN_REWARDS or self.fn == TASK_VERIFIER

    def to_dict(self) -> dict:
        """The JSON form, equal to what `parse_rewards` reads back."""
        out = {"fn": self.fn, "weight": self.weight, "name": self.name, "correct": self.correct,
               "optional": self.optional, "range": [self.low, self.high], "args": dict(self.args)}  # fmt: skip
        if self.batched is not None:
            out["batched"] = self.batched
        if self.isolate is not None:
            out["isolate"] = self.isolate
        return out


def parse_rewards(entries: object) -> tuple[RewardTerm, ...]:
    """The checked terms of a spec; a ValueError naming the entry, the key and the fix."""
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ValueError(
            f"rewards must be a non-empty list of {{fn: ..., weight: ...}} entries, got {entries!r}"
        )
    terms = tuple(_parse_term(i, entry) for i, entry in enumerate(entries))
    names = [t.name for t in terms]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ValueError(f"rewards: two terms are named {duplicate!r}; give each a distinct name")
    flagged = [t.name for t in terms if t.correct]
    if len(flagged) != 1:
        raise ValueError(
            "rewards: exactly one term must be the correctness check (correct: true), e.g. "
            f"{{fn: math_verify, correct: true}}; flagged: {flagged or 'none'}"
        )
    return terms


def _parse_term(i: int, entry: object) -> RewardTerm:
    where = f"rewards[{i}]"
    if isinstance(entry, str):
        entry = {"fn": entry}
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a dict like {{fn: 'file.py:fn'}}, got {entry!r}")
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(_KEYS)}")
    fn = entry.get("fn")
    if not isinstance(fn, str) or not (fn in BUILTIN_REWARDS or fn == TASK_VERIFIER or ":" in fn):
        raise ValueError(
            f"{where}.fn must be a built-in ({', '.join([*BUILTIN_REWARDS, TASK_VERIFIER])}), "
            f"'pkg.module:function' or 'path/file.py:function', got {fn!r}"
        )
    name = entry.get("name") or _default_name(fn)
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED:
        raise ValueError(f"{where}.name {name!r} must be a short identifier, not {_RESERVED}")
    low, high = _range(where, entry.get("range", [0.0, 1.0]))
    weight = entry.get("weight", 1.0)
    if not _real(weight):
        raise ValueError(f"{where}.weight must be a finite number, got {weight!r}")
    flags = {key: entry.get(key) for key in ("correct", "optional", "batched", "isolate")}
    for key, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{where}.{key} must be true or false, got {value!r}")
    args = entry.get("args", {})
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise ValueError(f"{where}.args must be a dict of keyword arguments, got {args!r}")
    return RewardTerm(
        fn=fn, weight=float(weight), name=name, correct=bool(flags["correct"]),
        batched=flags["batched"], optional=bool(flags["optional"]), low=low, high=high,
        isolate=flags["isolate"], args=dict(args),
    )  # fmt: skip


def _default_name(fn: str) -> str:
    return fn if ":" not in fn else fn.rsplit(":", 1)[1]


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _range(where: str, value: object) -> tuple[float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_real, value))
    if not ok or value[0] >= value[1]:
        raise ValueError(f"{where}.range must be [low, high] with low < high, got {value!r}")
    return float(value[0]), float(value[1])


def load_reward_function(fn: str) -> Callable:
    """The callable named by a term's `fn` (not "task"); a ValueError saying what is missing."""
    target = BUILTIN_REWARDS.get(fn, fn)
    module_part, _, attr = target.rpartition(":")
    if not module_part or not attr:
        raise ValueError(f"reward {fn!r}: expected 'module:function' or 'file.py:function'")
    if module_part.endswith(".py"):
        module = _load_file(module_part, fn)
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as err:
            raise ValueError(
                f"reward {fn!r}: cannot import {module_part!r} ({err}); is it on PYTHONPATH?"
            ) from err
    func = getattr(module, attr, None)
    if not callable(func):
        raise ValueError(f"reward {fn!r}: {module_part} has no function {attr!r}")
    return func


def _load_file(path: str, fn: str):
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ValueError(f"reward {fn!r}: no file {file} (a relative path is from the cwd)")
    # One module per file, under a name derived from its path, so that pickling by reference
    # works and a second load (another scorer, a pool worker) reuses it.
    digest = hashlib.blake2b(str(file).encode(), digest_size=6).hexdigest()
    name = f"drgrpo_reward_{re.sub(r'[^0-9a-zA-Z_]', '_', file.stem)}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ValueError(f"reward {fn!r}: importing {file} failed: {err!r}") from err
    return module


def is_batched(term: RewardTerm, func: Callable) -> bool:
    """The term's `batched` flag, else the function's own `batched` attribute."""
    return term.batched if term.batched is not None else bool(getattr(func, "batched", False))


def runs_isolated(term: RewardTerm, func: Callable) -> bool:
    """Whether the term goes to the reward pool (see `isolate` in the module docstring)."""
    if term.fn == TASK_VERIFIER or is_batched(term, func):
        if term.isolate:
            raise ValueError(
                f"reward {term.name!r}: isolate: true needs a per-example function given by "
                "import path or file (not 'task', not batched); drop isolate or change fn"
            )
        return False
    return term.isolate if term.isolate is not None else term.fn in BUILTIN_REWARDS
