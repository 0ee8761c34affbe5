"""policy_loss_per_token: one token at a time, loss and d loss / d logprob derived by hand.

With rho = exp(logp - logp_old) and L = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A):
  * the unclipped branch is active -> dL/dlogp = -A * drho/dlogp = -A * rho
  * the clipped branch is active   -> clip(rho) is a constant there -> dL/dlogp = 0
The clipped branch wins (min picks it) exactly when rho > 1 + eps_high with A > 0, or
rho < 1 - eps_low with A < 0. With A < 0 and rho above the range PPO does NOT clip (pessimism);
the dual clip caps that loss at -c A (a constant, so gradient 0) once -rho A > -c A, i.e. rho > c.
"""

from __future__ import annotations

import math

import pytest
import torch

from drgrpo.objective import policy_loss_per_token

F64 = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-12)
SYM = dict(clip_eps_low=0.2, clip_eps_high=0.2, dual_clip_c=None)  # PPO, GRPO, Dr.GRPO
DAPO = dict(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=None)
DUAL = dict(clip_eps_low=0.2, clip_eps_high=0.2, dual_clip_c=3.0)
NONE = dict(clip_eps_low=None, clip_eps_high=None, dual_clip_c=None)  # REINFORCE, RLOO

# (case, clip knobs, rho, A, expected loss, expected dL/dlogp, clipped?)
CASES = [
    # inside [0.8, 1.2]: both branches equal, gradient -A rho
    ("inside, A>0", SYM, 1.1, 1.0, -1.1, -1.1, False),
    ("inside, A<0", SYM, 1.1, -1.0, 1.1, 1.1, False),
    ("inside below 1, A>0", SYM, 0.9, 2.0, -1.8, -1.8, False),
    ("inside below 1, A<0", SYM, 0.9, -0.5, 0.45, 0.45, False),
    # above the range: A>0 clips (min(1.5, 1.2) = 1.2, loss -1.2, gradient 0) ...
    ("above, A>0 clipped", SYM, 1.5, 1.0, -1.2, 0.0, True),
    # ... A<0 does not: min(-1.5, -1.2) = -1.5 -> loss 1.5, gradient -A rho = 1.5
    ("above, A<0 not clipped", SYM, 1.5, -1.0, 1.5, 1.5, False),
    # below the range: A<0 clips (min(-0.5, -0.8) = -0.8 -> loss 0.8, gradient 0) ...
    ("below, A<0 clipped", SYM, 0.5, -1.0, 0.8, 0.0, True),
    # ... A>0 does not: min(0.5, 0.8) = 0.5 -> loss -0.5, gradient -0.5
    ("below, A>0 not clipped", SYM, 0.5, 1.0, -0.5, -0.5, False),
    # A scales both: rho 1.5, A = 0.25 -> loss -0.25 * 1.2 = -0.3, gradient 0
    ("above, small A>0 clipped", SYM, 1.5, 0.25, -0.3, 0.0, True),
    # A = 0: no loss, no gradient, not counted as clipped
    ("zero advantage", SYM, 1.5, 0.0, 0.0, 0.0, False),
    # DAPO clip-higher: 1.25 < 1.28, so A>0 is NOT clipped (it is under the symmetric 0.2 clip)
    ("dapo 1.25, A>0 not clipped", DAPO, 1.25, 1.0, -1.25, -1.25, False),
    ("sym 1.25, A>0 clipped", SYM, 1.25, 1.0, -1.2, 0.0, True),
    ("dapo 1.3, A>0 clipped at 1.28", DAPO, 1.3, 1.0, -1.28, 0.0, True),
    # DAPO keeps eps_low = 0.2 below: 0.75 < 0.8 with A<0 -> loss 0.8, gradient 0
    ("dapo 0.75, A<0 clipped at 0.8", DAPO, 0.75, -1.0, 0.8, 0.0, True),
    ("dapo 0.85, A<0 inside", DAPO, 0.85, -1.0, 0.85, 0.85, False),
    # dual clip c = 3, A = -1: rho 4 -> PPO loss 4 > cap 3 -> loss 3, gradient 0
    ("dual, rho 4 > c, A<0 capped", DUAL, 4.0, -1.0, 3.0, 0.0, True),
    # rho 2 < c: loss 2 under the cap -> the unclipped PPO branch, gradient -A rho = 2
    ("dual, rho 2 < c, A<0 not capped", DUAL, 2.0, -1.0, 2.0, 2.0, False),
    # the cap scales with A: A = -0.5, rho 4 -> cap 1.5
    ("dual, A=-0.5 capped at 1.5", DUAL, 4.0, -0.5, 1.5, 0.0, True),
    # dual clip never touches A>0: rho 4, A=+1 -> the usual clip at 1.2
    ("dual, A>0 usual clip", DUAL, 4.0, 1.0, -1.2, 0.0, True),
    ("dual, below, A<0 usual clip", DUAL, 0.5, -1.0, 0.8, 0.0, True),
    # no clip: L = -rho A everywhere
    ("no clip, far above, A>0", NONE, 1.5, 1.0, -1.5, -1.5, False),
    ("no clip, far below, A<0", NONE, 0.5, -2.0, 1.0, 1.0, False),
    ("no clip, rho 4, A<0", NONE, 4.0, -1.0, 4.0, 4.0, False),
]


