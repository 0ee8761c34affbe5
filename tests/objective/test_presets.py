"""The preset table, overrides, validation (each error names its knob), and render_formula."""

from __future__ import annotations

import dataclasses

import pytest

from drgrpo.objective import KNOBS, PRESETS, ObjectiveSpec, render_formula, resolve_objective

# The lesson's "lineage at a glance", one row per preset:
# baseline, scale (/std), clip (eps_low, eps_high), aggregation (/|y_i|), KL (coef, estimator, place)
LINEAGE = {
    "reinforce": ("none", "none", (None, None), "constant", (0.0, None, None)),
    "ppo": ("value", "batch_std", (0.2, 0.2), "token_mean", (0.05, "k1", "reward")),
    "grpo": ("group_mean", "group_std", (0.2, 0.2), "seq_mean_token_mean", (0.04, "k3", "loss")),
    "rloo": ("leave_one_out", "none", (None, None), "constant", (0.05, "k1", "reward")),
    "dapo": ("group_mean", "group_std", (0.2, 0.28), "token_mean", (0.0, None, None)),
    "dr_grpo": ("group_mean", "none", (0.2, 0.2), "constant", (0.0, None, None)),
}


def test_every_preset_is_in_the_lineage_table():
    assert set(PRESETS) == set(LINEAGE)


@pytest.mark.parametrize("name", sorted(LINEAGE))
def test_preset_resolves_to_its_lineage_row(name):
    spec = resolve_objective(name)
    baseline, scale, clip, aggregation, (kl_coef, estimator, placement) = LINEAGE[name]
    assert spec.name == name
    assert (spec.baseline, spec.scale) == (baseline, scale)
    assert (spec.clip_eps_low, spec.clip_eps_high) == clip
    assert spec.uses_clip is (clip[0] is not None)
    assert spec.dual_clip_c is None
    assert spec.aggregation == aggregation
    assert spec.std_ddof == 0 and spec.adv_eps == 1e-6  # the lesson's population std
    assert spec.kl_coef == kl_coef and spec.uses_reference is (kl_coef > 0)
    if kl_coef > 0:
        assert (spec.kl_estimator, spec.kl_placement) == (estimator, placement)


def test_dr_grpo_divides_by_the_number_of_sequences_and_is_the_default():
    spec = resolve_objective()
    assert spec.name == "dr_grpo" and spec.constant_normalizer == "num_sequences"


def test_dr_grpo_is_grpo_minus_its_two_divisors():
    # Same rollouts, same clip, same anchor otherwise: only /std and /|y_i| change.
    grpo = resolve_objective("grpo", kl_coef=0.0).to_dict()
    dr = resolve_objective("dr_grpo").to_dict()
    diff = {k for k in KNOBS if grpo[k] != dr[k]}
    assert diff == {"scale", "aggregation"}


def test_overrides_apply_on_top_of_the_preset():
    spec = resolve_objective("grpo", scale="none", std_ddof=1, dual_clip_c=3.0, kl_coef=0.0)
    assert (spec.scale, spec.std_ddof, spec.dual_clip_c, spec.kl_coef) == ("none", 1, 3.0, 0.0)
    # untouched knobs keep the preset's values
    assert spec.aggregation == "seq_mean_token_mean" and spec.clip_eps_high == 0.2
    assert spec.name == "grpo"
    # and the table itself is not modified
    assert resolve_objective("grpo").scale == "group_std"


def test_override_can_remove_the_clip_on_both_sides():
    spec = resolve_objective("dr_grpo", clip_eps_low=None, clip_eps_high=None)
    assert not spec.uses_clip


def test_spec_is_frozen_and_round_trips_through_a_dict():
    spec = resolve_objective("dapo")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.scale = "none"  # type: ignore[misc]
    assert ObjectiveSpec(**spec.to_dict()) == spec


def test_knobs_are_every_field_but_the_name():
    assert set(KNOBS) == {f.name for f in dataclasses.fields(ObjectiveSpec)} - {"name"}


