"""Scoring completions with a reward spec, honestly: a faulty reward never stops a step silently
and never reaches the advantages as garbage.

Each term of the spec (`drgrpo.tasks.reward_spec`) is called per completion (or once per
batch). A call is a fault when it raises, runs past the limit, or returns anything but a real
number in the term's range (bool, int, float; True is 1.0): a str ("1.0" is not 1.0), None
(unless the term is optional), a list, NaN, inf, 7 in [0, 1]. A fault scores 0, is counted
per term and kept with its offending value for reward_faults.jsonl, and scoring goes on.
`RewardFaults.check` then turns a broken reward into a `RewardHealthError` that names it:
every call of a term faulted, or the faults passed `max_fault_fraction`.

The total is sum(weight * value) over the terms that apply; `correct` is the correctness
term's verdict (its value equals the top of its range), never a threshold on the total.

Isolation: terms marked `isolate` (the built-in graders by default) run in a `RewardPool` of
worker processes whose hard per-call limit kills a stuck call. The other terms run in process
under a SIGALRM deadline (`drgrpo.tasks.deadline`), which stops Python code but neither a long
C call nor a function that swallows BaseException in a loop: that is why the graders go to the
pool. Off the main thread (no SIGALRM) an in-process call runs in a daemon thread that is
abandoned on time-out (it may keep a core busy: prefer the pool there). Batched terms always run in process, with timeout_s per completion.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from drgrpo.tasks.deadline import can_use_alarm, time_limit
from drgrpo.tasks.reward_pool import RewardPool
from drgrpo.tasks.reward_spec import (
    TASK_VERIFIER,
    RewardTerm,
    is_batched,
    load_reward_function,
    parse_rewards,
    runs_isolated,
)

DEFAULT_TIMEOUT_S = 1.0
"""Hard limit per reward call (per completion for batched terms)."""
MAX_FAULT_EXAMPLES = 8
"""Faulty calls kept per step for reward_faults.jsonl."""


class RewardTimeout(BaseException):
    """Raised inside an in-process reward when its time is up. A BaseException, so that a
    reward's own `except Exception` (the usual never-raise guard) cannot swallow it."""


class RewardHealthError(RuntimeError):
    """The rewards of a step are mostly or entirely faults: the reward function is broken."""


@dataclass
class RewardFaults:
    errors: int = 0
    """Calls that raised."""
    timeouts: int = 0
    """Calls that ran past the limit (killed, in the pool)."""
    bad_values: int = 0
    """Calls that returned a non-number, NaN/inf, an unexpected None, or an out-of-range value."""
    calls: dict[str, int] = field(default_factory=dict)
    """Calls per term name."""
    by_reward: dict[str, int] = field(default_factory=dict)
    """Faults per term name."""
    examples: list[dict] = field(default_factory=list)
    """A few faulty calls: reward, fn, fault, value, completion, reference."""

    @property
    def total(self) -> int:
        return self.errors + self.timeouts + self.bad_values

    def metrics(self) -> dict:
        return {"reward/faults": self.total, "reward/errors": self.errors,
                "reward/timeouts": self.timeouts, "reward/bad_values": self.bad_values}  # fmt: skip

    def check(self, max_fault_fraction: float = 0.5) -> None:
        """RewardHealthError when every call of a term faulted, or more than
        `max_fault_fraction` of a term's calls did; the message names the term and values."""
        for name, calls in self.calls.items():
            faulted = self.by_reward.get(name, 0)
            if calls and (faulted == calls or faulted > max_fault_fraction * calls):
                seen = [e for e in self.examples if e["reward"] == name][:3]
                fn = seen[0]["fn"] if seen else "?"
                detail = "; ".join(
                    f"{e['fault']} (completion {e['completion'][:60]!r})" for e in seen
                )
                share = "every call" if faulted == calls else f"{faulted} of {calls} calls"
                raise RewardHealthError(
                    f"reward {name!r} ({fn}) faulted on {share} of this step: {detail}. "
                    "A reward must return a real number (bool, int or float) in its declared "
                    "range; fix the function or its range, or raise "
                    "rollout.max_reward_fault_fraction."
                )

    def _add(self, kind: str, term: RewardTerm, fault: str, value, completion, example) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.by_reward[term.name] = self.by_reward.get(term.name, 0) + 1
        if len(self.examples) < MAX_FAULT_EXAMPLES:
            self.examples.append({
                "reward": term.name, "fn": term.fn, "fault": fault, "value": _short(value),
                "completion": completion if isinstance(completion, str) else repr(completion),
                "reference": example.get("reference"),
            })  # fmt: skip


