"""Learning-curve plots from ``progress.csv`` files and report summaries (matplotlib, headless).

Parsing and statistics live in the other modules of :mod:`mbmpo.report`; this module only draws."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mbmpo.report.runs import eval_curve, read_progress  # noqa: E402
from mbmpo.report.summary import GroupSummary  # noqa: E402

__all__ = ["plot_comparison", "plot_runs"]


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


def plot_comparison(groups: Sequence[GroupSummary], out_stem: str | Path, x: str = "steps",
                    title: str = "", colors: Mapping[str, str] | None = None,
                    confidence: float = 0.95) -> list[Path]:
    """Return vs real env steps (``x="steps"``) or training hours (``x="hours"``) of the
    labels of one env: mean over seeds with its bootstrap CI band, each seed as a faint line.

    Writes ``out_stem.png`` and ``out_stem.svg`` and returns both paths.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, g in enumerate(groups):
        color = (colors or {}).get(g.label, f"C{i % 10}")
        curve = g.curve if x == "steps" else g.hours_curve
        for r in g.runs:
            xs = getattr(r, x)
            ok = np.isfinite(xs)
            ax.plot(xs[ok], r.returns[ok], color=color, alpha=0.25, lw=0.8)
        if curve is None:  # seeds share no range: only the faint per-seed lines
            ax.plot([], [], color=color, label=f"{g.label} (n={len(g.runs)}, no common range)")
            continue
        ax.plot(curve.x, curve.mean, color=color, lw=2, label=f"{g.label} (n={len(g.runs)})")
        if np.isfinite(curve.ci_low).any():
            ax.fill_between(curve.x, curve.ci_low, curve.ci_high, color=color, alpha=0.2, lw=0)
    ax.set_xlabel("real environment steps" if x == "steps"
                  else "training wall-clock hours (evaluation excluded)")
    if x == "steps":
        ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))  # 50k, 1M
    pct = f"{confidence:.0%}" if math.isfinite(confidence) else ""
    ax.set_ylabel(f"evaluation return (mean, {pct} bootstrap CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ext) for ext in (".png", ".svg")]
    fig.savefig(paths[0], dpi=120)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths
