"""One RL step, as the list it is:

1. collect     draw B prompts, repeat each K times (a group: rows b*K .. b*K+K-1), sample one
               response per row with the current policy (`drgrpo.rollout`)
2. score       the task's verifier through the protected scorer (faults score 0, counted);
               the truncation policy (keep | mask_loss | zero_reward) shapes rewards or loss_mask
3. reference   reference log-probs when the KL term or its monitor needs them; the KL-in-reward
               placement turns rewards into r_i - beta * sum_t KL_it
4. advantages  the objective's baseline and scale knobs over each group (`objective`)
5. batch       old log-probs (pi_old) whenever one rollout feeds more than one optimizer step
               (updates_per_rollout x mini_batches > 1): every step after the first is off-policy,
               and the ratio must see how far the policy has moved
6. update      updates_per_rollout passes x mini_batches optimizer steps, each with its own
               normalizer Z from its whole mini-batch (`update.py`)
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from drgrpo.models.logprobs import sequence_logprobs
from drgrpo.objective import compute_advantages, kl_penalized_rewards
from drgrpo.rollout import Rollouts, concat_rollouts
from drgrpo.tasks.scoring import RewardHealthError
from drgrpo.train import distributed as D
from drgrpo.train.adapters import reference_logprobs
from drgrpo.train.critic import critic_metrics, critic_targets
from drgrpo.train.metrics import length_metrics, step_metrics
from drgrpo.train.run import Run
from drgrpo.train.sampling import dynamic_batch, overlong_shaped
from drgrpo.train.update import TrainBatch, run_updates


class TrainingError(RuntimeError):
    """The run cannot usefully go on (collapse, repeated non-finite steps)."""


@dataclass(frozen=True)
class Collected:
    examples: list  # B task examples
    rollouts: Rollouts  # N = B * K rows
    completions: list[str]  # (N,) the text each verifier call sees


@dataclass(frozen=True)
class Scored:
    rewards: torch.Tensor  # (N,) after the truncation policy
    correct: torch.Tensor  # (N,) bool: the verifier's verdict
    truncated: torch.Tensor  # (N,) bool: hit max_new_tokens
    loss_mask: torch.Tensor  # (N, T) bool: tokens the loss sees
    graded: object  # tasks.scoring.Graded: components and faults


def rl_step(run: Run, step: int) -> dict:
    cfg = run.config
    t0 = time.perf_counter()
    collected, scored, sampling = draw(run, step)
    t_rollout = time.perf_counter() - t0
    rollouts, spec = collected.rollouts, cfg.objective
    # DAPO's overlong shaping, before the advantages and before any KL in the reward
    rewards = overlong_shaped(spec, scored.rewards, rollouts.response_lengths,
                              cfg.rollout.max_new_tokens)  # fmt: skip
    ref_logprobs, shaped = reference(run, rollouts, rewards)
    if run.critic is None:
        advantages = group_advantages(run, shaped, scored.loss_mask.sum(dim=1))
        batch = build_batch(run, rollouts, scored.loss_mask, advantages, ref_logprobs)
    else:  # --- PPO: GAE over the critic's values at rollout time (train/critic.py) ---
        with run.autocast():
            advantages, returns, old_values, explained = critic_targets(
                run.critic, spec, rewards, rollouts, scored.loss_mask, ref_logprobs
            )  # advantages, returns, old_values: (N, T)
        batch = build_batch(run, rollouts, scored.loss_mask, advantages, ref_logprobs)
        batch = replace(batch, old_values=old_values, returns=returns)

    t1 = time.perf_counter()
    run.policy.train()
    with run.autocast():
        totals = run_updates(
            run.policy, run.optimizer, run.scheduler, batch, cfg.objective, cfg.optim,
            max_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
            generator=run.generator, group_size=cfg.rollout.group_size,
            critic_step=run.critic.step if run.critic else None,
        )  # fmt: skip
    run.engine.sync_weights(run.policy)
    t_train = time.perf_counter() - t1
    # Reward and length metrics over the global batch (every rank's rows, rank 0's first).
    gathered = [
        D.gather_rewards(x.float())
        for x in (rewards, scored.correct, rollouts.response_lengths, scored.truncated)
    ]
    metrics = step_metrics(*gathered, cfg.rollout.group_size, totals)
    if advantages.dim() == 1:  # group baselines; PPO's per-token advantages have no such probe
        metrics.update(length_metrics(D.gather_rewards(advantages.float()), gathered[1],
                                      gathered[2], cfg.rollout.group_size, spec.aggregation))  # fmt: skip
    metrics.update(scored.graded.metrics())
    metrics.update(sampling)
    if run.critic is not None:
        metrics.update(critic_metrics(totals, explained))
    elapsed = time.perf_counter() - t0
    metrics.update({
        "optim/lr": run.scheduler.get_last_lr()[0],
        "perf/rollout_s": t_rollout, "perf/train_s": t_train, "perf/step_s": elapsed,
        "perf/tokens_per_s": float(rollouts.response_mask.sum()) / elapsed,
    })  # fmt: skip
    _log_samples(run, step, collected, rewards.tolist())
    _check_health(run, metrics)
    return metrics


def draw(run: Run, step: int) -> tuple[Collected, Scored, dict]:
    """Steps 1-2: one collect + score, or DAPO's dynamic sampling over rounds of them
    (train/sampling.py); the dict holds the rollout/sampling_* metrics (empty without)."""
    cfg = run.config
    if not cfg.objective.dynamic_sampling:
        collected = collect(run)
        return collected, score(run, collected, step), {}
    if run.world.world_size > 1:  # each rank would draw its own number of rounds
        raise ValueError(
            "objective.dynamic_sampling runs in one process for now (under torchrun the ranks "
            "would draw different numbers of rounds): run it without torchrun"
        )

    def one_round() -> tuple[Collected, Scored]:
        collected = collect(run)
        return collected, score(run, collected, step)

    return dynamic_batch(one_round, cfg.rollout.prompts_per_step, cfg.rollout.group_size,
                         cfg.objective.max_sampling_rounds, run.rule.pad_id)  # fmt: skip


def collect(run: Run) -> Collected:
    """Step 1: B prompts from the data position on, K samples each."""
    cfg, state, world = run.config, run.state, run.world
    # Each rank takes its whole groups of the global batch: prompts rank*b .. rank*b + b - 1.
    local = cfg.rollout.prompts_per_step // world.world_size
    first = state.data_pos + world.rank * local
    examples = [run.task.train_example(first + i) for i in range(local)]
    state.data_pos += cfg.rollout.prompts_per_step
    k = cfg.rollout.group_size
    # Each prompt is encoded once and repeated: a group's rows are identical prompts.
    encoded = run.rule.encode_examples(run.tokenizer, examples)
    prompts = [ids for ids in encoded for _ in range(k)]
    chunk = cfg.rollout.chunk_rows or len(prompts)
    parts = []
    hold = getattr(run.engine, "hold", nullcontext)  # a sharded policy: gathered once per step
    with run.autocast(), hold():
        for lo in range(0, len(prompts), chunk):
            parts.append(run.engine.generate(
                prompts[lo : lo + chunk], max_new_tokens=cfg.rollout.max_new_tokens,
                temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                generator=run.generator,
            ).to(run.device))  # fmt: skip
    rollouts = concat_rollouts(parts, run.rule.pad_id)
    return Collected(examples, rollouts, run.rule.decode_rollouts(run.tokenizer, rollouts))


def score(run: Run, collected: Collected, step: int) -> Scored:
    """Step 2: rewards (N,), and the truncation policy applied to rewards or the loss mask.

    Faults are logged first (reward_faults.jsonl), then a reward function that faulted on too
    many calls stops the run with its name and values."""
    cfg, rollouts = run.config, collected.rollouts
    k = cfg.rollout.group_size
    problems = [ex for ex in collected.examples for _ in range(k)]
    graded = run.scorer.grade(collected.completions, problems)
    if graded.faults.examples:
        run.logger.write_lines("reward_faults.jsonl", step, graded.faults.examples)
    try:
        graded.faults.check(cfg.rollout.max_reward_fault_fraction)
        unhealthy = None
    except RewardHealthError as e:
        unhealthy = e
    if D.any_rank(unhealthy is not None):  # every rank stops together, none hangs alone
        raise TrainingError(str(unhealthy or "a reward function faulted on another rank"))
    rewards = torch.tensor(graded.rewards, dtype=torch.float32, device=run.device)  # (N,)
    correct = torch.tensor(graded.correct, dtype=torch.bool, device=run.device)
    truncated = torch.tensor([r == "length" for r in rollouts.finish_reason], device=run.device)
    loss_mask = rollouts.response_mask.clone()  # (N, T)
    if cfg.rollout.truncated == "zero_reward":
        rewards = torch.where(truncated, torch.zeros_like(rewards), rewards)
    elif cfg.rollout.truncated == "mask_loss":
        loss_mask &= ~truncated.unsqueeze(1)
    return Scored(rewards, correct, truncated, loss_mask, graded)


def reference(run: Run, rollouts: Rollouts, rewards: torch.Tensor):
    """Step 3: (ref_logprobs (N, T) or None, the rewards advantages are computed from)."""
    cfg, spec = run.config, run.config.objective
    if not (spec.uses_reference or run.monitor_kl):
        return None, rewards
    if run.reference is None:  # LoRA: the base is the policy with its adapters disabled
        with run.autocast():
            ref_logprobs = reference_logprobs(run.policy, rollouts, cfg.rollout.temperature)
    else:
        ref_logprobs = _logprobs(run, run.reference, rollouts)
    # baseline=value puts the KL on every token instead (objective.critic_advantages)
    if spec.uses_reference and spec.kl_placement == "reward" and spec.baseline != "value":
        rewards = kl_penalized_rewards(
            rewards, rollouts.sampler_logprobs, ref_logprobs, rollouts.response_mask,
            kl_coef=spec.kl_coef, estimator=spec.kl_estimator,
        )  # fmt: skip
    return ref_logprobs, rewards


def group_advantages(run: Run, rewards: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Step 4: A_i (N,) from the objective's baseline and scale knobs, over the global batch
    (every rank's rewards gathered: a batch std is the whole step's, whatever the world size)."""
    spec = run.config.objective
    extra = {}
    if spec.scale == "batch_whiten":  # needs |y_i| of every row of the global batch
        extra["lengths"] = D.gather_rewards(lengths.to(rewards.dtype))
    everyone = D.gather_rewards(rewards)
    advantages = compute_advantages(
        everyone, run.config.rollout.group_size, baseline=spec.baseline, scale=spec.scale,
        std_ddof=spec.std_ddof, eps=spec.adv_eps, **extra,
    )  # fmt: skip
    return advantages[D.local_rows(rewards.shape[0])]


