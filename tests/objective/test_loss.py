"""objective_loss, one preset at a time, with every gradient derived by hand.

One group of K = 2 rollouts, T = 3 columns; rollout 0 has 3 response tokens, rollout 1 has 2 and one
padding column. The ratios rho_it = exp(logp - logp_old) are chosen to land inside and outside the
clip ranges:

    rho = [[1.1, 1.25, 1.5],     row 0
           [0.9, 0.5,  3.0]]     row 1; 3.0 sits on padding (garbage that must get 0 gradient)

Per token, with Z the normalizer (and an extra 1/|y_i| under seq_mean_token_mean):
    unclipped branch active  ->  dL/dlogp_it = -A_i * rho_it / Z
    clipped branch active    ->  dL/dlogp_it = 0
    padding                  ->  dL/dlogp_it = 0 exactly
and the k3 KL term in the loss adds  beta * (1 - exp(ref - logp)) / Z  per response token.
"""

from __future__ import annotations

import math

import pytest
import torch

from drgrpo.objective import (
    compute_advantages,
    compute_normalizer,
    kl_penalized_rewards,
    objective_loss,
    resolve_objective,
)

F64 = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-12)
LN2 = math.log(2.0)

RHO = [[1.1, 1.25, 1.5], [0.9, 0.5, 3.0]]
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]], dtype=F64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
NUM_TOKENS = 5
# d = ref - logp for the KL-in-the-loss tests: 1 - exp(d) = [[-1, 0, 1/2], [1/2, -1, (pad)]]
D_LOSS = torch.tensor([[LN2, 0.0, -LN2], [-LN2, LN2, 5.0]], dtype=F64)
# For the KL-in-the-reward tests: ref - logp_old (the sampler's logprobs); k1 = -(ref - old):
# row 0: -(0.1 + 0.2 - 0.1) = -0.2; row 1: -(-0.4 + 0.0) = +0.4 (padding 9.0 ignored).
D_REWARD = torch.tensor([[0.1, 0.2, -0.1], [-0.4, 0.0, 9.0]], dtype=F64)


def logprobs():
    return (OLD + torch.tensor(RHO, dtype=F64).log()).requires_grad_()


def run(spec, rewards, *, values=None, ref_for="loss", max_tokens=None):
    """The trainer's order of operations on the whole batch; returns (loss, grad, stats, A)."""
    logp = logprobs()
    # KL in the loss: relative to logp; KL in the reward: relative to the sampler's logprobs
    ref = logp.detach() + D_LOSS if ref_for == "loss" else OLD + D_REWARD
    r = torch.tensor(rewards, dtype=F64)
    if spec.kl_coef > 0 and spec.kl_placement == "reward":
        r = kl_penalized_rewards(
            r, OLD, ref, MASK, kl_coef=spec.kl_coef, estimator=spec.kl_estimator
        )
    adv = compute_advantages(
        r, 2, baseline=spec.baseline, scale=spec.scale, std_ddof=spec.std_ddof,
        eps=spec.adv_eps, values=values,
    )  # fmt: skip
    z = compute_normalizer(
        spec.aggregation, num_sequences=2, num_tokens=int(MASK.sum()), max_tokens=max_tokens,
        constant_normalizer=spec.constant_normalizer,
    )  # fmt: skip
    loss, stats = objective_loss(spec, logp, OLD, adv, MASK, z, ref_logprobs=ref)
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.equal(grad[1, 2], torch.zeros((), dtype=F64))  # padding: exactly 0, always
    return loss, grad, stats, adv


def check(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=F64), **TIGHT)


# --- Dr.GRPO -------------------------------------------------------------------------------------