@dataclass
class Graded:
    rewards: list[float]
    """(N,) total reward per completion."""
    correct: list[bool]
    """(N,) the correctness term's verdict."""
    components: dict[str, list[float | None]]
    """Per term (and term/key for dict returns): (N,) values, None where not applicable."""
    faults: RewardFaults

    def metrics(self) -> dict:
        """reward/<name>/mean for every component (over the completions it applied to), and
        the fault counts."""
        out = {}
        for name, values in self.components.items():
            seen = [v for v in values if v is not None]
            out[f"reward/{name}/mean"] = sum(seen) / len(seen) if seen else None
        return out | self.faults.metrics()


def check_value(value: object, term: RewardTerm) -> tuple[float | dict | None, str | None]:
    """(value as float, or dict of floats, or None; fault message or None)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                return None, f"returned a dict with key {key!r}; component names must be str"
            out[key], fault = check_value(item, term)
            if fault:
                return None, f"component {key!r}: {fault}"
        return out, None
    if value is None:
        return (
            None,
            None
            if term.optional
            else "returned None (declare optional: true if None means not applicable)",
        )
    if isinstance(value, str) or not isinstance(value, numbers.Real):
        return (
            None,
            f"returned {type(value).__name__} {_short(value)}; a reward must be a real number (bool, int or float)",
        )
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError) as err:
        return None, f"returned {_short(value)}, not convertible to float ({err})"
    if not math.isfinite(number):
        return None, f"returned non-finite {number}"
    if not term.low <= number <= term.high:
        return (
            None,
            f"returned {number!r}, outside its declared range [{term.low:g}, {term.high:g}]",
        )
    return number, None


@dataclass
class _Term:
    term: RewardTerm
    func: Callable
    batched: bool
    isolated: bool
    pool_index: int | None = None


class RewardScorer:
    """Scores completions with a reward spec; `RewardScorer(verify, timeout_s)` keeps the old
    single-verifier form (`verify(completion, reference) -> float`, correct iff 1.0)."""

    def __init__(
        self,
        verify: Callable[[str, str], float] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        spec: Sequence[dict] | None = None,
        task: object | None = None,
        workers: int | None = None,
        isolate: bool = True,
    ) -> None:
        """`spec`: the reward terms (default: the task's `reward_spec()`, else `verify` alone);
        `task`: what fn "task" calls; `workers`: pool size (default every core); `isolate`:
        False runs every term in process (where no worker process can be started)."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        if spec is None:
            spec = (
                task.reward_spec()
                if task is not None
                else [{"fn": TASK_VERIFIER, "name": "verifier", "correct": True}]
            )
        if task is None and verify is not None:
            task = _VerifyAdapter(verify)
        self.terms = [self._resolve(term, task, isolate) for term in parse_rewards(spec)]
        isolated = [t for t in self.terms if t.isolated]
        for index, t in enumerate(isolated):
            t.pool_index = index
        self._pool = (
            RewardPool([(t.term.fn, t.term.args) for t in isolated], workers) if isolated else None
        )

    @classmethod
    def for_task(cls, task, timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs) -> RewardScorer:
        """The scorer of `task`'s reward spec (train, eval and the SFT checks share this)."""
        return cls(timeout_s=timeout_s, task=task, **kwargs)

    @staticmethod
    def _resolve(term: RewardTerm, task, isolate: bool) -> _Term:
        if term.fn == TASK_VERIFIER:
            if task is None:
                raise ValueError("reward fn 'task' needs the task: RewardScorer(task=...)")
            verify = task.verify
            func = lambda completion, example: verify(completion, example.get("reference"))  # noqa: E731
        else:
            func = load_reward_function(term.fn)
        return _Term(term, func, is_batched(term, func), isolate and runs_isolated(term, func))

    # --- scoring ------------------------------------------------------------------------
    def grade(self, completions: Sequence[str], examples: Sequence) -> Graded:
        """Score N completions; examples[i] (an `Example` or its `reward_input()` dict) is the
        problem of completions[i]."""
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
        inputs = [ex.reward_input() if hasattr(ex, "reward_input") else dict(ex) for ex in examples]
        faults = RewardFaults()
        raw = self._call_all(list(completions), inputs, faults)
        n = len(completions)
        totals, correct = [0.0] * n, [False] * n
        components: dict[str, list[float | None]] = {}
        for t, outcomes in zip(self.terms, raw, strict=True):
            faults.calls[t.term.name] = faults.calls.get(t.term.name, 0) + n
            column = components.setdefault(t.term.name, [None] * n)
            for i, (kind, value) in enumerate(outcomes):
                score = self._settle(t.term, kind, value, completions[i], inputs[i], faults)
                if isinstance(score, dict):
                    for key, part in score.items():
                        components.setdefault(f"{t.term.name}/{key}", [None] * n)[i] = part
                    parts = [p for p in score.values() if p is not None]
                    score = sum(parts) if parts else None
                column[i] = score
                if score is not None:
                    totals[i] += t.term.weight * score
                if t.term.correct:
                    correct[i] = score is not None and score == t.term.high
        return Graded(totals, correct, components, faults)

    def _settle(self, term, kind, value, completion, example, faults):
        if kind == "timeout":
            faults._add(
                "timeouts", term, f"timed out after {self.timeout_s:g} s", None, completion, example
            )
            return 0.0
        if kind == "error":
            faults._add("errors", term, str(value), None, completion, example)
            return 0.0
        checked, fault = check_value(value, term)
        if fault:
            faults._add("bad_values", term, fault, value, completion, example)
            return 0.0
        return checked

    def _call_all(self, completions, inputs, faults) -> list[list[tuple[str, object]]]:
        """Outcomes per term, per completion: (kind, value) as in `RewardPool.run`."""
        out: list = [None] * len(self.terms)
        calls = [
            (t.pool_index, c, ex)
            for t in self.terms
            if t.isolated
            for c, ex in zip(completions, inputs, strict=True)
        ]
        if calls:
            pooled = self._pool.run(calls, self.timeout_s)
            n = len(completions)
            for t in self.terms:
                if t.isolated:
                    out[self.terms.index(t)] = pooled[t.pool_index * n : (t.pool_index + 1) * n]
        for index, t in enumerate(self.terms):
            if t.isolated:
                continue
            if t.batched:
                out[index] = self._call_batched(t, completions, inputs)
            else:
                out[index] = [self._call_inline(t.func, t.term.args, c, ex, self.timeout_s)
                              for c, ex in zip(completions, inputs, strict=True)]  # fmt: skip
        return out

    def _call_batched(self, t: _Term, completions, inputs) -> list[tuple[str, object]]:
        n = len(completions)
        kind, values = self._call_inline(
            t.func, t.term.args, completions, inputs, self.timeout_s * max(n, 1)
        )
        if kind != "ok":
            return [(kind, values)] * n
        if not isinstance(values, (list, tuple)) or len(values) != n:
            got = (
                f"{type(values).__name__} of length {len(values)}"
                if isinstance(values, (list, tuple))
                else _short(values)
            )
            return [("error", f"batched reward returned {got}, expected a list of {n} values")] * n
        return [("ok", v) for v in values]

    def _call_inline(self, func, args, completion, example, limit_s) -> tuple[str, object]:
        try:
            if can_use_alarm():
                with time_limit(limit_s, RewardTimeout):
                    return "ok", func(completion, example, **args)
            return "ok", self._call_in_thread(func, args, completion, example, limit_s)
        except RewardTimeout:
            return "timeout", None
        except Exception as err:  # noqa: BLE001 - any reward bug scores 0 and is reported
            return "error", f"{type(err).__name__}: {err}"

    @staticmethod
    def _call_in_thread(func, args, completion, example, limit_s):
        # A daemon thread per call: a stuck one is abandoned (Python cannot kill a thread) and,
        # being a daemon, does not hold the interpreter open at exit.
        box: dict = {}

        def target() -> None:
            try:
                box["value"] = func(completion, example, **args)
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller
                box["error"] = err

        thread = threading.Thread(target=target, name="drgrpo-reward", daemon=True)
        thread.start()
        thread.join(limit_s)
        if thread.is_alive():
            raise RewardTimeout
        if "error" in box:
            raise box["error"]
        return box["value"]

    # --- the single-verifier form, kept for existing callers ----------------------------
    def score(
        self, completions: list[str], references: list[str]
    ) -> tuple[list[float], RewardFaults]:
        """(rewards, faults) against bare references (prefer `grade` with examples)."""
        graded = self.grade(completions, [{"reference": r} for r in references])
        return graded.rewards, graded.faults

    def verify_one(self, completion: str, reference: str) -> float:
        """A drop-in `verify` with the same protection (for evaluation)."""
        return self.score([completion], [reference])[0][0]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


class _VerifyAdapter:
    """A bare verify callable seen as a task (for fn "task")."""

    def __init__(self, verify: Callable[[str, str], float]) -> None:
        self.verify = verify


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
