"""The report of `drgrpo experiment length`: curves with seed bands, final values with 95%
confidence intervals, the per-token penalty ratio over training, a plateau check, and Welch's
test of the difference in drift between presets. Every number is read from the run folders'
metrics.jsonl / summary.json, which results.json names.

Statistics (scipy.stats, the `stats` extra): a run is one observation (seeds are the
replicates; steps of one run are not independent). Intervals are Student t over seeds; the drift
test is Welch's unequal-variance t-test (Welch 1947) on per-run drifts.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from drgrpo.app.plot import series
from drgrpo.train.logging import read_metrics

CURVES = {
    "rollout/len_incorrect": "length of incorrect responses (tokens, training rollouts)",
    "rollout/len_correct": "length of correct responses (tokens, training rollouts)",
    "eval/accuracy": "held-out accuracy (sampled)",
    "eval/len_incorrect": "length of incorrect responses (tokens, held-out)",
    "policy/long_wrong_penalty_ratio": "per-token penalty, longest / shortest third of wrong",
    "rollout/len_gap_wrong_correct": "wrong minus correct length inside a group (tokens)",
}
DRIFTS = ("rollout/len_incorrect", "rollout/len_correct", "policy/long_wrong_penalty_ratio")
SMOOTH = 15  # steps in the moving average of a per-step curve (plots only)


def _stats():
    try:
        from scipy import stats
    except ImportError as e:  # pragma: no cover - the extra is in dev
        raise ImportError(
            "the length report needs scipy for its intervals and tests: pip install 'drgrpo[stats]'"
        ) from e
    return stats


def t_interval(values: list[float], level: float = 0.95) -> dict:
    """mean, and the Student-t interval over independent replicates (n - 1 degrees of freedom)."""
    vals = [v for v in values if v is not None]
    n = len(vals)
    mean = statistics.fmean(vals) if vals else None
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": n}
    half = float(_stats().t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(vals) / n**0.5
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def welch(a: list[float], b: list[float]) -> dict:
    """Welch's t-test of mean(a) - mean(b), with the difference's 95% interval (Welch-
    Satterthwaite degrees of freedom)."""
    stats = _stats()
    a, b = [x for x in a if x is not None], [x for x in b if x is not None]
    if len(a) < 2 or len(b) < 2:
        return {"diff": None, "p": None}
    res = stats.ttest_ind(a, b, equal_var=False)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb else 1.0
    half = float(stats.t.ppf(0.975, df)) * (va + vb) ** 0.5
    return {"diff": diff, "lo": diff - half, "hi": diff + half, "t": float(res.statistic),
            "df": df, "p": float(res.pvalue)}  # fmt: skip


def slope_interval(xs: list[float], ys: list[float]) -> dict:
    """OLS slope of ys on xs with its 95% interval (scipy.stats.linregress' standard error)."""
    if len(set(xs)) < 3:
        return {"slope": None}
    fit = _stats().linregress(xs, ys)
    slope, half = float(fit.slope), float(_stats().t.ppf(0.975, len(xs) - 2) * fit.stderr)
    return {"slope": slope, "lo": slope - half, "hi": slope + half}


def run_drifts(run_dir: str, window: int) -> dict:
    """Per run: each drift metric's mean over the first and the last `window` steps, and the
    final held-out evaluation."""
    rows = read_metrics(run_dir)
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    out = {"eval/accuracy": summary["final_accuracy"], "base/accuracy": summary["base_accuracy"],
           "eval/len_incorrect": summary["final"].get("len_incorrect"),
           "eval/len_correct": summary["final"].get("len_correct"),
           "base/len_incorrect": summary["base"].get("len_incorrect")}  # fmt: skip
    for metric in DRIFTS:
        vals = [v for v in series(rows, metric)[1] if v is not None]
        start = statistics.fmean(vals[:window]) if vals else None
        end = statistics.fmean(vals[-window:]) if vals else None
        out[f"{metric} start"], out[f"{metric} end"] = start, end
        out[f"{metric} drift"] = end - start if vals else None
    return out


def plateau(runs: list[dict], steps: int, span: int = 100) -> dict:
    """{preset: change of held-out accuracy over the last `span` steps (OLS slope x span, every
    seed's evaluations pooled), with its 95% interval}: flat when the interval holds 0."""
    out = {}
    for preset in dict.fromkeys(r["preset"] for r in runs):
        xs, ys = [], []
        for run in (r for r in runs if r["preset"] == preset):
            for step, acc in zip(*series(read_metrics(run["dir"]), "eval/accuracy"), strict=True):
                if step >= steps - span:
                    xs.append(float(step)), ys.append(acc)
        fit = slope_interval(xs, ys)
        if fit["slope"] is None:
            out[preset] = None
            continue
        change = {k: v * span for k, v in fit.items()}
        change["flat"] = bool(change["lo"] <= 0 <= change["hi"])
        out[preset] = change
    return out


def setting_summary(result: dict, size: dict) -> dict:
    runs = result["runs"]
    per_run = {r["dir"]: run_drifts(r["dir"], size["window"]) for r in runs}
    presets = list(dict.fromkeys(r["preset"] for r in runs))
    by = {p: [per_run[r["dir"]] for r in runs if r["preset"] == p] for p in presets}
    keys = next(iter(per_run.values())).keys()
    table = {p: {k: t_interval([d[k] for d in by[p]]) for k in keys} for p in presets}
    tests = {}
    for other in (p for p in presets if p != "grpo"):
        if "grpo" in by:
            tests[f"grpo - {other}"] = {
                m: welch(
                    [d[f"{m} drift"] for d in by["grpo"]], [d[f"{m} drift"] for d in by[other]]
                )
                for m in DRIFTS
            }
    return {"per_run": per_run, "table": table, "tests": tests,
            "plateau": plateau(runs, size["steps"], min(100, size["steps"] // 3 or 1))}  # fmt: skip


def toy_tests(toy: dict) -> dict:
    """The mechanism test's drifts: {preset: {side: interval}}, and Welch's grpo - other."""
    table = {p: {side: t_interval(v) for side, v in d.items()} for p, d in toy.items()}
    tests = {f"grpo - {p}": {side: welch(toy["grpo"][side], toy[p][side]) for side in toy[p]}
             for p in toy if p != "grpo" and "grpo" in toy}  # fmt: skip
    return {"drifts": toy, "table": table, "tests": tests}


def write_length_report(output: Path, results: dict, *, jobs: int, wall_s: float,
                        toy: dict | None = None) -> dict:  # fmt: skip
    from drgrpo.app.experiments.length_render import plot_setting, render_markdown

    folder = Path(output) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    report = {"jobs": jobs, "wall_s": round(wall_s, 1), "settings": {},
              "mechanism": toy_tests(toy) if toy else None}  # fmt: skip
    for setting, result in results.items():
        report["settings"][setting] = {**result, **setting_summary(result, result["size"])}
    # The numbers first: a missing plotting extra must not lose an experiment's results.
    (folder / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    plots = {}
    for setting, result in results.items():
        try:
            plots[setting] = plot_setting(result["runs"], folder, setting)
        except ImportError:
            plots[setting] = []
    (folder / "summary.md").write_text(render_markdown(report, plots))
    return report