def needs_old_logprobs(run: Run) -> bool:
    """One rollout feeding more than one optimizer step (every step after the first is
    off-policy), or a behaviour correction (its weights compare pi_old with the sampler)."""
    optim = run.config.optim
    corrected = run.config.objective.behavior_correction != "none"
    return optim.updates_per_rollout * optim.mini_batches > 1 or corrected


def build_batch(run: Run, rollouts, loss_mask, advantages, ref_logprobs) -> TrainBatch:
    """Step 5: everything the loss needs, with pi_old when the updates can be off-policy."""
    spec = run.config.objective
    old_logprobs = _logprobs(run, run.policy, rollouts) if needs_old_logprobs(run) else None
    keep_ref = spec.kl_placement == "loss" or run.monitor_kl
    return TrainBatch(
        input_ids=rollouts.input_ids, attention_mask=rollouts.attention_mask,
        response_start=rollouts.response_start, loss_mask=loss_mask, advantages=advantages,
        old_logprobs=old_logprobs, ref_logprobs=ref_logprobs if keep_ref else None,
        sampler_logprobs=rollouts.sampler_logprobs if spec.behavior_correction != "none" else None,
    )  # fmt: skip


def _logprobs(run: Run, model, rollouts: Rollouts) -> torch.Tensor:
    with torch.no_grad(), run.autocast():
        logprobs, _ = sequence_logprobs(
            model, rollouts.input_ids, rollouts.attention_mask, rollouts.response_start,
            temperature=run.config.rollout.temperature,
        )  # fmt: skip
    return logprobs


