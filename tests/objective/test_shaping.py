"""DAPO's data side: the overlong soft punishment at the window's edges, and informative groups.

L_max = 10, L_cache = 4: the window starts after |y| = 6.
    |y| = 5 -> 0;  6 -> 0 (edge);  7 -> (6 - 7)/4 = -0.25;  9 -> -0.75;  10 -> -1 (edge);  11 -> -1
"""

from __future__ import annotations

import pytest
import torch

from drgrpo.objective import informative_groups, overlong_cache_tokens, overlong_penalty

from . import reference

F64 = torch.float64


def test_overlong_penalty_at_the_window_edges():
    lengths = torch.tensor([5, 6, 7, 9, 10, 11])
    out = overlong_penalty(lengths, max_tokens=10, cache_tokens=4, dtype=F64)
    assert out.tolist() == [0.0, 0.0, -0.25, -0.75, -1.0, -1.0]
    half = overlong_penalty(lengths, max_tokens=10, cache_tokens=4, penalty=0.5, dtype=F64)
    assert half.tolist() == [0.0, 0.0, -0.125, -0.375, -0.5, -0.5]
    assert overlong_penalty(lengths, 10, 0).tolist() == [0.0] * 6  # no window: off
    assert overlong_penalty(lengths, 10, 4).dtype == torch.float32


def test_overlong_penalty_matches_daPOs_formula_one_by_one():
    lengths = torch.arange(0, 60)
    out = overlong_penalty(lengths, max_tokens=48, cache_tokens=10, dtype=F64)
    expected = [reference.dapo_overlong(n, 48, 10) for n in range(60)]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-15)


def test_cache_tokens_from_the_fraction():
    assert overlong_cache_tokens(0.2, 20480) == 4096  # DAPO's own numbers
    assert overlong_cache_tokens(0.2, 48) == 10 and overlong_cache_tokens(0.0, 48) == 0
    with pytest.raises(ValueError, match="fraction"):
        overlong_cache_tokens(1.0, 48)
    with pytest.raises(ValueError, match="cache"):
        overlong_penalty(torch.tensor([1]), max_tokens=4, cache_tokens=5)


def test_informative_groups():
    # K = 3: [1,1,1] agree; [0,1,0] do not; [0.5]*3 agree; [0,0,0] agree
    rewards = torch.tensor([1, 1, 1, 0, 1, 0, 0.5, 0.5, 0.5, 0, 0, 0], dtype=F64)
    assert informative_groups(rewards, 3).tolist() == [False, True, False, False]
    # the same rewards in groups of 2: [1,1] [1,0] [1,0] [.5,.5] [.5,0] [0,0]
    assert informative_groups(rewards, 2).tolist() == [False, True, True, False, True, False]
    assert not informative_groups(rewards, 1).any()  # one rollout always agrees with itself
    # the smallest difference counts (no tolerance): rewards are verifier outputs
    assert informative_groups(torch.tensor([0.7, 0.7 + 1e-12], dtype=F64), 2).tolist() == [True]
    with pytest.raises(ValueError, match="K = 5"):
        informative_groups(rewards, 5)
