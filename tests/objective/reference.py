"""A slow, obviously-correct reference of the whole objective: Python loops over plain floats.

Every formula is written the way the lesson writes it, one rollout and one token at a time, and the
gradient w.r.t. each logprob is written out by hand (no autograd), so that the vectorised
``drgrpo.objective`` can be checked against something that shares none of its code.
"""

from __future__ import annotations

import math


def advantages(rewards, k, baseline, scale, std_ddof, eps, values=None):
    """A_i = (r_i - b_i) / s_i, one rollout at a time."""
    n = len(rewards)
    out = []
    for i in range(n):
        g = i // k
        group = [rewards[j] for j in range(g * k, g * k + k)]
        if baseline == "none":
            b = 0.0
        elif baseline == "group_mean":
            b = sum(group) / k
        elif baseline == "leave_one_out":
            others = [rewards[j] for j in range(g * k, g * k + k) if j != i]
            b = sum(others) / len(others)
        elif baseline == "value":
            b = values[i]
        else:
            raise ValueError(baseline)
        if scale == "none":
            s = 1.0
        elif scale == "group_std":
            s = _std(group, std_ddof) + eps
        elif scale == "batch_std":
            s = _std(rewards, std_ddof) + eps
        else:
            raise ValueError(scale)
        out.append((rewards[i] - b) / s)
    return out


def _std(xs, ddof):
    if len(xs) - ddof < 1:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - ddof))


def kl(logp, ref, estimator):
    """(KL estimate, d KL / d logp) for one token, d = ref - logp."""
    d = ref - logp
    if estimator == "k1":
        return -d, 1.0
    if estimator == "k2":
        return d * d / 2, -d
    if estimator == "k3":
        return math.exp(d) - d - 1, 1.0 - math.exp(d)
    raise ValueError(estimator)


def token_policy_loss(logp, old, a, eps_low, eps_high, dual_c):
    """(L, dL/dlogp) for one token: -min(rho A, clip(rho) A), optionally capped at -c A for A < 0."""
    rho = math.exp(logp - old)
    if eps_low is None:
        return -rho * a, -a * rho
    clipped_rho = min(max(rho, 1 - eps_low), 1 + eps_high)
    surr1, surr2 = rho * a, clipped_rho * a
    if surr1 <= surr2:  # min picks the unclipped branch: it depends on logp through rho
        loss, grad = -surr1, -a * rho
    else:  # min picks the clipped branch: a constant (rho is outside the range)
        loss, grad = -surr2, 0.0
    if dual_c is not None and a < 0 and loss > -dual_c * a:
        loss, grad = -dual_c * a, 0.0
    return loss, grad


def kl_penalized_rewards(rewards, logprobs, ref, mask, kl_coef, estimator):
    out = []
    for i, r in enumerate(rewards):
        total = 0.0
        for t in range(len(mask[i])):
            if mask[i][t]:
                total += kl(logprobs[i][t], ref[i][t], estimator)[0]
        out.append(r - kl_coef * total)
    return out


def objective(spec, rewards, logprobs, old, ref, mask, k, values=None, max_tokens=None):
    """The full objective of one optimizer-step batch (lists of floats).

    Returns (loss, grad w.r.t. logprobs as a list of lists, advantages).
    """
    n = len(rewards)
    if spec.kl_coef > 0 and spec.kl_placement == "reward":
        # the sampler's logprobs (old) against the reference
        rewards = kl_penalized_rewards(rewards, old, ref, mask, spec.kl_coef, spec.kl_estimator)
    adv = advantages(
        rewards, k, spec.baseline, spec.scale, spec.std_ddof, spec.adv_eps, values=values
    )
    lengths = [sum(1 for m in row if m) for row in mask]
    if spec.aggregation == "seq_mean_token_mean":
        z = n
    elif spec.aggregation == "token_mean":
        z = sum(lengths)
    elif spec.constant_normalizer == "num_sequences":
        z = n
    else:
        z = n * max_tokens
    z = max(z, 1)
    kl_in_loss = spec.kl_coef > 0 and spec.kl_placement == "loss"

    loss = 0.0
    grad = [[0.0] * len(row) for row in mask]
    for i in range(n):
        if lengths[i] == 0:
            continue
        # weight of one token of rollout i in the loss
        w = 1.0 / z
        if spec.aggregation == "seq_mean_token_mean":
            w = w / lengths[i]
        for t in range(len(mask[i])):
            if not mask[i][t]:
                continue
            lt, gt = token_policy_loss(
                logprobs[i][t], old[i][t], adv[i],
                spec.clip_eps_low, spec.clip_eps_high, spec.dual_clip_c,
            )  # fmt: skip
            if kl_in_loss:
                kt, dkt = kl(logprobs[i][t], ref[i][t], spec.kl_estimator)
                lt, gt = lt + spec.kl_coef * kt, gt + spec.kl_coef * dkt
            loss += w * lt
            grad[i][t] = w * gt
    return loss, grad, adv
