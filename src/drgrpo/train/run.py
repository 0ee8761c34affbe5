"""Everything a run holds, built once from a validated config (and a checkpoint on resume)."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from rich.console import Console

from drgrpo.config import TrainConfig
from drgrpo.rollout import HFRolloutEngine, RolloutEngine, TokenRule
from drgrpo.tasks import Task, make_task
from drgrpo.tasks.scoring import RewardScorer
from drgrpo.train.checkpoint import (
    CheckpointError,
    check_compatible,
    check_model_matches,
    latest_checkpoint,
    load_training_state,
)
from drgrpo.train.critic import Critic, build_critic
from drgrpo.train.logging import RunLogger
from drgrpo.train.policy import load_base_policy
from drgrpo.util.schedule import lr_lambda


@dataclass
class RunState:
    """What changes as a run goes on; saved in every checkpoint's state.json."""

    step: int = 0
    """RL steps done."""
    data_pos: int = 0
    """Index of the next training example."""
    base_eval: dict | None = None
    """The base policy's evaluation (before step 1), kept for the summary."""
    no_eos_streak: int = 0
    """Consecutive steps in which no rollout stopped (collapse detector)."""
    nonfinite_streak: int = 0
    """Consecutive optimizer steps skipped for a non-finite loss or gradient."""
    log_sizes: dict = field(default_factory=dict)
    """Byte size of each log at the checkpoint: resume cuts the logs back to exactly these."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> RunState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class Run:
    config: TrainConfig
    run_dir: Path
    device: torch.device
    policy: torch.nn.Module
    reference: torch.nn.Module | None
    tokenizer: object
    rule: TokenRule
    task: Task
    engine: RolloutEngine
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    scorer: RewardScorer
    logger: RunLogger
    console: Console
    autocast: Callable
    base_path: str = ""
    state: RunState = field(default_factory=RunState)
    critic: Critic | None = None
    """PPO's value model, its optimizer and schedule (objective.baseline=value; train/critic.py)."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"model.device={name!r} but no CUDA GPU is visible: use model.device=cpu")
    return torch.device(name)


def autocast_for(device: torch.device, compute_dtype: str) -> Callable:
    """The context every forward runs in. Parameters and optimizer state are always fp32 (the
    master weights: a bf16 parameter rounds an lr-1e-6 AdamW update away, Micikevicius et al.
    2018); compute_dtype=bfloat16 runs the matmuls under bf16 autocast, on CPU and CUDA alike."""
    if compute_dtype == "bfloat16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def build_run(cfg: TrainConfig, *, resume: bool, console: Console) -> Run:
    run_dir = Path(cfg.output_dir)
    # The newest complete, hash-verified checkpoint (None: resume from step 0).
    ckpt = latest_checkpoint(run_dir, say=console.print, missing_ok=True) if resume else None
    if ckpt is not None:
        check_compatible(ckpt, cfg.to_dict())
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = pick_device(cfg.model.device)
    policy, tokenizer, base_path = load_base_policy(cfg, console=console)
    policy = policy.to(device=device, dtype=torch.float32)  # master weights (autocast_for)
    rule = TokenRule.from_tokenizer(
        tokenizer, getattr(policy, "generation_config", None),
        template=cfg.rollout.prompt_template,
    )  # fmt: skip
    reference = None
    if cfg.objective.uses_reference or cfg.monitor_kl:
        # The reference is the base policy, frozen; on resume it is still the base, not the checkpoint.
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        if cfg.model.dtype == "bfloat16":  # frozen: it needs no fp32 master copy
            reference = reference.to(torch.bfloat16)
    critic = build_critic(cfg, policy, device)  # from the base trunk, before any checkpoint
    if ckpt is not None:
        check_model_matches(ckpt, policy)
        _load_weights(policy, ckpt / "model")
    optimizer, scheduler = _optimizer(cfg, policy, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    state = RunState()
    if ckpt is not None:
        loaded = load_training_state(ckpt, optimizer=optimizer, generator=generator)
        scheduler.load_state_dict(loaded.pop("scheduler"))
        state = RunState.from_json(loaded)
        if critic is not None:
            critic.load(ckpt)
    task = make_task(cfg.task.name, **cfg.task.options)
    return Run(
        config=cfg, run_dir=run_dir, device=device, policy=policy, reference=reference,
        tokenizer=tokenizer, rule=rule, task=task,
        engine=HFRolloutEngine(policy, rule.stop_ids, rule.pad_id),
        optimizer=optimizer, scheduler=scheduler, generator=generator,
        scorer=RewardScorer.for_task(task, cfg.rollout.reward_timeout_s),
        logger=RunLogger(run_dir, cfg.tensorboard, **_log_resume(resume, ckpt, state)),
        console=console, autocast=autocast_for(device, cfg.model.dtype), base_path=str(base_path), state=state,
        critic=critic,
    )  # fmt: skip


def _log_resume(resume: bool, ckpt: Path | None, state: RunState) -> dict:
    """How RunLogger cuts the logs back to the checkpoint (step -1: there was none)."""
    if not resume:
        return {}
    return {"resume_step": state.step if ckpt else -1, "log_sizes": state.log_sizes}


def _optimizer(cfg: TrainConfig, policy: torch.nn.Module, device: torch.device):
    opt = cfg.optim
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay,
        # One fused kernel over all parameters (benchmarks/README.md: the optimizer step).
        fused=device.type in ("cpu", "cuda"),
    )  # fmt: skip
    total = cfg.steps * opt.updates_per_rollout * opt.mini_batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total, opt.warmup_steps, opt.schedule)
    )
    return optimizer, scheduler


def _load_weights(model: torch.nn.Module, folder: Path) -> None:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} has no safetensors weights")
    weights = {}
    for f in files:
        weights.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied output embeddings are saved once; anything else missing is a foreign checkpoint.
    missing = [m for m in missing if "lm_head" not in m]
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
