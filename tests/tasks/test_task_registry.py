"""The registry, the shared interface, and the adversarial-input budget of every verifier."""

import ast
import dataclasses
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drgrpo.tasks
from drgrpo.tasks import TASKS, ArithmeticTask, CountdownTask, Example, MathTask, make_task

SAMPLE = Path(__file__).parents[1] / "data" / "math_sample.jsonl"


def test_registry_names_and_classes():
    expected = {"arithmetic": ArithmeticTask, "countdown": CountdownTask, "math": MathTask}
    assert expected == TASKS
    assert all(cls.name == name for name, cls in TASKS.items())


def test_make_task_passes_knobs_through():
    assert make_task("arithmetic", k_max=3, seed=7) == ArithmeticTask(k_max=3, seed=7)
    assert make_task("countdown") == CountdownTask()
    assert make_task("math", path=str(SAMPLE)).num_train == 9


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match="unknown task 'arith'; valid tasks: arithmetic, countdown, math"
    ):
        make_task("arith")


def test_unknown_knob_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown option 'kmax' for task 'arithmetic'") as err:
        make_task("arithmetic", kmax=3)
    assert "k_min, k_max, digits_min" in str(err.value)


def test_missing_required_knob_is_named():
    with pytest.raises(ValueError, match="task 'math' needs path="):
        make_task("math")


def test_generated_tasks_report_no_train_size():
    assert ArithmeticTask().num_train is None and CountdownTask().num_train is None


def test_tasks_and_examples_are_frozen():
    task, example = ArithmeticTask(), ArithmeticTask().train_example(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        example.prompt = ""
    assert isinstance(example, Example)


@pytest.mark.parametrize("cls", [ArithmeticTask, CountdownTask, MathTask])
def test_every_knob_is_documented_where_declared(cls):
    # A knob's docstring is the string literal right after it (the CLI help is built from it).
    source = Path(__import__(cls.__module__, fromlist=["_"]).__file__).read_text()
    body = next(n for n in ast.parse(source).body if getattr(n, "name", None) == cls.__name__).body
    documented = {
        stmt.target.id
        for stmt, after in zip(body, body[1:], strict=False)
        if isinstance(stmt, ast.AnnAssign)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)
    }
    knobs = {f.name for f in dataclasses.fields(cls) if f.init}
    assert knobs <= documented


def test_tasks_import_nothing_else_of_drgrpo():
    for file in Path(drgrpo.tasks.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith("drgrpo") or name.startswith("drgrpo.tasks"), file


ADVERSARIAL = [
    "answer: " + "9" * 100_000,
    "answer: " + "(" * 100_000,
    "answer: " + "1+" * 2000 + "1",
    "answer: " + "(" * 30 + "1" + ")" * 30,
    "answer: " + "9" * 4000,
    "answer: " + "\u0669" * 1000,
    "\x00" * 4000,
    bytes(range(256)).decode("latin-1") * 15,
    "answer:\n" * 500,
    "\\boxed{" * 10_000,
    "\\boxed{" + "{" * 20_000 + "}" * 20_000 + "}",
    "<answer>" * 10_000 + "</answer>",
    "\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}",
    "\\boxed{" + "\\frac{" * 200 + "1" + "}{2}" * 200 + "}",
    "\\boxed{" + "1+" * 400 + "1}",
]


@pytest.mark.parametrize(
    "task",
    [ArithmeticTask(), CountdownTask(), MathTask(path=str(SAMPLE), timeout_s=0.5)],
    ids=["arithmetic", "countdown", "math"],
)
def test_adversarial_completions_score_zero_quickly(task):
    reference = task.heldout(1)[0].reference
    for completion in ADVERSARIAL:
        start = time.monotonic()
        assert task.verify(completion, reference) == 0.0, completion[:40]
        assert time.monotonic() - start < 1.0, completion[:40]  # timeout_s plus scheduling slack


@settings(max_examples=100, deadline=None)
@given(
    completion=st.one_of(
        st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))
    )
)
def test_generated_task_verifiers_never_raise(completion):
    for task in (ArithmeticTask(format_reward=0.5), CountdownTask(format_reward=0.5)):
        reference = task.heldout(1)[0].reference
        assert task.verify(completion, reference) in (0.0, 0.5)
        assert task.verify("answer: " + completion, reference) in (0.0, 0.5, 1.0)


_MATH_PIECES = [
    "\\boxed{",
    "}",
    "{",
    "<answer>",
    "</answer>",
    "^",
    "!",
    "(",
    ")",
    "\\frac",
    "9",
    "x",
]


@settings(max_examples=40, deadline=None)
@given(pieces=st.lists(st.sampled_from(_MATH_PIECES), max_size=25))
def test_math_verifier_never_raises(pieces):
    task = MathTask(path=str(SAMPLE), timeout_s=0.1, format_reward=0.5)
    assert task.verify("".join(pieces), "\\frac{1}{2}") in (0.0, 0.5, 1.0)
