"""Plots and markdown of the length report (numbers: length_report.py)."""

from __future__ import annotations

import statistics
from pathlib import Path

from drgrpo.app.experiments.length_report import CURVES, DRIFTS, SMOOTH
from drgrpo.app.plot import series
from drgrpo.train.logging import read_metrics


def _smooth(values: list[float], width: int) -> list[float]:
    """Trailing moving average (per run, before the seed mean): per-step metrics are dominated
    by which prompts were drawn."""
    out = []
    for i in range(len(values)):
        part = values[max(0, i - width + 1) : i + 1]
        out.append(statistics.fmean(part))
    return out


def seed_band(runs: list[dict], preset: str, metric: str) -> tuple[list, list, list]:
    """steps, mean over seeds, std over seeds, on the steps every seed logged."""
    per_seed = []
    for run in (r for r in runs if r["preset"] == preset):
        steps, vals = series(read_metrics(run["dir"]), metric)
        pairs = [(s, v) for s, v in zip(steps, vals, strict=True) if v is not None]
        width = 1 if metric.startswith("eval/") else SMOOTH
        per_seed.append(dict(zip([s for s, _ in pairs], _smooth([v for _, v in pairs], width),
                                 strict=True)))  # fmt: skip
    common = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
    mean = [statistics.fmean(d[s] for d in per_seed) for s in common]
    std = [statistics.pstdev([d[s] for d in per_seed]) for s in common]
    return common, mean, std


def plot_setting(runs: list[dict], folder: Path, setting: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(dict.fromkeys(r["preset"] for r in runs))
    names = []
    for metric, label in CURVES.items():
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for preset in presets:
            steps, mean, std = seed_band(runs, preset, metric)
            if not steps:
                continue
            ax.plot(steps, mean, label=preset, linewidth=1.8,
                    marker="o" if metric.startswith("eval/") else None)  # fmt: skip
            ax.fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)],
                            [m + s for m, s in zip(mean, std, strict=True)], alpha=0.18)  # fmt: skip
        ax.set_title(f"{setting}: {label}", fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        name = f"{setting}_{metric.replace('/', '_')}.png"
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names


def _ci(stat: dict | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    if stat.get("lo") is None:
        return f"{stat['mean']:.{digits}g}"
    return f"{stat['mean']:.{digits}g} [{stat['lo']:.{digits}g}, {stat['hi']:.{digits}g}]"


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _test(t: dict) -> str:
    if t.get("p") is None:
        return "-"
    return f"{t['diff']:+.3g} [{t['lo']:+.3g}, {t['hi']:+.3g}], p = {t['p']:.3g}"


COLUMNS = {
    "base/accuracy": "base acc.",
    "eval/accuracy": "final acc.",
    "eval/len_incorrect": "final len. incorrect (held-out)",
    "eval/len_correct": "final len. correct (held-out)",
    "rollout/len_incorrect drift": "drift len. incorrect",
    "rollout/len_correct drift": "drift len. correct",
    "policy/long_wrong_penalty_ratio start": "penalty ratio start",
    "policy/long_wrong_penalty_ratio end": "penalty ratio end",
}


def render_setting(name: str, rep: dict, plots: list[str]) -> list[str]:
    size, window = rep["size"], rep["size"]["window"]
    lines = [f"## Setting `{name}`", "",
             f"{size['steps']} steps x {size['seeds']} seeds x {', '.join(size['presets'])}; "
             f"task options {rep['task_options']}.", "", "| preset | " + " | ".join(COLUMNS.values()) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]  # fmt: skip
    for preset, row in rep["table"].items():
        lines.append(f"| {preset} | " + " | ".join(_ci(row.get(c)) for c in COLUMNS) + " |")
    lines += ["", f"(mean [95% t interval] over seeds; drift = mean of the last {window} steps "
              f"minus the first {window}, training rollouts)", "",
              "Welch's test of the difference in drift (per-run drifts; difference [95%], p):",
              "", "| comparison | " + " | ".join(DRIFTS) + " |", "|---" * (len(DRIFTS) + 1) + "|"]  # fmt: skip
    for comp, tests in rep["tests"].items():
        lines.append(f"| {comp} | " + " | ".join(_test(tests[m]) for m in DRIFTS) + " |")
    lines += ["", "Plateau check (held-out accuracy change over the last 100 steps, 95%):", ""]
    for preset, p in rep["plateau"].items():
        if p:
            flat = "flat" if p["flat"] else "NOT flat"
            lines.append(f"- {preset}: {p['slope']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}] ({flat})")
    probe = rep.get("base_probe") or {}
    ratios = {k: v for k, v in probe.items() if k not in ("short_len", "long_len", "note") and v}
    if ratios:
        lines += ["", f"Base policy probe, per-token penalty on the longest third of wrong answers "
                  f"(~{probe['long_len']:.0f} tokens) over the shortest (~{probe['short_len']:.0f}): "
                  + ", ".join(f"{p} {r:.2f}x" for p, r in ratios.items())]  # fmt: skip
    sft = rep.get("sft_control")
    if sft:
        ev = sft.get("eval") or {}
        lines += ["", f"Control, continued SFT for a median RL run's wall time "
                  f"({sft.get('seconds', 0):.0f} s, {sft.get('steps')} steps): held-out accuracy "
                  f"{_num(ev.get('accuracy'), 3)}, length incorrect "
                  f"{_num(ev.get('len_incorrect'), 1)}, correct {_num(ev.get('len_correct'), 1)}."]  # fmt: skip
    walls = [r["wall_s"] for r in rep["runs"]]
    lines += ["", f"Runs: {len(walls)}, {statistics.fmean(walls):.0f} s each on average:"]
    lines += [f"- `{r['dir']}` ({r['preset']}, seed {r['seed']}, {r['wall_s']:.0f} s)"
              for r in rep["runs"]]  # fmt: skip
    return lines + [""] + [f"![{p}]({p})" for p in plots] + [""]


def render_markdown(report: dict, plots: dict) -> str:
    size = next(iter(report["settings"].values()))["size"]
    lines = ["# Length effect: long runs", "",
             f"KL off, {size['prompts_per_step']} prompts x {size['group_size']} samples per "
             f"step, held-out evaluation every {size['eval_every']} steps on "
             f"{size['eval_prompts']} prompts x 2; {report['jobs']} runs at a time, one thread "
             f"each; this invocation took {report['wall_s'] / 60:.1f} min (finished runs are "
             "reused; each run's own time is listed below).", ""]  # fmt: skip
    for name, rep in report["settings"].items():
        lines += render_setting(name, rep, plots.get(name, []))
    if report.get("mechanism"):
        lines += render_mechanism(report["mechanism"])
    return "\n".join(lines) + "\n"


def render_mechanism(mech: dict) -> list[str]:
    lines = ["## The mechanism test (app/experiments/length_toy.py)", "",
             "Length decided after the outcome; drift of mean length, last 50 minus first 50 "
             "steps (tokens), mean [95%] over seeds:", "",
             "| preset | wrong responses | right responses |", "|---|---|---|"]  # fmt: skip
    for preset, row in mech["table"].items():
        lines.append(f"| {preset} | {_ci(row['wrong'])} | {_ci(row['right'])} |")
    lines += ["", "| Welch | wrong | right |", "|---|---|---|"]
    for comp, t in mech["tests"].items():
        lines.append(f"| {comp} | {_test(t['wrong'])} | {_test(t['right'])} |")
    return lines + [""]
