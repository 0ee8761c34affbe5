"""Behaviour correction (TIS / MIS at token, sequence and geometric level) by hand, against verl's
weights, and the property that it never changes the normalizer.

Log-ratios log w = logp_old - logp_sampler, two rows (row 1 has one padding column):
    row 0: [ln 3, ln 0.5, 0]  -> token w [3, 0.5, 1];  sequence 3 * 0.5 * 1 = 1.5;  geometric 1.5^(1/3)
    row 1: [ln 1.5, ln 1.5]   -> token w [1.5, 1.5];  sequence 2.25;               geometric 1.5
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drgrpo.objective import (
    behavior_weights,
    compute_normalizer,
    mismatch_kl_per_token,
    objective_loss,
    resolve_objective,
)

from . import reference

F64 = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-12)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, 3.0]], dtype=F64)
LOG_W = torch.tensor(
    [[math.log(3.0), math.log(0.5), 0.0], [math.log(1.5), math.log(1.5), 0.0]], dtype=F64
)
SAMPLER = OLD - LOG_W
SAMPLER[1, 2] = float("-inf")  # padding: anything
G3 = 1.5 ** (1 / 3)


def weights(correction, level, cap=2.0, lower=0.0):
    w, kept, stats = behavior_weights(OLD, SAMPLER, MASK, correction=correction, level=level,
                                      cap=cap, lower=lower)  # fmt: skip
    return w, kept, stats


def check(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=F64), **TIGHT)


@pytest.mark.parametrize(
    ("correction", "level", "cap", "lower", "expected", "corrected"),
    [
        # TIS, token: only w = 3 exceeds the cap 2
        ("tis", "token", 2.0, 0.0, [[2.0, 0.5, 1.0], [1.5, 1.5, 0.0]], 1),
        # MIS, token, [0.6, 2]: 3 (above) and 0.5 (below) are dropped, the rest keep their w
        ("mis", "token", 2.0, 0.6, [[0.0, 0.0, 1.0], [1.5, 1.5, 0.0]], 2),
        # TIS, sequence: row 1's 2.25 is truncated to 2 (both its tokens count as corrected)
        ("tis", "sequence", 2.0, 0.0, [[1.5, 1.5, 1.5], [2.0, 2.0, 0.0]], 2),
        # MIS, sequence: row 1 (2.25 > 2) is dropped whole
        ("mis", "sequence", 2.0, 0.0, [[1.5, 1.5, 1.5], [0.0, 0.0, 0.0]], 2),
        # geometric, cap 1.2: row 0 1.5^(1/3) = 1.1447 passes, row 1 1.5 does not
        ("tis", "geometric", 1.2, 0.0, [[G3, G3, G3], [1.2, 1.2, 0.0]], 2),
        ("mis", "geometric", 1.2, 0.0, [[G3, G3, G3], [0.0, 0.0, 0.0]], 2),
        # none: weight 1 on every loss token
        ("none", "token", 2.0, 0.0, [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], 0),
    ],
)
def test_weights_by_hand(correction, level, cap, lower, expected, corrected):
    w, kept, stats = weights(correction, level, cap, lower)
    check(w, expected)
    assert stats["behavior_corrected_tokens"].item() == corrected
    if correction == "mis":
        assert torch.equal(kept, (w > 0) & MASK.bool())
    else:
        assert torch.equal(kept, MASK.bool())


def test_mismatch_kl_is_k3_by_hand():
    # k3 = w - ln w - 1: ln3 -> 2 - ln 3; ln 0.5 -> ln 2 - 0.5; 0 -> 0; ln 1.5 -> 0.5 - ln 1.5 (x2)
    k3 = mismatch_kl_per_token(OLD, SAMPLER, MASK)
    l15 = math.log(1.5)
    check(k3, [[2 - math.log(3), math.log(2) - 0.5, 0.0], [0.5 - l15, 0.5 - l15, 0.0]])
    _, _, stats = weights("tis", "token")
    check(stats["mismatch_kl_sum"], k3.sum().item())


def test_geometric_level_is_length_neutral():
    # Every token at w = 1.1: the sequence weight is 1.1^L (2.14 at L = 8: dropped under MIS cap 2),
    # the geometric weight 1.1 at every length (kept).
    lengths = torch.arange(1, 13)
    mask = torch.arange(12).unsqueeze(0) < lengths.unsqueeze(1)  # (12, 12)
    old = torch.zeros(12, 12, dtype=F64)
    sampler = old - math.log(1.1)
    _, kept_seq, _ = behavior_weights(old, sampler, mask, correction="mis", level="sequence")
    _, kept_geo, _ = behavior_weights(old, sampler, mask, correction="mis", level="geometric")
    assert kept_seq.any(dim=1).tolist() == [n < 8 for n in range(1, 13)]
    assert kept_geo.any(dim=1).all()


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_tis_weights_match_verl(level):
    g = torch.Generator().manual_seed(5)
    old = -2 * torch.rand(6, 5, generator=g, dtype=F64)
    sampler = old + 0.4 * torch.randn(6, 5, generator=g, dtype=F64)
    mask = (torch.arange(5).unsqueeze(0) < torch.tensor([5, 3, 1, 4, 2, 5]).unsqueeze(1)).to(F64)
    w, _, stats = behavior_weights(old, sampler, mask, correction="tis", level=level, cap=1.5)
    ref = reference.verl_is_weights(old - sampler, mask, level, 1.5)
    torch.testing.assert_close(w, ref, **TIGHT)
    assert 0 < stats["behavior_corrected_tokens"] < mask.sum()
    # verl logs the k3 mismatch as a token mean
    k3 = stats["mismatch_kl_sum"] / mask.sum()
    torch.testing.assert_close(k3, reference.verl_k3_mismatch(old, sampler, mask), **TIGHT)


# --- through objective_loss ----------------------------------------------------------------------


def loss_and_grad(spec, advantages, sampler=SAMPLER, ref=None):
    logp = OLD.clone().requires_grad_()  # ratio 1: inside every clip
    loss, stats = objective_loss(spec, logp, OLD, torch.tensor(advantages, dtype=F64), MASK, 2.0,
                                 ref_logprobs=ref, sampler_logprobs=sampler)  # fmt: skip
    (grad,) = torch.autograd.grad(loss, logp)
    return loss, grad, stats


def test_tis_in_the_dr_grpo_loss_by_hand():
    # A = [+1, -1], Z = N = 2: dL/dlogp = -A w / 2 -> row 0 -[2, 0.5, 1]/2, row 1 +[1.5, 1.5]/2
    _, grad, stats = loss_and_grad(
        resolve_objective("dr_grpo", behavior_correction="tis"), [1.0, -1.0]
    )
    check(grad, [[-1.0, -0.25, -0.5], [0.75, 0.75, 0.0]])
    assert stats["behavior_corrected_tokens"].item() == 1 and stats["tokens"].item() == 5


def test_mis_drops_tokens_but_not_their_count_in_z():
    # MIS [0.6, 2]: row 0 keeps only its third token; Z stays N = 2 (and under token_mean it
    # stays 5 tokens, not 3): row 0 [0, 0, -1/2], row 1 [0.75, 0.75]
    spec = resolve_objective("dr_grpo", behavior_correction="mis", behavior_lower=0.6)
    _, grad, _ = loss_and_grad(spec, [1.0, -1.0])
    check(grad, [[0.0, 0.0, -0.5], [0.75, 0.75, 0.0]])
    spec = resolve_objective("dapo", behavior_correction="mis", behavior_lower=0.6)
    logp = OLD.clone().requires_grad_()
    loss, _ = objective_loss(spec, logp, OLD, torch.tensor([1.0, -1.0], dtype=F64), MASK, 5.0,
                             sampler_logprobs=SAMPLER)  # fmt: skip
    (grad,) = torch.autograd.grad(loss, logp)
    check(grad, [[0.0, 0.0, -1 / 5], [1.5 / 5, 1.5 / 5, 0.0]])


def test_mis_rejected_tokens_leave_the_kl_term_tis_does_not_weight_it():
    # k3 in the loss, beta = 1, ref = logp + ln 2 on every token: dKL/dlogp = 1 - 2 = -1, / Z = 2.
    # A = 0 isolates the KL term. MIS [0.6, 2] keeps tokens (0,2), (1,0), (1,1); TIS keeps all, w 1.
    ref = OLD + math.log(2.0)
    mis = resolve_objective("dr_grpo", kl_coef=1.0, behavior_correction="mis", behavior_lower=0.6)
    _, grad, stats = loss_and_grad(mis, [0.0, 0.0], ref=ref)
    check(grad, [[0.0, 0.0, -0.5], [-0.5, -0.5, 0.0]])
    check(stats["kl_sum"], 5 * (2 - math.log(2) - 1))  # the logged KL is over all loss tokens
    tis = resolve_objective("dr_grpo", kl_coef=1.0, behavior_correction="tis")
    _, grad, _ = loss_and_grad(tis, [0.0, 0.0], ref=ref)
    check(grad, [[-0.5, -0.5, -0.5], [-0.5, -0.5, 0.0]])


def test_no_sampler_logprobs_with_a_correction_is_refused():
    with pytest.raises(ValueError, match="sampler_logprobs"):
        loss_and_grad(
            resolve_objective("dr_grpo", behavior_correction="tis"), [1.0, -1.0], sampler=None
        )


def test_no_correction_logs_the_mismatch_and_changes_nothing():
    spec = resolve_objective("dr_grpo")
    loss_a, grad_a, stats = loss_and_grad(spec, [1.0, -1.0])
    loss_b, grad_b, _ = loss_and_grad(spec, [1.0, -1.0], sampler=None)
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)
    assert stats["mismatch_kl_sum"].item() > 0 and stats["behavior_corrected_tokens"].item() == 0


# --- property: the normalizer never changes -------------------------------------------------------


@st.composite
def batches(draw):
    n, t = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    lengths = draw(st.lists(st.integers(0, t), min_size=n, max_size=n))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    old = -3.0 * torch.rand(n, t, generator=g, dtype=F64)
    return dict(
        mask=torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1),
        old=old,
        logp=old + 0.3 * torch.randn(n, t, generator=g, dtype=F64),
        sampler=old + 0.5 * torch.randn(n, t, generator=g, dtype=F64),
        adv=torch.randn(n, generator=g, dtype=F64),
    )


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "constant"])
@pytest.mark.parametrize(("correction", "level"),
                         [("tis", "token"), ("mis", "token"), ("tis", "sequence"),
                          ("mis", "sequence"), ("mis", "geometric")])  # fmt: skip
@settings(max_examples=30, deadline=None)
@given(d=batches())
def test_correction_only_reweights_tokens_and_never_changes_the_normalizer(
    aggregation, correction, level, d
):
    # With w >= 0, w * -min(rho A, clip(rho) A) = -min(rho wA, clip(rho) wA): the corrected loss
    # must equal the UNcorrected loss with advantages w_it * A_i, the same loss_mask and the same Z.
    # If correction re-counted Z or |y_i| from the kept tokens, the two would differ.
    mask = d["mask"]
    cap, lower = (1.3, 0.8) if level == "geometric" else (2.0, 0.5)
    spec = resolve_objective("grpo", kl_coef=0.0, aggregation=aggregation, clip_eps_high=0.28,
                             behavior_correction=correction, behavior_level=level,
                             behavior_cap=cap, behavior_lower=lower)  # fmt: skip
    plain = resolve_objective("grpo", kl_coef=0.0, aggregation=aggregation, clip_eps_high=0.28)
    z = compute_normalizer(aggregation, num_sequences=mask.shape[0], num_tokens=int(mask.sum()))
    w, _, _ = behavior_weights(d["old"], d["sampler"], mask, correction=correction, level=level,
                               cap=cap, lower=lower)  # fmt: skip
    logp = d["logp"].clone().requires_grad_()
    loss, _ = objective_loss(spec, logp, d["old"], d["adv"], mask, z, sampler_logprobs=d["sampler"])
    (grad,) = torch.autograd.grad(loss, logp)
    logp2 = d["logp"].clone().requires_grad_()
    loss2, _ = objective_loss(plain, logp2, d["old"], d["adv"].unsqueeze(1) * w, mask, z)
    (grad2,) = torch.autograd.grad(loss2, logp2)
    torch.testing.assert_close(loss, loss2, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, grad2, rtol=1e-12, atol=1e-14)


def test_the_normalizer_property_can_fail():
    # Negative control for the property above: re-counting Z from the tokens MIS kept (what a
    # loss that rewrote its mask would do) gives a different loss on the hand batch.
    spec = resolve_objective("dapo", behavior_correction="mis", behavior_lower=0.6)
    _, kept, _ = behavior_weights(OLD, SAMPLER, MASK, correction="mis", lower=0.6)
    a = torch.tensor([1.0, -1.0], dtype=F64)
    right, _ = objective_loss(spec, OLD, OLD, a, MASK, 5.0, sampler_logprobs=SAMPLER)
    wrong, _ = objective_loss(spec, OLD, OLD, a, kept, float(kept.sum()), sampler_logprobs=SAMPLER)
    assert not torch.allclose(right, wrong)
