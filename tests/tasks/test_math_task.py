"""Math task: loading and its errors, the split, answer extraction, math_verify under a deadline."""

import json
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from drgrpo.tasks import MathTask
from drgrpo.tasks.math_grading import extract_answer

SAMPLE = Path(__file__).parents[1] / "data" / "math_sample.jsonl"
ROWS = [json.loads(line) for line in SAMPLE.read_text().splitlines()]


@pytest.fixture(scope="module")
def task():
    return MathTask(path=str(SAMPLE), solution_field="solution", heldout_size=3)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_split_sizes_and_disjointness(task):
    heldout = task.heldout()
    assert len(heldout) == 3 and task.num_train == 7
    train = {task.train_example(i).prompt for i in range(3 * task.num_train)}
    assert len(train) == 7 and not train & {ex.prompt for ex in heldout}
    assert train | {ex.prompt for ex in heldout} == {row["problem"] for row in ROWS}
    assert task.heldout(2) == heldout[:2]


def test_each_epoch_is_a_fresh_permutation_of_the_training_rows(task):
    n = task.num_train
    epochs = [[task.train_example(e * n + i).meta["index"] for i in range(n)] for e in range(3)]
    assert all(sorted(epoch) == sorted(epochs[0]) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3  # 7! orders: a repeat would be a bug
    again = MathTask(path=str(SAMPLE), solution_field="solution", heldout_size=3)
    assert [again.train_example(i) for i in range(2 * n)] == [
        task.train_example(i) for i in range(2 * n)
    ]
    other = MathTask(path=str(SAMPLE), solution_field="solution", heldout_size=3, seed=1)
    assert [other.train_example(i) for i in range(n)] != [task.train_example(i) for i in range(n)]
    assert other.heldout() == task.heldout()


def test_split_ignores_row_order_and_keeps_duplicates_on_one_side(tmp_path):
    shuffled = _write_jsonl(tmp_path / "reversed.jsonl", ROWS[::-1] + ROWS[:4])
    original = MathTask(path=str(SAMPLE), heldout_size=4)
    other = MathTask(path=shuffled, heldout_size=4)
    held = {ex.prompt for ex in original.heldout()}
    assert {ex.prompt for ex in other.heldout()} == held
    train = {other.train_example(i).prompt for i in range(other.num_train)}
    assert other.num_train == 6 + sum(row["problem"] not in held for row in ROWS[:4])
    assert not train & held


def test_fraction_sets_the_heldout_count():
    assert len(MathTask(path=str(SAMPLE), heldout_fraction=0.2).heldout()) == 2
    assert MathTask(path=str(SAMPLE), heldout_fraction=0.0).heldout() == []


def test_example_fields_and_prompt_template_keeps_other_braces(task):
    template = "Q: {question}\nPut the final answer in \\boxed{}."
    templated = MathTask(path=str(SAMPLE), prompt_template=template)
    ex = templated.train_example(0)
    row = ROWS[ex.meta["index"]]
    assert ex.prompt == f"Q: {row['problem']}\nPut the final answer in \\boxed{{}}."
    assert ex.reference == row["answer"] and ex.solution is None
    assert task.train_example(0).solution == ROWS[task.train_example(0).meta["index"]]["solution"]


def test_parquet_file_loads_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "sample.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    from_parquet = MathTask(path=str(path), solution_field="solution", heldout_size=3)
    from_jsonl = MathTask(path=str(SAMPLE), solution_field="solution", heldout_size=3)
    assert from_parquet.heldout() == from_jsonl.heldout()


def test_numeric_answers_become_strings(tmp_path):
    path = _write_jsonl(
        tmp_path / "n.jsonl", [{"problem": f"{i}+1?", "answer": i + 1} for i in range(5)]
    )
    task = MathTask(path=path, heldout_size=1)
    assert {ex.reference for ex in [task.train_example(i) for i in range(4)] + task.heldout()} == {
        "1",
        "2",
        "3",
        "4",
        "5",
    }


def test_every_sft_solution_verifies(task):
    for ex in [task.train_example(i) for i in range(task.num_train)] + task.heldout():
        assert task.verify(ex.solution, ex.reference) == 1.0


VERIFY_CASES = [
    # (completion, reference, expected reward)
    ("The answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{2}{4}}", "\\frac{1}{2}", 1.0),
    ("<answer>1/2</answer>", "\\frac{1}{2}", 1.0),
    ("<answer> 7 </answer>", "7", 1.0),
    ("\\boxed{\\sqrt{2}}", "\\sqrt{2}", 1.0),
    ("\\boxed{2}", "\\frac{1}{2}", 0.0),
    ("\\boxed{3} no, \\boxed{5}", "5", 1.0),  # the last marker counts...
    ("\\boxed{5} no, \\boxed{3}", "5", 0.0),  # ...even when an earlier one was right
    ("\\boxed{5} no, <answer>3</answer>", "5", 0.0),
    ("<answer>\\boxed{5}</answer>", "5", 1.0),
    ("\\boxed{\\frac{1}{2}", "\\frac{1}{2}", 0.0),  # unbalanced braces
    ("<answer>5", "5", 0.0),  # unclosed tag
    ("\\boxed{}", "5", 0.0),
    ("The answer is 5.", "5", 0.0),  # no marker
    ("", "5", 0.0),
    ("\\boxed{\u0665}", "5", 0.0),  # Arabic-Indic five
    ("\\boxed{5\x00}", "5", 0.0),
    ("\x00\xff\xfe" * 100, "5", 0.0),
    ("\\boxed{" + "{" * 5000 + "5" + "}" * 5000 + "}", "5", 0.0),  # too deep
    ("\\boxed{" + "(" * 20 + "5" + ")" * 20 + "}", "5", 0.0),  # too deep for the LaTeX parser
    ("\\boxed{" + "9" * 5000 + "}", "5", 0.0),  # answer over the length cap
    ("\\boxed{5}" + " " * 100_000, "5", 0.0),  # completion over the length cap
    (None, "5", 0.0),
]


@pytest.mark.parametrize(("completion", "reference", "expected"), VERIFY_CASES)
def test_verify_table(task, completion, reference, expected):
    assert task.verify(completion, reference) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("\\boxed{ 5 }", "5"),
        ("\\boxed{a{b}c}", "a{b}c"),  # balanced inner braces belong to the answer
        ("\\boxed{\\boxed{4}}", "4"),
        ("<answer>a</answer> then \\boxed{b}", "b"),
        ("\\boxed{b} then <answer>a</answer>", "a"),
        ("x", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_format_reward_needs_an_answer():
    task = MathTask(path=str(SAMPLE), format_reward=0.2)
    assert task.verify("\\boxed{4}", "5") == 0.2
    assert task.verify("4", "5") == 0.0
    assert task.verify("\\boxed{5}", "5") == 1.0


@pytest.mark.timeout(30, method="thread")  # without the deadline these run for minutes
@pytest.mark.parametrize("answer", ["9^{9^{9}}", "100!!", "\\binom{10^9}{10^5}"])
def test_main_thread_deadline_stops_expensive_answers(answer):
    task = MathTask(path=str(SAMPLE), timeout_s=0.2)
    handler = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    assert task.verify(f"\\boxed{{{answer}}}", "5") == 0.0
    assert time.monotonic() - start < 2.0
    assert signal.getsignal(signal.SIGALRM) is handler


def test_deadline_restores_a_timer_that_was_already_running():
    task = MathTask(path=str(SAMPLE), timeout_s=0.2)
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert task.verify("\\boxed{9^{9^{9}}}", "5") == 0.0
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25.0 < remaining <= 30.0 and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),  # sympy still runs for simple answers
        ("\\boxed{9^{9^{9}}}", "5", 0.0),  # without a deadline, expensive answers skip sympy
        ("\\boxed{100!!}", "5", 0.0),
        ("\\boxed{9^{9^{9}}}", "9^{9^{9}}", 1.0),  # ...and are compared as strings
    ],
)
def test_worker_thread_falls_back_to_no_signal_mode(task, completion, reference, expected):
    rewards = []
    worker = threading.Thread(
        target=lambda: rewards.append(task.verify(completion, reference)), daemon=True
    )
    worker.start()
    worker.join(timeout=2.0)  # a daemon, so a hang fails this test instead of the whole run
    assert not worker.is_alive()
    assert rewards == [expected]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "/nonexistent/rows.jsonl"}, "data file /nonexistent/rows.jsonl does not exist"),
        ({"path": str(SAMPLE.with_suffix(".txt"))}, "data file .* does not exist"),
        ({"question_field": "question"}, "no column 'question'; its columns are"),
        ({"solution_field": "steps"}, "no column 'steps'"),
        ({"prompt_template": "no placeholder"}, "prompt_template must contain '\\{question\\}'"),
        ({"heldout_size": 10}, "leaving none to train on; lower heldout_size"),
        ({"heldout_fraction": 1.0}, "heldout_fraction must be a number in \\[0.0, 1.0\\)"),
        ({"heldout_size": -1}, "heldout_size must be an integer >= 0"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"format_reward": 1.5}, "format_reward"),
        ({"seed": -2}, "seed"),
    ],
)
def test_invalid_configuration_raises_value_error_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MathTask(**{"path": str(SAMPLE), **kwargs})


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"problem": "a", "answer": "1"}', '{"problem": oops'], "line 2 is not a JSON object"),
        (
            ['{"problem": "a", "answer": "1"}', '{"problem": "", "answer": "2"}'],
            "row 2, field 'problem'",
        ),
        (
            ['{"problem": "a", "answer": "1"}', '{"problem": "b", "answer": null}'],
            "row 2, field 'answer'",
        ),
    ],
)
def test_malformed_rows_name_the_file_and_row(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message) as err:
        MathTask(path=str(path), heldout_fraction=0.0)
    assert str(path) in str(err.value)


def test_missing_extras_name_the_install_command(monkeypatch):
    from drgrpo.tasks.math_grading import load_math_verify

    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"needs datasets: pip install 'drgrpo\[math\]'"):
        MathTask(path=str(SAMPLE))
    monkeypatch.setitem(sys.modules, "math_verify", None)
    with pytest.raises(ImportError, match=r"needs math-verify: pip install 'drgrpo\[math\]'"):
        load_math_verify.__wrapped__()  # bypass the cache of the real import
