"""A verifier that raises, hangs, or returns garbage scores 0 and is counted; good ones pass."""

from __future__ import annotations

import threading
import time

import pytest

from drgrpo.tasks import make_task
from drgrpo.tasks.scoring import RewardScorer


def flaky(completion: str, reference: str) -> float:
    if completion == "raise":
        raise KeyError("boom")
    if completion == "hang":
        while True:  # a pure-Python infinite loop: only a timer can stop it here
            pass
    if completion == "swallow":
        try:
            time.sleep(10)
        except Exception:  # a verifier's never-raise guard must not swallow the time-out
            return 1.0
    if completion == "nan":
        return float("nan")
    return 1.0 if completion == reference else 0.0


@pytest.mark.parametrize("in_thread", [False, True])
def test_faults_score_zero_and_are_counted(in_thread):
    scorer = RewardScorer(flaky, timeout_s=0.2)
    completions = ["7", "raise", "hang" if not in_thread else "swallow", "nan", "8", "swallow"]
    result = {}

    def go():
        result["out"] = scorer.score(completions, ["7"] * len(completions))

    start = time.perf_counter()
    if in_thread:
        t = threading.Thread(target=go)
        t.start()
        t.join()
    else:
        go()
    rewards, faults = result["out"]
    assert rewards == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert faults.errors == 2 and faults.timeouts == 2
    assert time.perf_counter() - start < 3  # two time-outs of 0.2 s, not 10 s sleeps
    assert {f["fault"].split(":")[0] for f in faults.examples} >= {
        "KeyError",
        "non-finite reward nan",
    }
    scorer.close()


def test_builtin_verifier_through_the_scorer():
    task = make_task("arithmetic")
    ex = task.heldout(1)[0]
    scorer = RewardScorer(task.verify, timeout_s=1.0)
    rewards, faults = scorer.score([ex.solution, "answer: -1"], [ex.reference] * 2)
    assert rewards == [1.0, 0.0] and faults.errors == faults.timeouts == 0
