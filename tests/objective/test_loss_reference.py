"""The vectorised objective against the loop reference (tests/objective/reference.py), on random
batches: advantages, loss value and gradient, for every preset and the knobs the presets leave off."""

from __future__ import annotations

import pytest
import torch

from drgrpo.objective import (
    compute_advantages,
    compute_normalizer,
    kl_penalized_rewards,
    objective_loss,
    resolve_objective,
)

from . import reference

F64 = torch.float64
# float64 through a few dozen operations: agreement to ~1e-15 is expected; 1e-11 leaves room for
# summation order and nothing else.
TOL = dict(rtol=1e-11, atol=1e-13)
MAX_TOKENS = 9

VARIANTS = [
    ("reinforce", {}),
    ("ppo", {}),
    ("grpo", {}),
    ("rloo", {}),
    ("dapo", {}),
    ("dr_grpo", {}),
    ("grpo", {"std_ddof": 1}),
    ("grpo", {"scale": "batch_std", "kl_estimator": "k2"}),
    ("ppo", {"dual_clip_c": 1.5}),
    ("dapo", {"dual_clip_c": 2.0, "kl_coef": 0.1, "kl_estimator": "k1", "kl_placement": "loss"}),
    ("dr_grpo", {"constant_normalizer": "num_sequences_x_max_tokens"}),
    ("dr_grpo", {"kl_coef": 0.1, "kl_estimator": "k3"}),
    ("rloo", {"kl_estimator": "k3", "clip_eps_low": 0.2, "clip_eps_high": 0.2}),
    ("reinforce", {"kl_coef": 0.2, "kl_estimator": "k2", "kl_placement": "reward"}),
    ("dr_grpo", {"baseline": "leave_one_out", "scale": "group_std", "aggregation": "token_mean"}),
]


def random_batch(seed):
    g = torch.Generator().manual_seed(seed)
    b, k, t = 2 + seed % 2, 3 + seed % 2, 4 + seed % 3
    n = b * k
    if seed % 2:  # binary verifier rewards (kept away from all-equal groups by one 0.5)
        rewards = torch.randint(0, 2, (n,), generator=g).to(F64)
        rewards[0] = 0.5
    else:
        rewards = torch.randn(n, generator=g, dtype=F64)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    lengths[-1] = t  # one full-width row
    if seed % 3 == 0:
        lengths[1] = 0  # and, sometimes, a row with no response token
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    old = -3.0 * torch.rand(n, t, generator=g, dtype=F64)
    logp = old + 0.5 * torch.randn(n, t, generator=g, dtype=F64)  # ratios from ~0.3 to ~3
    ref = logp + 0.5 * torch.randn(n, t, generator=g, dtype=F64)
    values = torch.randn(n, generator=g, dtype=F64)
    return dict(rewards=rewards, logp=logp, old=old, ref=ref, mask=mask, k=k, values=values)


def vectorised(spec, batch):
    logp = batch["logp"].clone().requires_grad_()
    rewards, mask = batch["rewards"], batch["mask"]
    if spec.kl_coef > 0 and spec.kl_placement == "reward":
        rewards = kl_penalized_rewards(
            rewards, batch["old"], batch["ref"], mask,
            kl_coef=spec.kl_coef, estimator=spec.kl_estimator,
        )  # fmt: skip
    adv = compute_advantages(
        rewards, batch["k"], baseline=spec.baseline, scale=spec.scale, std_ddof=spec.std_ddof,
        eps=spec.adv_eps, values=batch["values"],
    )  # fmt: skip
    z = compute_normalizer(
        spec.aggregation, num_sequences=mask.shape[0], num_tokens=int(mask.sum()),
        max_tokens=MAX_TOKENS, constant_normalizer=spec.constant_normalizer,
    )  # fmt: skip
    loss, stats = objective_loss(spec, logp, batch["old"], adv, mask, z, ref_logprobs=batch["ref"])
    (grad,) = torch.autograd.grad(loss, logp)
    return loss, grad, adv, stats


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(
    ("preset", "overrides"), VARIANTS, ids=[f"{p}-{'-'.join(o) or 'preset'}" for p, o in VARIANTS]
)
def test_vectorised_objective_matches_the_loop_reference(preset, overrides, seed):
    spec = resolve_objective(preset, **overrides)
    batch = random_batch(seed)
    loss, grad, adv, stats = vectorised(spec, batch)
    ref_loss, ref_grad, ref_adv = reference.objective(
        spec,
        batch["rewards"].tolist(),
        batch["logp"].tolist(),
        batch["old"].tolist(),
        batch["ref"].tolist(),
        batch["mask"].tolist(),
        batch["k"],
        values=batch["values"].tolist(),
        max_tokens=MAX_TOKENS,
    )
    torch.testing.assert_close(adv, torch.tensor(ref_adv, dtype=F64), **TOL)
    torch.testing.assert_close(loss, torch.tensor(ref_loss, dtype=F64), **TOL)
    torch.testing.assert_close(grad, torch.tensor(ref_grad, dtype=F64), **TOL)
    # the random batch really exercises the clip (else the comparison would prove little)
    if spec.uses_clip:
        assert 0 < stats["clipped_tokens"].item() < stats["tokens"].item()


def test_reference_is_sensitive_to_the_clip_range():
    # Sanity check of the comparison itself: a different clip range must change the result.
    batch = random_batch(0)
    spec = resolve_objective("dr_grpo")
    _, grad, _, _ = vectorised(spec, batch)
    wider = resolve_objective("dr_grpo", clip_eps_low=0.5, clip_eps_high=0.5)
    _, ref_grad, _ = reference.objective(
        wider, batch["rewards"].tolist(), batch["logp"].tolist(), batch["old"].tolist(),
        batch["ref"].tolist(), batch["mask"].tolist(), batch["k"], max_tokens=MAX_TOKENS,
    )  # fmt: skip
    assert not torch.allclose(grad, torch.tensor(ref_grad, dtype=F64), **TOL)