def _log_samples(run: Run, step: int, collected: Collected, rewards: list[float]) -> None:
    every = run.config.log_samples_every
    if not every or step % every:
        return
    k = run.config.rollout.group_size
    completions = collected.completions
    records = [
        {"prompt": collected.examples[i // k].prompt, "completion": completions[i],
         "reward": rewards[i]}
        for i in range(0, min(len(completions), 4 * k), max(1, k // 2))
    ]  # fmt: skip
    run.logger.write_lines("samples.jsonl", step, records)


def _check_health(run: Run, metrics: dict) -> None:
    """Decided on the global metrics, so every rank stops together."""
    cfg, state = run.config, run.state
    state.no_eos_streak = state.no_eos_streak + 1 if metrics["rollout/truncated_frac"] == 1 else 0
    if state.no_eos_streak >= cfg.no_eos_patience:
        raise TrainingError(
            f"collapse: for {state.no_eos_streak} steps in a row no rollout emitted a stop token. "
            "Every response is truncated, rewards and gradients are zero, and the policy cannot "
            "recover (an absorbing state). Lower optim.lr (and/or raise objective.kl_coef) and "
            "restart from the base model or an earlier checkpoint."
        )
    skipped = metrics["optim/skipped_steps"]
    state.nonfinite_streak = state.nonfinite_streak + skipped if skipped else 0
    if skipped and run.world.is_main:
        run.console.print(
            f"[yellow]skipped {skipped} optimizer step(s): non-finite loss or gradient"
        )
    if state.nonfinite_streak >= cfg.max_nonfinite_steps:
        raise TrainingError(
            f"{state.nonfinite_streak} consecutive optimizer steps had a non-finite loss or "
            "gradient; stopping. The last good checkpoint is intact. Lower optim.lr, set "
            "optim.max_grad_norm, or check the model's dtype."
        )
