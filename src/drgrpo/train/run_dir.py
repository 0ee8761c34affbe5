"""The run folder's rules: one run per folder, atomic small files, and a test hook for crashes.

- A fresh run refuses a folder that holds an earlier run (`--resume` continues it, `--overwrite`
  clears it), so logs never mix two runs.
- `--resume` continues from the newest complete checkpoint (or from step 0 when none was
  written); a run that already finished is reported, not redone.
- Ctrl-C lands between steps (`InterruptGuard`): a checkpoint saved on interrupt never holds
  half a step.
- Small files (config.json, summary.json) are replaced atomically: a kill leaves the old or the
  new content, never half of one.

Test hook: DRGRPO_KILL_AT="point:N" makes the process SIGKILL itself the N-th time (default 1)
it reaches `kill_point("point")`. Points: checkpoint.after_model, checkpoint.after_optimizer,
checkpoint.before_manifest, checkpoint.after_manifest, checkpoint.overwrite_moved_aside,
checkpoint.overwrite_renamed_in, checkpoint.prune, log.before, log.mid_row, log.after.
It exists for the crash tests (tests/train/test_kill.py); it is inert when the variable is unset.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KILL_ENV = "DRGRPO_KILL_AT"
_reached: dict[str, int] = {}
# What a run writes; --overwrite deletes these and nothing else (a user's own files stay).
RUN_FILES = ("config.json", "metrics.jsonl", "samples.jsonl", "reward_faults.jsonl",
             "summary.json", "checkpoints", "tensorboard", "plots", "final",
             "vllm_init")  # fmt: skip
# Any of these means the folder holds a run that a fresh start would mix with.
_EARLIER_RUN = ("metrics.jsonl", "summary.json", "checkpoints")


class RunDirError(ValueError):
    """A run folder that cannot be used as asked (an earlier run in the way, bad flags)."""


def kill_point(name: str, before: Callable[[], None] | None = None) -> None:
    """Test hook: SIGKILL this process at `name` when DRGRPO_KILL_AT asks for it (see above).

    `before` runs just before the kill (e.g. to write half a log line)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(nth or 1):
        if before is not None:
            before()
        _die()


def _die() -> None:  # a seam: unit tests replace it with an exception raised at the same place
    os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (POSIX: the folder itself must be synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` so that a crash leaves the old or the new file, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def holds_run(run_dir: Path) -> list[str]:
    """The names in `run_dir` that show an earlier run (empty when the folder is free)."""
    run_dir = Path(run_dir)
    return [name for name in _EARLIER_RUN if (run_dir / name).exists()]


def clear_run(run_dir: Path) -> None:
    """Delete what a run wrote in `run_dir` (RUN_FILES), leaving anything else alone."""
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


@dataclass
class Start:
    """Where a session starts: `checkpoint` None means step 0; `finished` is the summary of a run
    that has nothing left to do."""

    checkpoint: Path | None
    finished: dict | None = None


def open_run_dir(run_dir: str | Path, *, steps: int, resume: bool, overwrite: bool,
                 say: Callable[[str], None] = print) -> Start:  # fmt: skip
    """Apply the run-folder rules before a session builds anything (see the module docstring)."""
    from drgrpo.train.checkpoint import checkpoint_step, latest_checkpoint

    run_dir = Path(run_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other: choose one")
    if not resume:
        found = holds_run(run_dir)
        if found and not overwrite:
            raise RunDirError(
                f"{run_dir} already holds a run ({', '.join(found)}): continue it with "
                f"`drgrpo train --resume {run_dir}`, start it again with --overwrite, or choose "
                "another output_dir"
            )
        if found:
            say(f"--overwrite: clearing the earlier run in {run_dir}")
            clear_run(run_dir)
        return Start(checkpoint=None)
    ckpt = latest_checkpoint(run_dir, say=say, missing_ok=True, verify=False)
    summary = _read_summary(run_dir / "summary.json")
    if ckpt is not None and checkpoint_step(ckpt) == steps and summary.get("steps") == steps:
        say(f"{run_dir}: the run already finished ({steps} steps, summary.json written); "
            "nothing to do")  # fmt: skip
        return Start(checkpoint=ckpt, finished=summary)
    if (run_dir / "summary.json").exists():  # the run goes on: its old summary is stale
        (run_dir / "summary.json").unlink()
    if ckpt is None:
        say(f"{run_dir}: no complete checkpoint; the run starts again from step 0")
    return Start(checkpoint=ckpt)


def _read_summary(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


class InterruptGuard:
    """Hold a Ctrl-C (SIGINT) until the current step is over, so that the checkpoint saved on
    interrupt holds whole steps only (an optimizer update, data position and RNG of one step).

    `check()` raises KeyboardInterrupt at a step boundary if Ctrl-C was pressed, and so does
    leaving the block. A second Ctrl-C ends the process at once without a checkpoint, which the
    run survives like a kill. Outside the main thread (where signals cannot be caught) it does
    nothing.
    """

    def __init__(self, say: Callable[[str], None] = print) -> None:
        self.say = say
        self.requested = False
        self._previous = None

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            self.say("second Ctrl-C: stopping now; --resume continues from the last checkpoint")
            os._exit(130)
        self.requested = True
        self.say("Ctrl-C: finishing this step, then saving a checkpoint (Ctrl-C again: stop now)")

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        if exc_type is None:
            self.check()
