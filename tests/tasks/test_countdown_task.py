"""Countdown task: verifier table, parser vs Fraction arithmetic, generation, validation."""

import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drgrpo.tasks import CountdownTask
from drgrpo.tasks.countdown import MAX_MAGNITUDE, evaluate

TASK = CountdownTask()
REF = "nums 3 7 25 target 46"

VERIFY_CASES = [
    # (completion, reference, expected reward)
    ("3*7=21\n25+21=46\nanswer: 25+3*7", REF, 1.0),
    ("answer: 3*7+25", REF, 1.0),
    ("answer: (25+(3*7))", REF, 1.0),
    ("answer:  25 + 3 * 7 ", REF, 1.0),
    ("answer: 25+7*3", REF, 1.0),
    ("answer: 25+3", "nums 3 7 25 target 28", 1.0),  # unused numbers are fine
    ("answer: 5+5", "nums 5 5 3 target 10", 1.0),  # a repeated number may be used as often as given
    ("answer: 6/3/2", "nums 6 3 2 target 1", 1.0),  # left-associative: (6/3)/2
    ("answer: 6/(3/2)", "nums 6 3 2 target 1", 0.0),  # = 4
    ("answer: 1/3*6", "nums 1 3 6 target 2", 1.0),  # non-integer intermediates are exact
    ("answer: 8-3-2", "nums 8 3 2 target 3", 1.0),  # (8-3)-2
    ("answer: 8-(3-2)", "nums 8 3 2 target 3", 0.0),  # = 7
    ("answer: 25+3*7\nanswer: 25+3+7", REF, 0.0),  # the last answer line counts
    ("answer: 25+3+7\nanswer: 25+3*7", REF, 1.0),
    ("answer: 25+3+7", REF, 0.0),  # wrong value
    ("answer: 25+21", REF, 0.0),  # 21 is not given
    ("answer: 25+3*7+3-3", REF, 0.0),  # 3 used three times
    ("answer: 5+5+5-5", "nums 5 5 3 target 10", 0.0),  # 5 used more often than given
    ("answer: 3+25/(7-7)", "nums 3 7 7 25 target 3", 0.0),  # division by zero
    ("answer: -3+7*7", "nums 3 7 7 target 46", 0.0),  # no unary minus
    ("answer: 25+3**7", REF, 0.0),
    ("answer: 25+3^7", REF, 0.0),
    ("answer: 25+3*7=46", REF, 0.0),
    ("answer: 25.0+3*7", REF, 0.0),
    ("answer: (25+3*7", REF, 0.0),
    ("answer: 25+3*7)", REF, 0.0),
    ("answer: ()", REF, 0.0),
    ("answer: ", REF, 0.0),
    ("25+3*7", REF, 0.0),  # no answer line
    ("answer: \uff12\uff15+3*7", REF, 0.0),  # fullwidth digits
    ("answer: \u0662\u0665+3*7", REF, 0.0),  # Arabic-Indic digits
    ("answer: 25+3*7\x00", REF, 0.0),
    ("answer: __import__('os')", REF, 0.0),
    ("answer: " + "(" * 16 + "25" + ")" * 16 + "+3*7", REF, 1.0),  # at the depth cap
    ("answer: " + "(" * 17 + "25" + ")" * 17 + "+3*7", REF, 0.0),  # past it
    ("answer: " + "(" * 2000 + "25" + ")" * 2000, REF, 0.0),
    ("answer: 1234567+3", "nums 1234567 3 target 1234570", 0.0),  # 7-digit literal
    ("answer: 25" + " " * 194 + "+3*7", REF, 1.0),  # 200 characters: at the length cap
    ("answer: 25" + " " * 195 + "+3*7", REF, 0.0),  # past it
    ("answer: 25+3*7", "nums 3 7 25", 0.0),  # malformed reference never raises
    (None, REF, 0.0),
]


@pytest.mark.parametrize(("completion", "reference", "expected"), VERIFY_CASES)
def test_verify_table(completion, reference, expected):
    assert TASK.verify(completion, reference) == expected


def test_intermediate_magnitude_cap():
    # 999999**2 = 999998000001 fits under 10**12; one more factor does not, even though the
    # final value would be right after dividing back down.
    assert evaluate("999999*999999") == (Fraction(999998000001), [999999, 999999])
    assert evaluate("999999*999999*999999/999999") is None


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("answer: 25+3*7", 1.0),
        ("answer: 25+3+7", 0.1),
        ("answer: 25*25", 0.1),
        ("answer: 25+", 0.0),
    ],
)
def test_format_reward_for_parseable_but_wrong_expressions(completion, expected):
    assert CountdownTask(format_reward=0.1).verify(completion, REF) == expected


# A random expression tree in the test's own representation: an int leaf, or (op, left, right).
_leaf = st.integers(min_value=0, max_value=999)
_trees = st.recursive(
    _leaf,
    lambda sub: st.tuples(st.sampled_from("+-*/"), sub, sub),
    max_leaves=8,
)


def _reference_value(tree):
    """Plain recursive Fraction evaluation; None where the parser must refuse."""
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree
    a, b = _reference_value(left), _reference_value(right)
    if a is None or b is None or (op == "/" and b == 0):
        return None
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
    if abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
        return None
    return value


