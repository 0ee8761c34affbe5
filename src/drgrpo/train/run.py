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
from drgrpo.models.memory import count_parameters
from drgrpo.rollout import HFRolloutEngine, RolloutEngine, TokenRule
from drgrpo.tasks import Task, make_task
from drgrpo.tasks.scoring import RewardScorer
from drgrpo.train.adapters import attach_lora, load_adapters, uses_lora
from drgrpo.train.checkpoint import (
    CheckpointError,
    check_compatible,
    check_model_matches,
    checkpoint_step,
    latest_checkpoint,
    load_training_state,
)
from drgrpo.train.critic import Critic, build_critic
from drgrpo.train.dcp_checkpoint import is_dcp_checkpoint, load_sharded_training_state
from drgrpo.train.distributed import World, init_distributed, world
from drgrpo.train.logging import NullLogger, RunLogger
from drgrpo.train.policy import load_base_policy
from drgrpo.train.preflight import check_context, longest_prompt, memory_report
from drgrpo.train.sharded import GatheredEngine, shard_model
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
    world: World = field(default_factory=world)
    critic: Critic | None = None
    """PPO's value model, its optimizer and schedule (objective.baseline=value; train/critic.py)."""
    monitor_kl: bool = True
    """Whether the KL to the reference is logged when the loss needs none (config.monitors_kl)."""


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


def sampler_seed(seed: int, rank: int) -> int:
    """The sampling generator's seed on each rank (rank 0: the run's seed, as in one process)."""
    return seed + 1_000_003 * rank


def build_run(cfg: TrainConfig, *, resume: bool, console: Console) -> Run:
    run_dir = Path(cfg.output_dir)
    world = init_distributed(require_group=cfg.model.fsdp)  # FSDP2/DCP need a group, even alone
    if cfg.rollout.prompts_per_step % world.world_size:
        raise ValueError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be "
                         f"divisible by the world size {world.world_size}: each rank generates "
                         "and scores whole groups")  # fmt: skip
    # The newest complete, hash-verified checkpoint (None: resume from step 0), chosen (and
    # leftovers cleaned up) by rank 0 alone, then told to every rank.
    ckpt = _latest_on_rank0(run_dir, console, world) if resume else None
    if ckpt is not None:
        check_compatible(ckpt, cfg.to_dict())
        _check_format(ckpt, cfg)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = world.device if world.world_size > 1 else pick_device(cfg.model.device)
    policy, tokenizer, base_path = load_base_policy(cfg, console=console)
    rule = TokenRule.from_tokenizer(
        tokenizer, getattr(policy, "generation_config", None),
        template=cfg.rollout.prompt_template,
    )  # fmt: skip
    task = make_task(cfg.task.name, **cfg.task.options)
    _preflight(cfg, policy.config, task, rule, tokenizer, device, console, world)
    policy = policy.to(device=device, dtype=torch.float32)  # master weights (autocast_for)
    if cfg.model.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy = attach_lora(cfg, policy)
    monitor_kl = _monitor_kl(cfg, policy, console)
    reference = _reference(cfg, policy, monitor_kl)
    critic = build_critic(cfg, policy, device)  # the base trunk: before a ckpt
    if ckpt is not None:
        _load_checkpoint_weights(ckpt, policy)
    engine_model = policy
    if cfg.model.fsdp:  # FSDP2 per decoder layer under a LogprobModel root (sharded.py)
        param_dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" else None
        policy, reference = (None if m is None else shard_model(m, param_dtype=param_dtype)
                             for m in (policy, reference))  # fmt: skip
        engine_model = policy.model
    optimizer, scheduler = _optimizer(cfg, policy, device)
    generator = torch.Generator().manual_seed(sampler_seed(cfg.seed, world.rank))
    state = RunState()
    if ckpt is not None:
        state = _resume_state(ckpt, cfg, world, policy, optimizer, scheduler, generator, console)
        if critic is not None:
            critic.load(ckpt)
    engine = _engine(cfg, engine_model, tokenizer, rule, run_dir, device)
    if cfg.model.fsdp:  # generation runs with the full weights, gathered on every rank
        engine = GatheredEngine(policy, engine)
    return Run(
        config=cfg, run_dir=run_dir, device=device, policy=policy, reference=reference,
        tokenizer=tokenizer, rule=rule, task=task,
        engine=engine,
        optimizer=optimizer, scheduler=scheduler, generator=generator,
        scorer=RewardScorer.for_task(task, cfg.rollout.reward_timeout_s),
        logger=RunLogger(run_dir, cfg.tensorboard, **_log_resume(resume, ckpt, state))
        if world.is_main else NullLogger(),
        console=console, autocast=autocast_for(device, _autocast_dtype(cfg)),
        base_path=str(base_path),
        state=state, world=world, critic=critic, monitor_kl=monitor_kl,
    )  # fmt: skip


def _autocast_dtype(cfg: TrainConfig) -> str:
    """The dtype of autocast: none under FSDP2 (its MixedPrecisionPolicy computes in bf16)."""
    return "float32" if cfg.model.fsdp else cfg.model.dtype


def _monitor_kl(cfg: TrainConfig, policy: torch.nn.Module, console: Console) -> bool:
    monitor_kl = cfg.monitors_kl(count_parameters(policy.config))
    if cfg.monitor_kl is None and not monitor_kl:
        console.print("KL monitor off: the model is larger than 1B parameters (monitor_kl=true "
                      "logs it anyway, at the cost of a frozen copy of the model)")  # fmt: skip
    return monitor_kl


