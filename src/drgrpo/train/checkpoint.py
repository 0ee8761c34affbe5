"""Checkpoints that are atomic at every instant, verified on load, and refuse what does not
belong to the run.

A checkpoint is a folder `checkpoints/step-000050/` holding:
    model/             a standard Hugging Face folder (config.json, model.safetensors, tokenizer)
    optimizer.pt       optimizer state, tensors only, loaded with torch.load(weights_only=True)
    rng.pt             torch CPU RNG and the sampling generator's state (tensors, weights_only)
    state.json         step, data position, scheduler state, counters, Python RNG, base eval,
                       the size of each log at save time (resume truncates the logs to it)
    config.json        the resolved config of the run
    critic.safetensors, critic_optimizer.pt
                       PPO's critic (weights; optimizer and schedule), when the run has one
                       (written by the `extra` callback, before the manifest that covers them)
    manifest.json      every other file's size and sha256, written LAST: it marks the folder
                       complete, and the loader checks the hashes against it

How a save stays safe when killed at any instant (each step is fsynced before the next):
1. write everything into `.tmp-step-N-PID/`, then the manifest;
2. a new step: rename the folder to `step-N/` (atomic on one file system);
   an existing step (re-saved on resume, on Ctrl-C, for a finished run): rename the old one to
   `.old-step-N-PID/`, rename the new one in, then delete the old one;
3. prune: rename a checkpoint beyond the last `keep` complete ones to `.trash-...`, delete it.
A `step-N/` folder therefore always holds a complete checkpoint, except one corrupted later. The
loader (`latest_checkpoint`) deletes `.tmp-` and `.trash-` leftovers, puts back an `.old-` copy
whose replacement never arrived, removes `step-` folders without a manifest, sets a corrupt one
aside as `.corrupt-step-N-...` (kept for inspection) and takes the newest complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from drgrpo.train.run_dir import fsync_dir, kill_point

PREFIX = "step-"
MANIFEST = "manifest.json"
_LEFTOVER = re.compile(r"^\.(tmp|old|trash)-(step-\d+)-\d+$")
# What must match for a checkpoint to continue a run: the model's shape and the algorithm.
_MUST_MATCH_MODEL = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size")  # fmt: skip
_MUST_MATCH_CONFIG = ("objective", "task", "rollout", "seed")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or from another run."""


class IncompleteCheckpoint(CheckpointError):
    """A folder whose write never finished (no manifest): never loaded, removed by the loader."""


class CorruptCheckpoint(CheckpointError):
    """A complete checkpoint whose files no longer match its manifest."""


