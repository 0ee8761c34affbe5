"""Reference-answer extraction presets, one table row per case."""

import re

import pytest

from drgrpo.tasks.answers import compile_answer_regex, extract_reference, last_boxed

CASES = [
    # (text, answer_format, expected)
    ("42", "none", "42"),
    ("  42 \n", "none", "42"),
    ("   ", "none", None),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "gsm8k", "72"),
    ("#### 1,234", "gsm8k", "1234"),  # GSM8K's thousands separators
    ("#### 1,5", "gsm8k", "1,5"),  # not a thousands group: kept
    ("#### 3\n#### 4", "gsm8k", "4"),  # the last mark wins
    ("no mark here 72", "gsm8k", None),
    ("####   ", "gsm8k", None),
    ("so $\\boxed{\\frac{1}{2}}$.", "boxed", "\\frac{1}{2}"),
    ("\\boxed{a{b{c}}d}", "boxed", "a{b{c}}d"),  # nested braces
    ("\\boxed{1} then \\boxed{2}", "boxed", "2"),  # the last box
    ("\\fbox{3}", "boxed", "3"),
    ("\\boxed{1} \\fbox{3}", "boxed", "3"),
    ("\\boxed{5", "boxed", None),  # unbalanced
    ("\\boxed 5", "boxed", None),  # no braces: not a box
    ("\\boxed{}", "boxed", None),
    ("<answer> 7 </answer>", "answer_tag", "7"),
    ("<answer>1</answer><answer>2</answer>", "answer_tag", "2"),
    ("<answer>7", "answer_tag", None),
    ("Answer: 12 ... Answer: 13", "regex", "13"),
    ("nothing", "regex", None),
]


@pytest.mark.parametrize(("text", "answer_format", "expected"), CASES)
def test_extraction_table(text, answer_format, expected):
    regex = compile_answer_regex(r"Answer: (\d+)") if answer_format == "regex" else None
    assert extract_reference(text, answer_format, regex) == expected


def test_last_boxed_ignores_an_earlier_closed_box_when_the_last_is_open():
    assert last_boxed("\\boxed{1} and \\boxed{2") is None


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"Answer: \d+", "has 0 groups; it needs exactly one"),
        (r"(a)(b)", "has 2 groups"),
        (r"(", "not a valid regex"),
        ("", "must be a regular expression"),
    ],
)
def test_bad_regex_is_explained(pattern, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        compile_answer_regex(pattern)


def test_unknown_format_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: none, gsm8k, boxed, answer_tag, regex"):
        extract_reference("x", "latex")
