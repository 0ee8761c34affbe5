"""aggregate and compute_normalizer: the three length aggregations by hand."""

from __future__ import annotations

import pytest
import torch

from drgrpo.objective import aggregate, compute_normalizer

F64 = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-12)

# Per-token losses of two rollouts; lengths 2 and 1; padding holds garbage that must not count.
LOSS = [[1.0, 2.0, 100.0], [4.0, 100.0, 100.0]]
MASK = [[1, 1, 0], [1, 0, 0]]


@pytest.mark.parametrize(
    ("aggregation", "z", "expected"),
    [
        # (1/Z) * [ (1 + 2)/2 + 4/1 ] = 5.5 / Z
        ("seq_mean_token_mean", 2.0, 5.5 / 2),
        # (1/Z) * (1 + 2 + 4)
        ("token_mean", 3.0, 7.0 / 3),
        ("constant", 2.0, 7.0 / 2),
        ("constant", 6.0, 7.0 / 6),
    ],
)
def test_aggregate_by_hand(aggregation, z, expected):
    out = aggregate(
        torch.tensor(LOSS, dtype=F64), torch.tensor(MASK), aggregation=aggregation, normalizer=z
    )
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64), **TIGHT)


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "constant"])
def test_gradient_weights_by_hand(aggregation):
    # d loss / d L_it = m_it / Z, times 1/|y_i| for seq_mean_token_mean; exactly 0 on padding.
    loss = torch.tensor(LOSS, dtype=F64, requires_grad=True)
    out = aggregate(
        loss, torch.tensor(MASK, dtype=torch.bool), aggregation=aggregation, normalizer=4.0
    )
    (g,) = torch.autograd.grad(out, loss)
    if aggregation == "seq_mean_token_mean":
        expected = [[1 / 8, 1 / 8, 0.0], [1 / 4, 0.0, 0.0]]
    else:
        expected = [[1 / 4, 1 / 4, 0.0], [1 / 4, 0.0, 0.0]]
    torch.testing.assert_close(g, torch.tensor(expected, dtype=F64), **TIGHT)


def test_bool_and_float_masks_agree():
    loss = torch.tensor(LOSS, dtype=F64)
    for agg in ("seq_mean_token_mean", "token_mean", "constant"):
        a = aggregate(loss, torch.tensor(MASK, dtype=torch.bool), aggregation=agg, normalizer=3.0)
        b = aggregate(loss, torch.tensor(MASK, dtype=F64), aggregation=agg, normalizer=3.0)
        assert torch.equal(a, b)


def test_empty_rollout_contributes_zero_under_seq_mean():
    # A row without response tokens has |y_i| = 0: it must add 0 (not NaN from 0/0).
    loss = torch.tensor([[3.0, 5.0], [7.0, 9.0]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1], [0, 0]])
    out = aggregate(loss, mask, aggregation="seq_mean_token_mean", normalizer=2.0)
    (g,) = torch.autograd.grad(out, loss)
    torch.testing.assert_close(out, torch.tensor(4.0 / 2, dtype=F64), **TIGHT)
    torch.testing.assert_close(g, torch.tensor([[0.25, 0.25], [0.0, 0.0]], dtype=F64), **TIGHT)


def test_unknown_aggregation_fails():
    with pytest.raises(ValueError, match="seq_mean"):
        aggregate(torch.zeros(1, 1), torch.ones(1, 1), aggregation="sum", normalizer=1.0)


# --- compute_normalizer --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aggregation", "kw", "z"),
    [
        ("seq_mean_token_mean", {}, 8.0),  # N
        ("token_mean", {}, 37.0),  # response tokens
        ("constant", {}, 8.0),  # default num_sequences: N
        ("constant", {"constant_normalizer": "num_sequences"}, 8.0),
        (
            "constant",
            {"constant_normalizer": "num_sequences_x_max_tokens", "max_tokens": 16},
            128.0,
        ),
    ],
)
def test_normalizer_by_hand(aggregation, kw, z):
    out = compute_normalizer(aggregation, num_sequences=8, num_tokens=37, **kw)
    assert out == z and isinstance(out, float)


def test_constant_normalizer_ignores_the_token_count():
    # Dr.GRPO's Z is a constant: the same whatever the rollouts' lengths.
    a = compute_normalizer("constant", num_sequences=4, num_tokens=10, max_tokens=8)
    b = compute_normalizer("constant", num_sequences=4, num_tokens=30, max_tokens=8)
    assert a == b == 4.0


def test_normalizer_of_a_batch_without_tokens_is_one():
    assert compute_normalizer("token_mean", num_sequences=4, num_tokens=0) == 1.0


def test_normalizer_accepts_tensor_counts():
    # Counts that come straight from mask.sum() (a 0-d tensor), e.g. after an all-reduce.
    z = compute_normalizer("token_mean", num_sequences=2, num_tokens=torch.tensor(37))
    assert float(z) == 37.0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(aggregation="sum"), "aggregation"),
        (dict(aggregation="constant", constant_normalizer="tokens"), "constant_normalizer"),
        (
            dict(aggregation="constant", constant_normalizer="num_sequences_x_max_tokens"),
            "max_tokens",
        ),
        (
            dict(
                aggregation="constant",
                constant_normalizer="num_sequences_x_max_tokens",
                max_tokens=0,
            ),
            "max_tokens",
        ),
    ],
)
def test_normalizer_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        compute_normalizer(num_sequences=2, num_tokens=3, **kw)