@pytest.mark.parametrize(
    ("preset", "overrides", "knob"),
    [
        ("grpo_v2", {}, "preset"),
        ("grpo", {"clip_eps": 0.2}, "clip_eps"),
        ("grpo", {"name": "mine"}, "name"),
        ("grpo", {"clip_eps_low": -0.1}, "clip_eps_low"),
        ("grpo", {"clip_eps_high": -0.1}, "clip_eps_high"),
        ("grpo", {"clip_eps_low": 1.0}, "clip_eps_low"),
        ("grpo", {"clip_eps_high": None}, "clip_eps_high"),  # only one clip side
        ("reinforce", {"clip_eps_low": 0.2}, "clip_eps_low"),  # only one clip side
        ("grpo", {"dual_clip_c": 1.0}, "dual_clip_c"),
        ("grpo", {"dual_clip_c": 0.5}, "dual_clip_c"),
        ("reinforce", {"dual_clip_c": 3.0}, "dual_clip_c"),  # dual clip needs the PPO clip
        ("grpo", {"kl_coef": -0.01}, "kl_coef"),
        ("grpo", {"kl_coef": float("nan")}, "kl_coef"),
        ("grpo", {"baseline": "mean"}, "baseline"),
        ("grpo", {"scale": "std"}, "scale"),
        ("grpo", {"aggregation": "sum"}, "aggregation"),
        ("dr_grpo", {"constant_normalizer": "K"}, "constant_normalizer"),
        ("grpo", {"kl_estimator": "k4"}, "kl_estimator"),
        ("grpo", {"kl_placement": "both"}, "kl_placement"),
        ("grpo", {"std_ddof": 2}, "std_ddof"),
        ("grpo", {"adv_eps": 0.0}, "adv_eps"),
    ],
)
def test_invalid_settings_fail_naming_the_knob(preset, overrides, knob):
    with pytest.raises(ValueError, match=knob):
        resolve_objective(preset, **overrides)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="dr_grpo"):
        resolve_objective("drgrpo")


@pytest.mark.parametrize(
    ("name", "knob"),
    [
        ("rloo", "leave_one_out"),
        ("grpo", "group_mean|group_std"),
        ("dapo", "group_mean|group_std"),
        ("dr_grpo", "group_mean"),
    ],
)
def test_group_of_one_fails_for_group_baselines_that_need_two(name, knob):
    spec = resolve_objective(name)
    with pytest.raises(ValueError, match=knob):
        spec.check_group_size(1)
    spec.check_group_size(2)


@pytest.mark.parametrize("name", ["reinforce", "ppo"])
def test_group_of_one_is_accepted_where_it_is_defined(name):
    resolve_objective(name).check_group_size(1)


# --- render_formula ------------------------------------------------------------------------------


def formula(name, **overrides):
    return render_formula(resolve_objective(name, **overrides))


def test_grpo_formula_has_both_divisors_and_the_k3_anchor():
    f = formula("grpo")
    assert f.splitlines()[0] == "objective: grpo"
    assert "(1/|y_i|)" in f and "std_{j in group} r_j + 1e-06" in f and "ddof=0" in f
    assert "clip(rho_it, 0.8, 1.2)" in f
    assert "0.04 *" in f and "exp(d) - d - 1" in f and "(k3)" in f


def test_dr_grpo_formula_has_neither_divisor():
    f = formula("dr_grpo")
    assert "|y_i|" not in f and "std" not in f
    assert "A_i    = r_i - mean_{j in group} r_j " in f
    assert "(1/N) sum_i sum_t m_it * L_it" in f and "(a constant)" in f
    assert "clip(rho_it, 0.8, 1.2)" in f and "KL" not in f


def test_dapo_formula_is_token_level_with_clip_higher():
    f = formula("dapo")
    assert "(1/|y_i|)" not in f and "(1/sum_i |y_i|) sum_i sum_t" in f
    assert "clip(rho_it, 0.8, 1.28)" in f and "std_{j in group}" in f and "KL" not in f


def test_reinforce_and_rloo_formulas_have_no_clip():
    reinforce, rloo = formula("reinforce"), formula("rloo")
    assert "clip" not in reinforce and "-rho_it A_i" in reinforce and "A_i    = r_i " in reinforce
    assert "clip" not in rloo and "j != i" in rloo
    assert "r_i = R_i - 0.05 * sum_t k1_it" in rloo and "KL in the reward" in rloo
    assert "KL_it" not in rloo  # not in the loss


def test_ppo_formula_has_value_baseline_and_batch_std():
    f = formula("ppo")
    assert "V(x_i)" in f and "std_{all j} r_j" in f and "(1/sum_i |y_i|)" in f


def test_formula_follows_the_overrides():
    assert "ddof=1" in formula("grpo", std_ddof=1)
    assert "-3 A_i" in formula("dr_grpo", dual_clip_c=3.0)
    assert "L_max" in formula("dr_grpo", constant_normalizer="num_sequences_x_max_tokens")
    assert "KL" not in formula("grpo", kl_coef=0.0)
    assert "d^2/2" in formula("grpo", kl_estimator="k2")
    assert formula("grpo") != formula("grpo", kl_coef=0.1)
