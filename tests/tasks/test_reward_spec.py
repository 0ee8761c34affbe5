"""The reward spec: parsing and its errors, loading functions by file and by import path, and
the paper's graders against math_verify."""

import re

import pytest

from drgrpo.tasks import MathTask
from drgrpo.tasks.graders import answer_tag_reward, boxed_reward, math_verify_reward
from drgrpo.tasks.reward_spec import RewardTerm, load_reward_function, parse_rewards

MODULE = """
def exact(completion, example):
    return completion.strip() == example["reference"]
"""


def test_a_term_round_trips_through_json():
    terms = parse_rewards([
        {"fn": "math_verify", "correct": True},
        {"fn": "mod:f", "weight": 0.5, "name": "style", "range": [-1, 1], "optional": True,
         "batched": True, "isolate": False, "args": {"k": 2}},
    ])  # fmt: skip
    assert terms[0] == RewardTerm(fn="math_verify", name="math_verify", correct=True)
    assert terms[1].low == -1.0 and terms[1].args == {"k": 2} and terms[1].name == "style"
    assert parse_rewards([t.to_dict() for t in terms]) == terms


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], "rewards must be a non-empty list"),
        ([{"fn": "math_verify"}], "exactly one term must be the correctness check"),
        ([{"fn": "math_verify", "correct": True}, {"fn": "format", "correct": True}],
         "flagged: ['math_verify', 'format']"),
        ([{"fn": "nonsense", "correct": True}], "rewards[0].fn must be a built-in"),
        ([{"fn": "m:f", "correct": True, "wieght": 1}], "unknown key 'wieght'; valid keys: fn"),
        ([{"fn": "m:f", "correct": True, "range": [1, 0]}], "range must be [low, high]"),
        ([{"fn": "m:f", "correct": True, "weight": "1"}], "weight must be a finite number"),
        ([{"fn": "m:f", "correct": 1}], "rewards[0].correct must be true or false"),
        ([{"fn": "m:f", "correct": True}, {"fn": "n:f"}], "two terms are named 'f'"),
        ([{"fn": "m:f", "correct": True, "name": "faults"}], "must be a short identifier"),
    ],
)  # fmt: skip
def test_bad_specs_name_the_entry_and_the_fix(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_rewards(spec)


def test_functions_load_by_file_path_and_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "user_rewards_a.py").write_text(MODULE)
    by_file = load_reward_function(f"{tmp_path / 'user_rewards_a.py'}:exact")
    assert by_file("7 ", {"reference": "7"}) is True
    assert load_reward_function(f"{tmp_path / 'user_rewards_a.py'}:exact") is by_file  # one module
    monkeypatch.syspath_prepend(str(tmp_path))
    by_import = load_reward_function("user_rewards_a:exact")
    assert by_import("8", {"reference": "7"}) is False


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("json:no_such_function", "json has no function 'no_such_function'"),
        ("/nowhere/r.py:f", "no file /nowhere/r.py"),
    ],
)
def test_unloadable_functions_are_named(fn, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_reward_function(fn)


def test_math_task_checks_its_reward_spec_when_built(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": "2"}\n')
    with pytest.raises(ValueError, match="cannot import 'missing_mod'"):
        MathTask(path=str(data), rewards=[{"fn": "missing_mod:f", "correct": True}])
    with pytest.raises(ValueError, match="exactly one term must be the correctness check"):
        MathTask(path=str(data), rewards=[{"fn": "format"}])
    task = MathTask(path=str(data), format_reward=0.25, timeout_s=0.5)
    assert task.reward_spec() == [{"fn": "math_verify", "name": "correct_math_verify",
                                   "correct": True, "args": {"timeout_s": 0.5, "format_reward": 0.25}}]  # fmt: skip


GRADER_CASES = [
    # (completion, reference, math_verify, boxed, answer_tag)
    ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0, 1.0, 0.0),  # answer_tag needs the tags
    ("<think> x </think> <answer>0.5</answer>", "\\frac{1}{2}", 1.0, 0.0, 1.0),
    ("<think> x </think> <answer>\\boxed{7}</answer>", "7", 1.0, 1.0, 1.0),
    ("<think>x</think><answer>7</answer>", "7", 1.0, 0.0, 0.0),  # paper: strict "</think> <answer>"
    ("\\boxed{7} then <answer>8</answer>", "7", 0.0, 1.0, 0.0),  # math_verify: the later marker
    ("\\boxed{7}", "\\boxed{7}", 1.0, 1.0, 0.0),  # a boxed reference is unwrapped
    ("\\boxed{\\dfrac{1}{2}}", "\\frac12", 1.0, 1.0, 0.0),
    ("\\boxed{5 \\text{ cm}}", "5", 1.0, 1.0, 0.0),  # units are dropped
    ("\\boxed{x = 3}", "3", 1.0, 1.0, 0.0),
    ("\\fbox{3}", "3", 0.0, 1.0, 0.0),
    ("\\boxed{3.}", "3", 0.0, 1.0, 0.0),  # the MATH normalization drops a trailing period
    ("\\boxed{4}", "5", 0.0, 0.0, 0.0),
    ("", "5", 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize(("completion", "reference", "mv", "boxed", "tag"), GRADER_CASES)
def test_graders_table(completion, reference, mv, boxed, tag):
    example = {"reference": reference}
    assert math_verify_reward(completion, example) == mv
    assert boxed_reward(completion, example) == boxed
    assert answer_tag_reward(completion, example) == tag


def test_math_task_grader_option_switches_verify(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"problem": "a", "answer": "7"}\n{"problem": "b", "answer": "8"}\n')
    tagged = MathTask(path=str(data), grader="answer_tag")
    assert tagged.verify("<think> x </think> <answer>7</answer>", "7") == 1.0
    assert tagged.verify("\\boxed{7}", "7") == 0.0
    assert MathTask(path=str(data), grader="boxed").verify("\\boxed{7}", "7") == 1.0
