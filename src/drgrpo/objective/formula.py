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


def _normalizer_text(spec: ObjectiveSpec) -> tuple[str, str]:
    if spec.aggregation == "seq_mean_token_mean":
        return "(1/N) sum_i (1/|y_i|) sum_t", "N = sequences in the batch"
    if spec.aggregation == "token_mean":
        return "(1/sum_i |y_i|) sum_i sum_t", "sum_i |y_i| = response tokens in the batch"
    if spec.constant_normalizer == "num_sequences":
        return "(1/N) sum_i sum_t", "N = sequences in the batch (a constant)"
    return "(1/(N * L_max)) sum_i sum_t", "N * L_max = sequences x max_new_tokens (a constant)"


def render_formula(spec: ObjectiveSpec) -> str:
    """The exact objective ``objective_loss`` computes for this spec, one term per line."""
    ddof = f", ddof={spec.std_ddof}" if spec.scale != "none" else ""
    adv = _BASELINE[spec.baseline]
    if spec.scale != "none":
        adv = f"({adv}) / ({_SCALE[spec.scale]} + {spec.adv_eps:g})"
    reward = "r_i"
    if spec.kl_coef > 0 and spec.kl_placement == "reward":
        reward = f"r_i = R_i - {spec.kl_coef:g} * sum_t {spec.kl_estimator}_it"
    if spec.uses_clip:
        lo, hi = 1 - spec.clip_eps_low, 1 + spec.clip_eps_high
        pg = f"-min(rho_it A_i, clip(rho_it, {lo:g}, {hi:g}) A_i)"
        if spec.dual_clip_c is not None:
            pg = f"A_i < 0 ? min({pg}, -{spec.dual_clip_c:g} A_i) : {pg}"
    else:
        pg = "-rho_it A_i"
    agg, z = _normalizer_text(spec)
    lines = [f"objective: {spec.name}"]
    if reward != "r_i":
        lines.append(f"  reward      {reward}   (KL in the reward, no gradient)")
    lines += [
        f"  advantage   A_i    = {adv}   (baseline={spec.baseline}, scale={spec.scale}{ddof})",
        "  ratio       rho_it = exp(logp_theta(y_it) - logp_old(y_it))",
        f"  token loss  L_it   = {pg}",
    ]
    total = f"  loss        = {agg} m_it * L_it"
    if spec.kl_coef > 0 and spec.kl_placement == "loss":
        k = {"k1": "-d", "k2": "d^2/2", "k3": "exp(d) - d - 1"}[spec.kl_estimator]
        total += f"  +  {spec.kl_coef:g} * {agg} m_it * KL_it"
        lines.append(total)
        lines.append(
            f"  KL          KL_it  = {k},  d = logp_ref(y_it) - logp_theta(y_it)  ({spec.kl_estimator})"
        )
    else:
        lines.append(total)
    lines.append(f"  where m_it = 1 on response tokens (EOS included), {z}")
    return "\n".join(lines)
