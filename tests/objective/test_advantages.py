"""compute_advantages: the lesson's X/Y table, each baseline and scale by hand, validation."""

from __future__ import annotations

import math

import pytest
import torch

from drgrpo.objective import compute_advantages, resolve_objective

F64 = torch.float64
SQRT3 = math.sqrt(3.0)


def adv(rewards, k, **kw):
    return compute_advantages(torch.tensor(rewards, dtype=F64), k, **kw)


def grpo_adv(rewards, k=None):
    spec = resolve_objective("grpo")
    return adv(
        rewards,
        k or len(rewards),
        baseline=spec.baseline,
        scale=spec.scale,
        std_ddof=spec.std_ddof,
        eps=spec.adv_eps,
    )


def close(actual, expected, tol):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=F64), rtol=0, atol=tol)


# --- the lesson's table (Bias A) -----------------------------------------------------------------


def test_lesson_prompt_x_grpo_advantages_are_plus_minus_one():
    # X = [1,0,1,0]: mean 0.5, population std sqrt(mean((r-0.5)^2)) = 0.5.
    # A = (+-0.5) / (0.5 + 1e-6) = +-0.999998, i.e. +-1 to 2e-6.
    close(grpo_adv([1.0, 0.0, 1.0, 0.0]), [1.0, -1.0, 1.0, -1.0], 1e-5)


def test_lesson_prompt_y_grpo_advantages_are_sqrt3_over_3_and_minus_sqrt3():
    # Y = [1,1,1,0]: mean 0.75, population std sqrt((3 * 0.25^2 + 0.75^2) / 4) = sqrt(3)/4.
    # A = 0.25 / (sqrt(3)/4) = 1/sqrt(3) = sqrt(3)/3 ~ +0.577 (x3), and -0.75 / (sqrt(3)/4) = -sqrt(3)
    # ~ -1.732 (the lesson prints -1.74; the exact value is -1.7320508). eps 1e-6 moves them < 5e-6.
    close(grpo_adv([1.0, 1.0, 1.0, 0.0]), [SQRT3 / 3] * 3 + [-SQRT3], 1e-5)


def test_lesson_prompt_y_exact_with_eps():
    # Same numbers with the eps kept: A = (r - 0.75) / (sqrt(3)/4 + 1e-6), to float64 precision.
    s = SQRT3 / 4 + 1e-6
    close(grpo_adv([1.0, 1.0, 1.0, 0.0]), [0.25 / s] * 3 + [-0.75 / s], 1e-12)


def test_lesson_prompt_y_sample_std_is_not_the_table():
    # With ddof=1 the std is sqrt(0.75/3) = 0.5, giving 0.5 and -1.5: NOT the lesson's table, which
    # is why the presets default to std_ddof=0.
    out = adv([1.0, 1.0, 1.0, 0.0], 4, baseline="group_mean", scale="group_std", std_ddof=1)
    s = 0.5 + 1e-6
    close(out, [0.25 / s] * 3 + [-0.75 / s], 1e-12)


def test_std_ddof_1_matches_torch_std_default():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(12, generator=g, dtype=F64)  # 3 groups of 4
    out = compute_advantages(r, 4, baseline="group_mean", scale="group_std", std_ddof=1, eps=1e-6)
    grouped = r.reshape(3, 4)
    expected = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)
    torch.testing.assert_close(out, expected.reshape(12), rtol=1e-12, atol=1e-12)


def test_dr_grpo_is_reward_minus_group_mean():
    spec = resolve_objective("dr_grpo")
    out = adv([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0], 4, baseline=spec.baseline, scale=spec.scale)
    # Y: mean 0.75 -> [+0.25 x3, -0.75]; X: mean 0.5 -> [+-0.5]. No division anywhere.
    close(out, [0.25, 0.25, 0.25, -0.75, 0.5, -0.5, 0.5, -0.5], 1e-15)


def test_groups_are_contiguous_rows():
    # Rows n belong to group n // K: [X, Y] with K=4 is not [X interleaved with Y].
    out = grpo_adv([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0], 4)
    close(out, [1.0, -1.0, 1.0, -1.0] + [SQRT3 / 3] * 3 + [-SQRT3], 1e-5)


# --- each baseline and scale, by hand ------------------------------------------------------------


def test_baseline_none_is_the_reward():
    close(adv([0.3, -2.0, 5.0], 3, baseline="none"), [0.3, -2.0, 5.0], 0.0)


def test_leave_one_out_by_hand():
    # r = [1, 1, 1, 0]: b_0 = mean(1, 1, 0) = 2/3 -> 1/3 (x3); b_3 = mean(1, 1, 1) = 1 -> -1.
    close(adv([1.0, 1.0, 1.0, 0.0], 4, baseline="leave_one_out"), [1 / 3] * 3 + [-1.0], 1e-15)


