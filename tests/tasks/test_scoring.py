"""Honest rewards: the fault table (each fault scores 0, is counted and named, scoring goes on),
the health check, weights, components, batched and optional terms, the correctness rule, and
the reward pool that kills what a signal cannot stop."""

from __future__ import annotations

import threading
import time

import pytest

from drgrpo.tasks import MathTask, make_task
from drgrpo.tasks.reward_pool import RewardPool, RewardPoolError
from drgrpo.tasks.scoring import RewardHealthError, RewardScorer, check_value

REWARDS = """
import time

def exact(completion, example):
    return completion.strip() == example["reference"]

def as_str(completion, example):
    return "1.0"

def as_none(completion, example):
    return None

def as_nan(completion, example):
    return float("nan")

def as_inf(completion, example):
    return float("inf")

def too_big(completion, example):
    return 7

def as_list(completion, example):
    return [1.0]

def raises(completion, example):
    raise KeyError("boom")

def hangs(completion, example):
    while True:
        pass

def sleeps(completion, example):
    time.sleep(3)  # releases the GIL: an abandoned thread does not slow the tests after it
    return 1.0

def swallows(completion, example):
    while True:  # catches every alarm a deadline sends
        try:
            time.sleep(1)
        except BaseException:
            pass

def c_call(completion, example):
    base = len(completion) + 9  # not a literal: the compiler must not fold it
    return float(pow(base, base ** base) > 0)  # one C call that runs for minutes

def exits(completion, example):
    import os
    os._exit(3)

def length_penalty(completion, example):
    return -min(len(completion), 10) / 10

def parts(completion, example):
    return {"digit": float(any(c.isdigit() for c in completion)), "short": len(completion) < 3}

def topic(completion, example):
    return None if example["topic"] != "algebra" else float(example["topic"] in completion)

def lengths(completions, examples):
    return [len(c) / 10 for c in completions]
lengths.batched = True

def short_batch(completions, examples):
    return [0.0]
short_batch.batched = True
"""

# fault name -> (fault kind, text the fault message holds)
FAULTS = {
    "as_str": ("bad_values", "returned str '1.0'; a reward must be a real number"),
    "as_none": ("bad_values", "returned None (declare optional: true"),
    "as_nan": ("bad_values", "returned non-finite nan"),
    "as_inf": ("bad_values", "returned non-finite inf"),
    "too_big": ("bad_values", "returned 7.0, outside its declared range [0, 1]"),
    "as_list": ("bad_values", "returned list [1.0]"),
    "raises": ("errors", "KeyError: 'boom'"),
    "hangs": ("timeouts", "timed out after 0.3 s"),
    "swallows": ("timeouts", "timed out after 0.3 s"),
    "c_call": ("timeouts", "timed out after 0.3 s"),
}
NOT_STOPPABLE_IN_PROCESS = {"swallows", "c_call"}  # only killing the process stops these


@pytest.fixture
def rewards_file(tmp_path):
    path = tmp_path / "user_rewards.py"
    path.write_text(REWARDS)
    return str(path)


def spec(rewards_file, *names, isolate=False, **extra):
    terms = [{"fn": f"{rewards_file}:exact", "correct": True}]
    terms += [{"fn": f"{rewards_file}:{name}", "isolate": isolate, **extra} for name in names]
    return terms


EXAMPLES = [{"reference": "7", "topic": "algebra"}, {"reference": "7", "topic": "geometry"}]


@pytest.mark.timeout(60)
def test_fault_table_in_the_pool(rewards_file):
    scorer = RewardScorer(spec=spec(rewards_file, *FAULTS, isolate=True), timeout_s=0.3, workers=2)
    try:
        start = time.monotonic()
        graded = scorer.grade(["7", "8"], EXAMPLES)
        elapsed = time.monotonic() - start
        # The good term still scores: "7" is right, "8" wrong; every faulty term adds 0.
        assert graded.rewards == [1.0, 0.0] and graded.correct == [True, False]
        for name in FAULTS:
            assert graded.components[name] == [0.0, 0.0], name
            assert graded.faults.by_reward[name] == 2, name
        faults = graded.faults
        assert (faults.bad_values, faults.errors, faults.timeouts) == (12, 2, 6)
        assert scorer._pool.killed == 6  # each timed-out call killed its worker
        assert elapsed < 6 * 0.3 / 2 + 4.0  # 6 kills of 0.3 s on 2 workers, plus scheduling
        # The pool keeps working after the kills.
        assert scorer.grade(["7"], EXAMPLES[:1]).rewards == [1.0]
    finally:
        scorer.close()


