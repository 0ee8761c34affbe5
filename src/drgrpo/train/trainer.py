"""The training session: set up, evaluate the base, run RL steps with checkpoints, evaluate.

Returns the summary (also written to summary.json); printing it and plotting are the front
end's (`drgrpo.app`)."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext

from rich.console import Console
from tqdm.auto import tqdm

from drgrpo.config import TrainConfig
from drgrpo.eval import evaluate
from drgrpo.objective import render_formula
from drgrpo.train import distributed as D
from drgrpo.train.adapters import exported_model
from drgrpo.train.checkpoint import save_checkpoint
from drgrpo.train.dcp_checkpoint import save_sharded_checkpoint
from drgrpo.train.export import export_model
from drgrpo.train.metrics import eval_metrics, summarize
from drgrpo.train.rl_step import rl_step
from drgrpo.train.run import Run, build_run
from drgrpo.train.run_dir import InterruptGuard, open_run_dir, write_text_atomic
from drgrpo.train.sharded import full_model, is_sharded

PROGRESS_KEYS = {"reward/mean": "reward", "reward/accuracy": "acc", "rollout/len_mean": "len"}


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_at_step: int | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> dict:
    """Run (or continue) the RL run described by `cfg`; returns the summary (also summary.json).

    `stop_at_step` ends the session after that step with a checkpoint, as an interruption would
    (for resume tests); the run is then continued with `resume=True`. `overwrite` clears an
    earlier run in the folder (a fresh start there is refused otherwise, `run_dir.py`).
    """
    world = D.init_distributed(require_group=cfg.model.fsdp)  # one process unless torchrun
    console = console or Console()
    if not world.is_main:
        console, progress = Console(quiet=True), False  # rank 0 speaks and writes for all
    start = time.perf_counter()
    finished = None
    if world.is_main:  # the run folder's rules (refuse, overwrite, finished) are decided once
        finished = open_run_dir(cfg.output_dir, steps=cfg.steps, resume=resume,
                                overwrite=overwrite, say=console.print).finished  # fmt: skip
    if D.any_rank(finished is not None):
        return finished or {}
    run = build_run(cfg, resume=resume, console=console)
    if world.is_main:
        write_text_atomic(run.run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    # markup off: the formulas hold brackets ([t = |y_i|], sg[...]) that rich would eat as tags
    console.print(render_formula(cfg.objective, truncated=cfg.rollout.truncated), markup=False)
    console.print(f"run folder: {run.run_dir}   base policy: {run.base_path}   "
                  f"processes: {world.world_size}")  # fmt: skip
    try:
        return _session(run, stop_at_step, start, progress)
    finally:
        run.logger.close()
        run.scorer.close()


def _session(run: Run, stop_at_step: int | None, start: float, progress: bool) -> dict:
    cfg, console = run.config, run.console
    if run.state.base_eval is None:
        console.print(f"evaluating the base policy on {cfg.eval.num_prompts} held-out prompts ...")
        run.state.base_eval = run_eval(run, 0)
        run.logger.log(0, eval_metrics(run.state.base_eval))
    last = stop_at_step if stop_at_step is not None else cfg.steps
    try:
        with InterruptGuard(console.print) as guard:  # Ctrl-C is acted on between whole steps
            step = _train_steps(run, run.state.step, min(last, cfg.steps), start, progress, guard)
    except KeyboardInterrupt:
        _checkpoint(run, run.state.step)
        console.print(f"[yellow]interrupted: checkpoint saved at step {run.state.step}; "
                      f"continue with drgrpo train --resume {run.run_dir}")  # fmt: skip
        raise
    _checkpoint(run, step)
    if step < cfg.steps and stop_at_step is not None:
        return {"stopped_at": step}
    final = run_eval(run, step)
    run.logger.log(step, eval_metrics(final))
    summary = summarize(cfg.objective.name, run.state.base_eval, final,
                        time.perf_counter() - start, step)  # fmt: skip
    summary["run_dir"] = str(run.run_dir)
    summary["final_model"] = str(run.run_dir / "final")
    summary["world_size"] = run.world.world_size
    # a sharded policy: its full weights gathered into a plain copy on rank 0 (collective)
    final_model = full_model(run.policy) if is_sharded(run.policy) else exported_model(run.policy)
    if run.world.is_main:
        export_model(
            final_model, run.tokenizer, run.rule, run.run_dir / "final",
            source={"run_dir": str(run.run_dir), "step": step, "config": cfg.to_dict()},
        )  # fmt: skip
        write_text_atomic(run.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    D.barrier()
    return summary


def run_eval(run: Run, step: int) -> dict:
    """The held-out evaluation of the current policy (train's token rule and protected scorer).

    Under torchrun the generation batches are dealt out to the ranks and the per-row results
    gathered, so every rank returns exactly the numbers of one process (each batch has the
    seed and rows it has in one process). A sharded policy is gathered once for all of it."""
    cfg = run.config
    hold = getattr(run.engine, "hold", nullcontext)  # GatheredEngine: full weights throughout
    with run.autocast(), hold():
        return evaluate(
            run.engine, run.tokenizer, run.rule, run.task.heldout(cfg.eval.num_prompts),
            run.scorer.grade, num_samples=cfg.eval.num_samples, ks=cfg.eval.ks,
            max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.eval.temperature,
            greedy=cfg.eval.greedy, seed=cfg.seed + 1_000_003 * (step + 1),
            bootstrap=cfg.eval.bootstrap,
            part=(run.world.rank, run.world.world_size), gather=D.gather_objects,
        )  # fmt: skip


def _train_steps(run: Run, step: int, last: int, start: float, progress: bool,
                 guard: InterruptGuard) -> int:  # fmt: skip
    cfg = run.config
    bar = tqdm(total=cfg.steps, initial=step, desc=f"{cfg.objective.name}", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    try:
        while step < last:
            guard.check()  # a held Ctrl-C stops here, between two whole steps
            if cfg.max_minutes and time.perf_counter() - start > 60 * cfg.max_minutes:
                run.console.print(f"[yellow]max_minutes={cfg.max_minutes} reached at step {step}")
                break
            metrics = rl_step(run, step + 1)
            step += 1
            run.state.step = step
            if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.steps:
                metrics.update(eval_metrics(run_eval(run, step)))
            run.logger.log(step, metrics)
            bar.set_postfix({short: _fmt(metrics.get(key)) for key, short in PROGRESS_KEYS.items()})
            bar.update(1)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < last:
                _checkpoint(run, step)
    finally:
        bar.close()
    return step


def _checkpoint(run: Run, step: int) -> None:
    """Rank 0 writes the checkpoint (the policy and optimizer are replicated, so its copy is
    everyone's); every rank's sampling state goes into it, so a resume on the same world size
    continues each rank exactly. A sharded policy: every rank writes its shards and its own
    RNG through DCP (dcp_checkpoint.py), in the same atomic, verified folder."""
    if is_sharded(run.policy):
        save_sharded_checkpoint(
            run.run_dir, step, model=run.policy, tokenizer=run.tokenizer,
            optimizer=run.optimizer, state=_state(run), config=run.config.to_dict(),
            generator=run.generator, keep=run.config.keep_checkpoints,
        )  # fmt: skip
        return
    rank_rng = D.gather_objects(run.generator.get_state().tolist())
    if run.world.is_main:
        state = _state(run)
        if run.world.world_size > 1:
            state["rank_rng"] = rank_rng
        save_checkpoint(
            run.run_dir, step, model=run.policy, tokenizer=run.tokenizer, optimizer=run.optimizer,
            state=state, config=run.config.to_dict(), generator=run.generator,
            keep=run.config.keep_checkpoints, extra=run.critic.save if run.critic else None,
        )  # fmt: skip
    D.barrier()


def _state(run: Run) -> dict:
    """state.json's run state (the step is the checkpoint's own), the schedule, log sizes."""
    state = {k: v for k, v in run.state.to_json().items() if k != "step"}
    state["scheduler"] = run.scheduler.state_dict()
    state["log_sizes"] = run.logger.sync()  # resume cuts the logs back to these
    return state


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
