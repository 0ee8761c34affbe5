"""`drgrpo experiment lineage` at a tiny size: the machinery, the knobs, and the report's sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drgrpo.app.cli import main
from drgrpo.app.experiments.report import final_values


@pytest.fixture(scope="module")
def lineage_report(tiny_policy_dir, tmp_path_factory, dense_reward_module):
    out = tmp_path_factory.mktemp("lineage")
    rc = main(["experiment", "lineage", "--quick", "--presets", "grpo,dr_grpo,ppo", "--seeds", "1",
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
    # ppo (a learned critic) is a row of the report like the others, with its critic's column
    assert "| ppo |" in summary
    assert result["final"]["ppo"]["value/explained_variance"]["mean"] is not None
    assert result["final"]["grpo"]["value/explained_variance"]["mean"] is None
    ratios = result["length_penalty_ratio"]
    assert set(ratios) >= {"note"} or {"grpo", "dr_grpo"} <= set(ratios)


def _fake_run(folder: Path, rewards: list[float]) -> Path:
    folder.mkdir(parents=True)
    rows = [{"step": i + 1, "reward/mean": r, "policy/kl": None} for i, r in enumerate(rewards)]
    rows.insert(3, {"step": 3, "eval/accuracy": 0.5})  # an eval row has no per-step metrics
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "summary.json").write_text(json.dumps({"final_accuracy": 0.7, "base_accuracy": 0.4}))
    return folder


def test_final_values_average_the_first_and_last_window(tmp_path):
    rewards = [float(i) for i in range(12)]  # longer than two windows of FINAL_WINDOW=5
    values = final_values(str(_fake_run(tmp_path / "run", rewards)))
    assert values["reward/mean (start)"] == pytest.approx(2.0)  # mean of 0..4
    assert values["reward/mean"] == pytest.approx(9.0)  # mean of 7..11
    assert values["policy/kl"] is None and values["policy/kl (start)"] is None
    assert (values["eval/accuracy"], values["base accuracy"]) == (0.7, 0.4)


def test_the_report_keeps_its_numbers_without_matplotlib(tmp_path, monkeypatch):
    from drgrpo.app.experiments import report

    def no_matplotlib(*args, **kwargs):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(report, "plot_curves", no_matplotlib)
    run = _fake_run(tmp_path / "runs" / "grpo-s0", [0.1, 0.2, 0.3])
    runs = [{"preset": "grpo", "seed": 0, "dir": str(run)}]
    report.write_report(tmp_path, runs, penalty={"note": "n/a"}, sft_control=None, size={})
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert saved["final"]["grpo"]["reward/mean"]["mean"] == pytest.approx(0.2)
    assert "pip install 'drgrpo[plot]'" in (tmp_path / "report" / "summary.md").read_text()
