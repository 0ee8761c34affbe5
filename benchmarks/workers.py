"""One library per process: a worker builds its trainer, then runs one RL step per request.

The parent (`vs_trl.py`) starts one worker per (library, config) with multiprocessing's spawn
start method, so each library's peak resident memory (`ru_maxrss`) is its own, and talks to it
over a pipe:

    worker -> parent   {"event": "ready", "rss_mb": ..}            trainer built, nothing run yet
    parent -> worker   "step"
    worker -> parent   {"step_s", "rollout_s", "rows": [(prompt_len, response_len), ..], "loss", ..}
    parent -> worker   "close"
    worker -> parent   {"event": "closed", "peak_mb": .., "threads": ..}

A step's time is taken inside the worker around exactly one RL step: rollout, rewards,
reference log-probs (when the KL term needs them), advantages, forward/backward, optimizer step.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StepSpec:
    """The RL step both libraries run (same model folder, prompts, reward and objective)."""

    model_dir: str
    prompts: int  # B
    group: int  # K
    max_new_tokens: int
    kl_coef: float
    temperature: float = 1.0
    lr: float = 1e-5
    threads: int = 2
    seed: int = 0
    max_steps: int = 64  # prompts for this many steps are prepared

    def to_dict(self) -> dict:
        return asdict(self)


def call_in_subprocess(fn, *args):
    """`fn(*args)` in a freshly spawned process (its own memory peak, a clean torch); returns what
    it returns, or raises RuntimeError with the child's traceback (or exit code, if it died)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_call_entry, args=(child, fn, args))
    proc.start()
    child.close()
    try:
        message = parent.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"{fn.__name__} process died (exit code {proc.exitcode})") from None
    proc.join()
    if "error" in message:
        raise RuntimeError(f"{fn.__name__} failed in its process:\n{message['error']}")
    return message["result"]


def _call_entry(conn, fn, args) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        conn.send({"result": fn(*args)})
    except BaseException:  # noqa: BLE001 - the parent raises it
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


def rss_peak_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def task_rows(spec: StepSpec) -> tuple:
    """(task, its training examples in order): step s uses examples s*B .. s*B+B-1, as in drgrpo."""
    from drgrpo.tasks import make_task

    task = make_task("arithmetic")
    return task, [task.train_example(i) for i in range(spec.prompts * spec.max_steps)]


def worker_main(conn, lib: str, spec_dict: dict) -> None:
    """Entry point of a spawned worker process."""
    spec = StepSpec(**spec_dict)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(spec.threads)
    try:
        if lib == "drgrpo":
            _serve_drgrpo(conn, spec)
        elif lib == "trl":
            _serve_trl(conn, spec)
        else:
            raise ValueError(f"unknown library {lib!r}")
    except BaseException:  # noqa: BLE001 - the parent prints it
        conn.send({"event": "error", "traceback": traceback.format_exc()})
        raise
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------- drgrpo