@pytest.mark.parametrize("name", sorted(set(FAULTS) - NOT_STOPPABLE_IN_PROCESS))
def test_fault_table_in_process(rewards_file, name):
    kind, text = FAULTS[name]
    scorer = RewardScorer(spec=spec(rewards_file, name), timeout_s=0.3)
    graded = scorer.grade(["7", "8"], EXAMPLES)
    assert graded.rewards == [1.0, 0.0] and graded.components[name] == [0.0, 0.0]
    assert getattr(graded.faults, kind) == 2 and graded.faults.total == 2
    logged = [e for e in graded.faults.examples if e["reward"] == name]
    assert len(logged) == 2 and text in logged[0]["fault"], logged[0]
    assert logged[0]["fn"].endswith(f"user_rewards.py:{name}")
    scorer.close()


def test_all_faults_raise_the_health_error_naming_the_function(rewards_file):
    scorer = RewardScorer(spec=spec(rewards_file, "as_str"), timeout_s=0.3)
    graded = scorer.grade(["7", "8", "9"], EXAMPLES + EXAMPLES[:1])
    with pytest.raises(RewardHealthError) as err:
        graded.faults.check()
    message = str(err.value)
    assert "reward 'as_str'" in message and "user_rewards.py:as_str" in message
    assert "faulted on every call" in message and "returned str '1.0'" in message
    assert "learning rate" not in message


def test_health_threshold_counts_per_term():
    calls = {"n": 0}

    def sometimes(completion, reference):
        calls["n"] += 1
        return "bad" if calls["n"] <= 2 else 1.0

    graded = RewardScorer(sometimes).grade(["a"] * 4, [{"reference": "a"}] * 4)
    assert graded.faults.by_reward == {"verifier": 2} and graded.rewards == [0.0, 0.0, 1.0, 1.0]
    graded.faults.check(max_fault_fraction=0.5)  # 2 of 4 is not above one half
    with pytest.raises(RewardHealthError, match="2 of 4 calls"):
        graded.faults.check(max_fault_fraction=0.25)


def test_weights_components_optional_and_batched(rewards_file):
    terms = [
        {"fn": f"{rewards_file}:exact", "correct": True, "weight": 2.0},
        {"fn": f"{rewards_file}:length_penalty", "weight": 0.5, "range": [-1, 0]},
        {"fn": f"{rewards_file}:parts", "weight": 1.0, "range": [0, 1]},
        {"fn": f"{rewards_file}:topic", "optional": True},
        {"fn": f"{rewards_file}:lengths", "weight": 1.0, "range": [0, 10]},
    ]
    graded = RewardScorer(spec=terms).grade(["7", "algebra 8"], EXAMPLES)
    # "7" (algebra):        2*1 + 0.5*(-0.1) + (digit 1 + short 1) + topic 0 + len 0.1 = 4.05
    # "algebra 8" (geom.):  2*0 + 0.5*(-0.9) + (digit 1 + short 0) + n/a      + len 0.9 = 1.45
    assert graded.rewards == pytest.approx([4.05, 1.45], abs=1e-12)
    assert graded.correct == [True, False]
    assert graded.components["parts/digit"] == [1.0, 1.0]
    assert graded.components["parts/short"] == [1.0, 0.0]
    assert graded.components["topic"] == [0.0, None]  # None: not applicable, not a fault
    assert graded.faults.total == 0
    metrics = graded.metrics()
    assert metrics["reward/topic/mean"] == 0.0 and metrics["reward/parts/short/mean"] == 0.5
    assert metrics["reward/length_penalty/mean"] == pytest.approx(-0.5, abs=1e-12)


def test_a_batched_reward_of_the_wrong_length_faults_every_row(rewards_file):
    graded = RewardScorer(spec=spec(rewards_file, "short_batch")).grade(["7", "8"], EXAMPLES)
    assert (
        graded.faults.errors == 2
        and "expected a list of 2 values" in graded.faults.examples[0]["fault"]
    )


def test_a_wrong_answer_with_a_format_reward_is_not_correct():
    terms = [{"fn": "math_verify", "correct": True}, {"fn": "format", "weight": 0.5}]
    scorer = RewardScorer(spec=terms, timeout_s=2.0, isolate=False)
    graded = scorer.grade(["\\boxed{4}", "\\boxed{5}", "5"], [{"reference": "5"}] * 3)
    assert graded.rewards == [0.5, 1.5, 0.0] and graded.correct == [False, True, False]


def test_the_task_format_reward_is_not_correct_either(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"problem": "a", "answer": "5"}\n{"problem": "b", "answer": "6"}\n')
    task = MathTask(path=str(data), format_reward=0.5)
    scorer = RewardScorer.for_task(task, timeout_s=2.0, isolate=False)
    graded = scorer.grade(["\\boxed{4}", "\\boxed{5}"], [{"reference": "5"}] * 2)
    assert graded.rewards == [0.5, 1.0] and graded.correct == [False, True]


