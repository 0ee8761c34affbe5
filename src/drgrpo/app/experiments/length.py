"""`drgrpo experiment length`: the paper's length effect given a fair chance (docs/length-bias.md).

Long runs (past the reward plateau), several seeds per preset (grpo, dr_grpo, dapo), KL off,
the same base and prompts, in two task settings:

* main: the lineage setting. Re-check lines (`check a+b=s`, ignored by the verifier) let length
  move freely, and errors happen where the model makes them.
* slip: the ablation. A base policy whose typical failure is a long wrong answer: its SFT traces
  slip (one partial sum off by one, carried on) 30% of the time and re-check far more often after
  a slip (0.9) than before (0.25), so the policy's length decisions come *after* what settles its
  correctness. That is what GRPO's 1/|y_i| needs to move length: with mean baselines, a length
  decision taken before the outcome is settled has zero expected gradient under any aggregation
  (E[A_i | length] = 0); one taken after a slip sees A_i < 0 for sure, and 1/|y_i| then favours
  the longer continuation (the derivation: docs/length-bias.md).

Runs go to a pool of `jobs` processes, one thread each (independent runs, so no timing is
compared across them); finished runs are kept and an interrupted run resumes from its checkpoint,
so the command can be re-run until done. Then the continued-SFT control (same wall time as a
median RL run) and the report (app/experiments/length_report.py).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from drgrpo.app.experiments.lineage import Size, measure_length_penalty
from drgrpo.config import TrainConfig, build_config
from drgrpo.config.build import config_from_dict

SETTINGS = {
    "main": {"recheck_prob": 0.5},
    "slip": {"recheck_prob": 0.25, "slip_prob": 0.3, "recheck_after_slip": 0.9},
}
ABLATION_SIZE = {"presets": ("grpo", "dr_grpo"), "steps": 200}
"""The slip setting at the default size: the two presets whose difference is the 1/|y_i| (and
the /std), for fewer steps (it tests a mechanism, not a plateau); --presets / --steps win."""


@dataclass(frozen=True)
class LengthSize(Size):
    """The lineage's size, plus the window of a per-step metric's "start" and "end"."""

    window: int = 50


SIZES = {
    "default": LengthSize(("grpo", "dr_grpo", "dapo"), seeds=3, steps=500, eval_every=25,
                          eval_prompts=256, prompts_per_step=8, group_size=8, window=50),
    "quick": LengthSize(("grpo", "dr_grpo"), seeds=2, steps=6, eval_every=3, eval_prompts=16,
                        prompts_per_step=4, group_size=4, window=2),
}  # fmt: skip


def run_config(size: LengthSize, setting: str, preset: str, seed: int, output: Path,
               overrides: list[str]) -> TrainConfig:  # fmt: skip
    """One run: only the preset and the seed differ inside a setting (KL off for every preset)."""
    return build_config(
        preset=preset,
        overrides=[
            f"task.options={json.dumps(SETTINGS[setting])}", "objective.kl_coef=0.0",
            "rollout.max_new_tokens=96", f"rollout.prompts_per_step={size.prompts_per_step}",
            f"rollout.group_size={size.group_size}", f"steps={size.steps}", f"seed={seed}",
            f"eval.every={size.eval_every}", f"eval.num_prompts={size.eval_prompts}",
            "eval.num_samples=2", "eval.ks=[1,2]", "monitor_kl=false",
            f"checkpoint_every={max(size.steps // 6, 1)}", "keep_checkpoints=1",
            f"output_dir={output / setting / 'runs' / f'{preset}-s{seed}'}", *overrides,
        ],
    )  # fmt: skip


def run_length(output: str | Path, *, quick: bool = False, settings: list[str] | None = None,
               presets: list[str] | None = None, seeds: int | None = None,
               steps: int | None = None, jobs: int = 2, overrides: list[str] = (),
               control: bool = True, console: Console | None = None) -> dict:  # fmt: skip
    from drgrpo.app.experiments.length_report import write_length_report

    console = console or Console()
    output, t0 = Path(output), time.perf_counter()
    settings = settings or list(SETTINGS)
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}: choose from {list(SETTINGS)}")
    sizes = {s: setting_size(s, quick, presets, seeds, steps) for s in settings}
    plan = {s: [(p, seed, run_config(z, s, p, seed, output, list(overrides)))
                for p in z.presets for seed in range(z.seeds)] for s, z in sizes.items()}  # fmt: skip
    for runs in plan.values():  # each setting's SFT base once, before the pool forks
        _ensure_base(runs[0][2], console)
    walls = _pool([cfg.to_dict() for runs in plan.values() for *_, cfg in runs], jobs, console)
    rl_walls = {s: [walls[str(cfg.output_dir)] for *_, cfg in runs] for s, runs in plan.items()}
    # The control: continued SFT from the same base for an RL run's (median) wall time, run the way
    # the RL runs were (one thread, `jobs` at a time), so "the same time" means the same compute.
    controls = {}
    if control:
        # the median: a run resumed after an interruption records only its last session's time
        asks = [(runs[0][2].to_dict(), statistics.median(rl_walls[s]), str(output / s))
                for s, runs in plan.items()]  # fmt: skip
        controls = dict(zip(plan, _map(_control_one, asks, jobs), strict=True))
    results = {}
    for setting, runs in plan.items():
        probe = measure_length_penalty(runs[0][2], sizes[setting].presets, console)
        listed = [{"preset": p, "seed": seed, "dir": str(cfg.output_dir), "wall_s": w}
                  for (p, seed, cfg), w in zip(runs, rl_walls[setting], strict=True)]  # fmt: skip
        results[setting] = {"runs": listed, "base_probe": probe, "size": sizes[setting].__dict__,
                            "task_options": SETTINGS[setting],
                            "sft_control": controls.get(setting)}  # fmt: skip
    from drgrpo.app.experiments.length_toy import toy_summary

    toy = toy_summary(seeds=2, steps=40, window=10) if quick else toy_summary()
    wall = time.perf_counter() - t0
    return write_length_report(output, results, jobs=jobs, wall_s=wall, toy=toy)


def setting_size(setting: str, quick: bool, presets, seeds, steps) -> LengthSize:
    """The size of one setting: the named size, the ablation's own at the default size, then
    the command line's choices."""
    base = SIZES["quick" if quick else "default"]
    own = {} if quick or setting == "main" else ABLATION_SIZE
    presets = tuple(presets or own.get("presets", base.presets))
    steps = steps or own.get("steps", base.steps)
    return replace(base, presets=presets, seeds=seeds or base.seeds, steps=steps,
                   eval_every=min(base.eval_every, steps),
                   window=min(base.window, max(steps // 3, 1)))  # fmt: skip


def _ensure_base(cfg: TrainConfig, console: Console) -> None:
    from drgrpo.train.policy import load_base_policy

    load_base_policy(cfg, console)


def _pool(cfgs: list[dict], jobs: int, console: Console) -> dict[str, float]:
    """Train every config (skipping finished ones) in `jobs` one-thread processes; {dir: wall s}
    of each run: its sessions' times summed (an interrupted session's time is lost)."""
    todo = [c for c in cfgs if _summary(c["output_dir"]).get("steps") != c["steps"]]
    console.print(f"{len(cfgs)} runs, {len(cfgs) - len(todo)} already done; {jobs} processes")
    _map(_train_one, todo, jobs)
    return {c["output_dir"]: sum(_walls(c["output_dir"])) for c in cfgs}


def _walls(run_dir: str) -> list[float]:
    """The wall time of each finished training session of a run (`_train_one` appends them)."""
    path = Path(f"{run_dir}.walls.json")
    return json.loads(path.read_text()) if path.is_file() else []


def _map(fn, items: list, jobs: int) -> list:
    """fn over items in `jobs` fresh one-thread interpreters (spawn: torch threads and global
    seeds are per run), in order."""
    if not items:
        return []
    with mp.get_context("spawn").Pool(jobs, initializer=_one_thread, maxtasksperchild=1) as pool:
        return pool.map(fn, items, chunksize=1)


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _train_one(cfg_dict: dict) -> str:
    from drgrpo.train.trainer import train

    cfg = config_from_dict(cfg_dict)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume = (out / "config.json").is_file()  # an interrupted or shorter run continues
    t0 = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "a") as log:
        train(cfg, console=Console(file=log, width=120), progress=False, resume=resume)
    walls = [*_walls(str(out)), round(time.perf_counter() - t0, 1)]
    Path(f"{out}.walls.json").write_text(json.dumps(walls) + "\n")
    return str(out)


def _control_one(ask: tuple[dict, float, str]) -> dict:
    from drgrpo.app.experiments.lineage import run_sft_control

    cfg_dict, seconds, folder = ask
    done = Path(folder) / "runs" / "sft-control"
    if (done / "sft_summary.json").is_file():  # kept only if made for this time budget
        budget = json.loads((done / "sft_config.json").read_text())["max_minutes"] * 60
        if abs(budget - seconds) < 1:
            return json.loads((done / "sft_summary.json").read_text())
    with open(Path(folder) / "sft-control.log", "a") as log:
        console = Console(file=log, width=120)
        return run_sft_control(config_from_dict(cfg_dict), seconds, Path(folder), console)


def _summary(run_dir: str) -> dict:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}
