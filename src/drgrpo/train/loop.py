"""The RL loop, top to bottom. One step:

1. draw B prompts, repeat each K times (a group: rows b*K .. b*K+K-1)
2. sample one response per row with the current policy (KV-cached, `drgrpo.rollout`)
3. score every response with the task's verifier (`RewardScorer`: faults score 0)
4. reference log-probs if the KL term needs them; KL-in-reward placement adjusts rewards
5. advantages from the objective's baseline and scale knobs
6. old log-probs only when updates_per_rollout > 1 (with one update the ratio is exactly 1)
7. updates_per_rollout passes x mini_batches optimizer steps, each with its own normalizer Z
   computed once from its whole mini-batch and accumulated over micro-batches (`step.py`)
"""

from __future__ import annotations

import math
import statistics
import time
from contextlib import nullcontext

import torch

from drgrpo.evaluate import evaluate
from drgrpo.models.logprobs import sequence_logprobs
from drgrpo.objective import compute_advantages, kl_penalized_rewards
from drgrpo.train.setup import Run
from drgrpo.train.step import TrainBatch, run_updates

CORRECT = 0.5  # a reward at or above this counts as a correct response in length metrics


class TrainingError(RuntimeError):
    """The run cannot usefully go on (collapse, repeated non-finite steps)."""


def rl_step(run: Run, step: int) -> dict:
    cfg, spec = run.config, run.config.objective
    t0 = time.perf_counter()
    examples = [
        run.task.train_example(run.state["data_pos"] + i)
        for i in range(cfg.rollout.prompts_per_step)
    ]
    run.state["data_pos"] += len(examples)
    k = cfg.rollout.group_size
    encoded = [run.encode_prompt(ex.prompt) for ex in examples]
    prompts = [ids for ids in encoded for _ in range(k)]
    references = [ex.reference for ex in examples for _ in range(k)]
    with run.autocast():
        rollouts = run.engine.generate(
            prompts, max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p, generator=run.generator,
        )  # fmt: skip
    rollouts = rollouts.to(run.device)
    t_rollout = time.perf_counter() - t0

    completions = run.decode_responses(rollouts)
    rewards_list, faults = run.scorer.score(completions, references)
    rewards = torch.tensor(rewards_list, dtype=torch.float32, device=run.device)  # (N,)
    truncated = torch.tensor([r == "length" for r in rollouts.finish_reason], device=run.device)
    loss_mask = rollouts.response_mask.clone()  # (N, T)
    if cfg.rollout.truncated == "zero_reward":
        rewards = torch.where(truncated, torch.zeros_like(rewards), rewards)
    elif cfg.rollout.truncated == "mask_loss":
        loss_mask &= ~truncated.unsqueeze(1)

    ref_logprobs = None
    if spec.uses_reference or cfg.monitor_kl:
        with torch.no_grad(), run.autocast():
            ref_logprobs, _ = sequence_logprobs(
                run.reference, rollouts.input_ids, rollouts.attention_mask,
                rollouts.response_start, temperature=cfg.rollout.temperature,
            )  # fmt: skip
    scored = rewards
    if spec.uses_reference and spec.kl_placement == "reward":
        scored = kl_penalized_rewards(
            rewards, rollouts.sampler_logprobs, ref_logprobs, rollouts.response_mask,
            kl_coef=spec.kl_coef, estimator=spec.kl_estimator,
        )  # fmt: skip
    advantages = compute_advantages(
        scored,
        k,
        baseline=spec.baseline,
        scale=spec.scale,
        std_ddof=spec.std_ddof,
        eps=spec.adv_eps,
    )  # (N,)
    old_logprobs = None
    if cfg.optim.updates_per_rollout > 1:
        with torch.no_grad(), run.autocast():
            old_logprobs, _ = sequence_logprobs(
                run.policy, rollouts.input_ids, rollouts.attention_mask,
                rollouts.response_start, temperature=cfg.rollout.temperature,
            )  # fmt: skip
    batch = TrainBatch(
        input_ids=rollouts.input_ids, attention_mask=rollouts.attention_mask,
        response_start=rollouts.response_start, response_mask=loss_mask, advantages=advantages,
        old_logprobs=old_logprobs,
        ref_logprobs=ref_logprobs if spec.kl_placement == "loss" or cfg.monitor_kl else None,
    )  # fmt: skip

    t1 = time.perf_counter()
    run.policy.train()
    with run.autocast():
        totals = run_updates(
            run.policy, run.optimizer, run.scheduler, batch, spec,
            updates_per_rollout=cfg.optim.updates_per_rollout, mini_batches=cfg.optim.mini_batches,
            micro_batch_size=cfg.optim.micro_batch_size, max_grad_norm=cfg.optim.max_grad_norm,
            max_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
            generator=run.generator,
        )  # fmt: skip
    run.engine.sync_weights(run.policy)
    t_train = time.perf_counter() - t1
    if faults.examples:
        run.logger.write_lines("reward_faults.jsonl", step, faults.examples)
    metrics = _step_metrics(rewards, k, rollouts, truncated, totals, faults)
    metrics.update({
        "optim/lr": run.scheduler.get_last_lr()[0],
        "perf/rollout_s": t_rollout, "perf/train_s": t_train,
        "perf/step_s": time.perf_counter() - t0,
        "perf/tokens_per_s": float(rollouts.response_mask.sum()) / (time.perf_counter() - t0),
    })  # fmt: skip
    _log_samples(run, step, examples, completions, rewards_list)
    _check_health(run, metrics, truncated)
    return metrics


