"""KL estimators (Schulman 2020) by hand, k3's precision near 0, and the KL-in-reward penalty.

d = logp_ref - logp_theta at the sampled token; each estimator and its derivative w.r.t. logp_theta
(dd/dlogp = -1):
    k1 = -d                 dk1/dlogp = 1
    k2 = d^2 / 2            dk2/dlogp = -d
    k3 = exp(d) - d - 1     dk3/dlogp = -exp(d) + 1 = 1 - exp(ref - logp)
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drgrpo.objective import kl_penalized_rewards, kl_per_token

F64 = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-12)
LN2 = math.log(2.0)

# d = ln 2, -ln 2, 0, 0.3 (columns), for logp = 0 and ref = d
D = [LN2, -LN2, 0.0, 0.3]
EXPECTED = {
    # value, derivative w.r.t. logp
    "k1": ([-LN2, LN2, 0.0, -0.3], [1.0, 1.0, 1.0, 1.0]),
    "k2": ([LN2**2 / 2, LN2**2 / 2, 0.0, 0.045], [-LN2, LN2, 0.0, -0.3]),
    # exp(ln2) - ln2 - 1 = 1 - ln2; exp(-ln2) + ln2 - 1 = ln2 - 1/2; 1 - exp(+-ln2) = -1, 1/2
    "k3": (
        [1 - LN2, LN2 - 0.5, 0.0, math.exp(0.3) - 1.3],
        [-1.0, 0.5, 0.0, 1 - math.exp(0.3)],
    ),
}


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_estimator_values_and_gradients_by_hand(estimator):
    logp = torch.zeros(1, 4, dtype=F64, requires_grad=True)
    ref = torch.tensor([D], dtype=F64)
    kl = kl_per_token(logp, ref, estimator)
    (g,) = torch.autograd.grad(kl.sum(), logp)
    value, grad = EXPECTED[estimator]
    torch.testing.assert_close(kl, torch.tensor([value], dtype=F64), **TIGHT)
    torch.testing.assert_close(g, torch.tensor([grad], dtype=F64), **TIGHT)


def test_d_is_ref_minus_logp_not_logp_alone():
    # logp = -2, ref = -2 + ln2: d = ln2 -> k3 = 1 - ln2, even though neither is 0.
    logp = torch.tensor([[-2.0]], dtype=F64)
    ref = torch.tensor([[-2.0 + LN2]], dtype=F64)
    torch.testing.assert_close(
        kl_per_token(logp, ref, "k3"), torch.tensor([[1 - LN2]], dtype=F64), **TIGHT
    )


def test_no_gradient_reaches_ref_logprobs():
    logp = torch.zeros(1, 2, dtype=F64, requires_grad=True)
    ref = torch.tensor([[LN2, -LN2]], dtype=F64, requires_grad=True)
    g_logp, g_ref = torch.autograd.grad(
        kl_per_token(logp, ref, "k3").sum(), (logp, ref), allow_unused=True
    )
    assert g_ref is None
    torch.testing.assert_close(g_logp, torch.tensor([[-1.0, 0.5]], dtype=F64), **TIGHT)


def _k3_exact(d: float) -> float:
    """exp(d) - d - 1 for the float d, with 60 significant digits (no cancellation left)."""
    with localcontext() as ctx:
        ctx.prec = 60
        x = Decimal(d)  # exact binary value of d
        return float(x.exp() - x - 1)


@pytest.mark.parametrize("d", [1e-2, -1e-2, 1e-3, -1e-3, 1e-6, -1e-6, 1e-9, -1e-9, 1e-12, 3e-15])
def test_k3_tiny_d_is_as_accurate_as_d_itself_float64(d):
    # k3 ~ d^2/2 is far below d: computing exp(d) - 1 - d naively leaves an error of ~ulp(1) = 2e-16
    # (for d = 1e-9 the true value is 5e-19). expm1(d) - d keeps the error within a few ulp(d).
    got = kl_per_token(torch.zeros(1, dtype=F64), torch.tensor([d], dtype=F64), "k3").item()
    assert abs(got - _k3_exact(d)) <= 4 * math.ulp(d), (got, _k3_exact(d))
    assert got > 0


@pytest.mark.parametrize("d", [1e-2, -1e-2, 1e-3, -1e-3, 1e-4])
def test_k3_tiny_d_is_as_accurate_as_d_itself_float32(d):
    d32 = torch.tensor([d], dtype=torch.float32)
    got = kl_per_token(torch.zeros(1), d32, "k3").item()
    ulp32 = 2.0 ** (math.floor(math.log2(abs(d))) - 23)
    exact = _k3_exact(float(d32.item()))
    assert abs(got - exact) <= 4 * ulp32, (got, exact)


@settings(max_examples=100, deadline=None)
@given(
    logp=st.floats(-50.0, 0.0, allow_nan=False),
    ref=st.one_of(
        st.floats(-50.0, 0.0, allow_nan=False),
        st.floats(-1e-6, 1e-6, allow_nan=False),  # tiny d when logp is near 0
    ),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_k2_and_k3_are_non_negative_and_finite(logp, ref, dtype):
    lp, rf = torch.tensor([logp], dtype=dtype), torch.tensor([ref], dtype=dtype)
    for est in ("k2", "k3"):
        kl = kl_per_token(lp, rf, est)
        assert torch.isfinite(kl).all() and (kl >= 0).all(), (est, kl)


def test_huge_log_ratio_stays_finite():
    # A reference probability that underflows (ref = -1e4) would give exp(d) = inf without the
    # documented clamp at |d| = 20: k3(d=-20) = exp(-20) + 19, k3(d=20) = exp(20) - 21.
    logp = torch.zeros(1, 2, dtype=F64)
    ref = torch.tensor([[-1e4, 1e4]], dtype=F64)
    torch.testing.assert_close(
        kl_per_token(logp, ref, "k3"),
        torch.tensor([[math.exp(-20) + 19, math.exp(20) - 21]], dtype=F64),
        **TIGHT,
    )


def test_unknown_estimator_fails():
    with pytest.raises(ValueError, match="k4"):
        kl_per_token(torch.zeros(1), torch.zeros(1), "k4")


# --- KL in the reward (PPO-RLHF, RLOO) ----------------------------------------------------------

LOGP = [[-1.0, -2.0, -7.0], [-0.5, -7.0, -7.0]]  # sampler logprobs; column 2 / columns 1-2: padding
REF = [[-1.5, -1.0, 3.0], [-0.5, 3.0, 3.0]]  # padding holds garbage
MASK = [[1, 1, 0], [1, 0, 0]]


def test_kl_penalized_rewards_k1_by_hand():
    # k1 = logp - ref: row 0: (-1 + 1.5) + (-2 + 1) = 0.5 - 1 = -0.5; row 1: 0 (padding ignored).
    # r' = r - 0.1 * sum_t k1 = [1 + 0.05, 0 - 0].
    out = kl_penalized_rewards(
        torch.tensor([1.0, 0.0], dtype=F64),
        torch.tensor(LOGP, dtype=F64),
        torch.tensor(REF, dtype=F64),
        torch.tensor(MASK),
        kl_coef=0.1,
    )
    torch.testing.assert_close(out, torch.tensor([1.05, 0.0], dtype=F64), **TIGHT)


def test_kl_penalized_rewards_k3_by_hand_and_without_gradient():
    # k3 row 0: d = -0.5 -> exp(-0.5) - 0.5; d = 1 -> e - 2. Row 1: d = 0 -> 0. beta = 0.5.
    logp = torch.tensor(LOGP, dtype=F64, requires_grad=True)
    out = kl_penalized_rewards(
        torch.tensor([1.0, 0.0], dtype=F64),
        logp,
        torch.tensor(REF, dtype=F64),
        torch.tensor(MASK, dtype=torch.bool),
        kl_coef=0.5,
        estimator="k3",
    )
    k3_row0 = (math.exp(-0.5) - 0.5) + (math.e - 2)
    torch.testing.assert_close(out, torch.tensor([1 - 0.5 * k3_row0, 0.0], dtype=F64), **TIGHT)
    assert not out.requires_grad  # the penalty is part of the reward: no gradient through it


def test_kl_penalized_rewards_zero_coef_is_identity():
    r = torch.tensor([1.0, 0.0], dtype=F64)
    out = kl_penalized_rewards(
        r, torch.tensor(LOGP, dtype=F64), torch.tensor(REF, dtype=F64), torch.tensor(MASK),
        kl_coef=0.0,
    )  # fmt: skip
    assert torch.equal(out, r)
