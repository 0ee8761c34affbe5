"""GSPO's sequence-level ratio and CISPO: gradients by hand (float64 autograd) and against TRL's
and verl's published formulas on random tensors.

GSPO (ratio_level="sequence"): s_i = exp(mean_t (logp - logp_old)); every token of rollout i has
ratio value s_i and d rho_it / d logp_it = s_i. With seq_mean_token_mean (Z = N):
    unclipped:  dL/dlogp_it = -A_i s_i / (N |y_i|)      clipped: 0 for EVERY token of the rollout
Row 0: two tokens with log-ratios ln 1.1 +- 0.3 -> s_0 = 1.1 (inside [0.8, 1.2]), although the
token ratios 1.1 e^{+-0.3} = 1.485, 0.815 would be clipped / not clipped one by one.
Row 1: one token, log-ratio ln 1.5 -> s_1 = 1.5 (above 1.2).

CISPO: L_t = -sg[clip(rho_t, 1 - eps_low, 1 + eps_high)] A logp_t, so dL/dlogp_t = -clip(rho_t) A:
never 0, even where PPO-clip drops the token.
"""

from __future__ import annotations

import math

import pytest
import torch

from drgrpo.objective import objective_loss, policy_loss_per_token, resolve_objective

from . import reference

F64 = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-12)
LN11, LN15 = math.log(1.1), math.log(1.5)
MASK = torch.tensor([[1, 1], [1, 0]])
OLD = torch.tensor([[-1.0, -2.0], [-0.5, -4.0]], dtype=F64)
LOG_RATIO = torch.tensor([[LN11 + 0.3, LN11 - 0.3], [LN15, 8.0]], dtype=F64)  # 8.0 on padding


def gspo_grad(advantages, **overrides):
    spec = resolve_objective("grpo", ratio_level="sequence", kl_coef=0.0, **overrides)
    logp = (OLD + LOG_RATIO).requires_grad_()
    loss, stats = objective_loss(spec, logp, OLD, torch.tensor(advantages, dtype=F64), MASK, 2.0)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss, grad, stats


def check(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=F64), **TIGHT)


def test_gspo_by_hand_positive_advantages():
    # A = [+1, +1], N = 2. Row 0: s = 1.1 inside -> -1 * 1.1 / (2 * 2) = -0.275 on both tokens.
    # Row 1: s = 1.5 > 1.2 with A > 0 -> clipped -> 0. loss = (1/2)(-1.1 + -1.2) = -1.15
    loss, grad, stats = gspo_grad([1.0, 1.0])
    check(grad, [[-0.275, -0.275], [0.0, 0.0]])
    check(loss, -1.15)
    assert stats["clipped_tokens"].item() == 1


def test_gspo_by_hand_negative_advantages():
    # A = [-1, -1]: row 0 inside -> +1.1 / 4 on both tokens; row 1 above the range with A < 0 is
    # not clipped (PPO's pessimism) -> +1.5 / (2 * 1) = 0.75
    _, grad, stats = gspo_grad([-1.0, -1.0])
    check(grad, [[0.275, 0.275], [0.75, 0.0]])
    assert stats["clipped_tokens"].item() == 0


def test_token_level_ratio_differs_from_gspo_on_the_same_batch():
    # Token level, A = +1, Z = 2 with 1/|y_0| = 1/2: rho = 1.485 (clipped -> 0), 0.815 (inside)
    spec = resolve_objective("grpo", kl_coef=0.0)
    logp = (OLD + LOG_RATIO).requires_grad_()
    loss, _ = objective_loss(spec, logp, OLD, torch.tensor([1.0, 1.0], dtype=F64), MASK, 2.0)
    (grad,) = torch.autograd.grad(loss, logp)
    check(grad, [[0.0, -1.1 * math.exp(-0.3) / 4], [0.0, 0.0]])


def test_gspo_clip_decision_is_one_per_sequence():
    # A = +1 on row 0 with s_0 = 1.1 and eps_high = 0.05: 1.1 > 1.05 -> the whole row is clipped,
    # including the token whose own ratio (0.815) is well inside.
    _, grad, stats = gspo_grad([1.0, 0.0], clip_eps_low=0.05, clip_eps_high=0.05)
    check(grad, [[0.0, 0.0], [0.0, 0.0]])
    assert stats["clipped_tokens"].item() == 2


# (case, clip knobs, rho, A, expected dL/dlogp, clipped?) with old = 0, so logp = ln rho
CISPO = dict(clip_eps_low=1.0, clip_eps_high=0.28)  # MiniMax-M1: no lower bound
CISPO_LOW = dict(clip_eps_low=0.2, clip_eps_high=0.28)
CASES = [
    ("inside, A>0", CISPO, 1.1, 2.0, -2.2, False),
    ("above, A>0: PPO drops it, CISPO keeps 1.28", CISPO, 1.5, 1.0, -1.28, True),
    ("above, A<0", CISPO, 1.5, -1.0, 1.28, True),
    ("far below, no lower bound", CISPO, 0.5, -1.0, 0.5, False),
    ("far below, lower bound 0.8", CISPO_LOW, 0.5, -1.0, 0.8, True),
    (
        "no clip at all: weight = rho",
        dict(clip_eps_low=None, clip_eps_high=None),
        3.0,
        1.0,
        -3.0,
        False,
    ),
]


