"""The clipped value loss by hand (float64 autograd) and against verl's/TRL's formula.

Four response tokens in two rows (row 1 has two padding columns), eps_v = 0.2:
  tok  V_old  V    G     V_clip  (V-G)^2  (V_clip-G)^2  max      branch      dL/dV (before 1/Z)
  0    0.0    0.5  1.0   0.2     0.25     0.64          0.64     clipped     0
  1    1.0    0.5  0.0   0.8     0.25     0.64          0.64     clipped     0
  2    0.5    0.6  1.0   0.6     0.16     0.16          0.16     inside      V - G = -0.4
  3    0.0    0.5  0.3   0.2     0.04     0.01          0.04     unclipped   V - G = 0.2
token_mean (Z = 4): loss = 0.5 * (0.64 + 0.64 + 0.16 + 0.04) / 4 = 0.185; grad = [0, 0, -0.1, 0.05]
"""

from __future__ import annotations

import pytest
import torch

from drgrpo.objective import value_loss

from . import reference

F64 = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-12)
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])
OLD = torch.tensor([[0.0, 1.0, 0.5], [0.0, 5.0, -5.0]], dtype=F64)  # padding: garbage
RETURNS = torch.tensor([[1.0, 0.0, 1.0], [0.3, float("inf"), 2.0]], dtype=F64)


def new_values():
    return torch.tensor([[0.5, 0.5, 0.6], [0.5, 3.0, 4.0]], dtype=F64, requires_grad=True)


def run(aggregation, normalizer, clip_eps=0.2):
    v = new_values()
    loss, stats = value_loss(
        v, OLD, RETURNS, MASK, normalizer, aggregation=aggregation, clip_eps=clip_eps
    )
    (grad,) = torch.autograd.grad(loss, v)
    return loss, grad, stats


def check(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=F64), **TIGHT)


def test_clipped_value_loss_token_mean_by_hand():
    loss, grad, stats = run("token_mean", 4.0)
    check(loss, 0.185)
    check(grad, [[0.0, 0.0, -0.1], [0.05, 0.0, 0.0]])
    assert stats["value_clipped_tokens"].item() == 2
    check(stats["value_sq_error_sum"], 0.25 + 0.25 + 0.16 + 0.04)


def test_clipped_value_loss_seq_mean_token_mean_by_hand():
    # Z = 2 rows; row 0 (3 tokens): 0.5 * (0.64 + 0.64 + 0.16) / 3 = 0.24, row 1: 0.5 * 0.04 = 0.02
    # loss = (0.24 + 0.02) / 2 = 0.13; grad row 0 token 2: -0.4 / (3 * 2), row 1: 0.2 / 2
    loss, grad, _ = run("seq_mean_token_mean", 2.0)
    check(loss, 0.13)
    check(grad, [[0.0, 0.0, -0.4 / 6], [0.1, 0.0, 0.0]])


def test_value_loss_without_clip_by_hand():
    # 0.5 (V - G)^2 = [0.125, 0.125, 0.08, 0.02] -> / 4 = 0.0875; grad (V - G) / 4
    loss, grad, stats = run("token_mean", 4.0, clip_eps=None)
    check(loss, 0.0875)
    check(grad, [[-0.125, 0.125, -0.1], [0.05, 0.0, 0.0]])
    assert stats["value_clipped_tokens"].item() == 0


@pytest.mark.parametrize("seed", range(4))
def test_value_loss_matches_verl_and_trl(seed):
    g = torch.Generator().manual_seed(seed)
    n, t_max = 6, 5
    lengths = torch.randint(1, t_max + 1, (n,), generator=g)
    mask = (torch.arange(t_max).unsqueeze(0) < lengths.unsqueeze(1)).to(F64)
    old = torch.randn(n, t_max, generator=g, dtype=F64)
    returns = torch.randn(n, t_max, generator=g, dtype=F64)
    v = (old + 0.4 * torch.randn(n, t_max, generator=g, dtype=F64)).requires_grad_()
    loss, stats = value_loss(v, old, returns, mask, float(mask.sum()), aggregation="token_mean")
    ref_loss, ref_clipfrac = reference.verl_value_loss(v, returns, old, mask, 0.2)
    torch.testing.assert_close(loss, ref_loss, **TIGHT)
    torch.testing.assert_close(stats["value_clipped_tokens"] / mask.sum(), ref_clipfrac, **TIGHT)
    assert 0 < stats["value_clipped_tokens"] < mask.sum()  # the batch exercises both branches
    (g1,) = torch.autograd.grad(loss, v)
    (g2,) = torch.autograd.grad(reference.verl_value_loss(v, returns, old, mask, 0.2)[0], v)
    torch.testing.assert_close(g1, g2, **TIGHT)
