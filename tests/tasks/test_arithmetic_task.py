"""Arithmetic task: verifier table, generation determinism, split, SFT traces, validation."""

import re
import string

import pytest

from drgrpo.tasks import ArithmeticTask
from drgrpo.tasks.base import stable_unit

TASK = ArithmeticTask()
PRINTABLE = set(string.printable) - set("\t\r\x0b\x0c")  # printable ASCII plus "\n"

VERIFY_CASES = [
    # (completion, reference, expected reward)
    ("12+34=46\nanswer: 46", "46", 1.0),
    ("answer: 46", "46", 1.0),  # intermediate lines are optional
    ("answer:46", "46", 1.0),
    ("  answer: 46  ", "46", 1.0),
    ("answer: 046", "46", 1.0),  # compared as integers
    ("answer: -46", "-46", 1.0),
    ("12+34=99\nanswer: 46", "46", 1.0),  # a wrong intermediate line is not checked
    ("12+34=46\ncheck 12+34=46\n+5=51\ncheck 46+5=51\nanswer: 51", "51", 1.0),
    ("answer: 47\nanswer: 46", "46", 1.0),  # the last answer line counts...
    ("answer: 46\nanswer: 47", "46", 0.0),  # ...even when an earlier one was right
    ("answer: 46\nanswer: x", "46", 0.0),  # a malformed last line does not fall back
    ("answer: 46\nsome trailing text", "46", 1.0),
    ("answer: 47", "46", 0.0),
    ("46", "46", 0.0),  # no answer line
    ("12+34=46", "46", 0.0),
    ("", "46", 0.0),
    ("Answer: 46", "46", 0.0),  # the marker is case-sensitive
    ("the answer: 46", "46", 0.0),  # the marker must start the line
    ("answer: 4 6", "46", 0.0),
    ("answer: +46", "46", 0.0),
    ("answer: 46.0", "46", 0.0),
    ("answer: 4_6", "46", 0.0),  # int() would accept this
    ("answer: \u0664\u0666", "46", 0.0),  # Arabic-Indic digits, which int() would accept
    ("answer: \uff14\uff16", "46", 0.0),  # fullwidth digits
    ("answer: 46\x00", "46", 0.0),
    ("\x00\xff\xfe\x01answer: 46", "46", 0.0),
    ("answer: " + "9" * 33, "9" * 33, 0.0),  # more digits than any answer has
    ("answer: " + "9" * 100_000, "46", 0.0),
    ("x" * 4096 + "\nanswer: 46", "46", 0.0),  # over the length cap
    ("answer: 46", "forty-six", 0.0),  # a malformed reference never raises
    (None, "46", 0.0),
    (b"answer: 46", "46", 0.0),
]


@pytest.mark.parametrize(("completion", "reference", "expected"), VERIFY_CASES)
def test_verify_table(completion, reference, expected):
    assert TASK.verify(completion, reference) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [("answer: 51", 1.0), ("answer: 50", 0.25), ("answer: fifty", 0.0), ("51", 0.0)],
)
def test_format_reward_only_for_well_formed_wrong_answers(completion, expected):
    assert ArithmeticTask(format_reward=0.25).verify(completion, "51") == expected


def test_same_seed_same_examples_and_other_seed_differs():
    first = [ArithmeticTask(seed=3).train_example(i) for i in range(200)]
    again = [ArithmeticTask(seed=3).train_example(i) for i in range(200)]
    other = [ArithmeticTask(seed=4).train_example(i) for i in range(200)]
    assert first == again
    assert sum(a.prompt != b.prompt for a, b in zip(first, other, strict=True)) > 190


def test_heldout_is_deterministic_distinct_and_seed_independent():
    heldout = TASK.heldout(2000)
    assert len({ex.prompt for ex in heldout}) == 2000
    assert TASK.heldout(50) == heldout[:50]  # a prefix, so growing n keeps earlier problems
    assert ArithmeticTask(seed=9).heldout(50) == heldout[:50]
    assert len(TASK.heldout()) == TASK.heldout_size


