"""Scoring completions with a task's verifier, so that a faulty verifier never stops a run.

A verifier that raises scores 0; one that exceeds the time limit scores 0 too. Both are counted
and the completion is kept for the log, so a broken reward function is visible, not silent.

The time limit is a SIGALRM timer when scoring runs in the main thread (the normal case; it
repeats until the verifier gives up, see `drgrpo.tasks.deadline`): the verifier runs in place,
so verifiers that set their own alarm-based deadlines (the math task's) keep working. Elsewhere
(a worker thread, or a platform without setitimer) the call runs in a helper thread that is
abandoned on time-out, since Python cannot kill a thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from drgrpo.tasks.deadline import can_use_alarm, time_limit

CORRECT_THRESHOLD = 0.5
"""Until verifiers report correctness themselves, a reward at or above this counts as correct
(accuracy's length split, pass@k, the SFT checks). Written here only: `is_correct`."""


def is_correct(reward: float) -> bool:
    """The one correctness rule of training metrics, evaluation and SFT checks."""
    return reward >= CORRECT_THRESHOLD


class RewardTimeout(BaseException):
    """Raised inside a verifier when its time is up. A BaseException, so that a verifier's own
    `except Exception` (the usual never-raise guard) cannot swallow it."""


@dataclass
class RewardFaults:
    errors: int = 0
    timeouts: int = 0
    examples: list[dict] = field(default_factory=list)
    """A few faulty completions with what went wrong, for the run's reward_faults.jsonl."""


class RewardScorer:
    def __init__(self, verify: Callable[[str, str], float], timeout_s: float) -> None:
        self.verify = verify
        self.timeout_s = timeout_s
        self._pool: ThreadPoolExecutor | None = None

    def score(
        self, completions: list[str], references: list[str]
    ) -> tuple[list[float], RewardFaults]:
        faults = RewardFaults()
        rewards = [
            self._score_one(completion, reference, faults)
            for completion, reference in zip(completions, references, strict=True)
        ]
        return rewards, faults

    def verify_one(self, completion: str, reference: str) -> float:
        """A drop-in `verify` with the same protection (for evaluation)."""
        return self._score_one(completion, reference, RewardFaults())

    def _score_one(self, completion: str, reference: str, faults: RewardFaults) -> float:
        try:
            value = float(self._call(completion, reference))
        except RewardTimeout:
            faults.timeouts += 1
            self._note(faults, completion, reference, f"timed out after {self.timeout_s:g} s")
            return 0.0
        except Exception as e:  # noqa: BLE001 - any verifier bug scores 0 and is reported
            faults.errors += 1
            self._note(faults, completion, reference, f"{type(e).__name__}: {e}")
            return 0.0
        if not math.isfinite(value):
            faults.errors += 1
            self._note(faults, completion, reference, f"non-finite reward {value}")
            return 0.0
        return value

    def _call(self, completion: str, reference: str) -> float:
        if can_use_alarm():
            with time_limit(self.timeout_s, RewardTimeout):
                return self.verify(completion, reference)
        return self._call_in_thread(completion, reference)

    def _call_in_thread(self, completion: str, reference: str) -> float:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drgrpo-reward")
        future = self._pool.submit(self.verify, completion, reference)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            # The stuck thread keeps running; later calls go to a new worker.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            raise RewardTimeout from None

    @staticmethod
    def _note(faults: RewardFaults, completion: str, reference: str, what: str) -> None:
        if len(faults.examples) < 8:
            faults.examples.append(
                {"completion": completion, "reference": reference, "fault": what}
            )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
