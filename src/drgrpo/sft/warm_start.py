"""The supervised warm start: response-only cross-entropy on the task's solution traces.

RL needs a base policy with partial success (a group whose rewards all agree has zero
advantage and teaches nothing), so the built-in model is first taught the task's format here:

    sequence   [bos] prompt solution [eos], right-padded to the longest row of the batch
    loss       sum of cross-entropy over solution + eos tokens / their count in the batch
               (prompt and padding masked; one optimizer step = one batch, no micro-batches)
    optimizer  AdamW, linear warm-up then cosine decay to 10% of lr, gradient norm clipped to 1
    data       train_example(0), (1), ... in order, batch_size per step (BUCKET_WINDOW > 1
               would sort windows of batches by length: less padding, a different order)
    stop       every check_every steps: sampled accuracy (temperature 1, one sample each) on
               check_prompts held-out prompts (disjoint from the final evaluation's); stop
               once it reaches stop_accuracy
"""

from __future__ import annotations

import itertools
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from tqdm.auto import tqdm

from drgrpo.config import SFTConfig
from drgrpo.eval import evaluate_model
from drgrpo.models import build_model, build_tokenizer, load_policy, save_policy
from drgrpo.rollout import TokenRule
from drgrpo.tasks import make_task
from drgrpo.tasks.scoring import RewardScorer
from drgrpo.util.schedule import lr_lambda

WARMUP_STEPS = 20
"""Linear warm-up of the learning rate, in optimizer steps."""
MIN_LR_FRACTION = 0.1
"""The cosine decay ends at this fraction of the peak learning rate (reached at max_steps)."""
MAX_GRAD_NORM = 1.0
"""Global gradient-norm clip."""
ADAM_BETAS = (0.9, 0.95)
"""AdamW betas (no weight decay)."""
REWARD_TIMEOUT_S = 1.0
"""Per-answer limit of the verifier in the checks and the final evaluation (faults score 0)."""
CHECK_SEED = 1
"""The periodic checks sample with seed cfg.seed + CHECK_SEED (the final evaluation: cfg.seed)."""
BUCKET_WINDOW = 1
"""Batches per length bucket window: the examples of this many consecutive batches are sorted
by length and cut into batches (less padding), visited in a seeded order. 1 = no sorting:
the calibrated default. (8 gave ~30% more tokens/s on 2-5 two-digit numbers; whether it
changes the examples needed was not settled, so the plain order stays.)"""


@dataclass(frozen=True)
class SFTBatch:
    """Right-padded training rows: padding only ever follows a row's real tokens."""

    input_ids: torch.Tensor
    """(N, T) long: bos, prompt, solution, eos, then pad ids."""
    loss_mask: torch.Tensor
    """(N, T) bool: True where input_ids[:, t] is a response token (solution or eos), i.e. a
    target predicted from column t - 1. Never True on bos, prompt or padding."""
    num_tokens: int
    """Real (non-pad) tokens in the batch, the unit of perf/tokens_per_s."""


def build_batch(examples, tokenizer, rule: TokenRule | None = None) -> SFTBatch:
    """prompt ids + solution ids + [eos] per example (the token rule's encoding, so a BOS only
    where the tokenizer adds one), right-padded to the batch's longest row."""
    rule = rule or TokenRule.from_tokenizer(tokenizer)
    rows, starts = [], []
    for ex in examples:
        if ex.solution is None:
            raise ValueError(
                f"example {ex.prompt[:40]!r} has no solution: this task cannot be SFT'd"
            )
        prompt = rule.encode_examples(tokenizer, [ex])[0]
        rows.append(prompt + rule.sft_target(tokenizer, ex.solution))
        starts.append(len(prompt))
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        loss_mask[i, start : len(row)] = True
    return SFTBatch(input_ids, loss_mask, sum(len(r) for r in rows))


