"""A slow, obviously-correct reference of the whole objective: Python loops over plain floats.

Every formula is written the way the lesson writes it, one rollout and one token at a time, and the
gradient w.r.t. each logprob is written out by hand (no autograd), so that the vectorised
``drgrpo.objective`` can be checked against something that shares none of its code.

The second half re-types TRL's and verl's published formulas (GAE, value loss, REINFORCE++,
GSPO, CISPO, rollout-correction weights), step by step as their code computes them, so that each
new knob is checked against the field's own definition on random tensors.
"""

from __future__ import annotations

import math

import torch


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


# --- slow loops for the formulas added after the lesson ------------------------------------------


def gae_loop(rewards, values, lengths, gamma, lam):
    """GAE and returns for right-padded rows, one rollout and one token at a time (lists)."""
    advantages, returns = [], []
    for r_row, v_row, n in zip(rewards, values, lengths, strict=True):
        t_max = len(r_row)
        adv = [0.0] * t_max
        ret = [0.0] * t_max
        running = 0.0
        for t in reversed(range(n)):
            next_v = v_row[t + 1] if t + 1 < n else 0.0  # the episode ends after token n - 1
            delta = r_row[t] + gamma * next_v - v_row[t]
            running = delta + gamma * lam * running
            adv[t] = running
            ret[t] = running + v_row[t]
        advantages.append(adv)
        returns.append(ret)
    return advantages, returns


# --- TRL's and verl's published formulas, re-typed (facts, not their code) ------------------------
# Each takes torch tensors exactly as the named function does and follows its steps one by one.


def verl_masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()  # verl adds 1e-8 to the count; counts here are >= 2


def verl_masked_whiten(x, mask, eps=1e-8, shift_mean=True):
    """verl.utils.torch_functional.masked_whiten: unbiased variance, rsqrt(var + eps)."""
    mean = verl_masked_mean(x, mask)
    var = verl_masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    var = var * n / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


def verl_gae(token_level_rewards, values, response_mask, gamma, lam, eps=1e-8):
    """verl core_algos.compute_gae_advantage_return: backward over columns, masked columns
    skipped, returns = advantages + values, then advantages whitened over the mask."""
    next_values = 0.0
    last_gae = 0.0
    reversed_advantages = []
    for t in reversed(range(token_level_rewards.shape[-1])):
        m = response_mask[:, t]
        delta = token_level_rewards[:, t] + gamma * next_values - values[:, t]
        gae_t = delta + gamma * lam * last_gae
        next_values = values[:, t] * m + (1 - m) * next_values
        last_gae = gae_t * m + (1 - m) * last_gae
        reversed_advantages.append(last_gae)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    returns = advantages + values
    return verl_masked_whiten(advantages, response_mask, eps), returns


def verl_value_loss(vpreds, returns, values, response_mask, cliprange_value):
    """verl core_algos.compute_value_loss with loss_agg_mode='token-mean' (and TRL's PPO)."""
    vpred_clipped = torch.clamp(vpreds, values - cliprange_value, values + cliprange_value)
    losses1 = (vpreds - returns) ** 2
    losses2 = (vpred_clipped - returns) ** 2
    loss = 0.5 * verl_masked_mean(torch.max(losses1, losses2), response_mask)
    clipfrac = verl_masked_mean(torch.gt(losses2, losses1).to(vpreds.dtype), response_mask)
    return loss, clipfrac


