"""`drgrpo explain`: the lesson's widgets, checked against numbers derived by hand."""

from __future__ import annotations

import math

import pytest

from drgrpo.app.explain import ADVANTAGE_PRESETS, LENGTH_PRESETS, group_advantages, length_gradients

SQRT3 = math.sqrt(3.0)


def close(actual, expected, tol=1e-12):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert math.isclose(a, e, rel_tol=tol, abs_tol=tol), (actual, expected)


# --- length bias ("bias B") ----------------------------------------------------------------------
# One group of K = 2 correct rollouts of 10 and 100 tokens, both with A = +0.5, ratio 1, no KL.
# At ratio 1 the token loss is -A * rho, so |dL/dlogp_it| = A * (weight of token it in the loss):
#   GRPO     (1/K) (1/|y_i|):  0.5 / (2 * 10) = 0.025     0.5 / (2 * 100) = 0.0025
#   DAPO     1 / sum_i |y_i|:  0.5 / 110 for both
#   Dr.GRPO  1 / K:            0.5 / 2 = 0.25 for both
# (the lesson's table shows 0.05 and 0.005 for GRPO: the same 1/|y_i| without the 1/K of the mean
# over rollouts.) Per rollout, multiply by |y_i|.

LESSON = length_gradients([10, 100], 0.5)


def test_grpo_per_token_gradient_shrinks_with_length():
    close(LESSON["per_token_grad"]["grpo"], [0.025, 0.0025])
    close(LESSON["per_rollout_grad"]["grpo"], [0.25, 0.25])  # same total, whatever the length


def test_dapo_per_token_gradient_is_one_over_total_tokens():
    close(LESSON["per_token_grad"]["dapo"], [0.5 / 110, 0.5 / 110])
    close(LESSON["per_rollout_grad"]["dapo"], [5 / 110, 50 / 110])


def test_dr_grpo_per_token_gradient_is_one_over_k():
    close(LESSON["per_token_grad"]["dr_grpo"], [0.25, 0.25])
    close(LESSON["per_rollout_grad"]["dr_grpo"], [2.5, 25.0])


def test_long_correct_rollouts_get_ten_times_the_gradient_under_dr_grpo_only():
    rollout = LESSON["per_rollout_grad"]
    assert math.isclose(rollout["dr_grpo"][1] / rollout["dr_grpo"][0], 10.0, rel_tol=1e-12)
    assert math.isclose(rollout["dapo"][1] / rollout["dapo"][0], 10.0, rel_tol=1e-12)
    assert math.isclose(rollout["grpo"][1] / rollout["grpo"][0], 1.0, rel_tol=1e-12)


def test_default_presets_and_keys():
    assert set(LESSON) == {"per_token_grad", "per_rollout_grad", "long_to_short_per_token_ratio"}


def test_long_to_short_ratio_shows_the_length_bias():
    # 10 and 100 tokens, A = -0.5 (both wrong): GRPO pushes each token of the long one 10x less.
    ratio = length_gradients([10, 100], -0.5)["long_to_short_per_token_ratio"]
    assert math.isclose(ratio["grpo"], 0.1, rel_tol=1e-12)
    assert math.isclose(ratio["dr_grpo"], 1.0, rel_tol=1e-12)
    assert math.isclose(ratio["dapo"], 1.0, rel_tol=1e-12)
    assert tuple(LESSON["per_token_grad"]) == LENGTH_PRESETS == ("grpo", "dapo", "dr_grpo")


@pytest.mark.parametrize("lengths", [[10, 100], [3, 1, 7], [5]])
@pytest.mark.parametrize("advantage", [0.5, -2.0])
def test_per_rollout_is_per_token_times_length(lengths, advantage):
    # The per-token number is read at the first token: every token of a rollout must agree.
    out = length_gradients(lengths, advantage)
    for name in LENGTH_PRESETS:
        close(
            out["per_rollout_grad"][name],
            [g * n for g, n in zip(out["per_token_grad"][name], lengths, strict=True)],
        )


def test_three_rollouts_and_a_negative_advantage_by_hand():
    # K = 3, lengths [2, 4, 6] (12 tokens), A = -1: magnitudes |A| * weight.
    out = length_gradients([2, 4, 6], -1.0, presets=("grpo", "dapo", "dr_grpo", "reinforce"))
    close(out["per_token_grad"]["grpo"], [1 / 6, 1 / 12, 1 / 18])
    close(out["per_token_grad"]["dapo"], [1 / 12] * 3)
    close(out["per_token_grad"]["dr_grpo"], [1 / 3] * 3)
    close(out["per_token_grad"]["reinforce"], [1 / 3] * 3)  # no clip, sum / N as Dr.GRPO


@pytest.mark.parametrize(("lengths", "match"), [([], "at least one"), ([10, 0], "positive")])
def test_bad_lengths_fail(lengths, match):
    with pytest.raises(ValueError, match=match):
        length_gradients(lengths, 0.5)


# --- std bias ("bias A"): the lesson's X / Y table -----------------------------------------------


def test_prompt_x_advantages():
    # X = [1, 0, 1, 0]: mean 0.5, std 0.5 (population).
    out = group_advantages([1.0, 0.0, 1.0, 0.0])
    assert tuple(out) == ADVANTAGE_PRESETS
    close(out["grpo"], [1.0, -1.0, 1.0, -1.0], 1e-5)  # 0.5 / (0.5 + 1e-6)
    close(out["dapo"], out["grpo"], 0.0)
    close(out["dr_grpo"], [0.5, -0.5, 0.5, -0.5])
    close(out["rloo"], [2 / 3, -2 / 3, 2 / 3, -2 / 3])  # 1 - 1/3, 0 - 2/3
    close(out["reinforce"], [1.0, 0.0, 1.0, 0.0])


def test_prompt_y_advantages():
    # Y = [1, 1, 1, 0]: mean 0.75, std sqrt(3)/4 -> 0.25 / std = sqrt(3)/3, -0.75 / std = -sqrt(3).
    out = group_advantages([1.0, 1.0, 1.0, 0.0])
    close(out["grpo"], [SQRT3 / 3] * 3 + [-SQRT3], 1e-5)
    close(out["dr_grpo"], [0.25, 0.25, 0.25, -0.75])
    close(out["rloo"], [1 / 3, 1 / 3, 1 / 3, -1.0])  # 1 - 2/3, 0 - 1


def test_std_amplifies_the_low_variance_prompt_under_grpo():
    # Total |A| of Y relative to X. Dr.GRPO, in reward units: (3 * 0.25 + 0.75) / (4 * 0.5) = 0.75.
    # GRPO divides Y by its smaller std: (3 * sqrt(3)/3 + sqrt(3)) / 4 = sqrt(3)/2 ~ 0.866.
    x, y = group_advantages([1.0, 0.0, 1.0, 0.0]), group_advantages([1.0, 1.0, 1.0, 0.0])

    def mass(a):
        return sum(abs(v) for v in a)

    assert math.isclose(mass(y["dr_grpo"]) / mass(x["dr_grpo"]), 0.75, rel_tol=1e-12)
    assert math.isclose(mass(y["grpo"]) / mass(x["grpo"]), SQRT3 / 2, rel_tol=1e-5)
    # and Y's lone failure outweighs every rollout of the informative prompt X (-1.73 vs 1.00)
    assert abs(y["grpo"][3]) > 1.7 * abs(x["grpo"][0])


def test_group_advantages_needs_two_rewards():
    with pytest.raises(ValueError, match="two rewards"):
        group_advantages([1.0])
