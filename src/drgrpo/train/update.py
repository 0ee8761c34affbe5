"""One rollout batch -> optimizer steps: mini-batches, micro-batch accumulation, the normalizer.

Mini-batches are group-aligned: each pass shuffles the B groups and cuts them into
`mini_batches` parts of whole groups, so a group's K rows (whose group-baseline advantages sum
to zero) always meet in the same optimizer step. The normalizer Z of each optimizer step is
computed once from that step's whole mini-batch (``normalizer_for``) and passed to every
micro-batch, so that micro_batch_size is a memory setting only: the accumulated gradient is the
same for any split (tests/train/test_update.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

from drgrpo.config import OptimConfig
from drgrpo.models.logprobs import sequence_logprobs
from drgrpo.objective import ObjectiveSpec, compute_normalizer, objective_loss
from drgrpo.train import distributed as D
from drgrpo.train.sharded import is_sharded


@dataclass(frozen=True)
class TrainBatch:
    """Everything the loss needs for N scored rollouts (groups contiguous)."""

    input_ids: torch.Tensor  # (N, P+T) left-padded prompts, right-padded responses
    attention_mask: torch.Tensor  # (N, P+T) bool
    response_start: int  # P
    loss_mask: torch.Tensor  # (N, T) bool: tokens the loss sees (sampled tokens, stop included,
    # minus truncated rows under rollout.truncated=mask_loss)
    advantages: torch.Tensor  # (N,), or (N, T) token-level (baseline=value: GAE)
    old_logprobs: torch.Tensor | None = None  # (N, T); None: on-policy, ratio exactly 1
    ref_logprobs: torch.Tensor | None = None  # (N, T); None: no KL term in the loss
    sampler_logprobs: torch.Tensor | None = None  # (N, T); the engine's, for behaviour correction
    old_values: torch.Tensor | None = None  # (N, T) the critic's V at rollout (train/critic.py)
    returns: torch.Tensor | None = None  # (N, T) the critic's targets G

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> TrainBatch:
        """Rows `index`, with columns that are padding in every selected row cut away."""
        rows = {
            f.name: getattr(self, f.name)[index]
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        batch = replace(self, **rows)
        p = batch.response_start
        prompt_used = batch.attention_mask[:, :p].any(dim=0).nonzero()  # (P',1) used columns
        response_used = batch.attention_mask[:, p:].any(dim=0).nonzero()  # (T',1)
        first = int(prompt_used[0]) if len(prompt_used) else p - 1
        t = int(response_used[-1]) + 1 if len(response_used) else 1
        return batch._cut(first, t)

    def _cut(self, first: int, t: int) -> TrainBatch:
        p = self.response_start
        out = {
            "input_ids": self.input_ids[:, first : p + t],
            "attention_mask": self.attention_mask[:, first : p + t],
            "response_start": p - first,
        }
        for name in ("loss_mask", "old_logprobs", "ref_logprobs", "sampler_logprobs",
                     "old_values", "returns"):  # fmt: skip
            value = getattr(self, name)
            out[name] = None if value is None else value[:, :t]
        if self.advantages.dim() == 2:  # token-level advantages (N, T)
            out["advantages"] = self.advantages[:, :t]
        return replace(self, **out)


def normalizer_for(spec: ObjectiveSpec, batch: TrainBatch, max_tokens: int) -> float:
    """Z for one optimizer step, from counts over its whole batch on every rank (the counts
    are sums, all-reduced under torchrun; max_tokens is a constant), so Z never depends on the
    world size or the micro-batch size."""
    num_sequences, num_tokens = D.global_counts(len(batch), int(batch.loss_mask.sum()))
    return compute_normalizer(
        spec.aggregation,
        num_sequences=num_sequences,
        num_tokens=num_tokens,
        max_tokens=max_tokens,
        constant_normalizer=spec.constant_normalizer,
    )


def accumulate_gradients(
    model: torch.nn.Module,
    batch: TrainBatch,
    spec: ObjectiveSpec,
    normalizer: float,
    *,
    micro_batch_size: int = 0,
    temperature: float = 1.0,
    with_entropy: bool = True,
) -> dict[str, float]:
    """Forward/backward every micro-batch of `batch`; gradients add up in `.grad`.

    Returns sums over the batch's response tokens: loss, pg_loss, kl_sum, clipped_tokens,
    tokens, entropy_sum (add them across calls, divide by tokens for means).
    """
    n = len(batch)
    size = micro_batch_size or n
    totals: dict[str, float] = {}
    for start in range(0, n, size):
        micro = batch.select(torch.arange(start, min(start + size, n)))
        logprobs, entropy = sequence_logprobs(
            model,
            micro.input_ids,
            micro.attention_mask,
            micro.response_start,
            temperature=temperature,
            with_entropy=with_entropy,
        )  # (n, T) each
        old = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
        loss, stats = objective_loss(
            spec, logprobs, old, micro.advantages, micro.loss_mask, normalizer,
            ref_logprobs=micro.ref_logprobs, sampler_logprobs=micro.sampler_logprobs,
        )  # fmt: skip
        loss.backward()
        stats["loss"] = loss.detach()
        if entropy is not None:
            stats["entropy_sum"] = (entropy.detach() * micro.loss_mask).sum()
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def run_updates(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: TrainBatch,
    spec: ObjectiveSpec,
    optim: OptimConfig,
    *,
    max_tokens: int,
    temperature: float,
    generator: torch.Generator,
    group_size: int = 1,
    critic_step: Callable[[TrainBatch, float], dict[str, float]] | None = None,
) -> dict[str, float]:
    """`optim.updates_per_rollout` passes over the batch, `optim.mini_batches` optimizer steps each.

    Returns per-optimizer-step means of loss / pg_loss / kl_loss (comparable across any
    mini_batches x updates_per_rollout), token sums of clipped_tokens / tokens / kl_sum /
    entropy_sum (divide by tokens), grad_norm (mean), skipped_steps and optimizer_steps.
    A step whose loss or gradient is not finite is skipped (no parameter change) and counted;
    the caller decides when too many is too many. `critic_step(mini_batch, Z)` (PPO's critic,
    train/critic.py) runs on every mini-batch with the policy's normalizer; its sums are added.
    """
    groups = len(batch) // group_size
    sums: dict[str, float] = {}
    grad_norms, skipped, steps = [], 0, 0
    critic_sums: dict[str, float] = {}
    for _ in range(optim.updates_per_rollout):
        for rows in _mini_batch_rows(groups, group_size, optim.mini_batches, generator):
            mini = batch.select(rows)
            z = normalizer_for(spec, mini, max_tokens)
            optimizer.zero_grad(set_to_none=True)
            stats = accumulate_gradients(
                model, mini, spec, z, micro_batch_size=optim.micro_batch_size,
                temperature=temperature,
            )  # fmt: skip
            # --- PPO's critic: the same mini-batch and Z (train/critic.py) ---
            for key, value in (critic_step(mini, z) if critic_step else {}).items():
                critic_sums[key] = critic_sums.get(key, 0.0) + value
            norm = _summed_clipped(model, optim.max_grad_norm)
            steps += 1
            if D.any_rank(not (math.isfinite(stats["loss"]) and math.isfinite(norm))):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.step()
            scheduler.step()
            grad_norms.append(norm)
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
    done = len(grad_norms)
    keys = sorted(sums)  # the same order on every rank
    sums = dict(zip(keys, D.all_sum([sums[k] for k in keys]), strict=True))
    totals = {k: (v / done if k in _PER_STEP else v) for k, v in sums.items()}
    totals["grad_norm"] = sum(grad_norms) / done if done else float("nan")
    totals["skipped_steps"] = skipped
    totals["optimizer_steps"] = steps
    return totals | critic_sums


_PER_STEP = ("loss", "pg_loss", "kl_loss")
"""Stats that are one optimizer step's objective value: averaged over steps, not summed."""


def _mini_batch_rows(
    groups: int, group_size: int, mini_batches: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Row indices of each mini-batch: shuffled whole groups (one part: every row, in order)."""
    if mini_batches == 1:
        return [torch.arange(groups * group_size)]
    order = torch.randperm(groups, generator=generator)
    rows = []
    for part in order.chunk(mini_batches):
        first = part.sort().values[:, None] * group_size  # (g, 1) first row of each group
        rows.append((first + torch.arange(group_size)).reshape(-1))
    return rows


def _summed_clipped(model: torch.nn.Module, max_grad_norm: float) -> float:
    """Gradients summed over ranks (each rank's loss is already divided by the global Z), then
    clipped; returns the global norm. FSDP2 has summed them in backward (`shard_model` undoes
    its averaging): its shards' norm is totalled across ranks (`D.clip_grad_norm`)."""
    if is_sharded(model):
        return D.clip_grad_norm(model, max_grad_norm)
    D.replicate_gradients(model)
    return _grad_norm(model, max_grad_norm)


def _grad_norm(model: torch.nn.Module, max_grad_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_grad_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