class _RecordingEngine:
    """Wraps the rollout engine to keep the last batch's token counts (for FLOPs)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.rows: list[tuple[int, int]] = []

    def generate(self, *args, **kwargs):
        rollouts = self.engine.generate(*args, **kwargs)
        self.rows = list(zip(rollouts.prompt_mask.sum(1).tolist(),
                             rollouts.response_mask.sum(1).tolist(), strict=True))  # fmt: skip
        return rollouts

    def sync_weights(self, model) -> None:
        self.engine.sync_weights(model)


def drgrpo_overrides(spec: StepSpec, output_dir: str) -> list[str]:
    """drgrpo's config for TRL's GRPOTrainer(loss_type="dr_grpo", scale_rewards="none")."""
    return [
        f"model.base={spec.model_dir}", "model.device=cpu", "model.dtype=float32",
        f"output_dir={output_dir}", f"seed={spec.seed}",
        f"rollout.prompts_per_step={spec.prompts}", f"rollout.group_size={spec.group}",
        f"rollout.max_new_tokens={spec.max_new_tokens}", f"rollout.temperature={spec.temperature}",
        "rollout.top_p=1.0", "rollout.truncated=keep",
        "objective.baseline=group_mean", "objective.scale=none",
        "objective.aggregation=constant", "objective.constant_normalizer=num_sequences_x_max_tokens",
        "objective.clip_eps_low=0.2", "objective.clip_eps_high=0.2",
        f"objective.kl_coef={spec.kl_coef}", "objective.kl_estimator=k3", "objective.kl_placement=loss",
        f"optim.lr={spec.lr}", "optim.weight_decay=0.0", "optim.max_grad_norm=1.0",
        "optim.updates_per_rollout=1", "optim.mini_batches=1", "optim.micro_batch_size=0",
        "log_samples_every=0", "checkpoint_every=0", "no_eos_patience=1000000000",
        # TRL computes no KL at beta=0; drgrpo's default KL monitor would add a reference forward.
        "monitor_kl=false",
    ]  # fmt: skip


def _serve_drgrpo(conn, spec: StepSpec) -> None:
    from rich.console import Console

    from drgrpo.config import build_config
    from drgrpo.train.rl_step import rl_step
    from drgrpo.train.run import build_run

    out = tempfile.mkdtemp(prefix="bench-drgrpo-")
    cfg = build_config(overrides=drgrpo_overrides(spec, out))
    run = build_run(cfg, resume=False, console=Console(quiet=True))
    run.engine = _RecordingEngine(run.engine)
    conn.send({"event": "ready", "rss_mb": rss_peak_mb()})
    step = 0
    while (command := conn.recv()) == "step":
        step += 1
        t0 = time.perf_counter()
        metrics = rl_step(run, step)
        step_s = time.perf_counter() - t0
        conn.send({
            "step_s": step_s, "rollout_s": metrics["perf/rollout_s"], "rows": run.engine.rows,
            "reward": metrics["reward/mean"],
        })  # fmt: skip
    _close(conn, command)


# -------------------------------------------------------------------------------------------- TRL


def trl_tokenizer(model_dir: str):
    """The same character tokenizer, set to prepend BOS when asked for special tokens.

    TRL tokenizes plain-text prompts with `tokenizer(text=prompts)`; drgrpo writes BOS itself. With
    this post-processor both see exactly [BOS] + characters (checked by `agreement.check_agreement`).
    """
    from tokenizers import processors
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    return tokenizer


def trl_args(spec: StepSpec, output_dir: str, max_steps: int):
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir,
        use_cpu=True, bf16=False, fp16=False,  # one process, CPU, fp32
        seed=spec.seed, data_seed=spec.seed, shuffle_dataset=False,
        per_device_train_batch_size=spec.prompts * spec.group, gradient_accumulation_steps=1,
        num_generations=spec.group, steps_per_generation=1, num_iterations=1,
        max_completion_length=spec.max_new_tokens, temperature=spec.temperature, top_p=1.0,
        top_k=0, repetition_penalty=1.0,
        loss_type="dr_grpo", scale_rewards="none", beta=spec.kl_coef, epsilon=0.2,
        # TRL >= 1.x multiplies the k3 term by the (differentiable) ratio by default, which
        # changes its gradient; drgrpo's kl_estimator=k3 is the classic GRPO term.
        use_bias_correction_kl=False,
        mask_truncated_completions=False,
        learning_rate=spec.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0,
        # TRL's default is True; drgrpo does not checkpoint the body, so neither does TRL here.
        gradient_checkpointing=False,
        max_steps=max_steps, logging_strategy="no", save_strategy="no", report_to="none",
        disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
    )  # fmt: skip


def build_trl_trainer(spec: StepSpec, reward_func=None, max_steps: int | None = None):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    task, examples = task_rows(spec)

    def arithmetic_reward(prompts, completions, reference, **kwargs):
        return [task.verify(c, r) for c, r in zip(completions, reference, strict=True)]

    dataset = Dataset.from_dict({
        "prompt": [ex.prompt for ex in examples], "reference": [ex.reference for ex in examples],
    })  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(
        spec.model_dir, local_files_only=True, dtype=torch.float32
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=reward_func or arithmetic_reward,
        args=trl_args(spec, tempfile.mkdtemp(prefix="bench-trl-"), max_steps or spec.max_steps),
        train_dataset=dataset,
        processing_class=trl_tokenizer(spec.model_dir),
    )


class _Close(Exception):
    pass


def _serve_trl(conn, spec: StepSpec) -> None:
    from transformers import TrainerCallback

    trainer = build_trl_trainer(spec)
    timings: dict = {}

    generate = trainer._generate

    def timed_generate(prompts):
        t0 = time.perf_counter()
        result = generate(prompts)
        timings["rollout_s"] = time.perf_counter() - t0
        return result

    score = trainer._generate_and_score_completions

    def recorded_score(inputs):
        out = score(inputs)
        timings["rows"] = list(zip(out["prompt_mask"].sum(1).tolist(),
                                   out["completion_mask"].sum(1).tolist(), strict=True))  # fmt: skip
        return out

    trainer._generate = timed_generate
    trainer._generate_and_score_completions = recorded_score

    class Gate(TrainerCallback):
        """Holds each optimizer step until the parent asks for it, and times it."""

        def on_train_begin(self, args, state, control, **kwargs):
            conn.send({"event": "ready", "rss_mb": rss_peak_mb()})

        def on_step_begin(self, args, state, control, **kwargs):
            command = conn.recv()
            if command != "step":
                raise _Close(command)
            timings.clear()
            timings["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_s = time.perf_counter() - timings["t0"]
            conn.send({
                "step_s": step_s, "rollout_s": timings["rollout_s"], "rows": timings["rows"],
                "reward": trainer._metrics["train"]["reward"][-1],
            })  # fmt: skip

    trainer.add_callback(Gate())
    try:
        trainer.train()
    except _Close as stop:
        _close(conn, stop.args[0])
        return
    # Ran out of prepared steps: answer the pending request with an error.
    raise RuntimeError(f"TRL ran all {spec.max_steps} prepared steps; raise StepSpec.max_steps")


def _close(conn, command) -> None:
    if command != "close":
        raise RuntimeError(f"unexpected command {command!r}")
    import torch

    conn.send({"event": "closed", "peak_mb": rss_peak_mb(), "threads": torch.get_num_threads()})
