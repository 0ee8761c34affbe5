"""Before timing: do drgrpo and TRL compute the same loss (and gradient) on the same batch?

Sampled completions cannot be made equal across the two libraries, so the check runs TRL's own
first-step pipeline (`GRPOTrainer._generate_and_score_completions`: prompts, generation, rewards,
advantages, reference log-probs) and then scores TRL's batch with both libraries:

1. prompts: drgrpo's [BOS] + characters equal TRL's token ids row by row (exact);
2. advantages: drgrpo's `compute_advantages` on the same rewards equals TRL's (atol 1e-6);
3. reference log-probs: drgrpo's `sequence_logprobs` equals TRL's on response tokens (atol 1e-5);
4. the policy is then moved off the reference (Gaussian noise, so the k3 KL term is non-zero)
   and both losses are computed on that batch: TRL's `_compute_loss` vs drgrpo's
   `accumulate_gradients` (the trainer's own micro-batch path, normalizer from `normalizer_for`).
   Loss: relative difference <= 1e-5; gradient: ||g_trl - g_drgrpo|| / ||g_trl|| <= 1e-5.

Measured on tiny-16 (results/latest.json): loss 5.9e-7, gradient 4.6e-7 relative (both also within
4e-7 of a float64 full-logits computation). The check is sharp: with TRL's default `use_bias_correction_kl=True` (the k3 term
multiplied by the ratio, whose gradient is not 1) the gradient differs by 2.8e-3 and it fails.

The tolerances are float32 round-off for sums over a few thousand tokens (the two libraries
reduce in different orders), not a fudge: a wrong normalizer or estimator is off by >= 1e-2.
An untrained model never solves the arithmetic task (all rewards 0, all advantages 0), so the
check's reward is the share of digits in the completion, given to both libraries alike.
"""

from __future__ import annotations

import tempfile

LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-5
ADV_ATOL = 1e-6
REF_ATOL = 1e-5


def digit_share(prompts, completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def check_agreement(spec_dict: dict) -> dict:
    import torch

    from benchmarks.workers import StepSpec, build_trl_trainer, drgrpo_overrides, task_rows
    from drgrpo.config import build_config
    from drgrpo.models import sequence_logprobs
    from drgrpo.objective import compute_advantages
    from drgrpo.train.update import TrainBatch, accumulate_gradients, normalizer_for

    spec = StepSpec(**spec_dict)
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    cfg = build_config(overrides=drgrpo_overrides(spec, tempfile.mkdtemp(prefix="bench-check-")))
    objective = cfg.objective
    trainer = build_trl_trainer(spec, reward_func=digit_share, max_steps=1)
    trainer.current_gradient_accumulation_steps = 1
    policy, reference = trainer.model, trainer.ref_model
    policy.train()
    tokenizer = trainer.processing_class

    _, examples = task_rows(spec)
    examples = examples[: spec.prompts]
    rows = [
        {"prompt": ex.prompt, "reference": ex.reference}
        for ex in examples
        for _ in range(spec.group)
    ]
    batch = trainer._generate_and_score_completions(rows)

    # 1. prompts
    ours = [
        [tokenizer.bos_token_id] + tokenizer.encode(r["prompt"], add_special_tokens=False)
        for r in rows
    ]
    theirs = [
        ids[m.bool()].tolist()
        for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)
    ]
    same_prompts = ours == theirs

    # 2. advantages from the same rewards
    response_mask = batch["completion_mask"].bool()
    completions = tokenizer.batch_decode(
        [ids[m].tolist() for ids, m in zip(batch["completion_ids"], response_mask, strict=True)],
        skip_special_tokens=True,
    )
    rewards = torch.tensor(digit_share(None, completions), dtype=torch.float32)
    advantages = compute_advantages(rewards, spec.group, baseline=objective.baseline,
                                    scale=objective.scale, std_ddof=objective.std_ddof,
                                    eps=objective.adv_eps)  # fmt: skip
    adv_diff = float((advantages - batch["advantages"]).abs().max())

    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1).bool()
    start = batch["prompt_ids"].shape[1]

    # 3. reference log-probs
    ref_diff = None
    ref_logprobs = None
    if spec.kl_coef > 0:
        with torch.no_grad():
            ref_logprobs, _ = sequence_logprobs(reference, input_ids, attention_mask, start,
                                                temperature=spec.temperature)  # fmt: skip
        theirs_ref = batch["ref_per_token_logps"]
        ref_diff = float(((ref_logprobs - theirs_ref).abs() * response_mask).max())

    # 4. losses and gradients, policy moved off the reference
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1 * p.std() * torch.randn(p.shape, generator=gen))

    params = [p for p in policy.parameters() if p.requires_grad]
    policy.zero_grad(set_to_none=True)
    trl_loss = trainer._compute_loss(policy, batch)
    trl_loss.backward()
    trl_grads = [p.grad.detach().clone() for p in params]

    policy.zero_grad(set_to_none=True)
    train_batch = TrainBatch(
        input_ids=input_ids, attention_mask=attention_mask, response_start=start,
        loss_mask=response_mask, advantages=advantages, ref_logprobs=ref_logprobs,
    )  # fmt: skip
    z = normalizer_for(objective, train_batch, spec.max_new_tokens)
    totals = accumulate_gradients(policy, train_batch, objective, z, temperature=spec.temperature)
    our_grads = [p.grad.detach().clone() for p in params]

    trl_value, our_value = float(trl_loss.detach()), totals["loss"]
    loss_rel = abs(our_value - trl_value) / max(abs(trl_value), 1e-12)
    g_trl = torch.cat([g.flatten() for g in trl_grads])
    g_our = torch.cat([g.flatten() for g in our_grads])
    grad_rel = float((g_our - g_trl).norm() / g_trl.norm().clamp(min=1e-30))
    kl_mean = totals["kl_sum"] / totals["tokens"] if "kl_sum" in totals else None
    ok = (same_prompts and adv_diff <= ADV_ATOL and (ref_diff is None or ref_diff <= REF_ATOL)
          and loss_rel <= LOSS_RTOL and grad_rel <= GRAD_RTOL)  # fmt: skip
    return {
        "ok": bool(ok),
        "method": "TRL's first-step batch scored by both libraries (benchmarks/agreement.py)",
        "same_prompts": same_prompts,
        "advantages_max_abs_diff": adv_diff,
        "ref_logprobs_max_abs_diff": ref_diff,
        "trl_loss": trl_value,
        "drgrpo_loss": our_value,
        "loss_rel_diff": loss_rel,
        "grad_rel_diff": grad_rel,
        "kl_mean": kl_mean,
        "tokens": totals["tokens"],
        "normalizer": z,
        "tolerances": {
            "loss_rtol": LOSS_RTOL,
            "grad_rtol": GRAD_RTOL,
            "adv_atol": ADV_ATOL,
            "ref_atol": REF_ATOL,
        },  # fmt: skip
    }