def _step_metrics(rewards, k, rollouts, truncated, totals, faults) -> dict:
    lengths = rollouts.response_lengths.float()  # (N,)
    correct = rewards >= CORRECT
    grouped = rewards.reshape(-1, k)
    tokens = max(totals.get("tokens", 0.0), 1.0)
    return {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std(correction=0)),
        "reward/accuracy": float(correct.float().mean()),
        "reward/frac_zero_std_groups": float(
            (grouped.std(dim=1, correction=0) == 0).float().mean()
        ),
        "reward/errors": faults.errors,
        "reward/timeouts": faults.timeouts,
        "rollout/len_mean": float(lengths.mean()),
        "rollout/len_correct": float(lengths[correct].mean()) if correct.any() else None,
        "rollout/len_incorrect": float(lengths[~correct].mean()) if (~correct).any() else None,
        "rollout/truncated_frac": float(truncated.float().mean()),
        "policy/loss": totals.get("loss"),
        "policy/kl": totals["kl_sum"] / tokens if "kl_sum" in totals else None,
        "policy/clipfrac": totals.get("clipped_tokens", 0.0) / tokens,
        "policy/entropy": totals["entropy_sum"] / tokens if "entropy_sum" in totals else None,
        "optim/grad_norm": totals["grad_norm"],
        "optim/skipped_steps": totals["skipped_steps"],
    }


def _log_samples(run: Run, step: int, examples, completions, rewards) -> None:
    every = run.config.log_samples_every
    if not every or step % every:
        return
    k = run.config.rollout.group_size
    records = [
        {"prompt": examples[i // k].prompt, "completion": completions[i], "reward": rewards[i]}
        for i in range(0, min(len(completions), 4 * k), max(1, k // 2))
    ]
    run.logger.write_lines("samples.jsonl", step, records)


def _check_health(run: Run, metrics: dict, truncated: torch.Tensor) -> None:
    cfg = run.config
    state = run.state
    state["no_eos_streak"] = state["no_eos_streak"] + 1 if bool(truncated.all()) else 0
    if state["no_eos_streak"] >= cfg.no_eos_patience:
        raise TrainingError(
            f"collapse: for {state['no_eos_streak']} steps in a row no rollout emitted EOS. Every "
            "response is truncated, rewards and gradients are zero, and the policy cannot recover "
            "(an absorbing state). Lower optim.lr (and/or raise objective.kl_coef) and restart "
            "from the base model or an earlier checkpoint."
        )
    skipped = metrics["optim/skipped_steps"]
    state["nonfinite_streak"] = state["nonfinite_streak"] + skipped if skipped else 0
    if skipped:
        run.console.print(
            f"[yellow]skipped {skipped} optimizer step(s): non-finite loss or gradient"
        )
    if state["nonfinite_streak"] >= cfg.max_nonfinite_steps:
        raise TrainingError(
            f"{state['nonfinite_streak']} consecutive optimizer steps had a non-finite loss or "
            "gradient; stopping. The last good checkpoint is intact. Lower optim.lr, set "
            "optim.max_grad_norm, or check the model's dtype."
        )


def run_eval(run: Run, step: int) -> dict:
    cfg = run.config
    examples = run.task.heldout(cfg.eval.num_prompts)
    with run.autocast():
        result = evaluate(
            run.engine, run.tokenizer, examples, run.scorer.verify_one,
            num_samples=cfg.eval.num_samples, ks=cfg.eval.ks,
            max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.eval.temperature,
            greedy=cfg.eval.greedy, seed=cfg.seed + 1_000_003 * (step + 1),
        )  # fmt: skip
    return result


def eval_metrics(result: dict) -> dict:
    out = {"eval/accuracy": result["accuracy"], "eval/greedy_accuracy": result.get("greedy_accuracy"),
           "eval/len_mean": result.get("len_mean"), "eval/len_correct": result.get("len_correct"),
           "eval/len_incorrect": result.get("len_incorrect")}  # fmt: skip
    for k, v in result["pass_at_k"].items():
        out[f"eval/pass@{k}"] = v
    return out


def summarize(run: Run, final: dict, wall_s: float, steps_done: int) -> dict:
    base = run.state["base_eval"]
    return {
        "preset": run.config.objective.name,
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


def autocast_for(device: torch.device):
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext
