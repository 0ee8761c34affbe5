"""PPO (a learned critic, `--preset ppo`) under torchrun: 2 gloo ranks with plain replication
against 1 process, 3 steps on the tiny model in float32, the scripted rollouts of
_train_worker.py (the same for every world size). The critic's gradients are summed over ranks
like the policy's, its loss sums and the advantages' batch_std whitening (and the explained
variance) are taken over the global batch.

Measured (torch 2.13 CPU): policy weights 1.8e-6 relative apart, critic weights 4.4e-5 (its
learning rate is 10x the policy's, 0.1, and it moves 34% in one step), value/loss and both
gradient norms <= 1.5e-5 per step: the float32 summation order (rank halves vs one batch).
A critic trained on each rank's half alone would move ~34% per step away from this.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_fsdp_train import NORM_RTOL, WEIGHT_RTOL, common, launch, relative, weights  # noqa: E402

CRITIC_RTOL = 10 * WEIGHT_RTOL
"""The critic's learning rate is 10x the policy's: the same float32 differences, 10x larger."""


@pytest.fixture(scope="module")
def ppo_runs(tiny_policy_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo")
    for name, ranks in (("one", 1), ("two", 2)):
        launch(ranks, "train", "--no-progress", "--preset", "ppo", *common(tiny_policy_dir),
               f"output_dir={root / name}", "steps=3", cwd=root)  # fmt: skip
    return root


def metric_rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "value/loss" in r]


def test_two_rank_ppo_equals_one_process(ppo_runs):
    one, two = ppo_runs / "one", ppo_runs / "two"
    assert relative(weights(two / "final"), weights(one / "final")) < WEIGHT_RTOL
    ckpt = Path("checkpoints") / "step-000003" / "critic.safetensors"
    critic_one, critic_two = load_file(str(one / ckpt)), load_file(str(two / ckpt))
    assert relative(critic_two, critic_one) < CRITIC_RTOL
    moved = relative(critic_one, load_file(str(one / "checkpoints/step-000002/critic.safetensors")))
    assert moved > 100 * CRITIC_RTOL  # the critic learns: the check above can fail
    want, got = metric_rows(one), metric_rows(two)
    assert len(want) == len(got) == 3
    for a, b in zip(want, got, strict=True):
        for key in ("value/loss", "value/grad_norm", "optim/grad_norm", "policy/loss"):
            assert b[key] == pytest.approx(a[key], rel=NORM_RTOL), (a["step"], key)
