"""Render a resolved ObjectiveSpec as the formula it optimises, in plain text."""

from __future__ import annotations

from drgrpo.objective.presets import ObjectiveSpec

_BASELINE = {
    "none": "r_i",
    "group_mean": "r_i - mean_{j in group} r_j",
    "leave_one_out": "r_i - mean_{j in group, j != i} r_j",
    "value": "r_i - V(x_i)",
}
_SCALE = {
    "none": "",
    "group_std": "std_{j in group} r_j",
    "batch_std": "std_{all j} r_j",
}
_KL = {"k1": "-d", "k2": "d^2/2", "k3": "exp(d) - d - 1"}
_MASK = {
    None: "m_it = loss_mask: 1 on the response tokens the loss sees (EOS included)",
    "keep": "m_it = 1 on response tokens (EOS included)",
    "zero_reward": "m_it = 1 on response tokens (EOS included)",
    "mask_loss": "m_it = 1 on response tokens (EOS included), 0 on every truncated row",
}


def _normalizer_text(spec: ObjectiveSpec) -> tuple[str, str]:
    if spec.aggregation == "seq_mean_token_mean":
        return "(1/N) sum_i (1/|y_i|) sum_t", "N = sequences in the batch"
    if spec.aggregation == "token_mean":
        return "(1/sum_i |y_i|) sum_i sum_t", "sum_i |y_i| = response tokens in the batch"
    if spec.constant_normalizer == "num_sequences":
        return "(1/N) sum_i sum_t", "N = sequences in the batch (a constant)"
    return "(1/(N * L_max)) sum_i sum_t", "N * L_max = sequences x max_new_tokens (a constant)"


def _advantage_lines(spec: ObjectiveSpec) -> list[str]:
    ddof = f", ddof={spec.std_ddof}" if spec.scale != "none" else ""
    knobs = f"(baseline={spec.baseline}, scale={spec.scale}{ddof})"
    eps = f"{spec.adv_eps:g}"
    if spec.baseline == "value":  # PPO with a critic: per-token GAE
        g, lam = f"{spec.gae_gamma:g}", f"{spec.gae_lambda:g}"
        reward = "r_it   = [t = |y_i|] R_i"
        if spec.kl_coef > 0 and spec.kl_placement == "reward":
            reward += (
                f" - {spec.kl_coef:g} * {spec.kl_estimator}_it   (KL in the reward, per token)"
            )
        scaled = {
            "none": "A_it",
            "batch_std": f"A_it / (std_m A + {eps})",
            "batch_whiten": f"(A_it - mean_m A) / (std_m A + {eps})",
        }.get(spec.scale, f"A_it scaled by {spec.scale}")
        vclip = "no clip" if spec.value_clip_eps is None else f"V^old_it +- {spec.value_clip_eps:g}"
        return [
            f"  reward      {reward}",
            f"  TD error    delta_it = r_it + {g} V_i,t+1 - V_it,  V_it = V_phi(x_i, y_i,<t)"
            "   (V after the last token = 0)",
            f"  GAE         A_it = delta_it + {g} * {lam} A_i,t+1;  returns G_it = A_it + V_it",
            f"  advantage   {scaled} over the batch's response tokens {knobs}",
            "  value loss  Agg_Z 0.5 max((V_it - G_it)^2, (V^clip_it - G_it)^2),  V^clip = "
            f"clip(V_it, {vclip})   (x {spec.vf_coef:g} when the value head shares the trunk)",
        ]
    adv = _BASELINE[spec.baseline]
    if spec.scale == "batch_whiten":
        adv = f"(c_i - mean_tok c) / (std_tok c + {eps}),  c_i = {adv}"
        knobs += "  (mean, std over the batch's response tokens)"
    elif spec.scale != "none":
        adv = f"({adv}) / ({_SCALE[spec.scale]} + {eps})"
    lines = []
    if spec.kl_coef > 0 and spec.kl_placement == "reward":
        lines.append(
            f"  reward      r_i = R_i - {spec.kl_coef:g} * sum_t {spec.kl_estimator}_it"
            "   (KL in the reward, no gradient)"
        )
    return lines + [f"  advantage   A_i    = {adv}   {knobs}"]


