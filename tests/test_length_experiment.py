"""`drgrpo experiment length`: its statistics by hand, and the machinery end to end at a tiny
size (runs in a spawned process pool, report recomputed from the files it names)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drgrpo.app.cli import main
from drgrpo.app.experiments.length_report import (
    plateau,
    run_drifts,
    slope_interval,
    t_interval,
    welch,
)

T_975_DF2 = 4.302652729911275  # Student t quantile, 97.5%, 2 degrees of freedom (tables)


def test_t_interval_by_hand():
    # mean 2, sd 1, n 3: half width t_{.975,2} * 1 / sqrt(3)
    ci = t_interval([1.0, 2.0, 3.0])
    half = T_975_DF2 / 3**0.5
    assert ci == pytest.approx({"mean": 2.0, "lo": 2.0 - half, "hi": 2.0 + half, "n": 3})
    assert t_interval([5.0, None]) == {"mean": 5.0, "lo": None, "hi": None, "n": 1}


def test_welch_by_hand():
    # a = 1,2,3 and b = 4,5,6: variances 1, se = sqrt(1/3 + 1/3), t = -3 / se = -3.674;
    # Welch-Satterthwaite df = (2/3)^2 / ((1/3)^2/2 + (1/3)^2/2) = 4; two-sided p(|t4| > 3.674)
    out = welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert out["diff"] == pytest.approx(-3.0)
    assert out["t"] == pytest.approx(-3 / (2 / 3) ** 0.5)
    assert out["df"] == pytest.approx(4.0)
    assert out["p"] == pytest.approx(0.021311, abs=1e-6)
    assert out["lo"] < -3.0 < out["hi"] < 0  # the interval excludes 0 when p < 0.05
    assert welch([1.0], [2.0, 3.0]) == {"diff": None, "p": None}


def test_slope_interval_of_an_exact_line_has_no_width():
    fit = slope_interval([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0])
    assert fit["slope"] == pytest.approx(2.0) and fit["lo"] == pytest.approx(fit["hi"])


def _fake_run(folder: Path, evals: dict[int, float], lengths: list[float]) -> dict:
    folder.mkdir(parents=True)
    rows = [{"step": i + 1, "rollout/len_incorrect": v, "rollout/len_correct": 20.0}
            for i, v in enumerate(lengths)]  # fmt: skip
    rows += [{"step": s, "eval/accuracy": a} for s, a in evals.items()]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final = {"len_incorrect": 50.0, "len_correct": 30.0}
    (folder / "summary.json").write_text(json.dumps(
        {"final_accuracy": 0.7, "base_accuracy": 0.4, "final": final, "base": final}))  # fmt: skip
    return {"dir": str(folder), "preset": folder.name.split("-")[0]}


def test_drift_and_plateau_from_the_files(tmp_path):
    flat = {s: 0.6 + 0.01 * (s % 2) for s in range(0, 301, 25)}  # noise around 0.6
    rising = {s: 0.3 + 0.001 * s for s in range(0, 301, 25)}
    runs = [_fake_run(tmp_path / f"grpo-s{i}", flat, [40.0 + i] * 10 + [50.0] * 10) for i in (0, 1)]
    runs += [_fake_run(tmp_path / "dapo-s0", rising, [40.0] * 20)]
    drift = run_drifts(runs[0]["dir"], window=5)
    assert drift["rollout/len_incorrect drift"] == pytest.approx(10.0)  # 50 - 40
    assert drift["policy/long_wrong_penalty_ratio drift"] is None  # not logged by these runs
    out = plateau(runs, steps=300, span=100)
    assert out["grpo"]["flat"] and abs(out["grpo"]["slope"]) < 0.01
    assert not out["dapo"]["flat"] and out["dapo"]["slope"] == pytest.approx(0.1)


def test_cli_runs_the_pool_and_reports_from_the_runs(tiny_policy_dir, tmp_path):
    out = tmp_path / "length"
    rc = main(["experiment", "length", "--quick", "--settings", "main", "--presets",
               "grpo,dr_grpo", "--seeds", "2", "--steps", "2", "--jobs", "2", "--no-control",
               "--output", str(out), f"model.base={tiny_policy_dir}", "rollout.prompts_per_step=2",
               "rollout.group_size=3", "rollout.max_new_tokens=8", "eval.num_prompts=2",
               "eval.num_samples=1", "eval.ks=[1]"])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report" / "results.json").read_text())
    main_setting = report["settings"]["main"]
    dirs = [r["dir"] for r in main_setting["runs"]]
    assert len(dirs) == 4 and len(set(dirs)) == 4
    for run in main_setting["runs"]:  # the table is the files' numbers
        assert main_setting["per_run"][run["dir"]] == run_drifts(
            run["dir"], main_setting["size"]["window"]
        )
        cfg = json.loads((Path(run["dir"]) / "config.json").read_text())
        assert cfg["objective"]["kl_coef"] == 0.0 and cfg["seed"] == run["seed"]
        assert cfg["task"]["options"] == {"recheck_prob": 0.5}
    a, b = (json.loads((Path(d) / "config.json").read_text()) for d in dirs[:3:2])  # grpo, dr
    assert (a["objective"]["aggregation"], b["objective"]["aggregation"]) == (
        "seq_mean_token_mean", "constant")  # fmt: skip
    for section in ("task", "rollout", "optim", "eval", "model"):
        assert a[section] == b[section], section
    summary = (out / "report" / "summary.md").read_text()
    assert all(f"`{d}`" in summary for d in dirs)
    assert "grpo - dr_grpo" in summary
    # a second call finds every run finished and trains nothing
    assert main(["experiment", "length", "--quick", "--settings", "main", "--presets",
                 "grpo,dr_grpo", "--seeds", "2", "--steps", "2", "--no-control", "--output",
                 str(out), f"model.base={tiny_policy_dir}", "rollout.prompts_per_step=2",
                 "rollout.group_size=3", "rollout.max_new_tokens=8", "eval.num_prompts=2",
                 "eval.num_samples=1", "eval.ks=[1]"]) == 0  # fmt: skip
    again = json.loads((out / "report" / "results.json").read_text())["settings"]["main"]
    assert [r["wall_s"] for r in again["runs"]] == [r["wall_s"] for r in main_setting["runs"]]


def test_setting_sizes():
    from drgrpo.app.experiments.length import setting_size

    main_size, slip = setting_size("main", False, None, None, None), setting_size(
        "slip", False, None, None, None)  # fmt: skip
    assert (main_size.presets, main_size.seeds, main_size.steps) == (
        ("grpo", "dr_grpo", "dapo"), 3, 500)  # fmt: skip
    assert (slip.presets, slip.steps, slip.window) == (("grpo", "dr_grpo"), 200, 50)
    chosen = setting_size("slip", False, ["dapo"], 4, 90)  # the command line wins
    assert (chosen.presets, chosen.seeds, chosen.steps, chosen.window) == (("dapo",), 4, 90, 30)


def test_statistics_are_plain_json_numbers(tmp_path):
    # scipy returns numpy scalars; results.json must hold plain floats and bools
    flat = {s: 0.6 + 0.01 * (s % 2) for s in range(0, 301, 25)}
    runs = [_fake_run(tmp_path / f"grpo-s{i}", flat, [40.0] * 20) for i in (0, 1)]
    out = {"plateau": plateau(runs, 300), "ci": t_interval([1.0, 2.0]), "w": welch([1, 2], [3, 5])}
    assert json.loads(json.dumps(out)) == out


def test_the_toy_shows_the_mechanism_under_grpo_only():
    # Length decided after the outcome (length_toy.py): the doc's derivation says GRPO's
    # 1/|y_i| lengthens wrong and shortens right responses, while a constant (Dr.GRPO) or
    # batch-wide (DAPO) normalizer leaves them alone in expectation. Measured at this size:
    # grpo wrong +13.8 to +13.9, right -3.0 to -3.3; dr_grpo wrong 0.2 to 4.1; dapo -0.5 to 1.1.
    from drgrpo.app.experiments.length_toy import toy_summary

    out = toy_summary(seeds=3)
    assert min(out["grpo"]["wrong"]) > 8.0 and max(out["grpo"]["right"]) < -1.5
    for preset in ("dr_grpo", "dapo"):
        wrong = sum(out[preset]["wrong"]) / 3
        assert abs(wrong) < min(out["grpo"]["wrong"]) / 2, (preset, out[preset])
