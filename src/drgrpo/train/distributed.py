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
import json
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

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


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S, backend: str | None = None) -> World:
    """Join the process group `torchrun` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    Without torchrun (no WORLD_SIZE) this is one process and nothing is initialised. Backend:
    NCCL on CUDA (each rank on cuda:LOCAL_RANK), gloo on CPU.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 and not dist.is_initialized():
        return world()
    missing = [
        k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={size} but {missing} are not set: launch with "
            "`torchrun --nproc-per-node N -m drgrpo train ...`"
        )
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        backend = backend or ("nccl" if cuda else "gloo")
        kwargs = {}
        if backend == "nccl":
            local = int(os.environ["LOCAL_RANK"])
            torch.cuda.set_device(local)
            kwargs["device_id"] = torch.device("cuda", local)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return world()


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


def shard_model(model: torch.nn.Module, *, mesh=None, param_dtype: torch.dtype | None = None):
    """FSDP2 over a causal LM: `fully_shard` on every decoder layer, then on a `LogprobModel`
    root (embedding, final norm, head), which is returned: compute log-probs through it.

    `param_dtype=torch.bfloat16` computes in bf16 with the parameters (the model's dtype,
    float32 for master weights) and the gradient reduction in float32; None computes in the
    model's dtype (CPU, float32/float64 tests). FSDP averages gradients over ranks; here the
    loss of each rank is already its share over the global normalizer, so the division is
    undone (divide factor 1 with sum reduction: the divide factor alone raises on gloo).
    `mesh`: a 1-D DeviceMesh (default: every rank), or 2-D (replicate, shard) for HSDP.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    from drgrpo.models.forward import LogprobModel

    w = world()
    if mesh is None:
        mesh = init_device_mesh(w.device.type, (w.world_size,))
    policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype is not None else None
    )
    root = model if isinstance(model, LogprobModel) else LogprobModel(model)
    layers = getattr(root.model.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(f"{type(root.model).__name__} has no decoder.layers to shard per layer")
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(root, mesh=mesh, mp_policy=policy)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return root


@contextmanager
def gathered(root: torch.nn.Module):
    """Every FSDP2 module of `root` unsharded for the duration (full weights on every rank),
    resharded after: for generation, which calls the decoder and head outside the root's
    forward. The modules stay FSDP modules, so the rollout's fast paths still refuse them
    (`describe_wrapping`) and decoding goes through the modules' own forward."""
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in root.modules() if isinstance(m, FSDPModule)]
    with _collective("gathered"):
        for m in modules:
            m.unshard()
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield root
    finally:
        for m in modules:
            m.set_reshard_after_forward(True, recurse=False)
            m.reshard()


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


def _hf_module(model: torch.nn.Module) -> torch.nn.Module:
    """The causal LM under a LogprobModel root: checkpoint keys are the LM's, whatever wraps it."""
    from drgrpo.models.forward import LogprobModel

    return model.model if isinstance(model, LogprobModel) else model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The causal LM's whole state dict on CPU, on rank 0 (None on the others): what an HF
    export (`save_pretrained(path, state_dict=...)`) of a sharded run writes. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
    if not sharded:
        state = {k: v.detach().cpu() for k, v in _hf_module(model).state_dict().items()}
        return state if world().is_main else None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    with _collective("full_state_dict"):
        state = get_model_state_dict(_hf_module(model), options=options)
    return state if world().is_main else None


def save_checkpoint(path, model, optimizer, state: dict) -> None:
    """DCP checkpoint in folder `path`, written whole or not at all (a temporary folder,
    renamed by rank 0 after every rank finished):

        path/.metadata, path/__*.distcp    model + optimizer, sharded; any world size reads it
        path/state.json                    `state` (JSON) + the world size it was saved at
        path/rng/rank{r}.pt                each rank's torch (CPU, CUDA) and Python RNG states
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    w, path = world(), Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if w.is_main and tmp.exists():
        shutil.rmtree(tmp)
    _barrier("save_checkpoint")
    model_state, optim_state = get_state_dict(_hf_module(model), optimizer)
    with _collective("save_checkpoint"):
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
    (tmp / "rng").mkdir(parents=True, exist_ok=True)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng" / f"rank{w.rank}.pt")
    if w.is_main:
        text = json.dumps({"world_size": w.world_size, **state}, indent=1, sort_keys=True)
        (tmp / "state.json").write_text(text)
    _barrier("save_checkpoint")
    if w.is_main:  # the previous checkpoint is removed only once the new one has its name
        old = path.with_name(path.name + ".old")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        if old.exists():
            shutil.rmtree(old)
    _barrier("save_checkpoint")


def load_checkpoint(path, model, optimizer, *, seed: int = 0) -> dict:
    """Restore a `save_checkpoint` folder into `model` and `optimizer` (sharded or not, any
    world size) and return its state; `state["rng_restored"]` says whether this rank's RNG is
    the saved one (same world size) or was re-seeded from (seed, step, rank) (another one)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    w, path = world(), Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a complete drgrpo DCP checkpoint")
    state = json.loads((path / "state.json").read_text())
    module = _hf_module(model)
    model_state, optim_state = get_state_dict(module, optimizer)
    target = {"model": model_state, "optim": optim_state}
    with _collective("load_checkpoint"):
        dcp.load(target, checkpoint_id=str(path))
    set_state_dict(
        module, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"]
    )
    rng_file = path / "rng" / f"rank{w.rank}.pt"
    state["rng_restored"] = state["world_size"] == w.world_size and rng_file.is_file()
    if state["rng_restored"]:
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    else:
        derived = (seed * 1_000_003 + int(state.get("step", 0))) * 1009 + w.rank
        torch.manual_seed(derived)
        random.seed(derived)
    return state


def _barrier(what: str) -> None:
    if world().world_size > 1:
        with _collective(what):
            dist.barrier()
