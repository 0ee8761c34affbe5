"""Reference-answer extraction presets: how the answer column of a dataset becomes the reference.

    none        the column is the answer                      "42"                       -> "42"
    gsm8k       text after the last `####` (GSM8K)            "... so 6*7=42.\\n#### 42" -> "42"
    boxed       content of the last \\boxed{...} (MATH)       "... $\\boxed{\\frac12}$"   -> "\\frac12"
    answer_tag  content of the last <answer>...</answer>      "<answer> 7 </answer>"     -> "7"
    regex       group 1 of the last match of `answer_regex`   r"Answer: (\\S+)"

Extraction happens once, when the task is built; a row whose answer extracts to nothing is an
error that names the file and the row, so a wrong preset fails before any model is loaded.
"""

from __future__ import annotations

import re

ANSWER_FORMATS = ("none", "gsm8k", "boxed", "answer_tag", "regex")

_GSM8K_MARK = "####"
_BOXED = ("\\boxed", "\\fbox")
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
# GSM8K writes thousands with commas ("#### 1,234"); the number itself is the answer.
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces balanced; None if
    absent or unbalanced. `\\boxed 5` (no braces) is not a box."""
    found = [(at, marker) for marker in _BOXED if (at := text.rfind(marker + "{")) >= 0]
    if not found:
        return None
    at, marker = max(found)
    start = at + len(marker) + 1
    depth = 1
    for end in range(start, len(text)):
        char = text[end]
        depth += (char == "{") - (char == "}")
        if depth == 0:
            return text[start:end]
    return None


def last_answer_tag(text: str) -> str | None:
    """Content of the last closed `<answer>...</answer>`; None if there is none."""
    start = text.rfind(_ANSWER_OPEN)
    if start < 0:
        return None
    end = text.find(_ANSWER_CLOSE, start + len(_ANSWER_OPEN))
    return None if end < 0 else text[start + len(_ANSWER_OPEN) : end]


def compile_answer_regex(pattern: object) -> re.Pattern:
    """`pattern` compiled, or a ValueError: it must be a regex with exactly one group."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"answer_regex must be a regular expression, got {pattern!r}")
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"answer_regex {pattern!r} is not a valid regex: {err}") from None
    if compiled.groups != 1:
        raise ValueError(
            f"answer_regex {pattern!r} has {compiled.groups} groups; it needs exactly one, "
            "around the answer, e.g. r'Answer: (\\S+)' (use (?:...) for the others)"
        )
    return compiled


def extract_reference(text: str, answer_format: str, regex: re.Pattern | None = None) -> str | None:
    """The reference answer in `text` under `answer_format` (see the module docstring), stripped;
    None when the preset finds nothing (the caller reports the row)."""
    if answer_format == "none":
        found = text
    elif answer_format == "gsm8k":
        at = text.rfind(_GSM8K_MARK)
        found = None if at < 0 else _THOUSANDS.sub("", text[at + len(_GSM8K_MARK) :])
    elif answer_format == "boxed":
        found = last_boxed(text)
    elif answer_format == "answer_tag":
        found = last_answer_tag(text)
    elif answer_format == "regex":
        if regex is None:
            raise ValueError("answer_format='regex' needs answer_regex=...")
        matches = list(regex.finditer(text))
        found = matches[-1].group(1) if matches else None
    else:
        raise ValueError(
            f"unknown answer_format {answer_format!r}; valid: {', '.join(ANSWER_FORMATS)}"
        )
    found = None if found is None else found.strip()
    return found or None
