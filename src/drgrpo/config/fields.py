"""Every config field: frozen dataclasses, validated when made, never mutated afterwards.

Each field is documented where it is declared (the string under it); `drgrpo train --help-config`
prints those strings (`drgrpo.config.build.describe_fields`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from drgrpo.objective import ObjectiveSpec, resolve_objective
from drgrpo.rollout.templates import PromptTemplate


@dataclass(frozen=True)
class ModelConfig:
    base: str | None = None
    """Local Hugging Face folder of the base policy. None: the built-in model, SFT-warm-started on
    the task (trained once, then cached under cache_dir)."""
    size: str = "tiny"
    """Built-in model size when base is None: tiny | small."""
    cache_dir: str = ".cache/drgrpo"
    """Where the built-in SFT base policy is cached."""
    device: str = "auto"
    """auto (cuda if available, else cpu) | cpu | cuda | cuda:N."""
    dtype: str = "float32"
    """Compute dtype: float32 | bfloat16. Parameters and optimizer state stay float32 either way
    (master weights, so small updates are not rounded away); bfloat16 runs every forward and
    backward under bf16 autocast (CPU or CUDA) and keeps the frozen reference model in bf16."""
    critic: str = "separate"
    """PPO's value model (objective.baseline=value): separate (a copy of the base policy's trunk
    with a scalar head, its own optimizer: the PPO-RLHF default) | shared (a scalar head on the
    policy's trunk; the trunk learns from pg_loss + vf_coef * value_loss)."""

    lora_rank: int = 0
    """LoRA adapters of this rank on the base (0 = full fine-tuning); needs the lora extra (peft).
    The reference is the base with adapters disabled (no copy); checkpoints hold the adapters."""
    lora_alpha: float = 16.0
    """LoRA scaling alpha (the update is alpha / rank * B A)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_target_modules: tuple[str, ...] = ()
    """Module names to adapt (empty: q/k/v/o and gate/up/down projections)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward instead of keeping them: the
    training peak shrinks to about one layer's activations, for about one more forward."""
    fsdp: bool = False
    """Shard the policy (and the reference) with FSDP2 per decoder layer instead of replicating
    it on every rank: fp32 master weights and gradient reduction, bf16 compute when dtype is
    bfloat16; checkpoints through torch.distributed.checkpoint (any world size resumes them).
    Under torchrun, or one process alone. Not yet with lora_rank, baseline=value or vllm."""

    def __post_init__(self) -> None:
        _choice("model.dtype", self.dtype, ("float32", "bfloat16"))
        if self.lora_rank < 0 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError("model.lora_rank >= 0, lora_alpha > 0 and 0 <= lora_dropout < 1")
        _choice("model.critic", self.critic, ("separate", "shared"))
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"model.device={self.device!r}: use auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class TaskConfig:
    name: str = "arithmetic"
    """Built-in task: arithmetic | countdown | math."""
    options: dict = field(default_factory=dict)
    """Task knobs passed to drgrpo.tasks.make_task, e.g. {k_min: 2, k_max: 5} or {path: data.jsonl}."""


MONITOR_KL_MAX_PARAMS = 1_000_000_000
"""Above this many parameters the KL monitor is off unless asked for (monitor_kl=true)."""
VLLM_OPTIONS = ("dtype", "gpu_memory_utilization", "max_model_len", "enforce_eager", "block_size",
                "in_process", "sleep_mode")  # fmt: skip


@dataclass(frozen=True)
class RolloutConfig:
    prompts_per_step: int = 16
    """B: prompts drawn per RL step."""
    group_size: int = 8
    """K: rollouts sampled per prompt (one group)."""
    max_new_tokens: int = 48
    """L_max: response length cap; also the constant of num_sequences_x_max_tokens."""
    temperature: float = 1.0
    """Sampling temperature; the loss scores the same tempered distribution."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    truncated: str = "keep"
    """What to do with a response that hit max_new_tokens: keep | mask_loss (no gradient) |
    zero_reward (scored 0)."""
    engine: str = "hf"
    """Who samples: hf (drgrpo's own KV-cached decode loop over the policy being trained) |
    vllm (vLLM's offline engine; weights synced after every update; needs the vllm extra)."""
    vllm: dict = field(default_factory=dict)
    """vLLM engine options: dtype, gpu_memory_utilization, max_model_len, enforce_eager,
    block_size, in_process, sleep_mode (see drgrpo.rollout.vllm.VLLMRolloutEngine)."""
    chunk_rows: int = 0
    """Rows generated per engine call (whole groups: a multiple of group_size); the KV cache and
    the decode batch then scale with this, not with prompts x samples. 0 = all N rows at once."""
    prompt_template: str = "none"
    """How a question becomes the prompt: none (as the task gives it) | qwen_math | r1 (the
    paper's, sail-sg/understand-r1-zero) | chat (the tokenizer's chat template) | a format
    string with {question} (literal braces as {{ }}). Chat messages in the data always use the
    chat template."""
    reward_timeout_s: float = 1.0
    """A reward call slower than this scores 0 and is counted in reward/timeouts (the math
    grader runs in worker processes that are killed at the limit)."""
    max_reward_fault_fraction: float = 0.5
    """Stop the run when, in one step, more than this share of a reward function's calls fault
    (raise, time out, or return a non-number / out-of-range value), or all of them do."""

    def __post_init__(self) -> None:
        _positive("rollout.prompts_per_step", self.prompts_per_step)
        _positive("rollout.group_size", self.group_size)
        _positive("rollout.max_new_tokens", self.max_new_tokens)
        if not self.temperature > 0:
            raise ValueError("rollout.temperature must be > 0 for training rollouts")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"rollout.top_p must be in (0, 1], got {self.top_p}")
        _choice("rollout.truncated", self.truncated, ("keep", "mask_loss", "zero_reward"))
        if self.chunk_rows < 0 or self.chunk_rows % self.group_size:
            raise ValueError(
                f"rollout.chunk_rows={self.chunk_rows} must be 0 or a multiple of "
                f"rollout.group_size={self.group_size} (chunks hold whole groups)"
            )
        _positive("rollout.reward_timeout_s", self.reward_timeout_s)
        if not 0 < self.max_reward_fault_fraction <= 1:
            raise ValueError("rollout.max_reward_fault_fraction must be in (0, 1]")
        PromptTemplate.parse(self.prompt_template)  # raises naming the fix
        _choice("rollout.engine", self.engine, ("hf", "vllm"))
        unknown = set(self.vllm) - set(VLLM_OPTIONS)
        if unknown:
            raise ValueError(
                f"rollout.vllm has unknown option(s) {sorted(unknown)}; valid: {list(VLLM_OPTIONS)}"
            )

    @property
    def num_sequences(self) -> int:
        return self.prompts_per_step * self.group_size


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    """AdamW learning rate (peak, after warm-up)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Clip the gradient's global norm to this (0 = off)."""
    schedule: str = "constant"
    """Learning-rate schedule after warm-up: constant | linear | cosine (to 0 at the last step)."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up from 0."""
    updates_per_rollout: int = 1
    """Passes over each rollout batch (PPO epochs). When updates_per_rollout x mini_batches > 1,
    pi_old (the policy that sampled) is computed once per rollout and every optimizer step after
    the first is off-policy: the ratio and the clip act. With 1 x 1 the ratio is exactly 1."""
    mini_batches: int = 1
    """Optimizer steps per pass: each pass shuffles the B groups and splits them into this many
    parts of whole groups (group-aligned; must divide rollout.prompts_per_step)."""
    micro_batch_size: int = 0
    """Sequences per forward/backward (a memory setting only; 0 = the whole mini-batch)."""
    critic_lr: float = 0.0
    """AdamW learning rate of PPO's critic (objective.baseline=value; 0 = 10 x optim.lr, as in
    verl's PPO examples: the zero-initialised value head must fit the returns quickly). It
    follows the policy's schedule; betas, weight decay and max_grad_norm are shared."""

    def __post_init__(self) -> None:
        _positive("optim.lr", self.lr)
        _positive("optim.updates_per_rollout", self.updates_per_rollout)
        _positive("optim.mini_batches", self.mini_batches)
        _choice("optim.schedule", self.schedule, ("constant", "linear", "cosine"))
        if self.critic_lr < 0:
            raise ValueError(
                f"optim.critic_lr must be >= 0 (0 = 10 x optim.lr), got {self.critic_lr}"
            )
        if self.micro_batch_size < 0 or self.warmup_steps < 0 or self.max_grad_norm < 0:
            raise ValueError("optim.micro_batch_size, warmup_steps and max_grad_norm must be >= 0")


@dataclass(frozen=True)
class EvalConfig:
    every: int = 25
    """Evaluate on the held-out split every N steps (0 = only before and after training)."""
    num_prompts: int = 1024
    """Held-out prompts per evaluation."""
    num_samples: int = 4
    """Sampled completions per prompt (for accuracy and pass@k)."""
    ks: tuple[int, ...] = (1, 4)
    """k values of the unbiased pass@k."""
    temperature: float = 1.0
    """Sampling temperature of the evaluation."""
    greedy: bool = True
    """Also measure greedy accuracy."""
    bootstrap: int = 0
    """Resamples of the percentile bootstrap for 95% intervals of accuracy and pass@k over
    prompts (0 = none)."""

    def __post_init__(self) -> None:
        _positive("eval.num_prompts", self.num_prompts)
        _positive("eval.num_samples", self.num_samples)
        if any(k < 1 or k > self.num_samples for k in self.ks):
            raise ValueError(f"eval.ks={self.ks}: each k must be in 1..eval.num_samples")


@dataclass(frozen=True)
class TrainConfig:
    objective: ObjectiveSpec = field(default_factory=lambda: resolve_objective("dr_grpo"))
    """The objective's knobs (a preset plus overrides); see `drgrpo explain formula`."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    steps: int = 100
    """RL steps (one rollout batch each)."""
    max_minutes: float = 0.0
    """Stop training (then evaluate) after this much wall time (0 = no limit)."""
    seed: int = 0
    """Seeds prompts order, sampling, and everything else random."""
    output_dir: str = "runs/demo"
    """Run folder: config, metrics, samples, checkpoints, plots, summary."""
    checkpoint_every: int = 50
    """Save a checkpoint every N steps (and always at the end; 0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    log_samples_every: int = 10
    """Write a few sampled completions to samples.jsonl every N steps (0 = never)."""
    tensorboard: bool = False
    """Also write TensorBoard logs (needs the tensorboard extra)."""
    monitor_kl: bool | None = None
    """Log KL to the reference even when kl_coef = 0: one extra no-grad forward per step, and a
    frozen copy of the model in memory (none under LoRA). None: on for models of up to
    MONITOR_KL_MAX_PARAMS parameters, off above, where that copy costs a GPU's worth of memory."""
    max_nonfinite_steps: int = 3
    """Stop after this many consecutive optimizer steps skipped for a non-finite loss/gradient."""
    no_eos_patience: int = 5
    """Stop when this many consecutive steps end no rollout with EOS (a collapsed, absorbing state)."""

    def __post_init__(self) -> None:
        _positive("steps", self.steps)
        self.objective.check_group_size(self.rollout.group_size)
        if self.model.lora_rank and self.objective.baseline == "value":
            raise ValueError(
                "model.lora_rank with a learned value (baseline=value) is not supported yet: "
                "the critic would copy an adapted trunk; use full fine-tuning for ppo"
            )
        self._check_fsdp()
        if self.objective.behavior_correction != "none" and self.rollout.top_p < 1:
            raise ValueError(
                "objective.behavior_correction needs rollout.top_p = 1: under top-p the sampler's "
                "log-probs are renormalised over the nucleus, so the importance weights would be "
                "wrong; set rollout.top_p=1 or objective.behavior_correction=none"
            )
        if self.rollout.prompts_per_step % self.optim.mini_batches:
            raise ValueError(
                f"optim.mini_batches={self.optim.mini_batches} must divide "
                f"rollout.prompts_per_step={self.rollout.prompts_per_step}: mini-batches hold "
                "whole groups"
            )
        if self.max_minutes < 0 or self.keep_checkpoints < 1:
            raise ValueError("max_minutes must be >= 0 and keep_checkpoints >= 1")

    def _check_fsdp(self) -> None:
        """What model.fsdp does not support yet, refused before anything is loaded."""
        if not self.model.fsdp:
            return
        refused = {
            "model.lora_rank > 0 (the adapters' checkpoint and merged export)": self.model.lora_rank,
            "objective.baseline=value (PPO's critic)": self.objective.baseline == "value",
            "rollout.engine=vllm (its weight sync reads whole tensors)": self.rollout.engine
            == "vllm",
        }
        named = [name for name, on in refused.items() if on]
        if named:
            raise ValueError(
                f"model.fsdp=true does not support {'; '.join(named)} yet: set model.fsdp=false "
                "(plain replication under torchrun) or drop the option"
            )

    def monitors_kl(self, num_params: int) -> bool:
        """Whether the run logs KL to the reference when its loss needs none (`monitor_kl`)."""
        if self.monitor_kl is None:
            return num_params <= MONITOR_KL_MAX_PARAMS
        return bool(self.monitor_kl)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass(frozen=True)
class SFTConfig:
    """The supervised warm start: response-only cross-entropy on the task's solution traces."""

    task: TaskConfig = field(default_factory=TaskConfig)
    """Task whose solution traces are learned (task.name, task.options); its held-out split
    is what the checks and the final evaluation measure."""
    size: str = "tiny"
    """Built-in model size to train from scratch: tiny | small."""
    init: str | None = None
    """Start from this local HF folder instead of a fresh built-in model."""
    output_dir: str = "runs/sft"
    """Where the Hugging Face folder (config, safetensors, tokenizer) is written."""
    seed: int = 0
    """Seeds the model's initialisation and the evaluations' sampling; the training problems
    come from the task's own seed option."""
    lr: float = 3e-3
    """AdamW peak learning rate (cosine decay to 10% over max_steps, short warm-up)."""
    batch_size: int = 32
    """Solution traces per optimizer step."""
    max_steps: int = 2000
    """Upper bound on optimizer steps."""
    max_minutes: float = 10.0
    """Wall-time safety limit; the deterministic stop is the accuracy band below."""
    check_every: int = 50
    """Measure held-out sampled accuracy every N steps (on check_prompts prompts)."""
    check_prompts: int = 256
    """Held-out prompts of each periodic check."""
    stop_accuracy: float = 0.2
    """Stop as soon as a periodic check's sampled accuracy reaches this (0 = never: train to
    max_steps). The built-in default aims for a base policy with partial success, which RL needs."""
    max_new_tokens: int = 48
    """Response cap of the evaluations."""
    eval_prompts: int = 1024
    """Held-out prompts of the final evaluation."""

    def __post_init__(self) -> None:
        for name in (
            "lr",
            "batch_size",
            "max_steps",
            "check_every",
            "check_prompts",
            "eval_prompts",
        ):
            _positive(f"sft.{name}", getattr(self, name))
        if not 0 <= self.stop_accuracy <= 1:
            raise ValueError(f"sft.stop_accuracy must be in [0, 1], got {self.stop_accuracy}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "task": TaskConfig, "rollout": RolloutConfig,
            "optim": OptimConfig, "eval": EvalConfig}  # fmt: skip


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(choices)}")
