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


# Beyond the lesson, one row of knobs each (the knobs not named keep the defaults):
BEYOND = {
    "gspo": dict(baseline="group_mean", scale="group_std", ratio_level="sequence",
                 policy_loss="ppo_clip", clip_eps_low=3e-4, clip_eps_high=4e-4,
                 aggregation="seq_mean_token_mean", kl_coef=0.0),
    "cispo": dict(baseline="group_mean", scale="group_std", ratio_level="token",
                  policy_loss="cispo", clip_eps_low=1.0, clip_eps_high=0.28,
                  aggregation="token_mean", kl_coef=0.0),
    "reinforce_pp": dict(baseline="group_mean", scale="batch_whiten", ratio_level="token",
                         policy_loss="ppo_clip", clip_eps_low=0.2, clip_eps_high=0.2,
                         aggregation="token_mean", kl_coef=1e-3, kl_estimator="k2",
                         kl_placement="loss"),
}  # fmt: skip
SAMPLING_SIDE = ("dynamic_sampling", "overlong_cache_fraction")


def test_every_preset_is_in_the_lineage_table():
    assert set(PRESETS) == set(LINEAGE) | set(BEYOND)


@pytest.mark.parametrize("name", sorted(BEYOND))
def test_beyond_the_lesson_rows(name):
    spec = resolve_objective(name)
    for knob, value in BEYOND[name].items():
        assert getattr(spec, knob) == value, knob
    assert spec.dual_clip_c is None and spec.behavior_correction == "none"
    assert not spec.dynamic_sampling and spec.overlong_cache_fraction == 0.0


def test_only_dapo_turns_the_sampling_side_on():
    for name in PRESETS:
        spec = resolve_objective(name)
        on = spec.dynamic_sampling, spec.overlong_cache_fraction > 0
        assert on == ((True, True) if name == "dapo" else (False, False)), name
    dapo = resolve_objective("dapo")
    assert (dapo.overlong_cache_fraction, dapo.overlong_penalty) == (0.2, 1.0)
    assert dapo.max_sampling_rounds == 10


def test_ppo_resolves_with_the_ppo_rlhf_critic_knobs():
    spec = resolve_objective("ppo")
    assert (spec.gae_gamma, spec.gae_lambda, spec.value_clip_eps, spec.vf_coef) == (
        1.0,
        0.95,
        0.2,
        0.1,
    )


def test_new_knobs_default_to_the_lesson_objective():
    # every row of the lesson keeps its objective: token ratio, PPO clip, no behaviour correction
    for name in LINEAGE:
        spec = resolve_objective(name)
        assert (spec.policy_loss, spec.ratio_level, spec.behavior_correction) == (
            "ppo_clip",
            "token",
            "none",
        )


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
        ("grpo", {"policy_loss": "gspo"}, "policy_loss"),
        ("grpo", {"ratio_level": "seq"}, "ratio_level"),
        ("cispo", {"clip_eps_low": 1.5}, "clip_eps_low"),
        ("cispo", {"dual_clip_c": 3.0}, "dual_clip_c"),
        ("ppo", {"gae_gamma": 1.5}, "gae_gamma"),
        ("ppo", {"gae_lambda": -0.1}, "gae_lambda"),
        ("ppo", {"vf_coef": -1.0}, "vf_coef"),
        ("ppo", {"value_clip_eps": 0.0}, "value_clip_eps"),
        ("grpo", {"behavior_correction": "is"}, "behavior_correction"),
        ("grpo", {"behavior_level": "seq"}, "behavior_level"),
        ("grpo", {"behavior_cap": 0.5}, "behavior_cap"),
        ("grpo", {"behavior_lower": 1.0}, "behavior_lower"),
        ("dapo", {"max_sampling_rounds": 0}, "max_sampling_rounds"),
        ("dapo", {"overlong_cache_fraction": 1.0}, "overlong_cache_fraction"),
        ("dapo", {"overlong_penalty": -1.0}, "overlong_penalty"),
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


