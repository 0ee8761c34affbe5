"""`drgrpo experiment lineage`: every preset from the same base, prompts and seeds, plus the
control the field asks for (continued SFT for the same wall-clock time), then a report.

Why the task setting: GRPO's 1/|y_i| can only lengthen wrong answers if length is free to move
without changing correctness. The arithmetic task's re-check lines (`check a+b=s`) are ignored by
the verifier, and the base policy is SFT-trained on traces that contain them half the time, so
it starts out writing short and long correct and incorrect responses alike.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.console import Console

from drgrpo.app.experiments.report import write_report
from drgrpo.app.explain import token_grads
from drgrpo.config import SFTConfig, TaskConfig, TrainConfig, build_config
from drgrpo.objective import (
    compute_advantages,
    resolve_objective,
)
from drgrpo.train.policy import load_base_policy
from drgrpo.train.trainer import train

LINEAGE_TASK = {"recheck_prob": 0.5}


@dataclass(frozen=True)
class Size:
    presets: tuple[str, ...]
    seeds: int
    steps: int
    eval_every: int
    eval_prompts: int
    prompts_per_step: int
    group_size: int


SIZES = {
    # the lesson's six rows (ppo: a learned critic, train/critic.py)
    "default": Size(("grpo", "dr_grpo", "dapo", "rloo", "reinforce", "ppo"), seeds=2, steps=40,
                    eval_every=10, eval_prompts=256, prompts_per_step=8, group_size=8),
    "quick": Size(("grpo", "dr_grpo", "dapo", "rloo", "ppo"), seeds=1, steps=8,
                  eval_every=4, eval_prompts=64, prompts_per_step=8, group_size=4),
}  # fmt: skip


def run_config(
    size: Size, preset: str, seed: int, output: Path, overrides: list[str]
) -> TrainConfig:
    """One run of the ablation: only the preset (and the seed) differ between runs."""
    return build_config(
        preset=preset,
        overrides=[
            f"task.options={json.dumps(LINEAGE_TASK)}", "objective.kl_coef=0.0",
            "rollout.max_new_tokens=96", f"rollout.prompts_per_step={size.prompts_per_step}",
            f"rollout.group_size={size.group_size}", f"steps={size.steps}", f"seed={seed}",
            f"eval.every={size.eval_every}", f"eval.num_prompts={size.eval_prompts}",
            "eval.num_samples=2", "eval.ks=[1,2]", "monitor_kl=true", "checkpoint_every=0",
            "keep_checkpoints=1", f"output_dir={output / 'runs' / f'{preset}-s{seed}'}",
            *overrides,
        ],
    )  # fmt: skip


def run_lineage(output: str | Path, *, quick: bool = False, presets: list[str] | None = None,
                seeds: int | None = None, steps: int | None = None, overrides: list[str] = (),
                control: bool = True, console: Console | None = None) -> dict:  # fmt: skip
    console = console or Console()
    output = Path(output)
    size = SIZES["quick" if quick else "default"]
    size = Size(tuple(presets or size.presets), seeds or size.seeds, steps or size.steps,
                min(size.eval_every, steps or size.steps), size.eval_prompts,
                size.prompts_per_step, size.group_size)  # fmt: skip
    runs, walls = [], []
    for preset in size.presets:
        for seed in range(size.seeds):
            cfg = run_config(size, preset, seed, output, list(overrides))
            console.rule(f"{preset}, seed {seed}")
            t0 = time.perf_counter()
            train(cfg, console=console, progress=True)
            walls.append(time.perf_counter() - t0)
            runs.append({"preset": preset, "seed": seed, "dir": str(cfg.output_dir)})
    first = run_config(size, size.presets[0], 0, output, list(overrides))
    penalty = measure_length_penalty(first, size.presets, console)
    sft = run_sft_control(first, sum(walls) / len(walls), output, console) if control else None
    return write_report(output, runs, penalty=penalty, sft_control=sft, size=size.__dict__)


def measure_length_penalty(cfg: TrainConfig, presets, console: Console) -> dict:
    """The gradient-level view on real rollouts of the base policy: per-token |dL/dlogp| on the
    longest third of wrong responses over that on the shortest third, under each preset."""
    from drgrpo.train.run import build_run

    # monitor_kl off: the probe only samples, it needs no reference copy of the model.
    probe = replace(cfg, rollout=replace(cfg.rollout, prompts_per_step=32), monitor_kl=False,
                    output_dir=f"{cfg.output_dir}-probe")  # fmt: skip
    run = build_run(probe, resume=False, console=console)
    k = probe.rollout.group_size
    examples = [
        run.task.train_example(10_000_000 + i) for i in range(probe.rollout.prompts_per_step)
    ]
    prompts = [ids for ids in run.rule.encode_examples(run.tokenizer, examples) for _ in range(k)]
    rollouts = run.engine.generate(prompts, max_new_tokens=probe.rollout.max_new_tokens,
                                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    graded = run.scorer.grade(run.rule.decode_rollouts(run.tokenizer, rollouts),
                              [ex for ex in examples for _ in range(k)])  # fmt: skip
    rewards = torch.tensor(graded.rewards, dtype=torch.float64)
    run.scorer.close()
    lengths = rollouts.response_lengths
    wrong = torch.tensor([not ok for ok in graded.correct]).nonzero().flatten()
    out = {}
    if len(wrong) < 6:
        return {"note": "too few wrong responses in the probe batch to compare lengths"}
    order = wrong[lengths[wrong].argsort()]
    short, long = order[: len(order) // 3], order[-(len(order) // 3) :]
    for name in presets:
        spec = resolve_objective(name, kl_coef=0.0)
        if spec.baseline == "value":  # its advantages need a trained critic, not the base alone
            out[name] = None
            continue
        adv = compute_advantages(rewards, k, baseline=spec.baseline, scale=spec.scale,
                                 std_ddof=spec.std_ddof, eps=spec.adv_eps)  # fmt: skip
        grad = token_grads(spec, adv, rollouts.response_mask, probe.rollout.max_new_tokens)
        per_token = grad.abs().sum(1) / lengths.clamp(min=1)  # (N,) mean per-token |grad|
        s, lo = per_token[short], per_token[long]
        s, lo = s[s > 0], lo[lo > 0]  # wrong responses in groups with no signal carry none
        out[name] = float(lo.mean() / s.mean()) if len(s) and len(lo) else None
    out["short_len"] = float(lengths[short].float().mean())
    out["long_len"] = float(lengths[long].float().mean())
    return out


def run_sft_control(cfg: TrainConfig, seconds: float, output: Path, console: Console) -> dict:
    """Continued SFT from the same base for the same wall time as one RL run."""
    from drgrpo.sft import run_sft

    _, _, base = load_base_policy(cfg, console)  # the same base as the RL runs (built if needed)
    sft = SFTConfig(task=TaskConfig(cfg.task.name, dict(cfg.task.options)), init=str(base),
                    output_dir=str(output / "runs" / "sft-control"), stop_accuracy=0.0,
                    max_minutes=seconds / 60, max_steps=100_000,
                    max_new_tokens=cfg.rollout.max_new_tokens,
                    eval_prompts=cfg.eval.num_prompts)  # fmt: skip
    console.rule(f"control: continued SFT for {seconds:.0f} s")
    return run_sft(sft, console=console)