def _ratio_and_loss(spec: ObjectiveSpec) -> list[str]:
    a = "A_it" if spec.baseline == "value" else "A_i"
    if spec.ratio_level == "sequence":
        ratio = [
            "  ratio       s_i    = exp((1/|y_i|) sum_t m_it (logp_theta(y_it) - logp_old(y_it)))",
            "              rho_it = sg[s_i] * pi_theta(y_it) / sg[pi_theta(y_it)]   (value s_i; GSPO)",
        ]
    else:
        ratio = ["  ratio       rho_it = exp(logp_theta(y_it) - logp_old(y_it))"]
    if spec.policy_loss == "cispo":
        w = "rho_it" if not spec.uses_clip else _clip_text(spec, "rho_it")
        pg = f"-sg[{w}] {a} logp_theta(y_it)   (CISPO: no token dropped)"
    elif spec.uses_clip:
        pg = f"-min(rho_it {a}, {_clip_text(spec, 'rho_it')} {a})"
        if spec.dual_clip_c is not None:
            pg = f"{a} < 0 ? min({pg}, -{spec.dual_clip_c:g} {a}) : {pg}"
    else:
        pg = f"-rho_it {a}"
    return ratio + [f"  token loss  L_it   = {pg}"]


def _clip_text(spec: ObjectiveSpec, x: str) -> str:
    lo, hi = 1 - spec.clip_eps_low, 1 + spec.clip_eps_high
    return f"clip({x}, {lo:g}, {hi:g})"


def _behavior_lines(spec: ObjectiveSpec) -> list[str]:
    if spec.behavior_correction == "none":
        return []
    d = "logp_old(y_it) - logp_sampler(y_it)"
    log_w = {
        "token": f"{d}",
        "sequence": f"sum_t m_it ({d})",
        "geometric": f"(1/|y_i|) sum_t m_it ({d})",
    }[spec.behavior_level]
    cap, lower = f"{spec.behavior_cap:g}", f"{spec.behavior_lower:g}"
    if spec.behavior_correction == "tis":
        w = f"min(exp(log_w), {cap})"
    else:
        w = f"exp(log_w) * [{lower} <= exp(log_w) <= {cap}]   (0: the token leaves the loss)"
    return [
        f"  behaviour   w_it   = {w},  log_w = {log_w}   ({spec.behavior_correction}, "
        f"{spec.behavior_level}; Z unchanged)",
    ]


def _shaping_lines(spec: ObjectiveSpec) -> list[str]:
    lines = []
    if spec.overlong_cache_fraction > 0:
        f, p = f"{spec.overlong_cache_fraction:g}", f"{spec.overlong_penalty:g}"
        lines.append(
            f"  overlong    R_i += {p} * (0 if |y_i| <= L_max - L_c; (L_max - L_c - |y_i|) / L_c "
            f"up to L_max; -1 beyond),  L_c = {f} L_max"
        )
    if spec.dynamic_sampling:
        lines.append(
            "  sampling    groups whose rewards all agree are dropped; sample again (at most "
            f"{spec.max_sampling_rounds} rounds) until B groups are left"
        )
    return lines


def render_formula(spec: ObjectiveSpec, *, truncated: str | None = None) -> str:
    """The exact objective ``objective_loss`` computes for this spec, one term per line.

    ``truncated`` is the trainer's rollout.truncated setting, when known: it decides m_it.
    """
    agg, z = _normalizer_text(spec)
    lines = [f"objective: {spec.name}", *_shaping_lines(spec), *_advantage_lines(spec)]
    lines += _ratio_and_loss(spec) + _behavior_lines(spec)
    w = "w_it * " if spec.behavior_correction != "none" else ""
    total = f"  loss        = {agg} m_it * {w}L_it"
    if spec.kl_coef > 0 and spec.kl_placement == "loss":
        total += f"  +  {spec.kl_coef:g} * {agg} m_it * KL_it"
        lines.append(total)
        lines.append(
            f"  KL          KL_it  = {_KL[spec.kl_estimator]},  d = logp_ref(y_it) - "
            f"logp_theta(y_it)  ({spec.kl_estimator})"
        )
    else:
        lines.append(total)
    if truncated not in _MASK:
        raise ValueError(f"unknown truncated={truncated!r}; choose one of {list(_MASK)[1:]}")
    lines.append(f"  where {_MASK[truncated]}, {z}")
    return "\n".join(lines)