@pytest.mark.parametrize(
    ("knobs", "rho", "a", "loss", "grad", "clipped"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_one_token_loss_gradient_and_clip_flag(knobs, rho, a, loss, grad, clipped):
    logp = torch.tensor([[math.log(rho)]], dtype=F64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=F64)
    out, was_clipped = policy_loss_per_token(logp, old, torch.tensor([a], dtype=F64), **knobs)
    (g,) = torch.autograd.grad(out.sum(), logp)
    torch.testing.assert_close(out, torch.tensor([[loss]], dtype=F64), **TIGHT)
    torch.testing.assert_close(g, torch.tensor([[grad]], dtype=F64), **TIGHT)
    assert bool(was_clipped) is clipped


def test_ratio_uses_the_difference_to_old_logprobs():
    # logp = -1.0, old = -1.0 - log(1.1): rho = 1.1 (inside), A = 2 -> loss -2.2, gradient -2.2.
    logp = torch.tensor([[-1.0]], dtype=F64, requires_grad=True)
    old = torch.tensor([[-1.0 - math.log(1.1)]], dtype=F64)
    out, _ = policy_loss_per_token(logp, old, torch.tensor([2.0], dtype=F64), **SYM)
    (g,) = torch.autograd.grad(out.sum(), logp)
    torch.testing.assert_close(out, torch.tensor([[-2.2]], dtype=F64), **TIGHT)
    torch.testing.assert_close(g, torch.tensor([[-2.2]], dtype=F64), **TIGHT)


def test_per_rollout_advantage_broadcasts_over_tokens_like_per_token_advantages():
    g = torch.Generator().manual_seed(1)
    logp = (0.3 * torch.randn(3, 5, generator=g, dtype=F64)).requires_grad_()
    old = torch.zeros(3, 5, dtype=F64)
    a = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    l1, c1 = policy_loss_per_token(logp, old, a, **DUAL)
    l2, c2 = policy_loss_per_token(logp, old, a.unsqueeze(1).expand(3, 5), **DUAL)
    assert torch.equal(l1, l2) and torch.equal(c1, c2)


def test_per_token_advantages_are_used_token_by_token():
    # Two tokens at rho = 1 with A = [+1, -3]: gradients -A rho = [-1, +3].
    logp = torch.zeros(1, 2, dtype=F64, requires_grad=True)
    out, _ = policy_loss_per_token(logp, logp.detach(), torch.tensor([[1.0, -3.0]], dtype=F64))
    (g,) = torch.autograd.grad(out.sum(), logp)
    torch.testing.assert_close(g, torch.tensor([[-1.0, 3.0]], dtype=F64), **TIGHT)


def test_no_gradient_reaches_old_logprobs_or_advantages():
    logp = torch.full((1, 2), math.log(1.1), dtype=F64, requires_grad=True)
    old = torch.zeros(1, 2, dtype=F64, requires_grad=True)
    a = torch.tensor([1.0], dtype=F64, requires_grad=True)
    out, _ = policy_loss_per_token(logp, old, a, **DUAL)
    g_logp, g_old, g_a = torch.autograd.grad(out.sum(), (logp, old, a), allow_unused=True)
    assert g_old is None and g_a is None
    torch.testing.assert_close(g_logp, torch.full((1, 2), -1.1, dtype=F64), **TIGHT)


def test_only_one_clip_side_fails():
    logp = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="clip_eps_low and clip_eps_high"):
        policy_loss_per_token(logp, logp, torch.ones(1), clip_eps_low=0.2, clip_eps_high=None)
    with pytest.raises(ValueError, match="clip_eps_low and clip_eps_high"):
        policy_loss_per_token(logp, logp, torch.ones(1), clip_eps_low=None, clip_eps_high=0.2)
