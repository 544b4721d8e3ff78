"""Reports on training runs: evaluation return vs real env steps over seeds.

Reads the ``progress.csv`` of runs made by ``scripts/train.py`` (or copies of those files),
puts the seeds of each (env, label) onto a common step grid and computes the mean with a
bootstrap confidence interval, the interquartile mean, returns at fixed budgets, steps to
reach return thresholds, sample-efficiency ratios against a reference label and the
normalized score of the PPO paper's Table 1. :func:`write_report` turns a comparison
directory into ``summary.csv``, ``summary.md`` and plots.

Modules: :mod:`~mbmpo.report.runs` (reading runs), :mod:`~mbmpo.report.stats` (statistics
over seeds), :mod:`~mbmpo.report.summary` (settings and per-label statistics),
:mod:`~mbmpo.report.tables` (``summary.csv`` rows, ``summary.md``),
:mod:`~mbmpo.report.plots` (matplotlib figures) and :mod:`~mbmpo.report.comparison`
(comparison directories). Every public name is importable from this package; the two plot
functions load matplotlib on first use.

Layout of a comparison directory (made by ``scripts/compare.py``, or by hand)::

    DIR/compare.yaml                    settings; its ``report`` mapping holds ReportSettings
    DIR/runs/<env>/<label>/s<seed>/     one training run each (progress.csv, config.yaml, ...)
    DIR/random_returns.json             cached random-policy returns (normalized score)

``<env>`` is the env id with ``/`` written as ``__``. Example from a script::

    from mbmpo.report import load_runs, summarize, ReportSettings
    runs = load_runs({"ppo": ["runs/ppo_s0", "runs/ppo_s1"], "trpo": ["runs/trpo_s0/progress.csv"]})
    summary = summarize(runs, ReportSettings(reference="ppo"))
"""

from __future__ import annotations

import importlib
from typing import Any

from mbmpo.report.comparison import EXPORT_FILES, export_comparison, load_settings, write_report
from mbmpo.report.runs import (
    Run,
    Warn,
    discover_runs,
    env_dirname,
    eval_curve,
    load_run,
    load_runs,
    read_progress,
)
from mbmpo.report.stats import (
    Curve,
    Stat,
    aggregate,
    auto_thresholds,
    bootstrap_ci,
    common_grid,
    efficiency_ratio,
    final_return,
    interpolate,
    iqm,
    median_steps,
    normalized_scores,
    random_policy_return,
    rank_agreement,
    seed_stat,
    steps_to_threshold,
    value_at,
)
from mbmpo.report.summary import (
    DEFAULT_BUDGETS,
    GroupSummary,
    ReportSettings,
    Summary,
    group_runs,
    summarize,
)
from mbmpo.report.tables import SUMMARY_COLUMNS, steps_label, summary_markdown, summary_rows

_PLOTS = ("plot_comparison", "plot_runs")

__all__ = [
    "DEFAULT_BUDGETS", "EXPORT_FILES", "SUMMARY_COLUMNS", "Curve", "GroupSummary", "ReportSettings",
    "Run", "Stat", "Summary", "Warn", "aggregate", "auto_thresholds", "bootstrap_ci",
    "common_grid", "discover_runs", "efficiency_ratio", "env_dirname", "eval_curve",
    "export_comparison", "final_return", "group_runs", "interpolate", "iqm", "load_run",
    "load_runs", "load_settings", "median_steps", "normalized_scores", "plot_comparison",
    "plot_runs", "random_policy_return", "rank_agreement", "read_progress", "seed_stat",
    "steps_label", "steps_to_threshold", "summarize", "summary_markdown", "summary_rows",
    "value_at", "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _PLOTS:  # matplotlib is imported on first use only (PEP 562)
        return getattr(importlib.import_module("mbmpo.report.plots"), name)
    raise AttributeError(f"module 'mbmpo.report' has no attribute {name!r}")
