"""Two ranks through the trainer's own update (`drgrpo.train.update.run_updates`): each rank
holds half of a fixed batch (whole groups); rank 0 writes the parameters after the update and
the logged totals. `torchrun --nproc-per-node 2 _update_worker.py OUT_DIR MODE`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from drgrpo.config import OptimConfig  # noqa: E402
from drgrpo.objective import resolve_objective  # noqa: E402
from drgrpo.train import distributed as D  # noqa: E402
from drgrpo.train.update import run_updates  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train.test_update import random_batch, tiny_model  # noqa: E402

AGGREGATIONS = {"seq_mean_token_mean": "num_sequences", "token_mean": "num_sequences",
                "constant": "num_sequences", "constant_lmax": "num_sequences_x_max_tokens"}  # fmt: skip


def update(batch, mode: str, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    aggregation = "constant" if mode == "constant_lmax" else mode
    spec = resolve_objective("dr_grpo", aggregation=aggregation,
                             constant_normalizer=AGGREGATIONS[mode], kl_coef=0.1)  # fmt: skip
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    optim = OptimConfig(updates_per_rollout=2, mini_batches=1, micro_batch_size=2,
                        max_grad_norm=0.0)  # fmt: skip
    totals = run_updates(model, opt, sched, batch, spec, optim, max_tokens=7, temperature=1.0,
                         generator=torch.Generator().manual_seed(seed), group_size=2)  # fmt: skip
    return model, totals


def main(out: Path, mode: str) -> None:
    w = D.init_distributed(timeout_s=120)
    batch = random_batch(n=8)  # 4 groups of 2; the same on every rank (seeded)
    rows = torch.arange(w.rank * 4, w.rank * 4 + 4)
    model, totals = update(batch.select(rows), mode)
    if w.is_main:
        torch.save({n: p.detach() for n, p in model.named_parameters()}, out / f"{mode}.pt")
        (out / f"{mode}.json").write_text(json.dumps(totals))
    D.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