def example_batches(task, batch_size: int, seed: int, window: int = BUCKET_WINDOW):
    """Endless stream of batches (lists of examples) over train_example(0), (1), ...

    Window w holds examples [w * window * batch_size, (w + 1) * window * batch_size); sorted
    by length (ties by index) and cut into `window` batches, whose order is shuffled by
    (seed, w). The rows of a batch then have similar lengths, so little of it is padding.
    """
    size = window * batch_size
    for w in itertools.count():
        pool = [task.train_example(w * size + i) for i in range(size)]
        order = sorted(range(size), key=lambda i: (len(pool[i].prompt) + len(pool[i].solution), i))
        chunks = [order[j : j + batch_size] for j in range(0, size, batch_size)]
        random.Random(f"sft/{seed}/{w}").shuffle(chunks)
        for chunk in chunks:
            yield [pool[i] for i in chunk]


def response_token_losses(model, batch: SFTBatch) -> torch.Tensor:
    """(N, T) cross-entropy of each response token given its prefix; exactly 0 elsewhere.

    No attention mask is passed: with right padding and causal attention no real token can see
    a pad, so the masks would change nothing but would cost SDPA its fused causal path.
    """
    logits = model(input_ids=batch.input_ids, use_cache=False).logits[:, :-1]
    targets = batch.input_ids[:, 1:]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    losses = losses.view_as(targets) * batch.loss_mask[:, 1:]
    return F.pad(losses, (1, 0))


def lr_factor(step: int, total: int, warmup: int = WARMUP_STEPS) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): warm-up, then cosine to 10%."""
    return lr_lambda(total, warmup, "cosine", min_fraction=MIN_LR_FRACTION)(step)


def load_start(cfg: SFTConfig):
    """(model, tokenizer): cfg.init's folder, else a fresh built-in model seeded by cfg.seed."""
    if cfg.init is not None:
        if not (Path(cfg.init) / "config.json").is_file():
            raise ValueError(f"init={cfg.init!r} is not a local Hugging Face model folder")
        model, tokenizer = load_policy(cfg.init, dtype=torch.float32)
        return model, tokenizer
    tokenizer = build_tokenizer()
    return build_model(cfg.size, len(tokenizer), seed=cfg.seed), tokenizer


def sampled_accuracy(model, tokenizer, task, examples, max_new_tokens: int, seed: int,
                     scorer: RewardScorer | None = None) -> float:  # fmt: skip
    """Share of correct samples, one temperature-1 sample per example (the periodic check)."""
    result = evaluate_model(
        model, tokenizer, task, examples, reward_timeout_s=REWARD_TIMEOUT_S, scorer=scorer,
        num_samples=1, ks=(1,), max_new_tokens=max_new_tokens, temperature=1.0, greedy=False,
        seed=seed,
    )  # fmt: skip
    return result["accuracy"]


def run_sft(cfg: SFTConfig, console: Console | None = None, progress: bool = True) -> dict:
    """Train, stop at the accuracy band (or max_steps / max_minutes), save, evaluate.

    Writes cfg.output_dir: the HF folder (config, safetensors, tokenizer), sft_config.json and
    sft_summary.json. Returns the summary: steps, seconds, final_loss, stop_reason, checks
    (step, seconds, loss, accuracy of each periodic check) and eval (the `evaluate` result).
    """
    console = console or Console()
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task.name, **cfg.task.options)
    model, tokenizer = load_start(cfg)
    num_params = sum(p.numel() for p in model.parameters())
    console.print(
        f"SFT warm start: {cfg.task.name} task, {cfg.init or cfg.size} model "
        f"({num_params / 1e6:.2f}M parameters), lr {cfg.lr:g}, batch {cfg.batch_size}, "
        f"stop at sampled accuracy >= {cfg.stop_accuracy:g} (checked every {cfg.check_every} steps)"
    )
    # One scorer for every check and the final evaluation: its worker pool starts once.
    scorer = RewardScorer.for_task(task, REWARD_TIMEOUT_S)
    try:
        state = _train(cfg, model, tokenizer, (task, scorer), progress, console)
        return _finish(cfg, model, tokenizer, (task, scorer), state, console)
    finally:
        scorer.close()