def test_dr_grpo_by_hand():
    # A = r - mean = [1, 0] - 0.5 = [+0.5, -0.5]; Z = N = 2 (constant); clip [0.8, 1.2].
    # row 0, A > 0: rho 1.1 inside -> -0.5 * 1.1 / 2 = -0.275; 1.25 and 1.5 > 1.2 -> clipped, 0.
    # row 1, A < 0: rho 0.9 inside -> +0.5 * 0.9 / 2 = +0.225; 0.5 < 0.8 -> clipped, 0.
    # loss = (1/2) * (-0.5*1.1 - 0.5*1.2 - 0.5*1.2 + 0.5*0.9 + 0.5*0.8) = (1/2) * (-0.9) = -0.45
    loss, grad, stats, adv = run(resolve_objective("dr_grpo"), [1.0, 0.0])
    check(adv, [0.5, -0.5])
    check(grad, [[-0.275, 0.0, 0.0], [0.225, 0.0, 0.0]])
    check(loss, -0.45)
    assert stats["clipped_tokens"].item() == 3 and stats["tokens"].item() == NUM_TOKENS
    assert "kl_loss" not in stats  # kl_coef = 0: no KL term


def test_dr_grpo_opposite_signs_clip_elsewhere():
    # A = [-0.5, +0.5]: now nothing is clipped.
    # row 0, A < 0: above the range PPO does not clip -> +0.5 * rho / 2 = [0.275, 0.3125, 0.375]
    # row 1, A > 0: below the range PPO does not clip -> -0.5 * rho / 2 = [-0.225, -0.125]
    loss, grad, stats, _ = run(resolve_objective("dr_grpo"), [0.0, 1.0])
    check(grad, [[0.275, 0.3125, 0.375], [-0.225, -0.125, 0.0]])
    check(loss, 0.5 * (1.1 + 1.25 + 1.5 - 0.9 - 0.5) / 2)
    assert stats["clipped_tokens"].item() == 0


def test_dr_grpo_dual_clip():
    # As above with dual_clip_c = 1.4: row 0 (A = -0.5) token rho 1.5 has loss 0.5 * 1.5 = 0.75 >
    # cap 1.4 * 0.5 = 0.7 -> capped, gradient 0; rho 1.25 (0.625 < 0.7) is not capped.
    loss, grad, stats, _ = run(resolve_objective("dr_grpo", dual_clip_c=1.4), [0.0, 1.0])
    check(grad, [[0.275, 0.3125, 0.0], [-0.225, -0.125, 0.0]])
    check(loss, 0.5 * (1.1 + 1.25 + 1.4 - 0.9 - 0.5) / 2)
    assert stats["clipped_tokens"].item() == 1


def test_dr_grpo_with_k3_kl_in_the_loss():
    # Policy part as in test_dr_grpo_by_hand, plus beta/Z * (1 - exp(d)) = 0.1/2 * [[-1, 0, .5], [.5, -1]]
    spec = resolve_objective("dr_grpo", kl_coef=0.1, kl_estimator="k3", kl_placement="loss")
    loss, grad, stats, _ = run(spec, [1.0, 0.0])
    check(grad, [[-0.275 - 0.05, 0.0, 0.025], [0.225 + 0.025, -0.05, 0.0]])
    # k3 values: d = ln2 -> 1 - ln2; d = 0 -> 0; d = -ln2 -> ln2 - 1/2. Row 0 + row 1 = 2 * 0.5 + ...
    k3_sum = (1 - LN2) + 0.0 + (LN2 - 0.5) + (LN2 - 0.5) + (1 - LN2)
    check(stats["kl_sum"], k3_sum)
    check(stats["kl_loss"], k3_sum / 2)
    check(loss, -0.45 + 0.1 * k3_sum / 2)


def test_dr_grpo_num_sequences_x_max_tokens():
    # Z = N * L_max = 2 * 8 = 16 instead of 2: every gradient of test_dr_grpo_by_hand divided by 8.
    spec = resolve_objective("dr_grpo", constant_normalizer="num_sequences_x_max_tokens")
    _, grad, _, _ = run(spec, [1.0, 0.0], max_tokens=8)
    check(grad, [[-0.275 / 8, 0.0, 0.0], [0.225 / 8, 0.0, 0.0]])


# --- GRPO ----------------------------------------------------------------------------------------

# std([1, 0]) = 0.5 (population) -> A = +-0.5 / (0.5 + 1e-6)
A_STD = 0.5 / 0.500001