def test_train_and_heldout_are_disjoint():
    heldout = {ex.prompt for ex in TASK.heldout(2000)}
    for seed in (0, 1):
        train = {ArithmeticTask(seed=seed).train_example(i).prompt for i in range(3000)}
        assert not train & heldout
    assert all(TASK.is_heldout(ex) for ex in TASK.heldout(2000))


def test_small_problem_space_heldout_is_exhaustive_then_cycles():
    # k=2 one-digit numbers: 81 problems, of which about heldout_fraction are held out.
    small = ArithmeticTask(k_min=2, k_max=2, digits_min=1, digits_max=1, heldout_fraction=0.2)
    problems = [f"{a}+{b}=" for a in range(1, 10) for b in range(1, 10)]
    held = [p for p in problems if stable_unit(p) < 0.2]
    assert 6 <= len(held) <= 30  # 16.2 expected; binomial(81, 0.2) is in here with p > 0.999
    prompts = [ex.prompt for ex in small.heldout(60)]
    m = len(held)
    assert sorted(prompts[:m]) == sorted(held)  # every held-out problem once...
    assert prompts[m:] == (prompts[:m] * 60)[: 60 - m]  # ...then the same order again
    assert not {small.train_example(i).prompt for i in range(500)} & set(held)


@pytest.mark.parametrize("kwargs", [{}, {"k_min": 3, "k_max": 7, "digits_min": 1, "digits_max": 4}])
def test_generated_problems_respect_knobs_and_traces_are_right(kwargs):
    task = ArithmeticTask(**kwargs)
    examples = [task.train_example(i) for i in range(300)] + task.heldout(100)
    for ex in examples:
        numbers = [int(x) for x in ex.prompt.rstrip("=").split("+")]
        assert ex.prompt == "+".join(map(str, numbers)) + "="
        assert task.k_min <= len(numbers) == ex.meta["k"] <= task.k_max
        assert all(task.digits_min <= len(str(x)) <= task.digits_max for x in numbers)
        assert ex.reference == str(sum(numbers))
        assert task.verify(ex.solution, ex.reference) == 1.0
        assert set(ex.prompt + ex.solution) <= PRINTABLE
        _assert_trace_adds_up(ex.solution, numbers)


def _assert_trace_adds_up(solution, numbers):
    # Hand-checkable grammar: "a+b=s", then "+x=s" per further number, then "answer: s".
    lines = solution.split("\n")
    assert lines[0] == f"{numbers[0]}+{numbers[1]}={numbers[0] + numbers[1]}"
    total = numbers[0] + numbers[1]
    for line, x in zip(lines[1:-1], numbers[2:], strict=True):
        total += x
        assert line == f"+{x}={total}"
    assert lines[-1] == f"answer: {total}"


def test_recheck_prob_one_adds_a_check_after_every_step_and_still_verifies():
    plain = ArithmeticTask(recheck_prob=0.0)
    checked = ArithmeticTask(recheck_prob=1.0)
    for i in range(200):
        short, long = plain.train_example(i), checked.train_example(i)
        assert long.prompt == short.prompt  # the knob changes traces, not problems
        checks = [line for line in long.solution.split("\n") if line.startswith("check ")]
        assert len(checks) == short.meta["k"] - 1
        assert "check" not in short.solution
        assert len(long.solution) > len(short.solution)
        for line in checks:
            a, b, s = map(int, re.fullmatch(r"check (\d+)\+(\d+)=(\d+)", line).groups())
            assert a + b == s
        assert checked.verify(long.solution, long.reference) == 1.0


def test_recheck_prob_half_mixes_long_and_short_solutions():
    task = ArithmeticTask(recheck_prob=0.5)
    with_checks = sum("check" in task.train_example(i).solution for i in range(200))
    assert 100 < with_checks < 200  # P(no check) is 0.5**(k-1): about 28% on average


