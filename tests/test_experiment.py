"""`drgrpo experiment lineage` at a tiny size: the machinery, the knobs, and the report's sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drgrpo.cli import main
from drgrpo.experiments.report import final_values


@pytest.fixture(scope="module")
def lineage_report(tiny_policy_dir, tmp_path_factory, dense_reward_module):
    out = tmp_path_factory.mktemp("lineage")
    rc = main(["experiment", "lineage", "--quick", "--presets", "grpo,dr_grpo", "--seeds", "1",
               "--steps", "2", "--no-control", "--output", str(out), f"model.base={tiny_policy_dir}",
               "rollout.prompts_per_step=2", "rollout.group_size=3", "rollout.max_new_tokens=8",
               "eval.num_prompts=2", "eval.num_samples=1", "eval.ks=[1]", "optim.lr=1e-2"])  # fmt: skip
    assert rc == 0
    return out


def test_each_preset_ran_with_its_own_knobs(lineage_report):
    grpo = json.loads((lineage_report / "runs" / "grpo-s0" / "config.json").read_text())[
        "objective"
    ]
    dr = json.loads((lineage_report / "runs" / "dr_grpo-s0" / "config.json").read_text())[
        "objective"
    ]
    assert (grpo["scale"], grpo["aggregation"]) == ("group_std", "seq_mean_token_mean")
    assert (dr["scale"], dr["aggregation"]) == ("none", "constant")
    assert grpo["kl_coef"] == dr["kl_coef"] == 0.0  # the ablation holds KL fixed
    # Everything but the objective is the same between the two runs.
    a = json.loads((lineage_report / "runs" / "grpo-s0" / "config.json").read_text())
    b = json.loads((lineage_report / "runs" / "dr_grpo-s0" / "config.json").read_text())
    for section in ("task", "rollout", "optim", "eval", "model"):
        assert a[section] == b[section], section


def test_report_table_is_computed_from_the_metrics_it_names(lineage_report):
    report = lineage_report / "report"
    result = json.loads((report / "results.json").read_text())
    summary = (report / "summary.md").read_text()
    for run in result["runs"]:
        assert f"`{run['dir']}`" in summary  # the report names its sources
        recomputed = final_values(run["dir"])
        table = result["final"][run["preset"]]
        for metric, value in recomputed.items():
            assert (
                table[metric]["mean"] == pytest.approx(value)
                if value is not None
                else table[metric]["mean"] is None
            )
        rows = [
            json.loads(x) for x in (Path(run["dir"]) / "metrics.jsonl").read_text().splitlines()
        ]
        last = [r["reward/mean"] for r in rows if "reward/mean" in r]
        assert table["reward/mean"]["mean"] == pytest.approx(sum(last) / len(last))
    for name in ("eval_accuracy.png", "rollout_len_incorrect.png", "policy_kl.png"):
        assert (report / name).is_file()
    ratios = result["length_penalty_ratio"]
    assert set(ratios) >= {"note"} or {"grpo", "dr_grpo"} <= set(ratios)