def _train(cfg: SFTConfig, model, tokenizer, scoring, progress: bool, console: Console) -> dict:
    """The loop; returns step, loss, checks, stop_reason, seconds, train_seconds, tokens.
    `scoring` is (task, its scorer)."""
    task = scoring[0]
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=ADAM_BETAS, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.max_steps))
    # Check prompts come after the final evaluation's: stopping never peeks at the eval set.
    check_examples = task.heldout(cfg.eval_prompts + cfg.check_prompts)[cfg.eval_prompts :]
    batches = example_batches(task, cfg.batch_size, cfg.seed)
    start = time.perf_counter()
    step, loss, tokens, train_seconds, checks, stop_reason = 0, None, 0, 0.0, [], "max_steps"
    bar = tqdm(total=cfg.max_steps, desc="sft", disable=not progress, dynamic_ncols=True)
    try:
        while step < cfg.max_steps:
            if time.perf_counter() - start > 60 * cfg.max_minutes:
                stop_reason = "max_minutes"
                break
            t0 = time.perf_counter()
            batch = build_batch(next(batches), tokenizer)
            loss = _train_step(model, batch, optimizer, scheduler)
            step, tokens = step + 1, tokens + batch.num_tokens
            train_seconds += time.perf_counter() - t0
            if step % cfg.check_every == 0:
                checks.append(_check(cfg, model, tokenizer, scoring, check_examples, step, loss))
                checks[-1]["seconds"] = round(time.perf_counter() - start, 1)
                console.print(f"step {step}: {checks[-1]['seconds']:.0f} s, loss {loss:.3f}, "
                              f"sampled accuracy {checks[-1]['accuracy']:.3f}")  # fmt: skip
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / train_seconds:.0f}",
                            acc="-" if not checks else f"{checks[-1]['accuracy']:.3f}")  # fmt: skip
            bar.update(1)
            if step % cfg.check_every == 0 and 0 < cfg.stop_accuracy <= checks[-1]["accuracy"]:
                stop_reason = "stop_accuracy"
                break
    finally:
        bar.close()
    return {"step": step, "loss": loss, "checks": checks, "stop_reason": stop_reason,
            "seconds": time.perf_counter() - start, "train_seconds": train_seconds,
            "tokens": tokens}  # fmt: skip


def _check(cfg: SFTConfig, model, tokenizer, scoring, examples, step: int, loss: float) -> dict:
    task, scorer = scoring
    accuracy = sampled_accuracy(
        model,
        tokenizer,
        task,
        examples,
        cfg.max_new_tokens,
        seed=cfg.seed + CHECK_SEED,
        scorer=scorer,
    )
    model.train()
    return {"step": step, "loss": round(loss, 4), "accuracy": accuracy}


def _train_step(model, batch: SFTBatch, optimizer, scheduler) -> float:
    losses = response_token_losses(model, batch)
    loss = losses.sum() / batch.loss_mask.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


def _finish(cfg: SFTConfig, model, tokenizer, scoring, state: dict, console: Console) -> dict:
    task, scorer = scoring
    model.eval()
    out = Path(cfg.output_dir)
    save_policy(model, tokenizer, out)
    (out / "sft_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    console.print(
        f"SFT stopped after {state['step']} steps, {state['seconds']:.0f} s "
        f"({state['stop_reason']}); saved {out}"
    )
    t0 = time.perf_counter()
    result = evaluate_model(
        model, tokenizer, task, task.heldout(cfg.eval_prompts), scorer=scorer,
        reward_timeout_s=REWARD_TIMEOUT_S, num_samples=1, ks=(1,), max_new_tokens=cfg.max_new_tokens, temperature=1.0, greedy=True, seed=cfg.seed,
    )  # fmt: skip
    console.print(
        f"  (held-out, {result['num_prompts']:,} prompts: sampled accuracy "
        f"{result['accuracy']:.3f}, greedy {result['greedy_accuracy']:.3f}, mean length "
        f"{result['len_mean']:.1f}, truncated {result['truncated_frac']:.1%})"
    )
    summary = {
        "steps": state["step"],
        "seconds": round(state["seconds"], 1),
        "train_seconds": round(state["train_seconds"], 1),
        "eval_seconds": round(time.perf_counter() - t0, 1),
        "final_loss": state["loss"],
        "stop_reason": state["stop_reason"],
        "tokens_per_s": round(state["tokens"] / max(state["train_seconds"], 1e-9)),
        "checks": state["checks"],
        "eval": result,
    }
    (out / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
