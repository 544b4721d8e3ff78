"""Learning-curve plots from ``progress.csv`` files (matplotlib, headless)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_progress(path: str | Path) -> dict[str, list[float]]:
    """Columns of a ``progress.csv`` as float lists (empty cells become NaN)."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            try:
                x = float(v) if v not in (None, "") else float("nan")
            except ValueError:
                x = float("nan")
            cols.setdefault(k, []).append(x)
    return cols


def eval_curve(cols: dict[str, list[float]]) -> tuple[list[float], list[float], list[float]]:
    """``(real_steps, eval_return_mean, eval_return_std)`` on the rows that evaluated."""
    steps, mean, std = [], [], []
    for s, m, d in zip(cols.get("real_steps", []), cols.get("eval_return_mean", []),
                       cols.get("eval_return_std", [])):
        if m == m:  # not NaN
            steps.append(s)
            mean.append(m)
            std.append(d if d == d else 0.0)
    return steps, mean, std


def plot_runs(run_dirs: Sequence[str | Path], out_png: str | Path, title: str = "",
              labels: Sequence[str] | None = None) -> Path:
    """Evaluation return vs real env steps for one or more runs, one line each."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, d in enumerate(run_dirs):
        cols = read_progress(Path(d) / "progress.csv")
        steps, mean, std = eval_curve(cols)
        label = labels[i] if labels else Path(d).name
        if steps:
            ax.plot(steps, mean, marker="o", ms=3, label=label)
            lo = [m - s for m, s in zip(mean, std)]
            hi = [m + s for m, s in zip(mean, std)]
            ax.fill_between(steps, lo, hi, alpha=0.2)
        elif cols.get("train/episode_return"):
            ax.plot(cols["real_steps"], cols["train/episode_return"], label=f"{label} (train)")
    ax.set_xlabel("real environment steps")
    ax.set_ylabel("return (evaluation episodes, mean ± std)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