def test_grpo_without_kl_by_hand():
    # Z = N = 2 and each rollout's tokens are divided by its length: |y_0| = 3, |y_1| = 2.
    # row 0: rho 1.1 -> -A * 1.1 / (2 * 3); 1.25, 1.5 clipped (A > 0, above 1.2) -> 0
    # row 1: rho 0.9 -> +A * 0.9 / (2 * 2); 0.5 clipped (A < 0, below 0.8) -> 0
    _, grad, _, adv = run(resolve_objective("grpo", kl_coef=0.0), [1.0, 0.0])
    check(adv, [A_STD, -A_STD])
    check(grad, [[-A_STD * 1.1 / 6, 0.0, 0.0], [A_STD * 0.9 / 4, 0.0, 0.0]])


def test_grpo_with_its_k3_anchor_by_hand():
    # The preset's beta = 0.04, k3 in the loss, aggregated like the policy term:
    # + 0.04 * (1 - exp(d)) / (Z |y_i|) = 0.04/6 * [-1, 0, 1/2] (row 0), 0.04/4 * [1/2, -1] (row 1)
    loss, grad, stats, _ = run(resolve_objective("grpo"), [1.0, 0.0])
    b = 0.04
    check(
        grad,
        [
            [-A_STD * 1.1 / 6 - b / 6, 0.0, 0.5 * b / 6],
            [A_STD * 0.9 / 4 + 0.5 * b / 4, -b / 4, 0.0],
        ],
    )
    # loss: policy (1/2)[(-1.1 - 1.2 - 1.2) A / 3 + (0.9 + 0.8) A / 2] + b (1/2)[k3 row means]
    pg = 0.5 * (-3.5 * A_STD / 3 + 1.7 * A_STD / 2)
    kl = 0.5 * ((1 - LN2 + LN2 - 0.5) / 3 + (LN2 - 0.5 + 1 - LN2) / 2)
    check(stats["pg_loss"], pg)
    check(stats["kl_loss"], kl)
    check(loss, pg + b * kl)


def test_kl_in_the_loss_needs_ref_logprobs():
    logp = logprobs()
    with pytest.raises(ValueError, match="ref_logprobs"):
        objective_loss(resolve_objective("grpo"), logp, OLD, torch.ones(2, dtype=F64), MASK, 2.0)


# --- DAPO ----------------------------------------------------------------------------------------


def test_dapo_by_hand():
    # A = +-A_STD (group std), clip [0.8, 1.28], token_mean: Z = 5 response tokens, no KL.
    # row 0, A > 0: 1.1 and 1.25 inside (1.25 < 1.28: clip-higher keeps it) -> -A rho / 5; 1.5 -> 0
    # row 1, A < 0: 0.9 inside -> +A 0.9 / 5; 0.5 below 0.8 -> clipped, 0
    _, grad, stats, _ = run(resolve_objective("dapo"), [1.0, 0.0])
    check(grad, [[-A_STD * 1.1 / 5, -A_STD * 1.25 / 5, 0.0], [A_STD * 0.9 / 5, 0.0, 0.0]])
    assert stats["clipped_tokens"].item() == 2


def test_rho_1_25_is_clipped_under_grpo_but_not_under_dapo():
    _, g_grpo, _, _ = run(resolve_objective("grpo", kl_coef=0.0), [1.0, 0.0])
    _, g_dapo, _, _ = run(resolve_objective("dapo"), [1.0, 0.0])
    assert g_grpo[0, 1].item() == 0.0 and g_dapo[0, 1].item() < 0.0


# --- RLOO and REINFORCE (no clip) ----------------------------------------------------------------