def save_checkpoint(run_dir: Path, step: int, *, model, tokenizer, optimizer, state: dict,
                    config: dict, generator: torch.Generator, keep: int,
                    extra: Callable[[Path], None] | None = None) -> Path:  # fmt: skip
    """`extra(folder)` writes more files into the checkpoint (the critic's), under the manifest."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _recover(root, say=lambda _: None)  # leftovers of an earlier failed save in this process
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    model.save_pretrained(tmp / "model", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "model")
    kill_point("checkpoint.after_model")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    kill_point("checkpoint.after_optimizer")
    torch.save({"torch": torch.get_rng_state(), "sampler": generator.get_state()}, tmp / "rng.pt")
    full_state = {**state, "step": step, "python_rng": _py_rng_to_json(random.getstate())}
    (tmp / "state.json").write_text(json.dumps(full_state, indent=1))
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    if extra is not None:
        extra(tmp)
    kill_point("checkpoint.before_manifest")
    _write_manifest(tmp, step)
    kill_point("checkpoint.after_manifest")
    _install(tmp, final)
    prune_checkpoints(run_dir, keep)
    return final


def _install(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` is moved aside first, deleted only after."""
    root = final.parent
    if not final.exists():
        os.replace(tmp, final)
        fsync_dir(root)
        return
    old = root / f".old-{final.name}-{os.getpid()}"
    os.replace(final, old)
    fsync_dir(root)
    kill_point("checkpoint.overwrite_moved_aside")
    os.replace(tmp, final)
    fsync_dir(root)
    kill_point("checkpoint.overwrite_renamed_in")
    shutil.rmtree(old)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete complete checkpoints beyond the newest `keep` (>= 1): the newest complete one stays."""
    if keep < 1:
        raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
    root = Path(run_dir) / "checkpoints"
    complete = [c for c in list_checkpoints(run_dir) if _problem(c, hashes=False) is None]
    for old in complete[:-keep]:
        trash = root / f".trash-{old.name}-{os.getpid()}"
        os.replace(old, trash)  # out of the listing at once; a kill mid-delete leaves only trash
        fsync_dir(root)
        kill_point("checkpoint.prune")
        shutil.rmtree(trash)


def _write_manifest(folder: Path, step: int) -> None:
    """fsync every file and folder, then write manifest.json (atomically) as the last file."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        files[path.relative_to(folder).as_posix()] = {
            "size": path.stat().st_size, "sha256": _sha256(path, sync=True)
        }  # fmt: skip
    for sub in sorted({p.parent for p in folder.rglob("*")} | {folder}):
        fsync_dir(sub)
    tmp = folder / f".{MANIFEST}.tmp"
    with tmp.open("w") as f:
        json.dump({"format": 1, "step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    fsync_dir(folder)


def _sha256(path: Path, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
        if sync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def verify_checkpoint(ckpt: Path, hashes: bool = True) -> None:
    """Raise IncompleteCheckpoint (no manifest) or CorruptCheckpoint (a file that does not match
    the manifest: missing, another size, another sha256), naming the file."""
    problem = _problem(Path(ckpt), hashes)
    if problem is not None:
        kind, why = problem
        raise kind(f"checkpoint {ckpt}: {why}")


def _problem(ckpt: Path, hashes: bool) -> tuple[type[CheckpointError], str] | None:
    if not (ckpt / MANIFEST).is_file():
        return IncompleteCheckpoint, f"no {MANIFEST}: its write never finished"
    try:
        files = json.loads((ckpt / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return CorruptCheckpoint, f"{MANIFEST} is unreadable ({e})"
    for rel, meta in files.items():
        path = ckpt / rel
        if not path.is_file():
            return CorruptCheckpoint, f"{rel} is missing (corrupt)"
        size = path.stat().st_size
        if size != meta["size"]:
            return (
                CorruptCheckpoint,
                f"{rel} is corrupt: {size} bytes, the manifest says {meta['size']}",
            )
        if hashes and _sha256(path) != meta["sha256"]:
            return CorruptCheckpoint, f"{rel} is corrupt: its sha256 differs from the manifest"
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Every `step-N` folder, oldest first (complete or not: see latest_checkpoint)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def checkpoint_step(ckpt: Path) -> int:
    return int(Path(ckpt).name[len(PREFIX) :])


def latest_checkpoint(run_dir: Path, *, say: Callable[[str], None] | None = None,
                      missing_ok: bool = False, verify: bool = True) -> Path | None:  # fmt: skip
    """The newest complete checkpoint, after cleaning up what interrupted saves left behind.

    Each skipped or repaired folder is reported through `say`. `verify` checks every file's
    sha256 (else sizes only). A corrupt checkpoint is set aside when an earlier complete one
    exists, else it raises CorruptCheckpoint. No checkpoint: None if `missing_ok`, else an error.
    """
    say = say or (lambda _: None)
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        _recover(root, say)
    corrupt: list[tuple[Path, str]] = []
    chosen = None
    for ckpt in reversed(list_checkpoints(run_dir)):
        problem = _problem(ckpt, hashes=verify)
        if problem is None:
            chosen = ckpt
            break
        kind, why = problem
        if kind is IncompleteCheckpoint:
            say(f"skipped {ckpt.name}: {why}; removed it")
            shutil.rmtree(ckpt)
        else:
            corrupt.append((ckpt, why))
    if corrupt and chosen is None:
        ckpt, why = corrupt[0]
        raise CorruptCheckpoint(f"checkpoint {ckpt}: {why}, and no earlier complete checkpoint")
    for ckpt, why in corrupt:
        aside = root / f".corrupt-{ckpt.name}-{int(time.time())}"
        os.replace(ckpt, aside)
        say(f"skipped {ckpt.name}: {why}; kept as {aside.name} (delete it when inspected), "
            f"resuming from {chosen.name}")  # fmt: skip
    if chosen is None and not missing_ok:
        raise CheckpointError(f"no complete checkpoint in {root}: start a new run without --resume")
    return chosen


def _recover(root: Path, say: Callable[[str], None]) -> None:
    """Finish or undo what a killed save left: see the module docstring."""
    for leftover in sorted(root.iterdir()):
        match = _LEFTOVER.match(leftover.name)
        if match is None or not leftover.is_dir():
            continue
        kind, name = match.groups()
        final = root / name
        # An .old- copy whose replacement never arrived is the only complete copy: put it back.
        replaced = _problem(final, hashes=False) is None
        if kind == "old" and not replaced and _problem(leftover, hashes=False) is None:
            if final.exists():
                shutil.rmtree(final)
            os.replace(leftover, final)
            fsync_dir(root)
            say(f"recovered {name} from {leftover.name} (its replacement never arrived)")
            continue
        shutil.rmtree(leftover)
        say(f"removed {leftover.name} (left by an interrupted save)")


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
