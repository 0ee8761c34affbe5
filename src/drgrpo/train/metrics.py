"""Metric names of a run (metrics.jsonl, TensorBoard) and how each is computed, in one place.

Groups as in cleanrl: reward/*, rollout/*, policy/*, optim/*, perf/*, eval/*. Correctness is
the verifier's verdict (`tasks.scoring.Graded.correct`), as in evaluation and the SFT checks;
reward/<name>/mean and the fault counts come from `Graded.metrics()`.
"""

from __future__ import annotations

import math
import statistics

import torch


def step_metrics(
    rewards: torch.Tensor,  # (N,) the task's rewards (before any KL-in-reward shaping)
    correct: torch.Tensor,  # (N,) bool or 0/1
    lengths: torch.Tensor,  # (N,) response tokens, stop token included
    truncated: torch.Tensor,  # (N,) bool or 0/1
    group_size: int,
    totals: dict,
) -> dict:
    """The metrics of one RL step. `totals` come from `update.run_updates`: per-step means for
    losses, token sums for clipfrac / KL / entropy (divided here by the tokens they cover)."""
    lengths, correct, truncated = lengths.float(), correct.bool(), truncated.float()
    grouped = rewards.reshape(-1, group_size)
    tokens = max(totals.get("tokens", 0.0), 1.0)
    return {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std(correction=0)),
        "reward/accuracy": float(correct.float().mean()),
        "reward/frac_zero_std_groups": float(
            (grouped.std(dim=1, correction=0) == 0).float().mean()
        ),
        "rollout/len_mean": float(lengths.mean()),
        "rollout/len_correct": float(lengths[correct].mean()) if correct.any() else None,
        "rollout/len_incorrect": float(lengths[~correct].mean()) if (~correct).any() else None,
        "rollout/truncated_frac": float(truncated.float().mean()),
        "policy/loss": totals.get("loss"),
        "policy/pg_loss": totals.get("pg_loss"),
        "policy/kl": totals["kl_sum"] / tokens if "kl_sum" in totals else None,
        "policy/clipfrac": totals.get("clipped_tokens", 0.0) / tokens,
        "policy/entropy": totals["entropy_sum"] / tokens if "entropy_sum" in totals else None,
        "rollout/mismatch_kl": (
            totals["mismatch_kl_sum"] / tokens if "mismatch_kl_sum" in totals else None
        ),
        "policy/behavior_corrected_frac": (
            totals["behavior_corrected_tokens"] / tokens
            if "behavior_corrected_tokens" in totals
            else None
        ),
        "optim/grad_norm": totals["grad_norm"],
        "optim/skipped_steps": totals["skipped_steps"],
        "optim/steps": totals["optimizer_steps"],
    }


def length_metrics(
    advantages: torch.Tensor,  # (N,) one advantage per rollout (group baselines; not PPO's (N, T))
    correct: torch.Tensor,  # (N,) bool or 0/1
    lengths: torch.Tensor,  # (N,) response tokens
    group_size: int,
    aggregation: str,
) -> dict:
    """The length-bias probes of one step (docs/length-bias.md), from numbers the step has anyway.

    policy/long_wrong_penalty_ratio: among wrong rollouts with a nonzero advantage, the mean
    per-token gradient magnitude |dL/dlogp_it| on the longest third over that on the shortest
    third. At ratio 1 (clip inactive) dL/dlogp_it = -A_i w_i / Z with w_i = 1/|y_i| under
    seq_mean_token_mean (GRPO's "bias B", the lesson) and w_i = 1 otherwise; Z is shared by all
    rows, so it cancels. Below 1: a long wrong answer is pushed down less per token.
    rollout/len_gap_wrong_correct: over groups with both outcomes, mean wrong length minus mean
    correct length: how much length carries information about correctness inside a group, which
    is what the 1/|y_i| factor needs to move length (a decision made before the outcome is
    settled gets zero expected gradient from it).
    """
    correct, lengths = correct.bool(), lengths.double()
    out = {"policy/long_wrong_penalty_ratio": None, "rollout/len_gap_wrong_correct": None}
    per_token = advantages.double().abs()
    if aggregation == "seq_mean_token_mean":
        per_token = per_token / lengths.clamp(min=1.0)
    rows = ((~correct) & (advantages != 0)).nonzero().flatten()
    if len(rows) >= 3:
        order = rows[lengths[rows].argsort(stable=True)]
        third = len(order) // 3
        short, long = per_token[order[:third]].mean(), per_token[order[-third:]].mean()
        out["policy/long_wrong_penalty_ratio"] = float(long / short)
    gaps = []
    for ok, n in zip(correct.reshape(-1, group_size), lengths.reshape(-1, group_size), strict=True):
        if ok.any() and (~ok).any():
            gaps.append(float(n[~ok].mean() - n[ok].mean()))
    out["rollout/len_gap_wrong_correct"] = statistics.fmean(gaps) if gaps else None
    return out


def eval_metrics(result: dict) -> dict:
    """An `evaluate` result as eval/* metrics."""
    out = {
        "eval/accuracy": result["accuracy"],
        "eval/reward_mean": result.get("reward_mean"),
        "eval/greedy_accuracy": result.get("greedy_accuracy"),
        "eval/len_mean": result.get("len_mean"),
        "eval/len_correct": result.get("len_correct"),
        "eval/len_incorrect": result.get("len_incorrect"),
        "eval/reward_errors": result.get("reward_errors"),
        "eval/reward_timeouts": result.get("reward_timeouts"),
    }
    for k, v in result["pass_at_k"].items():
        out[f"eval/pass@{k}"] = v
    return out


def summarize(preset: str, base: dict, final: dict, wall_s: float, steps_done: int) -> dict:
    """summary.json: the base and final evaluations side by side."""
    return {
        "preset": preset,
        "steps": steps_done,
        "wall_s": round(wall_s, 1),
        "base": base,
        "final": final,
        "base_accuracy": base["accuracy"],
        "final_accuracy": final["accuracy"],
        "base_greedy_accuracy": base.get("greedy_accuracy"),
        "final_greedy_accuracy": final.get("greedy_accuracy"),
        "base_len_mean": base.get("len_mean"),
        "final_len_mean": final.get("len_mean"),
        "eval_prompts": final.get("num_prompts"),
    }


def mean_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else None