def test_default_response_lengths_suit_a_character_level_model():
    lengths = [len(TASK.train_example(i).solution) for i in range(500)]
    assert min(lengths) >= 15 and max(lengths) <= 50
    assert 25 <= sum(lengths) / len(lengths) <= 40


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k_min": 1}, "k_min must be an integer in \\[2, 10\\]"),
        ({"k_min": 4, "k_max": 3}, "k_max must be an integer in \\[4, 10\\]"),
        ({"k_min": 2.0}, "k_min must be an integer"),
        ({"k_max": "5"}, "k_max must be an integer"),
        ({"digits_min": 0}, "digits_min"),
        ({"digits_max": 10}, "digits_max"),
        ({"recheck_prob": 1.5}, "recheck_prob must be a number in \\[0.0, 1.0\\]"),
        ({"recheck_prob": float("nan")}, "recheck_prob"),
        ({"heldout_fraction": 0.0}, "heldout_fraction must be a number in \\[0.01, 0.5\\]"),
        ({"heldout_fraction": 0.9}, "heldout_fraction"),
        ({"heldout_size": 0}, "heldout_size must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"format_reward": 1.0}, "format_reward must be a number in \\[0.0, 1.0\\)"),
        ({"format_reward": -0.1}, "format_reward"),
        ({"format_reward": True}, "format_reward"),
    ],
)
def test_invalid_knobs_raise_value_error_naming_the_knob(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArithmeticTask(**kwargs)


@pytest.mark.parametrize("i", [-1, 1.5, "3"])
def test_invalid_index_raises(i):
    with pytest.raises(ValueError, match="i must be an integer >= 0"):
        TASK.train_example(i)


def _partial_sums(solution: str) -> list[int]:
    """The value of each step line (not the check lines) of a trace."""
    return [int(line.rsplit("=", 1)[1]) for line in solution.split("\n")
            if "=" in line and not line.startswith("check ")]  # fmt: skip


def test_slip_prob_zero_leaves_problems_and_traces_unchanged():
    # the ablation's knobs are drawn only when used: every earlier run keeps its problems
    base, off = ArithmeticTask(recheck_prob=0.5), ArithmeticTask(recheck_prob=0.5, slip_prob=0.0)
    for i in range(100):
        assert base.train_example(i) == off.train_example(i)
    assert base.heldout(50) == off.heldout(50)


def test_a_slip_is_one_partial_sum_off_by_one_carried_to_a_wrong_answer():
    task = ArithmeticTask(slip_prob=1.0, recheck_prob=0.0, recheck_after_slip=1.0)
    for i in range(200):
        ex = task.train_example(i)
        numbers = [int(x) for x in ex.prompt.rstrip("=").split("+")]
        assert ex.reference == str(sum(numbers))  # the reference is the true sum
        assert task.verify(ex.solution, ex.reference) == 0.0
        sums = _partial_sums(ex.solution)
        true = [sum(numbers[: j + 2]) for j in range(len(numbers) - 1)]
        assert ex.solution.endswith(f"answer: {sums[-1]}")
        errors = [s - t for s, t in zip(sums, true, strict=True)]
        first = next(j for j, e in enumerate(errors) if e)
        assert all(e == 0 for e in errors[:first])
        assert len(set(errors[first:])) == 1 and abs(errors[first]) == 1  # carried on
        # checks only from the slipped line on (recheck_prob 0 before, 1 after)
        lines = ex.solution.split("\n")
        step_lines = [j for j, line in enumerate(lines) if not line.startswith("check ")]
        checked = [lines[j + 1].startswith("check ") for j in step_lines[:-1]]
        assert checked == [j >= first for j in range(len(checked))]


def test_slip_prob_makes_that_share_of_traces_wrong():
    task = ArithmeticTask(slip_prob=0.3, recheck_prob=0.5)
    wrong = sum(task.verify(e.solution, e.reference) == 0.0
                for e in (task.train_example(i) for i in range(1000)))  # fmt: skip
    assert 240 < wrong < 360  # Binomial(1000, 0.3): mean 300, sd 14.5


@pytest.mark.parametrize("kwargs", [{"slip_prob": 1.5}, {"recheck_after_slip": -0.1}])
def test_slip_knobs_are_validated(kwargs):
    with pytest.raises(ValueError):
        ArithmeticTask(**kwargs)