def test_leave_one_out_group_of_two():
    # K=2: the other rollout is the whole baseline: [3, 1] -> [3 - 1, 1 - 3] = [2, -2].
    close(adv([3.0, 1.0], 2, baseline="leave_one_out"), [2.0, -2.0], 0.0)


def test_value_baseline_with_batch_std_ppo():
    # PPO preset: A = (r - V) / (std_all(r) + eps), population std over the whole batch of rewards.
    # r = [1, 0, 1, 1], V = [0.5, 0.2, 0.9, 0.3] -> r - V = [0.5, -0.2, 0.1, 0.7];
    # std_all(r): mean 0.75, var (3 * 0.0625 + 0.5625) / 4 = 0.1875 -> sqrt(3)/4.
    spec = resolve_objective("ppo")
    values = torch.tensor([0.5, 0.2, 0.9, 0.3], dtype=F64)
    out = adv([1.0, 0.0, 1.0, 1.0], 2, baseline=spec.baseline, scale=spec.scale, values=values)
    s = SQRT3 / 4 + 1e-6
    close(out, [0.5 / s, -0.2 / s, 0.1 / s, 0.7 / s], 1e-12)


def test_batch_std_spans_groups():
    # Two groups whose own std is 0 but whose batch std is not: [1, 1 | 0, 0] -> batch std 0.5.
    # group_mean centring gives 0 everywhere; baseline none keeps r: [1, 1, 0, 0] / 0.500001.
    out = adv([1.0, 1.0, 0.0, 0.0], 2, baseline="none", scale="batch_std")
    close(out, [1 / 0.500001, 1 / 0.500001, 0.0, 0.0], 1e-12)
    close(adv([1.0, 1.0, 0.0, 0.0], 2, scale="batch_std"), [0.0] * 4, 0.0)


def test_group_std_uses_each_groups_own_std():
    # [1, 0 | 4, 0]: stds 0.5 and 2 -> A = [0.5/0.500001, -0.5/0.500001, 2/2.000001, -2/2.000001].
    out = adv([1.0, 0.0, 4.0, 0.0], 2, scale="group_std", eps=1e-6)
    close(out, [0.5 / 0.500001, -0.5 / 0.500001, 2 / 2.000001, -2 / 2.000001], 1e-12)


def test_equal_rewards_group_std_divides_by_eps_not_zero():
    # A group of equal rewards has std 0: (r - mean) / (0 + eps) = 0 / eps = 0, never NaN.
    out = adv([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], 3, scale="group_std")
    assert torch.equal(out, torch.zeros(6, dtype=F64))


def test_equal_non_dyadic_float32_rewards_give_zero_grpo_advantage():
    # A partial-credit verifier giving every rollout 0.7: GRPO must not see any signal here.
    for k in (3, 6, 7):
        r = torch.full((k,), 0.7, dtype=torch.float32)
        for baseline in ("group_mean", "leave_one_out"):
            out = compute_advantages(r, k, baseline=baseline, scale="group_std")
            assert out.abs().max().item() < 1e-6, (k, baseline, out)


def test_eps_is_added_to_the_std():
    # eps = 0.5 on X: A = 0.5 / (0.5 + 0.5) = 0.5; a missing eps would give 1.
    close(adv([1.0, 0.0, 1.0, 0.0], 4, scale="group_std", eps=0.5), [0.5, -0.5, 0.5, -0.5], 1e-15)


def test_dtype_and_shape_are_kept():
    r32 = torch.tensor([1.0, 0.0, 1.0, 1.0])
    out = compute_advantages(r32, 2, scale="group_std")
    assert out.dtype == torch.float32 and out.shape == (4,)


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(rewards=torch.zeros(2, 2), group_size=2), "1-D"),
        (dict(rewards=torch.zeros(6), group_size=4), "groups of 4"),
        (dict(rewards=torch.zeros(6), group_size=0), "groups of 0"),
        (dict(rewards=torch.zeros(4), group_size=2, baseline="mean"), "baseline"),
        (dict(rewards=torch.zeros(4), group_size=2, scale="std"), "scale"),
        (dict(rewards=torch.zeros(3), group_size=1, baseline="leave_one_out"), "leave_one_out"),
        (dict(rewards=torch.zeros(4), group_size=2, baseline="value"), "values"),
        (
            dict(rewards=torch.zeros(4), group_size=2, baseline="value", values=torch.zeros(3)),
            "values",
        ),
        (dict(rewards=torch.zeros(3), group_size=1, scale="group_std", std_ddof=1), "group_std"),
    ],
)
def test_invalid_arguments_fail_with_a_clear_message(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_advantages(**kwargs)
