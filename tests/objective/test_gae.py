"""Token rewards, GAE and returns, whitening: by hand, against a slow loop, and against verl.

By hand, one rollout of 3 tokens (then 1 padding column), gamma = 1, lam = 0.5:
    rewards r = [0, 0, 1] (the outcome on the last token), values V = [0.5, 0.25, 0.75]
    delta_2 = 1 + 0 - 0.75 = 0.25                 (V after the last token is 0)
    delta_1 = 0 + 0.75 - 0.25 = 0.5
    delta_0 = 0 + 0.25 - 0.5 = -0.25
    A_2 = 0.25;  A_1 = 0.5 + 0.5 * 0.25 = 0.625;  A_0 = -0.25 + 0.5 * 0.625 = 0.0625
    G = A + V = [0.5625, 0.875, 1.0]
"""

from __future__ import annotations

import pytest
import torch

from drgrpo.objective import (
    gae_advantages_and_returns,
    scale_token_advantages,
    token_level_rewards,
    whiten,
)
from drgrpo.objective.value_loss import explained_variance

from . import reference

F64 = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-12)


def t(x):
    return torch.tensor(x, dtype=F64)


def test_gae_by_hand():
    rewards = t([[0.0, 0.0, 1.0, 7.0]])  # 7.0 sits on padding and must be ignored
    values = t([[0.5, 0.25, 0.75, -3.0]])  # so must -3.0
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae_advantages_and_returns(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, t([[0.0625, 0.625, 0.25, 0.0]]), **TIGHT)
    torch.testing.assert_close(ret, t([[0.5625, 0.875, 1.0, 0.0]]), **TIGHT)


def test_gae_with_lambda_1_and_gamma_1_is_the_return_minus_the_value():
    # lam = 1, gamma = 1: A_t = sum_{s >= t} r_s - V_t (the telescoping sum), G_t = sum_{s >= t} r_s
    rewards, values = t([[0.1, -0.2, 1.0]]), t([[0.3, 0.6, 0.9]])
    adv, ret = gae_advantages_and_returns(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, t([[0.9, 0.8, 1.0]]), **TIGHT)
    torch.testing.assert_close(adv, t([[0.6, 0.2, 0.1]]), **TIGHT)


def test_gae_with_lambda_0_is_the_td_error():
    # lam = 0: A_t = r_t + gamma V_{t+1} - V_t; gamma = 0.5, V = [1, 2], r = [0, 3]
    # A_0 = 0 + 0.5 * 2 - 1 = 0;  A_1 = 3 + 0 - 2 = 1
    adv, _ = gae_advantages_and_returns(
        t([[0.0, 3.0]]), t([[1.0, 2.0]]), torch.ones(1, 2), 0.5, 0.0
    )
    torch.testing.assert_close(adv, t([[0.0, 1.0]]), **TIGHT)


def random_rows(seed, n=5, t_max=7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, t_max + 1, (n,), generator=g)
    lengths[0] = t_max  # one full row
    mask = torch.arange(t_max).unsqueeze(0) < lengths.unsqueeze(1)
    rewards = torch.randn(n, t_max, generator=g, dtype=F64)
    values = torch.randn(n, t_max, generator=g, dtype=F64)
    return rewards, values, mask, lengths


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (1.0, 1.0), (0.9, 0.0), (0.99, 0.5)])
def test_gae_matches_the_slow_loop(seed, gamma, lam):
    rewards, values, mask, lengths = random_rows(seed)
    adv, ret = gae_advantages_and_returns(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = reference.gae_loop(
        rewards.tolist(), values.tolist(), lengths.tolist(), gamma, lam
    )
    torch.testing.assert_close(adv, t(ref_adv), **TIGHT)
    torch.testing.assert_close(ret, t(ref_ret), **TIGHT)


@pytest.mark.parametrize("seed", range(3))
def test_gae_then_whitening_matches_verl(seed):
    # verl's compute_gae_advantage_return whitens inside (unbiased var, rsqrt(var + eps)):
    # drgrpo's whiten with std_ddof=1 and eps -> 0 is the same map.
    rewards, values, mask, _ = random_rows(seed)
    rewards = torch.where(mask, rewards, 0.0)  # verl's token rewards are 0 on padding
    adv, ret = gae_advantages_and_returns(rewards, values, mask, 1.0, 0.95)
    adv = whiten(adv, mask, std_ddof=1, eps=0.0)
    ref_adv, ref_ret = reference.verl_gae(rewards, values, mask.to(F64), 1.0, 0.95, eps=0.0)
    torch.testing.assert_close(adv, ref_adv * mask, **TIGHT)
    torch.testing.assert_close(ret, ref_ret * mask, **TIGHT)


def test_gae_skips_a_masked_column_like_verl():
    # A hole in the mask (a token the loss does not see) is skipped: V_{t+1}, A_{t+1} carry over.
    # Row [r=0, (hole), r=1], V = [0.5, 9, 0.25], gamma = lam = 1:
    # A_2 = 1 - 0.25 = 0.75;  A_0 = 0 + 0.25 - 0.5 + 0.75 = 0.5
    mask = torch.tensor([[1, 0, 1]])
    adv, _ = gae_advantages_and_returns(t([[0.0, 5.0, 1.0]]), t([[0.5, 9.0, 0.25]]), mask, 1.0, 1.0)
    torch.testing.assert_close(adv, t([[0.5, 0.0, 0.75]]), **TIGHT)


def test_token_level_rewards_by_hand():
    # outcome on the last response token; -beta * KL on every response token; nothing on padding
    outcome = t([1.0, 0.5, 2.0])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    kl = t([[0.1, 0.2, 0.3], [0.4, float("inf"), 9.0], [1.0, 1.0, 1.0]])  # inf on padding
    r = token_level_rewards(outcome, mask, kl, kl_coef=0.5)
    expected = [[-0.05, -0.1, 1.0 - 0.15], [0.5 - 0.2, 0.0, 0.0], [0.0, 0.0, 0.0]]
    torch.testing.assert_close(r, t(expected), **TIGHT)
    torch.testing.assert_close(
        token_level_rewards(outcome, mask), t([[0, 0, 1.0], [0.5, 0, 0], [0, 0, 0]])
    )


def test_whiten_by_hand():
    # entries [1, 2, 3, (pad 100)]: mean 2, unbiased var (1 + 0 + 1) / 2 = 1 -> [-1, 0, 1]
    x, mask = t([[1.0, 2.0], [3.0, 100.0]]), torch.tensor([[1, 1], [1, 0]])
    torch.testing.assert_close(whiten(x, mask, eps=0.0), t([[-1.0, 0.0], [1.0, 0.0]]), **TIGHT)
    # shift_mean=False adds the mean back: [1, 2, 3]
    torch.testing.assert_close(
        whiten(x, mask, shift_mean=False, eps=0.0), t([[1.0, 2.0], [3.0, 0.0]]), **TIGHT
    )
    # population std (ddof 0): sqrt(2/3)
    s = (2.0 / 3.0) ** 0.5
    torch.testing.assert_close(
        whiten(x, mask, std_ddof=0, eps=0.0), t([[-1 / s, 0.0], [1 / s, 0.0]]), **TIGHT
    )


def test_whiten_matches_verl_masked_whiten():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, generator=g, dtype=F64)
    mask = (torch.rand(4, 6, generator=g) < 0.7).to(F64)
    for shift in (True, False):
        ours = whiten(x, mask, shift_mean=shift, eps=0.0)
        theirs = reference.verl_masked_whiten(x, mask, eps=0.0, shift_mean=shift) * mask
        torch.testing.assert_close(ours, theirs, **TIGHT)