def _reference(
    cfg: TrainConfig, policy: torch.nn.Module, monitor_kl: bool
) -> torch.nn.Module | None:
    """The frozen base policy, when the KL term or its monitor needs it; on resume it is still
    the base, not the checkpoint. None under LoRA: the policy with its adapters disabled."""
    if not (cfg.objective.uses_reference or monitor_kl) or uses_lora(policy):
        return None
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    if cfg.model.dtype == "bfloat16":  # frozen: it needs no fp32 master copy
        reference = reference.to(torch.bfloat16)
    return reference


def _load_checkpoint_weights(ckpt: Path, policy: torch.nn.Module) -> None:
    """A checkpoint's adapters or weights into the plain policy (a DCP checkpoint's weights
    load with the optimizer, after sharding: `_resume_state`)."""
    if uses_lora(policy):
        load_adapters(policy, ckpt / "model")
        return
    check_model_matches(ckpt, policy)
    if not is_dcp_checkpoint(ckpt):
        _load_weights(policy, ckpt / "model")


def _latest_on_rank0(run_dir: Path, console, world) -> Path | None:
    """`latest_checkpoint` on rank 0 (it renames and deletes folders: once, not per rank); its
    answer, or its error, on every rank."""
    from drgrpo.train.distributed import gather_objects

    found, error = None, None
    if world.is_main:
        try:
            found = latest_checkpoint(run_dir, say=console.print, missing_ok=True)
        except CheckpointError as e:
            error = e
    found, error = gather_objects((found, error))[0]
    if error is not None:
        raise error
    return found


def _check_format(ckpt: Path, cfg: TrainConfig) -> None:
    if cfg.model.fsdp and not is_dcp_checkpoint(ckpt):
        raise CheckpointError(
            f"{ckpt} was written without model.fsdp (a replicated run's HF weights): resume it "
            "with model.fsdp=false, on any number of processes"
        )


def _resume_state(ckpt, cfg, world, policy, optimizer, scheduler, generator, console) -> RunState:
    """Optimizer, schedule, RNG and counters from a checkpoint (the weights too for DCP)."""
    if is_dcp_checkpoint(ckpt):
        reseed = sampler_seed(cfg.seed, world.rank) + 7_919 * checkpoint_step(ckpt)
        loaded = load_sharded_training_state(ckpt, model=policy, optimizer=optimizer,
                                             generator=generator, reseed=reseed)  # fmt: skip
        saved = loaded.pop("world_size")
        if saved != world.world_size and world.is_main:
            console.print(f"[yellow]checkpoint from another world size ({saved} ranks): "
                          "ranks > 0 reseed sampling")  # fmt: skip
    else:
        loaded = load_training_state(ckpt, optimizer=optimizer, generator=generator)
        _restore_rank_generator(loaded.pop("rank_rng", None), generator, cfg, world, loaded,
                                console)  # fmt: skip
    scheduler.load_state_dict(loaded.pop("scheduler"))
    return RunState.from_json(loaded)


def _preflight(cfg, model_config, task, rule, tokenizer, device, console, world) -> None:
    """Before the weights move to the device: the context check, the memory estimate."""
    tokens = longest_prompt(cfg, task, rule, tokenizer)
    check_context(cfg, model_config, tokens)
    if world.is_main:
        console.print(memory_report(cfg, model_config, tokens, device))


def _restore_rank_generator(saved, generator, cfg, world, loaded: dict, console) -> None:
    """Every rank's sampling state from the checkpoint when the world size is the same (rank 0's
    is the checkpoint's own rng.pt); on another world size, ranks > 0 start anew from
    (seed, step, rank): the run continues, not bit-identically."""
    if world.world_size == 1:
        return
    if saved is not None and len(saved) == world.world_size:
        generator.set_state(torch.tensor(saved[world.rank], dtype=torch.uint8))
        return
    if world.is_main:
        console.print("[yellow]checkpoint from another world size: ranks > 0 reseed sampling")
    else:
        generator.manual_seed(sampler_seed(cfg.seed, world.rank) + 7_919 * int(loaded["step"]))


def _engine(cfg, policy, tokenizer, rule: TokenRule, run_dir: Path, device) -> RolloutEngine:
    """The rollout engine: drgrpo's HF decode loop, or vLLM started from the current weights
    (written to run_dir/vllm_init: the base, or the resumed checkpoint's weights)."""
    if cfg.rollout.engine == "hf":
        return HFRolloutEngine(policy, rule.stop_ids, rule.pad_id)
    from drgrpo.rollout.vllm import VLLMRolloutEngine

    folder = run_dir / "vllm_init"
    policy.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    options = {"enforce_eager": device.type != "cuda", "in_process": False,
               "dtype": "bfloat16" if cfg.model.dtype == "bfloat16" else "float32",
               **cfg.rollout.vllm}  # fmt: skip
    return VLLMRolloutEngine(
        folder, stop_token_ids=rule.stop_ids, pad_token_id=rule.pad_id, seed=cfg.seed, **options
    )


def _log_resume(resume: bool, ckpt: Path | None, state: RunState) -> dict:
    """How RunLogger cuts the logs back to the checkpoint (step -1: there was none)."""
    if not resume:
        return {}
    return {"resume_step": state.step if ckpt else -1, "log_sizes": state.log_sizes}


def _optimizer(cfg: TrainConfig, policy: torch.nn.Module, device: torch.device):
    opt = cfg.optim
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=opt.lr, betas=opt.betas,
        weight_decay=opt.weight_decay,
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
