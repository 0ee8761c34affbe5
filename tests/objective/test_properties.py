"""Properties of the objective that must hold for any batch (hypothesis).

* the summed loss and gradient of ANY split into micro-batches equal the whole batch's, for every
  aggregation, when Z comes from ``compute_normalizer`` over the whole batch (the bug TRL, verl,
  OpenRLHF, open-instruct and prime-rl each shipped: Z from each micro-batch's own tokens);
* right-padding, and whatever sits in masked positions, changes nothing;
* a group whose rewards are all equal gets exactly zero gradient under the group baselines;
* group-baseline advantages do not move when every reward is shifted by a constant;
* RLOO's advantage is K/(K-1) times Dr.GRPO's;
* Dr.GRPO's gradient is linear in the reward scale; GRPO's is scale-invariant (up to eps).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from drgrpo.objective import (
    compute_advantages,
    compute_normalizer,
    objective_loss,
    resolve_objective,
)

F64 = torch.float64
SAME = dict(rtol=1e-12, atol=1e-14)  # the same float64 arithmetic, summed in another order
L_MAX = 16  # max_new_tokens: a constant of the run, not the padded width of a batch

AGGREGATIONS = [
    ("seq_mean_token_mean", "num_sequences"),
    ("token_mean", "num_sequences"),
    ("constant", "num_sequences"),
    ("constant", "num_sequences_x_max_tokens"),
]
AGG_IDS = ["seq_mean_token_mean", "token_mean", "constant-N", "constant-N_x_Lmax"]


@st.composite
def batches(draw, min_k=1, equal_group=False):
    """B groups of K rollouts, right-padded to T, with float64 tensors from a drawn seed."""
    b = draw(st.integers(1, 3))
    k = draw(st.integers(min_k, 4))
    t = draw(st.integers(1, 6))
    n = b * k
    lengths = draw(st.lists(st.integers(0, t), min_size=n, max_size=n))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    # rewards on a grid of 1/4 (verifier-like): exact sums, and non-equal groups have std >= 0.1
    rewards = torch.randint(-8, 9, (n,), generator=g).to(F64) / 4
    old = -3.0 * torch.rand(n, t, generator=g, dtype=F64)
    return dict(
        b=b,
        k=k,
        t=t,
        rewards=rewards,
        mask=torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1),
        lengths=lengths,
        old=old,
        logp=old + 0.4 * torch.randn(n, t, generator=g, dtype=F64),
        ref=old + 0.4 * torch.randn(n, t, generator=g, dtype=F64),
        garbage=5.0 * torch.randn(n, t + 10, generator=g, dtype=F64),  # >= t + 2 + max extra
    )


def full_spec(aggregation, constant_normalizer):
    """Every part of the objective switched on: asymmetric clip, dual clip, k3 KL in the loss."""
    return resolve_objective(
        "grpo",
        aggregation=aggregation,
        constant_normalizer=constant_normalizer,
        clip_eps_low=0.2,
        clip_eps_high=0.28,
        dual_clip_c=3.0,
        kl_coef=0.1,
        kl_estimator="k3",
    )


def advantages(spec, rewards, k):
    return compute_advantages(
        rewards, k, baseline=spec.baseline, scale=spec.scale, std_ddof=spec.std_ddof,
        eps=spec.adv_eps,
    )  # fmt: skip


def normalizer(spec, mask):
    return compute_normalizer(
        spec.aggregation, num_sequences=mask.shape[0], num_tokens=int(mask.sum()),
        max_tokens=L_MAX, constant_normalizer=spec.constant_normalizer,
    )  # fmt: skip


def whole_batch(spec, d, rewards=None):
    logp = d["logp"].clone().requires_grad_()
    adv = advantages(spec, d["rewards"] if rewards is None else rewards, d["k"])
    loss, _ = objective_loss(
        spec, logp, d["old"], adv, d["mask"], normalizer(spec, d["mask"]), ref_logprobs=d["ref"]
    )
    (grad,) = torch.autograd.grad(loss, logp)
    return loss, grad


# --- micro-batches and padding -------------------------------------------------------------------


@pytest.mark.parametrize(("aggregation", "constant_normalizer"), AGGREGATIONS, ids=AGG_IDS)
@settings(max_examples=25, deadline=None)
@given(d=batches(), data=st.data())
def test_any_micro_batch_split_sums_to_the_whole_batch(aggregation, constant_normalizer, d, data):
    spec = full_spec(aggregation, constant_normalizer)
    n = d["rewards"].shape[0]
    loss_whole, grad_whole = whole_batch(spec, d)

    # Any assignment of rows to micro-batches (not only contiguous chunks), each micro-batch
    # trimmed to its own longest response or padded further to the right.
    parts = data.draw(
        st.lists(st.integers(0, 3), min_size=n, max_size=n), label="micro-batch of row"
    )
    extra = data.draw(st.sampled_from([None, 0, 3]), label="extra padding (None: trim)")
    z = normalizer(spec, d["mask"])  # ONCE, from the whole batch
    adv = advantages(spec, d["rewards"], d["k"])  # advantages need whole groups: also once
    logp = d["logp"].clone().requires_grad_()
    total = torch.zeros((), dtype=F64)
    for p in sorted(set(parts)):
        rows = torch.tensor([i for i in range(n) if parts[i] == p])
        width = max([d["lengths"][i] for i in rows.tolist()] + [1]) if extra is None else d["t"]
        pad = 0 if extra is None else extra
        cols = slice(0, width)
        lp = torch.cat([logp[rows, cols], d["garbage"][rows, :pad]], dim=1)
        old = torch.cat([d["old"][rows, cols], d["garbage"][rows, 1 : pad + 1]], dim=1)
        ref = torch.cat([d["ref"][rows, cols], d["garbage"][rows, 2 : pad + 2]], dim=1)
        mask = torch.cat([d["mask"][rows, cols], torch.zeros(len(rows), pad, dtype=torch.bool)], 1)
        loss, _ = objective_loss(spec, lp, old, adv[rows], mask, z, ref_logprobs=ref)
        total = total + loss
    (grad,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(total, loss_whole, **SAME)
    torch.testing.assert_close(grad, grad_whole, **SAME)


@pytest.mark.parametrize(("aggregation", "constant_normalizer"), AGGREGATIONS, ids=AGG_IDS)
@settings(max_examples=20, deadline=None)
@given(d=batches(), extra=st.integers(1, 8))
def test_extra_right_padding_changes_nothing(aggregation, constant_normalizer, d, extra):
    spec = full_spec(aggregation, constant_normalizer)
    loss, grad = whole_batch(spec, d)
    n, t = d["rewards"].shape[0], d["t"]
    padded = dict(
        d,
        logp=torch.cat([d["logp"], d["garbage"][:, :extra]], 1),
        old=torch.cat([d["old"], d["garbage"][:, 1 : extra + 1]], 1),
        ref=torch.cat([d["ref"], d["garbage"][:, 2 : extra + 2]], 1),
        mask=torch.cat([d["mask"], torch.zeros(n, extra, dtype=torch.bool)], 1),
    )
    loss_p, grad_p = whole_batch(spec, padded)
    torch.testing.assert_close(loss_p, loss, **SAME)
    torch.testing.assert_close(grad_p[:, :t], grad, **SAME)
    assert torch.equal(grad_p[:, t:], torch.zeros(n, extra, dtype=F64))


@pytest.mark.parametrize("preset", ["reinforce", "ppo", "grpo", "rloo", "dapo", "dr_grpo"])
@settings(max_examples=10, deadline=None)
@given(d=batches(min_k=2), holes=st.data())
def test_masked_tokens_get_exactly_zero_gradient(preset, d, holes):
    # Any mask pattern (holes in the middle too, e.g. tool output), garbage in the masked places.
    spec = resolve_objective(preset, kl_placement="loss")
    n, t = d["mask"].shape
    flat = holes.draw(st.lists(st.booleans(), min_size=n * t, max_size=n * t), label="mask")
    mask = torch.tensor(flat).reshape(n, t)
    logp = torch.where(mask, d["logp"], d["garbage"][:, :t]).requires_grad_()
    old = torch.where(mask, d["old"], d["garbage"][:, 1 : t + 1])
    ref = torch.where(mask, d["ref"], d["garbage"][:, 2 : t + 2])
    values = torch.zeros(n, dtype=F64)
    adv = compute_advantages(
        d["rewards"], d["k"], baseline=spec.baseline, scale=spec.scale, values=values
    )
    loss, _ = objective_loss(spec, logp, old, adv, mask, normalizer(spec, mask), ref_logprobs=ref)
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss)
    assert torch.equal(grad[~mask], torch.zeros(int((~mask).sum()), dtype=F64))


# --- groups, baselines, reward scale -------------------------------------------------------------

GROUP_BASELINES = [
    (baseline, scale)
    for baseline in ("group_mean", "leave_one_out")
    for scale in ("none", "group_std", "batch_std")
]


@pytest.mark.parametrize(("baseline", "scale"), GROUP_BASELINES)
@settings(max_examples=20, deadline=None)
@given(
    d=batches(min_k=2),
    which=st.integers(0, 2),
    value=st.floats(-2.0, 2.0, allow_nan=False, width=32),
    aggregation=st.sampled_from(AGGREGATIONS),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_group_with_equal_rewards_gets_zero_gradient(
    baseline, scale, d, which, value, aggregation, dtype
):
    # Any reward value, including ones whose float32 group mean is inexact (0.7, ...).
    spec = resolve_objective(
        "grpo", baseline=baseline, scale=scale, aggregation=aggregation[0],
        constant_normalizer=aggregation[1], kl_coef=0.0,
    )  # fmt: skip
    k, g = d["k"], which % d["b"]
    rewards = d["rewards"].clone()
    rewards[g * k : (g + 1) * k] = value
    rewards = rewards.to(dtype)
    logp = d["logp"].to(dtype).requires_grad_()
    adv = advantages(spec, rewards, k)
    mask = d["mask"]
    loss, _ = objective_loss(spec, logp, d["old"].to(dtype), adv, mask, normalizer(spec, mask))
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.equal(adv[g * k : (g + 1) * k], torch.zeros(k, dtype=dtype))
    assert torch.equal(grad[g * k : (g + 1) * k], torch.zeros(k, d["t"], dtype=dtype))


@pytest.mark.parametrize(("baseline", "scale"), GROUP_BASELINES)
@settings(max_examples=25, deadline=None)
@given(d=batches(min_k=2), c=st.floats(-100.0, 100.0, allow_nan=False))
def test_group_baseline_advantages_ignore_a_reward_shift(baseline, scale, d, c):
    r, k = d["rewards"], d["k"]
    a = compute_advantages(r, k, baseline=baseline, scale=scale)
    a_shifted = compute_advantages(r + c, k, baseline=baseline, scale=scale)
    # Exact in real arithmetic; in float64 r + c and the means are off by a few ulp(M), M the
    # largest |reward|, and dividing by (std + eps) scales that up: |error| <= ~K ulp(M) / (s + eps).
    m = float((r.abs() + abs(c)).max())
    if scale == "group_std":
        s = r.reshape(-1, k).std(dim=1, correction=0).repeat_interleave(k)
    elif scale == "batch_std":
        s = r.std(correction=0).expand_as(r)
    else:
        s = torch.full_like(r, 1.0 - 1e-6)
    bound = 16 * k * math.ulp(m) / (s + 1e-6)
    assert ((a_shifted - a).abs() <= bound).all(), (a, a_shifted, bound)


def test_value_and_no_baseline_do_move_with_a_shift():
    # The shift test above could not fail if the shift were never applied: check it bites here.
    r = torch.tensor([1.0, 0.0, 0.5, 0.25], dtype=F64)
    for kw in (dict(baseline="none"), dict(baseline="value", values=torch.zeros(4, dtype=F64))):
        a, b = compute_advantages(r, 2, **kw), compute_advantages(r + 1.0, 2, **kw)
        torch.testing.assert_close(b - a, torch.ones(4, dtype=F64), rtol=0, atol=1e-15)


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(2, 8),
    b=st.integers(1, 3),
    data=st.data(),
)
def test_rloo_is_k_over_k_minus_1_times_dr_grpo(k, b, data):
    # r_i - mean_{j != i} r_j = r_i - (S - r_i)/(K-1) = (K r_i - S)/(K-1) = K/(K-1) (r_i - S/K)
    rewards = data.draw(
        st.lists(st.floats(-10.0, 10.0, allow_nan=False), min_size=b * k, max_size=b * k)
    )
    r = torch.tensor(rewards, dtype=F64)
    rloo = compute_advantages(r, k, baseline="leave_one_out")
    dr = compute_advantages(r, k, baseline="group_mean")
    m = max(1.0, float(r.abs().max()))
    torch.testing.assert_close(rloo, k / (k - 1) * dr, rtol=0, atol=16 * k * math.ulp(m))


def _grad_at_scale(spec, d, c):
    return whole_batch(spec, dict(d, ref=None), rewards=c * d["rewards"])[1]


@settings(max_examples=30, deadline=None)
@given(
    d=batches(min_k=2),
    c=st.floats(0.01, 100.0),
    aggregation=st.sampled_from(AGGREGATIONS),
)
def test_dr_grpo_gradient_is_linear_in_the_reward_scale(d, c, aggregation):
    spec = resolve_objective(
        "dr_grpo", aggregation=aggregation[0], constant_normalizer=aggregation[1], dual_clip_c=3.0
    )
    g1, gc = _grad_at_scale(spec, d, 1.0), _grad_at_scale(spec, d, c)
    torch.testing.assert_close(gc, c * g1, rtol=1e-12, atol=1e-15 * c)


@settings(max_examples=30, deadline=None)
@given(d=batches(min_k=2), c=st.floats(3.0, 100.0))
def test_grpo_gradient_is_scale_invariant_not_linear(d, c):
    spec = resolve_objective("grpo", kl_coef=0.0)
    g1, gc = _grad_at_scale(spec, d, 1.0), _grad_at_scale(spec, d, c)
    assume(g1.abs().max() > 0)
    # A_c / A_1 = c (s + eps) / (c s + eps) per group, s = the group's std at scale 1:
    # exactly 1 but for eps, and the clip decisions depend only on the sign of A.
    k = d["k"]
    s = d["rewards"].reshape(-1, k).std(dim=1, correction=0).repeat_interleave(k).unsqueeze(1)
    factor = c * (s + 1e-6) / (c * s + 1e-6)
    torch.testing.assert_close(gc, g1 * factor, rtol=1e-10, atol=1e-15)
    # "up to eps": with s >= 0.1 (rewards on a grid of 1/4) the factor is within 1e-5 of 1 ...
    # (atol: an advantage that is exactly 0 at scale 1 may be ~1e-17 at scale c, by rounding)
    torch.testing.assert_close(gc, g1, rtol=1e-5, atol=1e-15)
    # ... and nowhere near the c-fold gradient Dr.GRPO would give: |gc - c g1| ~ (c - 1)|g1|
    assert (gc - c * g1).abs().max() > 0.5 * (c * g1).abs().max()


# --- the knobs beyond the lesson: sequence ratio, CISPO, behaviour correction ------------------

BEYOND_SPECS = {
    "gspo": dict(),
    "cispo": dict(),
    "cispo-sequence": dict(ratio_level="sequence"),
    "gspo-mis-geometric": dict(behavior_correction="mis", behavior_level="geometric",
                               behavior_cap=1.2, behavior_lower=0.8),
    "dr_grpo-tis-sequence": dict(behavior_correction="tis", behavior_level="sequence"),
    "dapo-mis-token": dict(behavior_correction="mis", behavior_lower=0.5, kl_coef=0.1),
}  # fmt: skip


def beyond_spec(name):
    preset = name.split("-")[0]
    return resolve_objective(preset, **BEYOND_SPECS[name])


@pytest.mark.parametrize("name", sorted(BEYOND_SPECS))
@settings(max_examples=15, deadline=None)
@given(d=batches(min_k=1), data=st.data())
def test_beyond_any_micro_batch_split_sums_to_the_whole_batch(name, d, data):
    # Rows are never split (a sequence ratio needs its whole row); any assignment of rows does.
    spec = beyond_spec(name)
    n = d["rewards"].shape[0]
    sampler = d["old"] + 0.3 * d["garbage"][:, : d["t"]] / 5
    z = normalizer(spec, d["mask"])
    adv = d["rewards"]  # any per-rollout numbers will do here
    kwargs = dict(ref_logprobs=d["ref"], sampler_logprobs=sampler)
    logp = d["logp"].clone().requires_grad_()
    whole, _ = objective_loss(spec, logp, d["old"], adv, d["mask"], z, **kwargs)
    (grad_whole,) = torch.autograd.grad(whole, logp)
    parts = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n), label="part of row")
    logp = d["logp"].clone().requires_grad_()
    total = torch.zeros((), dtype=F64)
    for p in sorted(set(parts)):
        rows = torch.tensor([i for i in range(n) if parts[i] == p])
        loss, _ = objective_loss(
            spec, logp[rows], d["old"][rows], adv[rows], d["mask"][rows], z,
            ref_logprobs=d["ref"][rows], sampler_logprobs=sampler[rows],
        )  # fmt: skip
        total = total + loss
    (grad,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(total, whole, **SAME)
    torch.testing.assert_close(grad, grad_whole, **SAME)


@pytest.mark.parametrize("name", sorted(BEYOND_SPECS))
@settings(max_examples=10, deadline=None)
@given(d=batches(min_k=1), holes=st.data(), fill=st.sampled_from([0.0, -1e9, float("-inf")]))
def test_beyond_masked_tokens_get_exactly_zero_gradient(name, d, holes, fill):
    # Any mask pattern, and padding log-probs as bad as -inf in every input.
    spec = beyond_spec(name)
    n, t = d["mask"].shape
    flat = holes.draw(st.lists(st.booleans(), min_size=n * t, max_size=n * t), label="mask")
    mask = torch.tensor(flat).reshape(n, t)
    bad = torch.full((n, t), fill, dtype=F64)
    logp = torch.where(mask, d["logp"], bad).requires_grad_()
    old, ref = torch.where(mask, d["old"], bad), torch.where(mask, d["ref"], bad)
    sampler = torch.where(mask, d["old"] + 0.2, bad)
    loss, _ = objective_loss(spec, logp, old, d["rewards"], mask, normalizer(spec, mask),
                             ref_logprobs=ref, sampler_logprobs=sampler)  # fmt: skip
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert torch.equal(grad[~mask], torch.zeros(int((~mask).sum()), dtype=F64))