def test_dynamic_sampling_needs_two_rollouts_per_group():
    with pytest.raises(ValueError, match="dynamic_sampling"):
        resolve_objective("reinforce", dynamic_sampling=True).check_group_size(1)


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


def test_ppo_formula_has_gae_the_value_loss_and_batch_scaled_advantages():
    # (was: the outcome form "r_i - V(x_i)" over std_{all j} r_j; with a critic PPO is per token)
    f = formula("ppo")
    assert "V_it = V_phi(x_i, y_i,<t)" in f and "(1/sum_i |y_i|)" in f
    assert "[t = |y_i|] R_i - 0.05 * k1_it" in f  # outcome on the last token, KL on every token
    assert "A_it = delta_it + 1 * 0.95 A_i,t+1" in f and "G_it = A_it + V_it" in f
    assert "A_it / (std_m A + 1e-06)" in f and "clip(V_it, V^old_it +- 0.2)" in f
    assert "-min(rho_it A_it, clip(rho_it, 0.8, 1.2) A_it)" in f
    assert "A_it = delta_it + 0.9 * 0.5" in formula("ppo", gae_gamma=0.9, gae_lambda=0.5)
    assert "(A_it - mean_m A)" in formula("ppo", scale="batch_whiten")
    assert "no clip" in formula("ppo", value_clip_eps=None)


def test_gspo_formula_has_the_sequence_ratio():
    f = formula("gspo")
    assert "s_i    = exp((1/|y_i|) sum_t" in f and "sg[s_i]" in f
    assert "clip(rho_it, 0.9997, 1.0004)" in f and "(1/|y_i|) sum_t m_it * L_it" in f


def test_cispo_formula_has_the_stop_gradient_weight():
    f = formula("cispo")
    assert "-sg[clip(rho_it, 0, 1.28)] A_i logp_theta(y_it)" in f and "min(" not in f


def test_reinforce_pp_formula_whitens_over_tokens():
    f = formula("reinforce_pp")
    assert "(c_i - mean_tok c) / (std_tok c + 1e-06)" in f and "d^2/2" in f


def test_formula_shows_the_behaviour_weights():
    assert "behaviour" not in formula("dr_grpo")
    f = formula("dr_grpo", behavior_correction="tis")
    assert "w_it   = min(exp(log_w), 2)" in f and "m_it * w_it * L_it" in f
    assert "log_w = logp_old(y_it) - logp_sampler(y_it)" in f and "Z unchanged" in f
    f = formula("dr_grpo", behavior_correction="mis", behavior_level="geometric",
                behavior_cap=1.01, behavior_lower=0.99)  # fmt: skip
    assert "[0.99 <= exp(log_w) <= 1.01]" in f and "(1/|y_i|) sum_t m_it" in f
    assert "sum_t m_it (logp_old" in formula("dr_grpo", behavior_correction="tis",
                                            behavior_level="sequence")  # fmt: skip


def test_formula_shows_dapos_data_side_only_when_on():
    f = formula("dapo")
    assert "(L_max - L_c - |y_i|) / L_c" in f and "L_c = 0.2 L_max" in f
    assert "at most 10 rounds" in f
    assert "overlong" not in formula("grpo") and "sampling" not in formula("grpo")


def test_formula_says_what_m_it_is():
    assert "m_it = loss_mask" in formula("dr_grpo")
    assert "0 on every truncated row" in render_formula(resolve_objective(), truncated="mask_loss")
    assert "truncated" not in render_formula(resolve_objective(), truncated="keep")
    with pytest.raises(ValueError, match="truncated"):
        render_formula(resolve_objective(), truncated="drop")


def test_formula_follows_the_overrides():
    assert "ddof=1" in formula("grpo", std_ddof=1)
    assert "-3 A_i" in formula("dr_grpo", dual_clip_c=3.0)
    assert "L_max" in formula("dr_grpo", constant_normalizer="num_sequences_x_max_tokens")
    assert "KL" not in formula("grpo", kl_coef=0.0)
    assert "d^2/2" in formula("grpo", kl_estimator="k2")
    assert formula("grpo") != formula("grpo", kl_coef=0.1)
