"""FSDP2 sharding and sharded checkpoints (torch.distributed.checkpoint) for the trainer's
model, on top of `distributed.py`'s process group and collectives."""

from __future__ import annotations

import json
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from drgrpo.train.distributed import _collective, world


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
