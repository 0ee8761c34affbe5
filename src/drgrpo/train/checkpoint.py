"""Checkpoints that are atomic, safe to load, and refuse what does not belong to the run.

A checkpoint is a folder `checkpoints/step-000050/` holding:
    model/             a standard Hugging Face folder (config.json, model.safetensors, tokenizer)
    optimizer.pt       optimizer state, tensors only, loaded with torch.load(weights_only=True)
    rng.pt             torch CPU RNG and the sampling generator's state (tensors, weights_only)
    state.json         step, data position, scheduler state, counters, Python RNG, base eval
    config.json        the resolved config of the run
It is written under a temporary name and renamed into place, so a crash mid-save leaves only a
`.tmp-*` folder, which is never mistaken for a checkpoint and is cleaned up on the next save.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

PREFIX = "step-"
# What must match for a checkpoint to continue a run: the model's shape and the algorithm.
_MUST_MATCH_MODEL = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size")  # fmt: skip
_MUST_MATCH_CONFIG = ("objective", "task", "rollout", "seed")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or from another run."""


def save_checkpoint(run_dir: Path, step: int, *, model, tokenizer, optimizer, state: dict,
                    config: dict, generator: torch.Generator, keep: int) -> Path:  # fmt: skip
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    model.save_pretrained(tmp / "model", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "model")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state(), "sampler": generator.get_state()}, tmp / "rng.pt")
    full_state = {**state, "step": step, "python_rng": _py_rng_to_json(random.getstate())}
    (tmp / "state.json").write_text(json.dumps(full_state, indent=1))
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)  # atomic on one file system
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(run_dir: Path) -> Path:
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(
            f"no checkpoint in {run_dir}/checkpoints: start a new run without --resume"
        )
    return found[-1]


def check_compatible(ckpt: Path, config: dict) -> None:
    """Refuse a checkpoint whose model or algorithm differs, saying what differs."""
    saved = _read_json(ckpt / "config.json", ckpt)
    diffs = [
        f"{key}: checkpoint has {saved.get(key)!r}, this run has {config.get(key)!r}"
        for key in _MUST_MATCH_CONFIG
        if saved.get(key) != config.get(key)
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {ckpt} belongs to a different run:\n  " + "\n  ".join(diffs)
        )


def _read_json(path: Path, ckpt: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt} is not a readable drgrpo checkpoint ({e})") from e


def check_model_matches(ckpt: Path, model) -> None:
    model_cfg = _read_json(ckpt / "model" / "config.json", ckpt)
    ours = model.config.to_dict()
    diffs = [
        f"{key}: checkpoint {model_cfg.get(key)!r} vs model {ours.get(key)!r}"
        for key in _MUST_MATCH_MODEL
        if model_cfg.get(key) != ours.get(key)
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {ckpt} is for a different model:\n  " + "\n  ".join(diffs)
        )


def load_training_state(ckpt: Path, *, optimizer, generator: torch.Generator) -> dict:
    """Restore optimizer and RNG states in place; return state.json's content."""
    try:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        rng = torch.load(ckpt / "rng.pt", weights_only=True)
        state = json.loads((ckpt / "state.json").read_text())
    except Exception as e:  # noqa: BLE001 - any unreadable part makes the checkpoint unusable
        raise CheckpointError(
            f"checkpoint {ckpt} is corrupt or incomplete ({type(e).__name__}: {e})"
        ) from e
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["sampler"])
    random.setstate(_py_rng_from_json(state.pop("python_rng")))
    return state


def _py_rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_rng_from_json(value: list) -> tuple:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)
