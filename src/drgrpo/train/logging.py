"""The run folder's logs: metrics.jsonl (one line per step), samples.jsonl, reward_faults.jsonl,
optional TensorBoard. Values are logged from the very variables the step used."""

from __future__ import annotations

import json
import math
from pathlib import Path


class RunLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = False, resume_step: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_step:
            _truncate_after(self.metrics_path, resume_step)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError(
                    "tensorboard=true needs TensorBoard: pip install 'drgrpo[tensorboard]'"
                ) from e
            self._tb = SummaryWriter(
                str(self.run_dir / "tensorboard"), purge_step=resume_step or None
            )

    def log(self, step: int, metrics: dict) -> None:
        clean = {k: _jsonable(v) for k, v in metrics.items()}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, int | float) and value is not None:
                    self._tb.add_scalar(key, value, step)

    def write_lines(self, name: str, step: int, records: list[dict]) -> None:
        with (self.run_dir / name).open("a") as f:
            for record in records:
                f.write(json.dumps({"step": step, **record}) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: is {run_dir} a drgrpo run folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _jsonable(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _truncate_after(path: Path, step: int) -> None:
    """On resume, forget steps logged after the checkpoint (they will be redone)."""
    if not path.is_file():
        return
    keep = [
        line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step
    ]
    path.write_text("".join(line + "\n" for line in keep))
