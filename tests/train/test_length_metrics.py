"""The per-step length-bias probes (train/metrics.length_metrics), on a hand-built batch."""

import pytest
import torch

from drgrpo.objective import compute_advantages
from drgrpo.train.metrics import length_metrics

# Two groups of 3, each with one correct rollout: mean-baseline advantages (2/3, -1/3, -1/3).
CORRECT = torch.tensor([1, 0, 0, 1, 0, 0])
LENGTHS = torch.tensor([10, 20, 40, 10, 60, 5])
ADV = compute_advantages(CORRECT.double(), 3, baseline="group_mean", scale="none")


def test_penalty_ratio_is_one_over_length_ratio_under_grpo_and_one_under_constant():
    # Wrong rows sorted by length: 5, 20, 40, 60; thirds of 4 rows are 1 row: 5 vs 60 tokens.
    # GRPO (1/|y_i|): (1/3)/60 over (1/3)/5 = 1/12; a constant normalizer: 1 exactly.
    grpo = length_metrics(ADV, CORRECT, LENGTHS, 3, "seq_mean_token_mean")
    assert grpo["policy/long_wrong_penalty_ratio"] == pytest.approx(1 / 12, rel=1e-12)
    for aggregation in ("constant", "token_mean"):
        out = length_metrics(ADV, CORRECT, LENGTHS, 3, aggregation)
        assert out["policy/long_wrong_penalty_ratio"] == pytest.approx(1.0, rel=1e-12)


def test_gap_is_mean_over_mixed_groups_of_wrong_minus_correct_length():
    # group 1: (20 + 40)/2 - 10 = 20; group 2: (60 + 5)/2 - 10 = 22.5; mean 21.25
    out = length_metrics(ADV, CORRECT, LENGTHS, 3, "constant")
    assert out["rollout/len_gap_wrong_correct"] == pytest.approx(21.25, rel=1e-12)


def test_groups_without_signal_are_left_out():
    # A third group, all wrong: zero advantages (no gradient) and no correct row to compare.
    correct = torch.cat([CORRECT, torch.zeros(3, dtype=torch.long)])
    lengths = torch.cat([LENGTHS, torch.tensor([90, 90, 90])])
    adv = compute_advantages(correct.double(), 3, baseline="group_mean", scale="none")
    out = length_metrics(adv, correct, lengths, 3, "seq_mean_token_mean")
    assert out["policy/long_wrong_penalty_ratio"] == pytest.approx(1 / 12, rel=1e-12)
    assert out["rollout/len_gap_wrong_correct"] == pytest.approx(21.25, rel=1e-12)
    none = length_metrics(adv[6:], correct[6:], lengths[6:], 3, "constant")
    assert none == {"policy/long_wrong_penalty_ratio": None, "rollout/len_gap_wrong_correct": None}
