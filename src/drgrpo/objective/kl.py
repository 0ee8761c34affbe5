"""Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman 2020, "Approximating KL").

With d_t = ref_logprobs_t - logprobs_t (the log of pi_ref / pi at the sampled token):
    k1 = -d                     unbiased, high variance, can be negative   (PPO-RLHF reward penalty)
    k2 = d^2 / 2                biased, low variance, >= 0
    k3 = exp(d) - d - 1         unbiased, low variance, >= 0               (GRPO's anchor, DeepSeekMath)

Where the term goes (added to the loss, or subtracted from the reward) is the trainer's business;
in the loss it is aggregated exactly like the policy term.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")
# A token whose reference probability underflows would give exp(d) = inf; beyond |d| = 20 the
# penalty is already huge, so the log-ratio is clamped there (as verl and OpenRLHF do).
_MAX_LOG_RATIO = 20.0


def kl_per_token(
    logprobs: torch.Tensor,  # (N, T)
    ref_logprobs: torch.Tensor,  # (N, T)
    estimator: str = "k3",
) -> torch.Tensor:  # (N, T)
    d = (ref_logprobs.detach() - logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.expm1(d) - d  # expm1 keeps k3 accurate (and >= 0) when d is tiny
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}")