def verl_reinforce_pp_baseline(scores, response_mask, group_size, eps=1e-8):
    """verl compute_reinforce_plus_plus_baseline_outcome_advantage: the group mean subtracted,
    broadcast over the response, whitened over the batch's response tokens."""
    grouped = scores.reshape(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    tiled = centred.unsqueeze(-1).expand_as(response_mask) * response_mask
    return verl_masked_whiten(tiled, response_mask, eps) * response_mask


def verl_reinforce_pp(token_level_rewards, response_mask, gamma, eps=1e-8):
    """verl compute_reinforce_plus_plus_outcome_advantage: discounted return-to-go (reset after
    the last token), whitened over the batch's response tokens."""
    returns = torch.zeros_like(token_level_rewards)
    running = 0.0
    for t in reversed(range(token_level_rewards.shape[1])):
        running = token_level_rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * response_mask[:, t]
    return verl_masked_whiten(returns, response_mask, eps) * response_mask


def verl_seq_mean_token_mean(loss_mat, mask):
    return ((loss_mat * mask).sum(-1) / mask.sum(-1)).mean()


def verl_gspo_loss(old_log_prob, log_prob, advantages, response_mask, eps_low, eps_high):
    """verl compute_policy_loss_gspo: log s_it = logp - sg[logp] + sg[mean_t log-ratio]
    (verl also clamps it at 10: never reached here), PPO clip, seq-mean-token-mean."""
    lengths = response_mask.sum(-1).clamp(min=1)
    log_s = ((log_prob - old_log_prob) * response_mask).sum(-1) / lengths
    log_ratio = log_prob - log_prob.detach() + log_s.detach().unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    return verl_seq_mean_token_mean(torch.maximum(l1, l2), response_mask)


def trl_sequence_loss(per_token_logps, old_per_token_logps, advantages, completion_mask,
                      epsilon_low, epsilon_high):  # fmt: skip
    """TRL GRPOTrainer, importance_sampling_level='sequence', loss_type='grpo': the sequence
    weight exp(mean log-ratio) (differentiated as it is), PPO clip, per-sequence token mean."""
    log_ratio = per_token_logps - old_per_token_logps
    log_w = (log_ratio * completion_mask).sum(-1) / completion_mask.sum(-1).clamp(min=1.0)
    coef_1 = torch.exp(log_w.unsqueeze(-1))
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    adv = advantages.unsqueeze(1)
    per_token_loss = -torch.min(coef_1 * adv, coef_2 * adv)
    return (
        (per_token_loss * completion_mask).sum(-1) / completion_mask.sum(-1).clamp(min=1.0)
    ).mean()


def verl_cispo_loss(old_log_prob, log_prob, advantages, response_mask, clip_low, clip_high):
    """verl compute_policy_loss_cispo, token-mean: -sg[clip(ratio)] * A * logp."""
    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, -20.0, 20.0))
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high).detach()
    return verl_masked_mean(-clipped * advantages * log_prob, response_mask)


def trl_cispo_loss(per_token_logps, old_per_token_logps, advantages, completion_mask, epsilon_high):
    """TRL GRPOTrainer loss_type='cispo': the weight capped at epsilon_high (an absolute cap,
    1 + eps_high in drgrpo's terms) and no lower bound; normalised by the batch's tokens."""
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    w = torch.clamp(coef_1, max=epsilon_high).detach()
    per_token_loss = -w * advantages.unsqueeze(1) * per_token_logps
    return (per_token_loss * completion_mask).sum() / completion_mask.sum().clamp(min=1.0)


def verl_is_weights(log_ratio, response_mask, level, threshold):
    """verl rollout_corr_helper.compute_rollout_correction_weights (token | sequence), truncated:
    exp of the clamped (sequence-summed) log-ratio, zero on padding, then min(., threshold)."""
    if level == "token":
        w = torch.exp(torch.clamp(log_ratio, -20.0, 20.0))
    else:
        s = (log_ratio * response_mask).sum(-1, keepdim=True)
        w = torch.exp(torch.clamp(s, -20.0, 20.0)).expand_as(log_ratio)
    return (w * response_mask).clamp(max=threshold)


def verl_k3_mismatch(old_log_prob, rollout_log_prob, response_mask):
    """verl compute_offpolicy_metrics 'k3_kl': masked mean of exp(d) - d - 1, d = old - rollout."""
    d = old_log_prob - rollout_log_prob
    return verl_masked_mean(torch.exp(d) - d - 1, response_mask)


def dapo_overlong(length, max_len, cache):
    """DAPO eq. 13, one response at a time."""
    if length <= max_len - cache:
        return 0.0
    if length <= max_len:
        return (max_len - cache - length) / cache
    return -1.0
