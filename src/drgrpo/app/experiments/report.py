"""The lineage report: one plot per metric (one curve per preset, mean over seeds, min-max band),
a table of final values with their spread across seeds, and a markdown summary. Every number is
read from the run folders' metrics.jsonl / summary.json files, which the report names."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from drgrpo.app.plot import series
from drgrpo.train.logging import read_metrics

METRICS = {
    "eval/accuracy": "held-out accuracy (sampled)",
    "rollout/len_correct": "mean length of correct responses (tokens)",
    "rollout/len_incorrect": "mean length of incorrect responses (tokens)",
    "reward/mean": "reward (train)",
    "policy/kl": "KL to the base policy (per token)",
}
FINAL_WINDOW = 5  # steps averaged for the "final" value of a noisy per-step metric


def curves(runs: list[dict]) -> dict:
    """{metric: {preset: {step: [value per seed]}}} from each run's metrics.jsonl."""
    out: dict = {m: {} for m in METRICS}
    for run in runs:
        rows = read_metrics(run["dir"])
        for metric in METRICS:
            by_step = out[metric].setdefault(run["preset"], {})
            for step, value in zip(*series(rows, metric), strict=True):
                by_step.setdefault(step, []).append(value)
    return out


def final_values(run_dir: str) -> dict:
    rows = read_metrics(run_dir)
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    out = {"eval/accuracy": summary["final_accuracy"], "base accuracy": summary["base_accuracy"]}
    for metric in (
        "rollout/len_correct",
        "rollout/len_incorrect",
        "reward/mean",
        "policy/kl",
        "value/explained_variance",
    ):  # the last: ppo's critic only (else "-")
        values = series(rows, metric)[1]
        out[metric] = statistics.fmean(values[-FINAL_WINDOW:]) if values else None
        out[metric + " (start)"] = statistics.fmean(values[:FINAL_WINDOW]) if values else None
    return out


def table(runs: list[dict]) -> dict:
    """{preset: {metric: (mean, std, n)}} over seeds."""
    by_preset: dict = {}
    for run in runs:
        for metric, value in final_values(run["dir"]).items():
            by_preset.setdefault(run["preset"], {}).setdefault(metric, []).append(value)
    out = {}
    for preset, metrics in by_preset.items():
        out[preset] = {}
        for metric, values in metrics.items():
            vals = [v for v in values if v is not None]
            mean = statistics.fmean(vals) if vals else None
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            out[preset][metric] = {"mean": mean, "std": std, "n": len(vals)}
    return out


def plot_curves(data: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for metric, label in METRICS.items():
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for preset, by_step in data[metric].items():
            steps = sorted(by_step)
            mean = [statistics.fmean(by_step[s]) for s in steps]
            ax.plot(
                steps, mean, label=preset, linewidth=1.8, marker="o" if "eval" in metric else None
            )
            ax.fill_between(
                steps,
                [min(by_step[s]) for s in steps],
                [max(by_step[s]) for s in steps],
                alpha=0.15,
            )
        ax.set_title(label)
        ax.set_xlabel("RL step")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a metric no run logged has nothing to label
            ax.legend(fontsize=8)
        name = metric.replace("/", "_") + ".png"
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names


def write_report(output: Path, runs: list[dict], *, penalty: dict, sft_control: dict | None,
                 size: dict) -> dict:  # fmt: skip
    folder = Path(output) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    result = {"size": size, "runs": runs, "final": table(runs), "length_penalty_ratio": penalty,
              "sft_control": _sft_row(sft_control)}  # fmt: skip
    # The numbers first: a missing plotting extra must not lose an experiment's results.
    (folder / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    try:
        plots = plot_curves(curves(runs), folder)
    except ImportError:
        plots = []
    (folder / "summary.md").write_text(render_markdown(result, plots))
    return result


def _sft_row(sft: dict | None) -> dict | None:
    if not sft:
        return None
    ev = sft.get("eval") or {}
    return {"accuracy": ev.get("accuracy"), "greedy_accuracy": ev.get("greedy_accuracy"),
            "len_correct": ev.get("len_correct"), "len_incorrect": ev.get("len_incorrect"),
            "seconds": sft.get("seconds"), "steps": sft.get("steps")}  # fmt: skip


def _cell(stat: dict | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return (
        f"{stat['mean']:.{digits}g} ± {stat['std']:.2g}"
        if stat["n"] > 1
        else f"{stat['mean']:.{digits}g}"
    )


def render_markdown(result: dict, plots: list[str]) -> str:
    final = result["final"]
    cols = ["base accuracy", "eval/accuracy", "rollout/len_correct (start)", "rollout/len_correct",
            "rollout/len_incorrect (start)", "rollout/len_incorrect", "reward/mean", "policy/kl",
            "value/explained_variance"]  # fmt: skip
    lines = ["# Lineage ablation", "",
             "Final values (mean ± std over seeds; per-step metrics averaged over the first / last "
             f"{FINAL_WINDOW} steps). Source: each run's `metrics.jsonl` and `summary.json`:", ""]  # fmt: skip
    lines += [f"- `{r['dir']}` ({r['preset']}, seed {r['seed']})" for r in result["runs"]]
    lines += ["", "| preset | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for preset, metrics in final.items():
        lines.append(f"| {preset} | " + " | ".join(_cell(metrics.get(c)) for c in cols) + " |")
    sft = result.get("sft_control")
    if sft:
        lines += ["", f"Control, continued SFT for the same wall time ({sft.get('seconds') or 0:.0f} s, "
                  f"{sft.get('steps')} steps): held-out accuracy {sft.get('accuracy')}, greedy "
                  f"{sft.get('greedy_accuracy')}, length correct {sft.get('len_correct')}, "
                  f"incorrect {sft.get('len_incorrect')}."]  # fmt: skip
    lines += ["", "## What the numbers show", ""] + _observations(
        final, result["length_penalty_ratio"]
    )
    lines += ["", "## Plots", ""] + (
        [f"![{p}]({p})" for p in plots] or ["(none: pip install 'drgrpo[plot]' for matplotlib)"]
    )
    return "\n".join(lines) + "\n"


def _observations(final: dict, penalty: dict) -> list[str]:
    out = []
    acc = {
        p: m["eval/accuracy"]["mean"]
        for p, m in final.items()
        if m["eval/accuracy"]["mean"] is not None
    }
    if acc:
        best = max(acc, key=acc.get)
        out.append(f"- Highest final held-out accuracy: {best} ({acc[best]:.3f}); "
                   + ", ".join(f"{p} {a:.3f}" for p, a in sorted(acc.items(), key=lambda x: -x[1])) + ".")  # fmt: skip
    for preset, m in final.items():
        start, end = m["rollout/len_incorrect (start)"]["mean"], m["rollout/len_incorrect"]["mean"]
        if start is not None and end is not None:
            out.append(f"- {preset}: incorrect responses went from {start:.1f} to {end:.1f} tokens "
                       f"({end - start:+.1f}).")  # fmt: skip
    ratios = {p: r for p, r in penalty.items() if p not in ("short_len", "long_len", "note") and r}
    if ratios:
        out.append(f"- Per-token penalty on the longest third of the base policy's wrong responses "
                   f"(~{penalty['long_len']:.0f} tokens) over the shortest third "
                   f"(~{penalty['short_len']:.0f}): "
                   + ", ".join(f"{p} {r:.2f}x" for p, r in ratios.items())
                   + ". Below 1 means a long wrong answer is punished less per token.")  # fmt: skip
    return out
