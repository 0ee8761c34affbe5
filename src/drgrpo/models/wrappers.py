"""Is a module's `.weight` the weight its forward uses? The guard of every fast path.

The fast paths (the rollout's `LlamaStepper` and `TransposedHead`, the fused head `_HeadStats`
of the log-probs) read raw weights and skip the modules' forward. That is wrong for:

- peft adapters: a LoRA layer's `.weight` is the BASE weight, its forward adds B A x (so a fast
  path would sample from the base model on the adapted projections);
- FSDP2 / tensor parallel: parameters are DTensor shards between forwards;
- FSDP1 / DDP wrappers: flat parameters, or a forward that also syncs gradients.

`describe_wrapping` names what it finds, so that a fast path can refuse (and say why) and the
caller falls back to the path through the modules' own forward.
"""

from __future__ import annotations

import torch


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(t, DTensor)


def _is_fsdp2(m: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(m, FSDPModule)


def describe_wrapping(module: torch.nn.Module) -> str | None:
    """None when `module` is a plain tree whose parameters are the tensors its forward uses;
    otherwise one sentence naming every wrapper found (peft, DTensor shards, FSDP, DDP)."""
    found = []
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        found.append("DistributedDataParallel")
    peft_layers = sorted(
        {type(m).__name__ for m in module.modules() if type(m).__module__.startswith("peft.")}
    )
    if peft_layers:
        found.append(f"peft ({', '.join(peft_layers)}: .weight is the base weight)")
    if any(_is_fsdp2(m) for m in module.modules()):
        found.append("FSDP2 (fully_shard)")
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in module.modules()):
        found.append("FSDP1 (FullyShardedDataParallel)")
    if any(_is_dtensor(p) for p in module.parameters()):
        found.append("DTensor-sharded parameters")
    return "; ".join(found) or None


def reads_raw_weights(module: torch.nn.Module) -> bool:
    """True when a fast path may read `module`'s parameters in place of calling its forward."""
    return describe_wrapping(module) is None
