"""scale=batch_whiten (REINFORCE++): by hand, and against verl's reinforce_plus_plus(_baseline).

Rewards [1, 0 | 1, 1] (K = 2), lengths |y| = [1, 3, 2, 2] (8 tokens), group mean baseline:
    c = [0.5, -0.5, 0, 0]
    token-weighted mean = (0.5 * 1 - 0.5 * 3 + 0 + 0) / 8 = -0.125
    deviations = [0.625, -0.375, 0.125, 0.125]
    var (ddof 0) = (1 * 0.390625 + 3 * 0.140625 + 2 * 0.015625 + 2 * 0.015625) / 8 = 0.109375
    A = deviations / (sqrt(0.109375) + eps)
The long wrong rollout weighs 3x in the statistics: the mean shifts, and equal-reward groups
get A = +0.125 / std, not 0 (REINFORCE++ is a global, not a per-group, normalisation).
"""

from __future__ import annotations

import math

import pytest
import torch

from drgrpo.objective import compute_advantages, resolve_objective, token_level_rewards

from . import reference

F64 = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-12)


def test_batch_whiten_by_hand():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=F64)
    lengths = torch.tensor([1, 3, 2, 2])
    adv = compute_advantages(rewards, 2, baseline="group_mean", scale="batch_whiten",
                             lengths=lengths, eps=1e-6)  # fmt: skip
    std = math.sqrt(0.109375)
    expected = [d / (std + 1e-6) for d in (0.625, -0.375, 0.125, 0.125)]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=F64), **TIGHT)
    # ddof 1: var * 8 / 7
    adv1 = compute_advantages(rewards, 2, baseline="group_mean", scale="batch_whiten",
                              lengths=lengths, std_ddof=1, eps=0.0)  # fmt: skip
    s1 = math.sqrt(0.109375 * 8 / 7)
    torch.testing.assert_close(
        adv1, torch.tensor([0.625, -0.375, 0.125, 0.125], dtype=F64) / s1, **TIGHT
    )


def test_batch_whiten_needs_the_lengths():
    with pytest.raises(ValueError, match="lengths"):
        compute_advantages(torch.ones(4), 2, scale="batch_whiten")


def random_batch(seed, b=3, k=4, t_max=6):
    g = torch.Generator().manual_seed(seed)
    n = b * k
    rewards = torch.randint(0, 2, (n,), generator=g).to(F64) + 0.1 * torch.randn(
        n, generator=g, dtype=F64
    )
    lengths = torch.randint(1, t_max + 1, (n,), generator=g)
    mask = (torch.arange(t_max).unsqueeze(0) < lengths.unsqueeze(1)).to(F64)
    return rewards, lengths, mask, k


@pytest.mark.parametrize("seed", range(4))
def test_reinforce_pp_baseline_matches_verl(seed):
    # verl: group mean, broadcast, masked_whiten (unbiased var, rsqrt(var + eps)) -> ddof 1, eps 0
    rewards, lengths, mask, k = random_batch(seed)
    adv = compute_advantages(rewards, k, baseline="group_mean", scale="batch_whiten",
                             lengths=lengths, std_ddof=1, eps=0.0)  # fmt: skip
    ref = reference.verl_reinforce_pp_baseline(rewards, mask, k, eps=0.0)
    torch.testing.assert_close(adv.unsqueeze(1) * mask, ref, **TIGHT)


@pytest.mark.parametrize("seed", range(3))
def test_reinforce_pp_without_baseline_matches_verl_at_gamma_1(seed):
    # verl's reinforce_plus_plus: return-to-go of the token rewards (the outcome on the last token;
    # at gamma = 1 every token's return is r_i), whitened over the batch's tokens
    rewards, lengths, mask, k = random_batch(seed)
    adv = compute_advantages(rewards, k, baseline="none", scale="batch_whiten",
                             lengths=lengths, std_ddof=1, eps=0.0)  # fmt: skip
    token_rewards = token_level_rewards(rewards, mask.bool())
    ref = reference.verl_reinforce_pp(token_rewards, mask, gamma=1.0, eps=0.0)
    torch.testing.assert_close(adv.unsqueeze(1) * mask, ref, **TIGHT)


def test_the_preset_uses_it():
    spec = resolve_objective("reinforce_pp")
    assert (spec.baseline, spec.scale) == ("group_mean", "batch_whiten")
    spec.check_group_size(2)