def test_generated_tasks_use_their_verifier_and_examples():
    task = make_task("arithmetic", format_reward=0.5)
    ex = task.heldout(1)[0]
    graded = RewardScorer.for_task(task).grade([ex.solution, "answer: -1", "x"], [ex] * 3)
    assert graded.rewards == [1.0, 0.5, 0.0] and graded.correct == [True, False, False]
    rewards, faults = RewardScorer(task.verify).score([ex.solution], [ex.reference])  # old form
    assert rewards == [1.0] and faults.total == 0


@pytest.mark.parametrize(
    ("value", "fault"),
    [(True, None), (0, None), (0.25, None), ("0.5", "str"), (b"1", "bytes"), (1e30, "outside"),
     (-3, "outside"), (float("-inf"), "non-finite"), (10**400, "not convertible"),
     ({"a": 0.5, "b": "x"}, "component 'b'"), ({1: 0.5}, "component names must be str")],
)  # fmt: skip
def test_check_value_table(value, fault):
    from drgrpo.tasks.reward_spec import RewardTerm

    checked, message = check_value(value, RewardTerm(fn="m:f", name="f"))
    assert (message is None) == (fault is None) and (fault is None or fault in message), message


def test_in_process_deadline_also_works_off_the_main_thread(rewards_file):
    scorer = RewardScorer(spec=spec(rewards_file, "sleeps"), timeout_s=0.2)
    out = {}
    worker = threading.Thread(target=lambda: out.update(g=scorer.grade(["7"], EXAMPLES[:1])))
    worker.start()
    worker.join(timeout=10)
    assert out["g"].faults.timeouts == 1 and out["g"].rewards == [1.0]
    scorer.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("answer", ["9^{9^{9}}", "100!!"])
def test_expensive_answers_cost_about_the_limit_in_the_pool(answer):
    scorer = RewardScorer(spec=[{"fn": "math_verify", "correct": True}], timeout_s=1.0, workers=1)
    try:
        start = time.monotonic()
        graded = scorer.grade([f"\\boxed{{{answer}}}", "\\boxed{5}"], [{"reference": "5"}] * 2)
        elapsed = time.monotonic() - start
        assert graded.rewards == [0.0, 1.0]
        assert elapsed < 1.0 + 1.5  # the limit, a fork and a normal answer, on a busy machine
    finally:
        scorer.close()


def test_a_file_reward_loads_in_the_workers_by_path_and_by_import(rewards_file, monkeypatch):
    monkeypatch.syspath_prepend(rewards_file.rsplit("/", 1)[0])
    with RewardPool([(f"{rewards_file}:exact", {}), ("user_rewards:parts", {})], workers=1) as pool:
        out = pool.run([(0, "7", {"reference": "7"}), (1, "7", {})], limit_s=5.0)
    assert out == [("ok", True), ("ok", {"digit": 1.0, "short": True})]


def test_a_stuck_or_dying_call_inside_a_chunk_does_not_lose_the_others(rewards_file):
    fns = [
        (f"{rewards_file}:exact", {}),
        (f"{rewards_file}:hangs", {}),
        (f"{rewards_file}:exits", {}),
    ]
    calls = [(0, str(i), {"reference": "3"}) for i in range(12)]
    calls[4], calls[7] = (1, "x", {}), (2, "x", {})
    with RewardPool(fns, workers=1) as pool:  # one worker: every call goes through one chunk queue
        out = pool.run(calls, limit_s=0.3)
        assert pool.killed == 2
    expected = [("ok", i == 3) for i in range(12)]
    expected[4], expected[7] = ("timeout", None), ("error", "worker exited with code 3")
    assert out == expected


def test_a_pool_whose_function_does_not_import_says_so(tmp_path):
    with pytest.raises(RewardPoolError, match="failed to start: ValueError: reward"):
        RewardPool([(f"{tmp_path}/missing.py:f", {})], workers=1)


def test_a_task_with_a_user_reward_spec_end_to_end(rewards_file, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"problem": "p1", "answer": "#### 5", "topic": "algebra"}\n'
        '{"problem": "p2", "answer": "#### 6", "topic": "geometry"}\n'
    )
    rewards = [{"fn": "math_verify", "correct": True},
               {"fn": f"{rewards_file}:topic", "optional": True, "weight": 0.5}]  # fmt: skip
    task = MathTask(path=str(data), answer_format="gsm8k", heldout_fraction=0.0, rewards=rewards)
    hash(task)  # the list-valued knobs stay out of the hash: tasks can still key caches
    examples = sorted((task.train_example(i) for i in range(2)), key=lambda ex: ex.reference)
    scorer = RewardScorer.for_task(task, timeout_s=2.0, workers=1)
    try:
        graded = scorer.grade(["\\boxed{5} algebra", "\\boxed{5} geometry"], examples)
    finally:
        scorer.close()
    # row 1: correct (1) + 0.5 * topic 1 ; row 2 (geometry, reference 6): wrong, topic n/a
    assert graded.rewards == [1.5, 0.0] and graded.correct == [True, False]
    assert graded.components["topic"] == [1.0, None]
