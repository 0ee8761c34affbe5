"""The run folder's logs: metrics.jsonl (one line per step), samples.jsonl, reward_faults.jsonl,
optional TensorBoard. Values are logged from the very variables the step used.

Resume keeps the logs in step with the checkpoint: each checkpoint records every log's size at
save time (`RunLogger.sync`), and resuming cuts each log back to that size, so a row written
after the checkpoint (a later step, the final evaluation, a line torn by a kill) is dropped and
written again exactly once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from drgrpo.train.run_dir import kill_point, write_text_atomic

LOGS = ("metrics.jsonl", "samples.jsonl", "reward_faults.jsonl")


class RunLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = False, resume_step: int | None = None,
                 log_sizes: dict[str, int] | None = None) -> None:  # fmt: skip
        """`resume_step` None: a fresh run. Else a resume from that step (-1: from no checkpoint):
        each log is cut to its size in `log_sizes` (absent: deleted), or, for a checkpoint that did not
        record sizes, to the rows of steps <= resume_step."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_step is not None:
            for name in LOGS:
                path = self.run_dir / name
                if log_sizes is not None:
                    _truncate_to(path, log_sizes.get(name), resume_step)
                else:
                    _truncate_after(path, resume_step)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError(
                    "tensorboard=true needs TensorBoard: pip install 'drgrpo[tensorboard]'"
                ) from e
            # purge_step drops the events of steps >= it: those after the checkpoint's step.
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, metrics: dict) -> None:
        clean = {k: _jsonable(v) for k, v in metrics.items()}
        line = json.dumps({"step": step, **clean}) + "\n"
        kill_point("log.before")
        with self.metrics_path.open("a") as f:
            kill_point("log.mid_row", before=lambda: (f.write(line[: len(line) // 2]), f.flush()))
            f.write(line)
        kill_point("log.after")
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, int | float) and value is not None:
                    self._tb.add_scalar(key, value, step)

    def write_lines(self, name: str, step: int, records: list[dict]) -> None:
        with (self.run_dir / name).open("a") as f:
            for record in records:
                f.write(json.dumps({"step": step, **record}) + "\n")

    def sync(self) -> dict[str, int]:
        """Make every log durable and return each one's size in bytes (for the checkpoint)."""
        sizes = {}
        for name in LOGS:
            path = self.run_dir / name
            if path.is_file():
                with path.open("rb+") as f:
                    os.fsync(f.fileno())
                sizes[name] = path.stat().st_size
        if self._tb is not None:
            self._tb.flush()
        return sizes

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: is {run_dir} a drgrpo run folder?")
    return read_jsonl(path)


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines log. A torn last line (a kill mid-write) is left out; a bad line
    elsewhere is an error naming it."""
    text = Path(path).read_text()
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines):  # no newline after it: the write was cut short
                break
            raise ValueError(f"{path}:{i} is not a JSON line ({e}); the log is damaged") from e
    return rows


def _jsonable(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _truncate_to(path: Path, size: int | None, step: int) -> None:
    """Cut `path` back to `size` bytes; None: the log did not exist at the checkpoint."""
    if size is None:
        path.unlink(missing_ok=True)
        return
    if not path.is_file():
        if size:
            raise ValueError(
                f"{path} is missing, but the checkpoint of step {step} saw {size} bytes"
            )
        return
    actual = path.stat().st_size
    if actual < size:
        raise ValueError(
            f"{path} has {actual} bytes, fewer than the {size} it had when the checkpoint of step "
            f"{step} was saved: it was edited or lost. Move it away to resume without it."
        )
    os.truncate(path, size)


def _truncate_after(path: Path, step: int) -> None:
    """On resume from a checkpoint without log sizes, forget steps logged after it."""
    if not path.is_file():
        return
    keep = [json.dumps(row) for row in read_jsonl(path) if row["step"] <= step]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


class NullLogger:
    """The logger of ranks > 0 under torchrun: rank 0 alone writes the run folder's logs."""

    def log(self, step: int, metrics: dict) -> None:
        pass

    def write_lines(self, name: str, step: int, records: list[dict]) -> None:
        pass

    def sync(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass
