"""`drgrpo explain`: the lesson's widgets, every number taken by autograd through the objective."""

from __future__ import annotations

import torch

from drgrpo.objective import (
    compute_advantages,
    compute_normalizer,
    objective_loss,
    resolve_objective,
)

LENGTH_PRESETS = ("grpo", "dapo", "dr_grpo")
ADVANTAGE_PRESETS = ("grpo", "dr_grpo", "rloo", "dapo", "reinforce")


def token_grads(
    spec, advantages: torch.Tensor, response_mask: torch.Tensor, max_tokens: int
) -> torch.Tensor:
    """dL/dlogp_it of `spec`'s loss for one batch at ratio 1 (logprobs = old_logprobs), KL off:
    (N, T) float64, by autograd through `objective_loss` with the batch's own normalizer."""
    logprobs = torch.zeros(response_mask.shape, dtype=torch.float64, requires_grad=True)  # (N, T)
    z = compute_normalizer(
        spec.aggregation,
        num_sequences=response_mask.shape[0],
        num_tokens=int(response_mask.sum()),
        max_tokens=max_tokens,
        constant_normalizer=spec.constant_normalizer,
    )
    loss, _ = objective_loss(spec, logprobs, logprobs.detach(), advantages, response_mask, z)
    (grad,) = torch.autograd.grad(loss, logprobs)
    return grad


def length_gradients(
    lengths: list[int], advantage: float, presets: tuple[str, ...] = LENGTH_PRESETS
) -> dict:
    """One group of rollouts of the given lengths, all with the same advantage: the gradient of
    each preset's loss w.r.t. each token's log-probability, at ratio 1 and no KL.

    Returns {"per_token_grad": {preset: [|dL/dlogp_it| per rollout]}, "per_rollout_grad": {..}}.
    """
    _check_lengths(lengths)
    k, t = len(lengths), max(lengths)
    response_mask = torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # (K, T)
    advantages = torch.full((k,), float(advantage), dtype=torch.float64)  # (K,)
    per_token, per_rollout = {}, {}
    for name in presets:
        grad = token_grads(resolve_objective(name, kl_coef=0.0), advantages, response_mask, t)
        # Every token of one rollout gets the same gradient; read it at the first token.
        per_token[name] = [abs(float(grad[i, 0])) for i in range(k)]
        per_rollout[name] = [abs(float(grad[i].sum())) for i in range(k)]
    longest, shortest = lengths.index(max(lengths)), lengths.index(min(lengths))
    # With A < 0 this is the lesson's length bias in one number: how hard each token of the
    # longest (wrong) rollout is pushed down relative to a token of the shortest one.
    ratio = {name: per_token[name][longest] / per_token[name][shortest] for name in presets}
    return {"per_token_grad": per_token, "per_rollout_grad": per_rollout,
            "long_to_short_per_token_ratio": ratio}  # fmt: skip


def group_advantages(rewards: list[float], presets: tuple[str, ...] = ADVANTAGE_PRESETS) -> dict:
    """The advantages each preset gives one group of rewards (the lesson's X/Y table)."""
    if len(rewards) < 2:
        raise ValueError("give at least two rewards (one group of K >= 2 rollouts)")
    r = torch.tensor(rewards, dtype=torch.float64)
    out = {}
    for name in presets:
        spec = resolve_objective(name)
        adv = compute_advantages(
            r, len(rewards), baseline=spec.baseline, scale=spec.scale,
            std_ddof=spec.std_ddof, eps=spec.adv_eps,
        )  # fmt: skip
        out[name] = [float(a) for a in adv]
    return out


def _check_lengths(lengths: list[int]) -> None:
    if not lengths:
        raise ValueError("give at least one length, e.g. --lengths 10,100")
    bad = [n for n in lengths if n < 1]
    if bad:
        raise ValueError(f"lengths must be positive token counts, got {bad}")


def plot_length_sweep(short: int, advantage: float, path: str, max_len: int = 300) -> None:
    """Per-token gradient of the long rollout against its length, one curve per aggregation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the install
        raise SystemExit("plots need matplotlib: pip install 'drgrpo[plot]'") from e
    xs = list(range(short, max(max_len, short + 1) + 1, max(1, (max_len - short) // 150 or 1)))
    curves = {name: [] for name in LENGTH_PRESETS}
    for n in xs:
        grads = length_gradients([short, n], advantage)["per_token_grad"]
        for name in LENGTH_PRESETS:
            curves[name].append(grads[name][1])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels = {"grpo": "GRPO (per-rollout 1/|y|)", "dapo": "DAPO (token-level)",
              "dr_grpo": "Dr.GRPO (over K)"}  # fmt: skip
    for name, ys in curves.items():
        ax.plot(xs, ys, label=labels[name], linewidth=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"length of the long rollout (short rollout: {short} tokens)")
    ax.set_ylabel("|dL / d log pi| per token of the long rollout")
    ax.set_title(f"Per-token gradient, both rollouts with A = {advantage:+g}")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
