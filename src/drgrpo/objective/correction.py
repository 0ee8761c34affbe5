"""Behaviour correction: importance weights between the trainer's old policy and the sampler.

A fast sampler (vLLM, another precision or kernel) does not sample from exactly the policy whose
log-probs the trainer computes (Yao et al. 2025, "Your efficient RL framework secretly brings you
off-policy RL training"). With log w_it = logp_old_it - logp_sampler_it (pi_old / pi_sampler):

    behavior_level (how w is aggregated; every token of rollout i shares a sequence-level w_i)
        token      w_it = exp(log w_it)
        sequence   w_i  = exp(sum_t log w_it)            product of the token ratios
        geometric  w_i  = exp((1/|y_i|) sum_t log w_it)  geometric mean: length-neutral, so a long
                                                         answer is not likelier to be cut (matters
                                                         for Dr.GRPO, which keeps long answers' weight)
    behavior_correction
        tis   truncated IS:  w <- min(w, cap)                                   (Yao et al.: TIS)
        mis   masked IS:     w <- w * [lower <= w <= cap]                        (MIS; verl's RS)

The weight multiplies the policy term of every token: L_it <- sg[w_it] * L_it (verl's
rollout_is_weights, decoupled mode). Under MIS a rejected token leaves the loss entirely (its KL
term too). THE NORMALIZER NEVER CHANGES: Z, and |y_i| under seq_mean_token_mean, come from the
loss_mask as it was, so masked tokens still count in Z. Correcting a batch re-weights it; it does
not change what one token is worth relative to the batch (and Dr.GRPO's constant Z stays constant).
Log-ratios are clamped to [-20, 20] before exp, as verl does.

Mismatch: KL(sampler || old) estimated by k3 on the sampler's own samples,
    k3_it = exp(log w_it) - log w_it - 1 >= 0,   E_sampler[k3] = KL(pi_sampler || pi_old).
"""

from __future__ import annotations

import torch

BEHAVIOR_CORRECTIONS = ("none", "tis", "mis")
BEHAVIOR_LEVELS = ("token", "sequence", "geometric")
_MAX_LOG_RATIO = 20.0


def behavior_log_weights(
    old_logprobs: torch.Tensor,  # (N, T) pi_old, the trainer's log-probs before the update
    sampler_logprobs: torch.Tensor,  # (N, T) pi_sampler, the rollout engine's log-probs
    loss_mask: torch.Tensor,  # (N, T)
    level: str = "token",
) -> torch.Tensor:  # (N, T) log w, 0 on padding (sequence levels broadcast over the row)
    if level not in BEHAVIOR_LEVELS:
        raise ValueError(f"unknown behavior_level {level!r}; choose one of {BEHAVIOR_LEVELS}")
    valid = loss_mask.bool()
    d = torch.where(valid, old_logprobs.detach() - sampler_logprobs.detach(), 0.0)  # (N, T)
    if level == "token":
        log_w = d
    else:
        log_w = d.sum(dim=-1, keepdim=True)  # (N, 1)
        if level == "geometric":
            log_w = log_w / valid.sum(dim=-1, keepdim=True).clamp(min=1)
        log_w = log_w.expand_as(d)
    return torch.where(valid, log_w.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO), 0.0)


def behavior_weights(
    old_logprobs: torch.Tensor,  # (N, T)
    sampler_logprobs: torch.Tensor,  # (N, T)
    loss_mask: torch.Tensor,  # (N, T)
    *,
    correction: str = "tis",
    level: str = "token",
    cap: float = 2.0,
    lower: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Return (weights (N, T), kept (N, T) bool, stats), all without gradient.

    weights multiply the per-token policy loss (1 everywhere for correction="none"); kept is False
    on the tokens MIS rejects (and on padding). stats are sums over this batch's loss tokens, so
    they add up across micro-batches: mismatch_kl_sum (k3), behavior_corrected_tokens (tokens
    whose weight TIS truncated or MIS rejected).
    """
    if correction not in BEHAVIOR_CORRECTIONS:
        raise ValueError(
            f"unknown behavior_correction {correction!r}; choose one of {BEHAVIOR_CORRECTIONS}"
        )
    if not 0 <= lower < 1 <= cap:
        raise ValueError(f"behaviour bounds need 0 <= lower < 1 <= cap, got {lower} and {cap}")
    valid = loss_mask.bool()
    m = loss_mask.to(old_logprobs.dtype)
    w = torch.exp(behavior_log_weights(old_logprobs, sampler_logprobs, loss_mask, level))
    if correction == "tis":
        corrected = w > cap
        weights = torch.where(corrected, torch.full_like(w, cap), w)
        kept = valid
    elif correction == "mis":
        corrected = (w > cap) | (w < lower)
        weights = torch.where(corrected, torch.zeros_like(w), w)
        kept = valid & ~corrected
    else:
        corrected = torch.zeros_like(valid)
        weights, kept = torch.ones_like(w), valid
    stats = {
        "mismatch_kl_sum": (mismatch_kl_per_token(old_logprobs, sampler_logprobs, loss_mask)).sum(),
        "behavior_corrected_tokens": (corrected.to(m.dtype) * m).sum(),
    }
    return torch.where(valid, weights, 0.0), kept, stats


def mismatch_kl_per_token(
    old_logprobs: torch.Tensor,  # (N, T)
    sampler_logprobs: torch.Tensor,  # (N, T)
    loss_mask: torch.Tensor,  # (N, T)
) -> torch.Tensor:  # (N, T) k3 estimate of KL(sampler || old), 0 on padding
    """Sum it over a row for the mismatch of one response (to log it by response length)."""
    valid = loss_mask.bool()
    d = torch.where(valid, old_logprobs.detach() - sampler_logprobs.detach(), 0.0)
    d = d.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.where(valid, torch.expm1(d) - d, 0.0)
