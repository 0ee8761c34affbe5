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
    # Make the LogprobModel the FSDP root now: otherwise the first forward is a generation
    # (the layers called outside the root, in `gathered`) and each layer becomes its own root.
    root._get_fsdp_state()._lazy_init()  # private in torch 2.13; what the root's first forward does
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

    if not is_sharded(model):
        state = {k: v.detach().cpu() for k, v in _hf_module(model).state_dict().items()}
        return state if world().is_main else None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    with _collective("full_state_dict"):
        state = get_model_state_dict(_hf_module(model), options=options)
    return state if world().is_main else None


def full_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """A plain copy of the causal LM on CPU with the full weights, on rank 0 (None on the
    others): what final/ exports from a sharded run. Collective. Built on the meta device and
    filled from `full_state_dict` (no second random initialisation); buffers that are not in
    a state dict (rotary frequencies) are copied from the live model."""
    import copy

    from transformers import AutoModelForCausalLM

    state = full_state_dict(model)
    if state is None:
        return None
    hf = _hf_module(model)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(hf.config, dtype=torch.float32)
    plain.load_state_dict(state, strict=False, assign=True)
    plain.tie_weights()
    live = dict(hf.named_buffers())
    for name, buffer in list(plain.named_buffers()):
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            plain.get_submodule(owner).register_buffer(leaf, live[name].detach().cpu().clone(),
                                                       persistent=False)  # fmt: skip
    left = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"full_model: no full weights for {left[:3]}")
    plain.generation_config = copy.deepcopy(hf.generation_config)
    return plain.eval()


def save_checkpoint(path, model, optimizer, state: dict) -> None:
    """DCP checkpoint in folder `path`, written whole or not at all (a temporary folder,
    renamed by rank 0 after every rank finished):

        path/.metadata, path/__*.distcp    model + optimizer, sharded; any world size reads it
        path/state.json                    `state` (JSON) + the world size it was saved at
        path/rng/rank{r}.pt                each rank's torch (CPU, CUDA) and Python RNG states
    """
    w, path = world(), Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if w.is_main and tmp.exists():
        shutil.rmtree(tmp)
    _barrier("save_checkpoint")
    write_sharded(tmp, model, optimizer)
    (tmp / "rng").mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), tmp / "rng" / f"rank{w.rank}.pt")
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


def write_sharded(folder, model, optimizer) -> None:
    """Model and optimizer state into DCP files in `folder` (each rank writes its shards;
    collective). Keys are the causal LM's, whatever root wraps it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(_hf_module(model), optimizer)
    with _collective("save_checkpoint"):
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))


def read_sharded(folder, model, optimizer) -> None:
    """`write_sharded`'s files into `model` and `optimizer` (sharded or plain, any world
    size; `optimizer` None: the model alone). Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    module = _hf_module(model)
    if optimizer is None:
        target = {"model": get_model_state_dict(module)}
    else:
        model_state, optim_state = get_state_dict(module, optimizer)
        target = {"model": model_state, "optim": optim_state}
    with _collective("load_checkpoint"):
        dcp.load(target, checkpoint_id=str(folder))
    if optimizer is None:
        set_model_state_dict(module, target["model"])
    else:
        set_state_dict(module, optimizer, model_state_dict=target["model"],
                       optim_state_dict=target["optim"])  # fmt: skip


def rng_state() -> dict:
    """This process's torch (CPU, CUDA) and Python RNG states."""
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def load_checkpoint(path, model, optimizer, *, seed: int = 0) -> dict:
    """Restore a `save_checkpoint` folder into `model` and `optimizer` (sharded or not, any
    world size) and return its state; `state["rng_restored"]` says whether this rank's RNG is
    the saved one (same world size) or was re-seeded from (seed, step, rank) (another one)."""
    w, path = world(), Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a complete drgrpo DCP checkpoint")
    state = json.loads((path / "state.json").read_text())
    read_sharded(path, model, optimizer)
    rng_file = path / "rng" / f"rank{w.rank}.pt"
    state["rng_restored"] = state["world_size"] == w.world_size and rng_file.is_file()
    if state["rng_restored"]:
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        derived = (seed * 1_000_003 + int(state.get("step", 0))) * 1009 + w.rank
        torch.manual_seed(derived)
        random.seed(derived)
    return state


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model`'s parameters are FSDP2 (DTensor) shards."""
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


class GatheredEngine:
    """A rollout engine over a sharded root: each `generate` runs inside `gathered(root)` (full
    weights on every rank, a collective), unless a `hold()` already gathers them; `hold()`
    lets ranks make different numbers of calls (an evaluation's batches split over ranks)."""

    def __init__(self, root: torch.nn.Module, engine):
        self.root, self.engine, self._held = root, engine, False

    @contextmanager
    def hold(self):
        if self._held:
            yield self
            return
        with gathered(self.root):
            self._held = True
            try:
                yield self
            finally:
                self._held = False

    def generate(self, prompt_ids, **options):
        with self.hold():
            return self.engine.generate(prompt_ids, **options)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Nothing to copy: the engine's modules are the root's own (gathered when it samples)."""


def _barrier(what: str) -> None:
    if world().world_size > 1:
        with _collective(what):
            dist.barrier()