def test_scale_token_advantages_by_hand():
    # A over the mask = [1, 3] (pad 50): population std 1, mean 2
    a, mask = t([[1.0, 3.0, 50.0]]), torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(scale_token_advantages(a, mask, "none"), t([[1.0, 3.0, 0.0]]))
    torch.testing.assert_close(
        scale_token_advantages(a, mask, "batch_std", eps=0.0), t([[1.0, 3.0, 0.0]])
    )
    torch.testing.assert_close(
        scale_token_advantages(a, mask, "batch_whiten", eps=0.0), t([[-1.0, 1.0, 0.0]]), **TIGHT
    )
    with pytest.raises(ValueError, match="group_std"):
        scale_token_advantages(a, mask, "group_std")


def test_explained_variance_by_hand():
    # G = [1, 2, 3, 4] (pad ignored); V = G -> 1; V = mean(G) -> 0; V = G + [1, -1, 1, -1] ->
    # Var(G - V) = 1, Var(G) = 1.25 -> 1 - 1 / 1.25 = 0.2
    g = t([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert explained_variance(g, g, mask).item() == 1.0
    assert explained_variance(torch.full_like(g, 2.5), g, mask).item() == 0.0
    v = g + t([[1.0, -1.0, 77.0], [1.0, -1.0, 77.0]])
    torch.testing.assert_close(explained_variance(v, g, mask), t(0.2), **TIGHT)
    assert torch.isnan(explained_variance(v, torch.ones_like(g), mask))  # returns do not vary


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="share one"):
        gae_advantages_and_returns(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


def test_critic_advantages_is_token_rewards_then_gae_then_scale():
    # ppo with lam 0.5, scale none; k1 in the reward: ref = old - 0.1 -> k1 = old - ref = 0.1 per
    # token, beta 0.05: r = [-0.005, -0.005, 1 - 0.005], V = [0.5, 0.25, 0.75], gamma 1:
    # delta = [-0.005 + 0.25 - 0.5, -0.005 + 0.75 - 0.25, 0.995 - 0.75] = [-0.255, 0.495, 0.245]
    # A_2 = 0.245; A_1 = 0.495 + 0.5 * 0.245 = 0.6175; A_0 = -0.255 + 0.5 * 0.6175 = 0.05375
    from drgrpo.objective import critic_advantages, resolve_objective

    spec = resolve_objective("ppo", gae_lambda=0.5, scale="none")
    old = t([[-1.0, -2.0, -3.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    values = t([[0.5, 0.25, 0.75, 9.0]])
    adv, ret = critic_advantages(spec, t([1.0]), values, mask, mask, old, old - 0.1)
    torch.testing.assert_close(adv, t([[0.05375, 0.6175, 0.245, 0.0]]), **TIGHT)
    torch.testing.assert_close(ret, t([[0.55375, 0.8675, 0.995, 0.0]]), **TIGHT)
    # the preset's own scale (batch_std) divides by the std of A over the 3 tokens
    adv_std, _ = critic_advantages(resolve_objective("ppo", gae_lambda=0.5), t([1.0]), values,
                                   mask, mask, old, old - 0.1)  # fmt: skip
    a = torch.tensor([0.05375, 0.6175, 0.245], dtype=F64)
    std = ((a - a.mean()) ** 2).mean().sqrt()
    torch.testing.assert_close(adv_std[0, :3], a / (std + 1e-6), **TIGHT)
    with pytest.raises(ValueError, match="old_logprobs"):
        critic_advantages(spec, t([1.0]), values, mask, mask)
    with pytest.raises(ValueError, match="baseline=value"):
        critic_advantages(resolve_objective("grpo"), t([1.0]), values, mask, mask)
