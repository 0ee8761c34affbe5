"""Several processes under `torchrun`: the collectives that keep N ranks one training run.

The invariant: one optimizer step at world size W gives the loss and gradient of world size 1
on the same micro-batches (tests/distributed/). That needs, per optimizer step:

1. rewards all-gathered, so advantages (batch_std included) come from the global batch
   (`gather_rewards`, `global_advantages`);
2. the normalizer's counts all-reduced before `compute_normalizer` (`global_counts`): a
   per-rank Z is the bug TRL, verl and OpenRLHF each shipped (100-110% off at W=2);
3. gradients SUMMED over ranks, never averaged: each rank's loss is already its share of the
   global loss over the global Z (`shard_model` undoes FSDP's division, `replicate_gradients`
   sums plain replicas);
4. the same number of forward/backward calls on every rank (`micro_batch_count`,
   `padding_micro_batch`), since FSDP2's collectives run inside forward and backward;
5. skip and stop decisions taken on all-reduced values (`any_rank`), so no rank skips alone.

Checkpoints go through torch.distributed.checkpoint (DCP): sharded model and optimizer state
that any world size loads, a JSON state file, and one RNG file per rank (`save_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0
"""How long a collective waits for the other ranks before it fails (init_distributed)."""


@dataclasses.dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, evaluates and writes files every rank would write alike."""
        return self.rank == 0


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S, backend: str | None = None,
                     *, require_group: bool = False) -> World:  # fmt: skip
    """Join the process group `torchrun` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    Without torchrun (no WORLD_SIZE) this is one process and nothing is initialised, unless
    `require_group` (FSDP2 and DCP need a process group even alone): then a one-rank group on an
    in-process store. Backend: NCCL on CUDA (each rank on cuda:LOCAL_RANK), gloo on CPU.
    """
    if dist.is_initialized():  # joined already (an earlier call, or the caller's own group)
        return world()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        if require_group:
            _single_process_group(timeout_s, backend)
        return world()
    missing = [
        k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={size} but {missing} are not set: launch with "
            "`torchrun --nproc-per-node N -m drgrpo train ...`"
        )
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    kwargs = {}
    if backend == "nccl":
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        kwargs["device_id"] = torch.device("cuda", local)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return world()


def _single_process_group(timeout_s: float, backend: str | None) -> None:
    """A process group of this process alone (rank 0 of 1): no launcher, no network port."""
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    kwargs = {"device_id": torch.device("cuda", 0)} if backend == "nccl" else {}
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)  # fmt: skip


def world() -> World:
    """This process's place: (0, 1) when no process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return World(0, 1, 0, device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    return World(dist.get_rank(), dist.get_world_size(), local, device)


def gather_objects(value) -> list:
    """Every rank's `value` (picklable), in rank order; [value] in one process."""
    w = world()
    if w.world_size == 1:
        return [value]
    out = [None] * w.world_size
    with _collective("gather_objects"):
        dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    if world().world_size > 1:
        with _collective("barrier"):
            dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def _collective(what: str):
    """A failed or timed-out collective, re-raised with what the ranks most likely disagree on."""
    try:
        yield
    except RuntimeError as e:
        w = world()
        raise RuntimeError(
            f"rank {w.rank}/{w.world_size}: collective `{what}` failed or timed out waiting for "
            "the other ranks: one of them failed (see its log) or ran a different number of "
            "collectives (a rank-local skip or an uneven micro-batch count). Raise "
            f"init_distributed's timeout only for a step that is legitimately slow. ({e})"
        ) from e


def _device() -> torch.device:
    return world().device


def all_sum(values: list[float]) -> list[float]:
    """Elementwise sum over ranks, in float64 (exact for integer counts below 2^53)."""
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    if world().world_size > 1:
        with _collective("all_sum"):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def global_counts(num_sequences: int, num_tokens: int) -> tuple[int, int]:
    """(num_sequences, num_tokens) of one optimizer step over every rank: what
    `compute_normalizer` must see. max_tokens (L_max) is a config constant: not reduced."""
    sequences, tokens = all_sum([num_sequences, num_tokens])
    return int(sequences), int(tokens)


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any: a skip or a stop that all ranks take."""
    if world().world_size == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    with _collective("any_rank"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def micro_batch_count(local: int) -> int:
    """The largest micro-batch count of any rank: every rank runs that many forward/backward
    calls, the ones it lacks as `padding_micro_batch`es (FSDP2 collects inside them)."""
    if world().world_size == 1:
        return local
    t = torch.tensor([local], dtype=torch.int64, device=_device())
    with _collective("micro_batch_count"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def padding_micro_batch(batch):
    """One row of `batch` (a TrainBatch-like dataclass) that carries no loss: response_mask and
    advantages zero, so its forward/backward runs the collectives and adds exactly 0."""
    row = batch.select(torch.arange(1))
    return dataclasses.replace(
        row,
        response_mask=torch.zeros_like(row.response_mask),
        advantages=torch.zeros_like(row.advantages),
    )


def gather_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """(W * n,) every rank's (n,) rewards, rank 0's first: the global batch, groups contiguous
    when each rank holds whole groups."""
    w = world()
    if w.world_size == 1:
        return rewards
    sizes = [0] * w.world_size
    with _collective("gather_rewards"):
        dist.all_gather_object(sizes, int(rewards.shape[0]))
        if len(set(sizes)) != 1:
            raise ValueError(
                f"ranks hold different numbers of rollouts {sizes}: make prompts per step "
                f"divisible by the world size ({w.world_size})"
            )
        parts = [torch.empty_like(rewards) for _ in range(w.world_size)]
        dist.all_gather(parts, rewards.contiguous())
    return torch.cat(parts)


def local_rows(n_local: int) -> slice:
    """This rank's rows of the global batch `gather_rewards` builds."""
    r = world().rank
    return slice(r * n_local, (r + 1) * n_local)


def global_advantages(rewards: torch.Tensor, group_size: int, **kwargs) -> torch.Tensor:
    """(n,) this rank's advantages, computed from the gathered (W * n,) rewards:
    `compute_advantages` keywords pass through (baseline, scale, std_ddof, eps)."""
    from drgrpo.objective import compute_advantages

    if rewards.shape[0] % group_size:
        raise ValueError(
            f"this rank holds {rewards.shape[0]} rollouts, not whole groups of {group_size}"
        )
    everyone = gather_rewards(rewards)
    return compute_advantages(everyone, group_size, **kwargs)[local_rows(rewards.shape[0])]


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Every rank starts from rank 0's parameters (plain replication)."""
    if world().world_size == 1:
        return
    with _collective("broadcast_parameters"), torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)


def replicate_gradients(model: torch.nn.Module) -> None:
    """Plain replication: sum every `.grad` over ranks (one flat buffer per dtype)."""
    if world().world_size == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    with _collective("replicate_gradients"):
        for group in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            for g, piece in zip(group, flat.split([g.numel() for g in group]), strict=True):
                g.copy_(piece.view_as(g))


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    """The global gradient norm (all ranks' shards), clipped to `max_norm` when > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    with _collective("clip_grad_norm"):
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        # Under FSDP2 the norm is a DTensor; full_tensor() is the collective that totals it.
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return float(norm)