@pytest.mark.parametrize(("knobs", "rho", "a", "grad", "clipped"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_cispo_one_token_by_hand(knobs, rho, a, grad, clipped):
    logp = torch.tensor([[math.log(rho)]], dtype=F64, requires_grad=True)
    out, was_clipped = policy_loss_per_token(
        logp,
        torch.zeros(1, 1, dtype=F64),
        torch.tensor([a], dtype=F64),
        policy_loss="cispo",
        **knobs,
    )
    (g,) = torch.autograd.grad(out.sum(), logp)
    check(g, [[grad]])
    # the loss value is -w A logp, w = -grad / A
    check(out, [[grad * math.log(rho)]])
    assert bool(was_clipped) is clipped


def test_cispo_with_the_sequence_ratio_weights_every_token_by_clip_s():
    # Row 0: s = 1.1 (inside) -> dL/dlogp = -A * 1.1 per token; row 1: s = 1.5 -> clip 1.28.
    # token_mean over the 3 loss tokens: / 3.
    spec = resolve_objective("cispo", ratio_level="sequence")
    logp = (OLD + LOG_RATIO).requires_grad_()
    loss, _ = objective_loss(spec, logp, OLD, torch.tensor([1.0, -1.0], dtype=F64), MASK, 3.0)
    (grad,) = torch.autograd.grad(loss, logp)
    check(grad, [[-1.1 / 3, -1.1 / 3], [1.28 / 3, 0.0]])


def test_cispo_padding_with_minus_inf_logprobs_stays_finite():
    spec = resolve_objective("cispo")
    logp = torch.tensor([[-1.0, float("-inf")]], dtype=F64, requires_grad=True)
    loss, _ = objective_loss(spec, logp, torch.tensor([[-1.0, 0.0]], dtype=F64),
                             torch.tensor([1.0], dtype=F64), torch.tensor([[1, 0]]), 1.0)  # fmt: skip
    (grad,) = torch.autograd.grad(loss, logp)
    check(loss, 1.0)  # -1 * 1 * (-1)
    check(grad, [[-1.0, 0.0]])


def test_cispo_refuses_the_dual_clip():
    with pytest.raises(ValueError, match="dual_clip_c"):
        resolve_objective("cispo", dual_clip_c=3.0)


# --- against TRL and verl on random tensors --------------------------------------------------------


def random_batch(seed, n=6, t_max=7, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t_max + 1, (n,), generator=g)
    mask = (torch.arange(t_max).unsqueeze(0) < lengths.unsqueeze(1)).to(F64)
    old = -3.0 * torch.rand(n, t_max, generator=g, dtype=F64)
    logp = old + spread * torch.randn(n, t_max, generator=g, dtype=F64)
    adv = torch.randn(n, generator=g, dtype=F64)
    return logp, old, adv, mask


def ours(spec, logp, old, adv, mask, z):
    logp = logp.clone().requires_grad_()
    loss, stats = objective_loss(spec, logp, old, adv, mask, z)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss, grad, stats


def theirs(fn, logp, *args):
    logp = logp.clone().requires_grad_()
    loss = fn(logp, *args)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss, grad


@pytest.mark.parametrize("seed", range(4))
def test_gspo_matches_trl_sequence_level_and_verl_gspo(seed):
    # eps 0.05 so that a random batch has clipped and unclipped rollouts
    logp, old, adv, mask = random_batch(seed, n=10, spread=0.2)
    spec = resolve_objective("gspo", clip_eps_low=0.05, clip_eps_high=0.06)
    loss, grad, stats = ours(spec, logp, old, adv, mask, float(mask.shape[0]))
    assert 0 < stats["clipped_tokens"] < stats["tokens"]
    trl_loss, trl_grad = theirs(
        lambda lp: reference.trl_sequence_loss(lp, old, adv, mask, 0.05, 0.06), logp
    )
    verl_loss, verl_grad = theirs(
        lambda lp: reference.verl_gspo_loss(old, lp, adv.unsqueeze(-1), mask, 0.05, 0.06), logp
    )
    for ref_loss, ref_grad in ((trl_loss, trl_grad), (verl_loss, verl_grad)):
        torch.testing.assert_close(loss, ref_loss, **TIGHT)
        torch.testing.assert_close(grad, ref_grad, **TIGHT)


@pytest.mark.parametrize("seed", range(4))
def test_cispo_matches_verl_and_trl(seed):
    logp, old, adv, mask = random_batch(seed)
    spec = resolve_objective("cispo", clip_eps_high=0.2)  # eps_low = 1: no lower bound
    loss, grad, stats = ours(spec, logp, old, adv, mask, float(mask.sum()))
    assert 0 < stats["clipped_tokens"] < stats["tokens"]
    # verl: clip_ratio_low = 10 (its way of saying "no lower bound"), clip_ratio_high = 0.2
    verl_loss, verl_grad = theirs(
        lambda lp: reference.verl_cispo_loss(old, lp, adv.unsqueeze(-1), mask, 10.0, 0.2), logp
    )
    # TRL: epsilon_high is the absolute cap, 1 + 0.2
    trl_loss, trl_grad = theirs(lambda lp: reference.trl_cispo_loss(lp, old, adv, mask, 1.2), logp)
    for ref_loss, ref_grad in ((verl_loss, verl_grad), (trl_loss, trl_grad)):
        torch.testing.assert_close(loss, ref_loss, **TIGHT)
        torch.testing.assert_close(grad, ref_grad, **TIGHT)