def test_rloo_with_k1_kl_in_the_reward_by_hand():
    # r' = R - 0.05 * sum_t k1 = [1 - 0.05 * (-0.2), 0 - 0.05 * 0.4] = [1.01, -0.02]
    # leave-one-out, K = 2: A = [1.01 - (-0.02), -0.02 - 1.01] = [1.03, -1.03]
    # no clip: -A rho / Z with Z = N = 2 on every response token; the KL is not in the loss.
    loss, grad, stats, adv = run(resolve_objective("rloo"), [1.0, 0.0], ref_for="reward")
    check(adv, [1.03, -1.03])
    check(
        grad,
        [
            [-1.03 * 1.1 / 2, -1.03 * 1.25 / 2, -1.03 * 1.5 / 2],
            [1.03 * 0.9 / 2, 1.03 * 0.5 / 2, 0.0],
        ],
    )
    check(loss, (-1.03 * (1.1 + 1.25 + 1.5) + 1.03 * (0.9 + 0.5)) / 2)
    assert "kl_loss" not in stats and stats["clipped_tokens"].item() == 0


def test_reinforce_by_hand():
    # A = r = [1, 0.5] (no baseline, no scale), no clip, Z = N = 2: -A rho / 2.
    _, grad, _, _ = run(resolve_objective("reinforce"), [1.0, 0.5])
    check(grad, [[-1.1 / 2, -1.25 / 2, -1.5 / 2], [-0.5 * 0.9 / 2, -0.5 * 0.5 / 2, 0.0]])


# --- PPO -----------------------------------------------------------------------------------------


def test_ppo_with_values_by_hand():
    # r' = [1.01, -0.02] (k1 in the reward, beta 0.05, as for RLOO); V = [0.25, 0.5]
    # batch std of r' (population): mean 0.495, deviations +-0.515 -> 0.515
    # A = (r' - V) / (0.515 + 1e-6) = [0.76, -0.52] / 0.515001
    # token_mean, Z = 5, clip [0.8, 1.2]:
    # row 0, A > 0: 1.1 inside -> -A 1.1 / 5; 1.25, 1.5 clipped -> 0
    # row 1, A < 0: 0.9 inside -> -A 0.9 / 5 (positive); 0.5 clipped -> 0
    values = torch.tensor([0.25, 0.5], dtype=F64)
    _, grad, _, adv = run(resolve_objective("ppo"), [1.0, 0.0], values=values, ref_for="reward")
    a0, a1 = 0.76 / 0.515001, -0.52 / 0.515001
    check(adv, [a0, a1])
    check(grad, [[-a0 * 1.1 / 5, 0.0, 0.0], [-a1 * 0.9 / 5, 0.0, 0.0]])


# --- padding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["reinforce", "ppo", "grpo", "rloo", "dapo", "dr_grpo"])
def test_padding_content_does_not_matter(name):
    # Same batch with different garbage in the padding column (logp, old, ref): identical result.
    spec = resolve_objective(name)
    if spec.uses_clip:
        spec = resolve_objective(name, dual_clip_c=3.0)
    values = torch.tensor([0.25, 0.5], dtype=F64)
    adv = compute_advantages(torch.tensor([1.0, 0.0], dtype=F64), 2, baseline=spec.baseline,
                             scale=spec.scale, values=values)  # fmt: skip
    z = compute_normalizer(spec.aggregation, num_sequences=2, num_tokens=5, max_tokens=8)
    results = []
    for fill in (0.0, -7.0, 4.0):
        logp = logprobs().detach().clone()
        logp[1, 2] = fill
        logp.requires_grad_()
        old, ref = OLD.clone(), logp.detach() + D_LOSS
        old[1, 2], ref[1, 2] = -fill, 2 * fill
        loss, _ = objective_loss(spec, logp, old, adv, MASK, z, ref_logprobs=ref)
        (grad,) = torch.autograd.grad(loss, logp)
        results.append((loss, grad))
        assert grad[1, 2].item() == 0.0
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


def test_padding_with_a_large_negative_fill_stays_finite():
    logp = torch.zeros(1, 2, dtype=F64, requires_grad=True)
    old = torch.tensor([[0.0, -1e9]], dtype=F64)
    spec = resolve_objective("dr_grpo")
    loss, _ = objective_loss(
        spec, logp, old, torch.tensor([-1.0], dtype=F64), torch.tensor([[1, 0]]), 1.0
    )
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