def _render(tree, spaces):
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    gap = " " if spaces else ""
    return f"({_render(left, spaces)}{gap}{op}{gap}{_render(right, spaces)})"


def _leaves(tree):
    return [tree] if isinstance(tree, int) else _leaves(tree[1]) + _leaves(tree[2])


@settings(max_examples=300, deadline=None)
@given(tree=_trees, spaces=st.booleans())
def test_parser_matches_fraction_arithmetic(tree, spaces):
    text = _render(tree, spaces)
    expected = _reference_value(tree)
    result = evaluate(text)
    if expected is None or len(text) > 200:
        assert result is None
    else:
        assert result == (expected, _leaves(tree))


@settings(max_examples=300, deadline=None)
@given(
    leaves=st.lists(st.integers(min_value=0, max_value=99), min_size=1, max_size=8),
    data=st.data(),
)
def test_unparenthesised_chains_follow_precedence(leaves, data):
    # Textbook rule, computed the long way: split into +/- terms, each term a left-to-right
    # chain of * and /; refuse on division by zero or an intermediate past the cap.
    ops = data.draw(
        st.lists(st.sampled_from("+-*/"), min_size=len(leaves) - 1, max_size=len(leaves) - 1)
    )
    text = str(leaves[0]) + "".join(f"{op}{x}" for op, x in zip(ops, leaves[1:], strict=True))
    assert evaluate(text) == _chain_value(leaves, ops)


def _chain_value(leaves, ops):
    def bounded(v):
        return abs(v.numerator) <= MAX_MAGNITUDE and v.denominator <= MAX_MAGNITUDE

    total, term, sign = None, Fraction(leaves[0]), 1
    for op, x in [*zip(ops, leaves[1:], strict=True), ("+", None)]:
        if op in "*/":
            if op == "/" and x == 0:
                return None
            term = term * x if op == "*" else term / x
            if not bounded(term):
                return None
            continue
        total = sign * term if total is None else total + sign * term
        if not bounded(total):
            return None
        if x is not None:
            term, sign = Fraction(x), 1 if op == "+" else -1
    return total, leaves


def test_same_seed_same_examples_and_other_seed_differs():
    first = [CountdownTask(seed=1).train_example(i) for i in range(100)]
    assert first == [CountdownTask(seed=1).train_example(i) for i in range(100)]
    other = [CountdownTask(seed=2).train_example(i) for i in range(100)]
    assert sum(a.prompt != b.prompt for a, b in zip(first, other, strict=True)) > 95


def test_heldout_is_distinct_disjoint_from_train_and_seed_independent():
    heldout = TASK.heldout(2000)
    prompts = {ex.prompt for ex in heldout}
    assert len(prompts) == 2000
    assert CountdownTask(seed=5).heldout(30) == heldout[:30]
    train = {TASK.train_example(i).prompt for i in range(3000)}
    assert not train & prompts


_STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


@pytest.mark.parametrize("kwargs", [{}, {"count_min": 2, "count_max": 6, "ops": "+*"}])
def test_generated_problems_respect_knobs_and_solutions_verify(kwargs):
    task = CountdownTask(**kwargs)
    for ex in [task.train_example(i) for i in range(300)] + task.heldout(100):
        match = re.fullmatch(r"nums((?: \d+)+) target (\d+)=", ex.prompt)
        numbers, target = [int(x) for x in match.group(1).split()], int(match.group(2))
        assert ex.reference == ex.prompt[:-1]
        assert task.count_min <= len(numbers) == ex.meta["count"] <= task.count_max
        assert all(task.value_min <= x <= task.value_max for x in numbers)
        assert 1 <= target <= task.target_max and target not in numbers
        assert task.verify(ex.solution, ex.reference) == 1.0
        *steps, answer = ex.solution.split("\n")
        value, literals = evaluate(answer.removeprefix("answer: "))
        assert value == target and sorted(literals) == sorted(numbers)  # uses every number
        assert len(steps) == len(numbers) - 1
        for step in steps:
            a, op, b, c = _STEP.fullmatch(step).groups()
            assert op in task.ops
            assert evaluate(f"{a}{op}{b}")[0] == int(c) > 0  # countdown rules: positive integers


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count_min": 1}, "count_min must be an integer in \\[2, 6\\]"),
        ({"count_min": 4, "count_max": 3}, "count_max"),
        ({"value_min": 0}, "value_min"),
        ({"value_min": 10, "value_max": 5}, "value_max"),
        ({"target_max": 1}, "target_max"),
        ({"ops": ""}, "ops must be a non-empty string of"),
        ({"ops": "+x"}, "ops must be a non-empty string of"),
        ({"heldout_fraction": 0.6}, "heldout_fraction"),
        ({"seed": 1.5}, "seed"),
        ({"format_reward": 2}, "format_reward"),
    ],
)
def test_invalid_knobs_raise_value_error_naming_the_knob(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CountdownTask(**kwargs)


def test_unsatisfiable_configuration_names_the_fix():
    # With only '-' and all numbers equal, every difference is zero: no positive target exists.
    task = CountdownTask(count_min=2, count_max=2, value_min=4, value_max=4, ops="-")
    with pytest.raises(ValueError, match="raise target_max, widen the values or allow"):
        task.train_example(0)
