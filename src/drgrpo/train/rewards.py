"""Scoring completions with a task's verifier, so that a faulty verifier never stops a run.

A verifier that raises scores 0; one that exceeds the time limit scores 0 too, and its worker
thread is abandoned (Python cannot kill a thread) while a fresh one takes over. Both are counted
and the completion is kept for the log, so a broken reward function is visible, not silent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field


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
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drgrpo-reward")

    def score(self, completions: list[str], references: list[str]) -> tuple[list[float], RewardFaults]:
        faults = RewardFaults()
        rewards = []
        for completion, reference in zip(completions, references, strict=True):
            rewards.append(self._score_one(completion, reference, faults))
        return rewards, faults

    def verify_one(self, completion: str, reference: str) -> float:
        """A drop-in `verify` with the same protection (for evaluation)."""
        return self._score_one(completion, reference, RewardFaults())

    def _score_one(self, completion: str, reference: str, faults: RewardFaults) -> float:
        future = self._pool.submit(self.verify, completion, reference)
        try:
            value = float(future.result(timeout=self.timeout_s))
        except FutureTimeout:
            faults.timeouts += 1
            self._note(faults, completion, reference, f"timed out after {self.timeout_s:g} s")
            # The stuck thread keeps running; later calls go to a new worker.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drgrpo-reward")
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

    @staticmethod
    def _note(faults: RewardFaults, completion: str, reference: str, what: str) -> None:
        if len(faults.examples) < 8:
            faults.examples.append({"completion": completion, "reference": reference, "fault": what})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
