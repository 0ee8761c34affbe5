"""benchmarks.workers.call_in_subprocess: results come back, failures come back as errors."""

from __future__ import annotations

import math

import pytest
from benchmarks.workers import call_in_subprocess


def test_the_result_comes_back():
    assert call_in_subprocess(math.sqrt, 6.25) == 2.5


def test_a_failure_in_the_child_raises_with_its_traceback():
    with pytest.raises(RuntimeError, match="ValueError"):
        call_in_subprocess(int, "not a number")
