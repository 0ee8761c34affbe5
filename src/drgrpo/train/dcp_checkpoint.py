"""Checkpoints of a sharded run (model.fsdp=true): torch.distributed.checkpoint (DCP) inside the
same atomic, manifest-verified `checkpoints/step-N/` folders as `checkpoint.py`:

    model/             the HF config, generation config and tokenizer (no weights: `drgrpo
                       export` builds the model from them and fills it from dcp/)
    dcp/               .metadata + __R_0.distcp: model and optimizer, sharded; any world size
                       (sharded or not) reads them
    rng/rank{r}.pt     each rank's torch (CPU, CUDA) and Python RNG and sampling generator
    state.json         step, data position, scheduler, counters, base eval, log sizes and the
                       world size it was saved at: nothing in it depends on the world size
    config.json, manifest.json     as in checkpoint.py (the manifest written last, by rank 0)

Every rank writes its shards and RNG file into one `.tmp-step-N-PID/` folder (rank 0's PID; a
file system every rank sees, as DCP itself needs), then rank 0 hashes everything into the
manifest and renames the folder in: a kill at any instant leaves the previous checkpoint whole,
and `latest_checkpoint` (run on rank 0) sets aside a corrupt one as for any checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from drgrpo.train import distributed as D
from drgrpo.train import sharded as S
from drgrpo.train.checkpoint import (
    PREFIX,
    CheckpointError,
    _install,
    _recover,
    _write_manifest,
    prune_checkpoints,
)
from drgrpo.train.run_dir import kill_point

DCP_DIR = "dcp"


def is_dcp_checkpoint(ckpt: Path) -> bool:
    return (Path(ckpt) / DCP_DIR / ".metadata").is_file()


def save_sharded_checkpoint(run_dir: Path, step: int, *, model, tokenizer, optimizer,
                            state: dict, config: dict, generator: torch.Generator,
                            keep: int) -> Path:  # fmt: skip
    """Collective: every rank calls it with its own `generator`; `state` is rank 0's."""
    w = D.world()
    root = Path(run_dir) / "checkpoints"
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{final.name}-{D.gather_objects(os.getpid())[0]}"
    if w.is_main:
        root.mkdir(parents=True, exist_ok=True)
        _recover(root, say=lambda _: None)  # leftovers of an earlier failed save
        hf = S._hf_module(model)
        hf.config.save_pretrained(tmp / "model")
        if getattr(hf, "generation_config", None) is not None:
            hf.generation_config.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
    D.barrier()
    S.write_sharded(tmp / DCP_DIR, model, optimizer)
    kill_point("checkpoint.after_model")
    (tmp / "rng").mkdir(parents=True, exist_ok=True)
    rng = {**S.rng_state(), "sampler": generator.get_state()}
    torch.save(rng, tmp / "rng" / f"rank{w.rank}.pt")
    D.barrier()
    if w.is_main:
        full = {**state, "step": step, "world_size": w.world_size}
        (tmp / "state.json").write_text(json.dumps(full, indent=1))
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        kill_point("checkpoint.before_manifest")
        _write_manifest(tmp, step)
        kill_point("checkpoint.after_manifest")
        _install(tmp, final)
        prune_checkpoints(run_dir, keep)
    D.barrier()
    return final


def load_sharded_training_state(ckpt: Path, *, model, optimizer, generator: torch.Generator,
                                reseed: int) -> dict:  # fmt: skip
    """Model and optimizer from dcp/ (collective); this rank's RNG and sampling state when the
    checkpoint has its file and either the world size is the same or this is rank 0 (as a
    replicated checkpoint restores rank 0's); otherwise the generator is seeded with `reseed`.
    Returns state.json's content (world_size: the one it was saved at)."""
    w, ckpt = D.world(), Path(ckpt)
    try:
        state = json.loads((ckpt / "state.json").read_text())
        S.read_sharded(ckpt / DCP_DIR, model, optimizer)
        rng_file = ckpt / "rng" / f"rank{w.rank}.pt"
        same_world = state["world_size"] == w.world_size
        rng = torch.load(rng_file, weights_only=True) if rng_file.is_file() else None
    except Exception as e:  # noqa: BLE001 - any unreadable part makes the checkpoint unusable
        raise CheckpointError(
            f"checkpoint {ckpt} is corrupt or incomplete ({type(e).__name__}: {e})"
        ) from e
    if rng is not None and (same_world or w.is_main):
        S.set_rng_state(rng)
        generator.set_state(rng["sampler"])
    else:
        generator.manual_seed(reseed)
    return state


def load_dcp_policy(ckpt: Path):
    """(plain HF model with the checkpoint's weights, tokenizer), in this process alone: what
    `drgrpo export` writes from a sharded run's checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = Path(ckpt) / "model"
    model = AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(folder, local_files_only=True)
    )
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    D.init_distributed(require_group=True)  # DCP reads through a process group, even alone
    S.read_sharded(Path(ckpt) / DCP_DIR, model.float(), None)
    return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)
