"""`drgrpo plot RUN_DIR`: one figure of a run's metrics.jsonl (matplotlib, the `plot` extra)."""

from __future__ import annotations

from pathlib import Path

from drgrpo.train.logging import read_metrics

# One panel per question a reader asks of an RL run; each lists (metric, label).
PANELS = [
    ("Reward and accuracy", [("reward/mean", "reward (train)"), ("reward/accuracy", "accuracy (train)"),
                             ("eval/accuracy", "held-out accuracy"),
                             ("eval/greedy_accuracy", "held-out greedy")]),
    ("Response length (tokens)", [("rollout/len_correct", "correct"),
                                  ("rollout/len_incorrect", "incorrect"),
                                  ("rollout/len_mean", "all")]),
    ("KL to reference", [("policy/kl", "KL (per token)")]),
    ("Clip fraction", [("policy/clipfrac", "clipped tokens")]),
    ("Entropy", [("policy/entropy", "entropy (nats/token)")]),
    ("Step time (s)", [("perf/step_s", "step"), ("perf/rollout_s", "rollout"),
                       ("perf/train_s", "train")]),
]  # fmt: skip


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = Path(out) if out else run_dir / "plots" / "training.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (title, keys) in zip(axes.flat, PANELS, strict=True):
        drawn = False
        for key, label in keys:
            xs, ys = series(rows, key)
            if not xs:
                continue
            style = {"marker": "o"} if key.startswith("eval/") else {}
            ax.plot(xs, ys, label=label, linewidth=1.6, **style)
            drawn = True
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center",
                    transform=ax.transAxes, color="gray")  # fmt: skip
    fig.suptitle(f"drgrpo run: {run_dir}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
