"""Comparison directories: their settings, the report written into them (``summary.csv``,
``summary.md``, plots) and a lean export of one."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml

from mbmpo.errors import ConfigError
from mbmpo.report.runs import Run, Warn, discover_runs, env_dirname
from mbmpo.report.stats import random_policy_return
from mbmpo.report.summary import ReportSettings, Summary, summarize
from mbmpo.report.tables import SUMMARY_COLUMNS, summary_markdown, summary_rows


def load_settings(comparison_dir: str | Path) -> ReportSettings:
    """The ``report`` mapping of ``DIR/compare.yaml`` (defaults when there is none)."""
    path = Path(comparison_dir) / "compare.yaml"
    if not path.is_file():
        return ReportSettings()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{str(path)!r} must hold a mapping")
    return ReportSettings.from_dict(data.get("report"), source=str(path))


def write_report(comparison_dir: str | Path, settings: ReportSettings | None = None,
                 warn: Warn | None = None, runs: Sequence[Run] | None = None) -> Summary:
    """``summary.csv``, ``summary.md`` and per-env plots (PNG + SVG) in ``comparison_dir``.

    Runs default to :func:`discover_runs`; settings to :func:`load_settings`. Missing
    random-policy returns (normalized score) are measured once and cached in
    ``random_returns.json``.
    """
    from mbmpo.report.plots import plot_comparison  # matplotlib loads only when a report is drawn

    d = Path(comparison_dir)
    settings = settings or load_settings(d)
    runs = list(runs) if runs is not None else discover_runs(d, warn)
    if not runs:
        raise ConfigError(f"no readable run in {str(d)!r}; nothing to report")
    if settings.normalized_score:
        settings.random_returns = {**_random_returns(d, {r.env_id for r in runs}, settings),
                                   **settings.random_returns}
    summary = summarize(runs, settings)
    d.mkdir(parents=True, exist_ok=True)
    with (d / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        w.writerows(summary_rows(summary))
    plots: dict[str, list[str]] = {}
    colors = {lbl: f"C{i % 10}" for i, lbl in enumerate(dict.fromkeys(g.label for g in summary.groups))}
    for env in summary.envs:
        gs = [g for g in summary.groups if g.env_id == env]
        for x in ("steps", "hours"):
            paths = plot_comparison(gs, d / f"{env_dirname(env)}_return_vs_{x}", x=x, title=env,
                                    colors=colors, confidence=settings.confidence)
            plots.setdefault(env, []).append(paths[0].name)
    (d / "summary.md").write_text(summary_markdown(summary, plots))
    return summary


def _random_returns(d: Path, envs: set[str], settings: ReportSettings) -> dict[str, float]:
    cache = d / "random_returns.json"
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
    except (OSError, json.JSONDecodeError):
        known = {}
    missing = sorted(e for e in envs if e not in known and e not in settings.random_returns)
    for env in missing:
        known[env] = random_policy_return(env, settings.random_episodes)
    if missing:
        cache.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    return {e: float(v) for e, v in known.items()}


EXPORT_FILES = ("progress.csv", "config.yaml", "environment.yaml", "imported.yaml")


def export_comparison(src: str | Path, dest: str | Path, warn: Warn | None = None) -> Summary:
    """Copy the lean part of a comparison (settings, presets, every run's progress.csv,
    config and environment record; no checkpoints, TensorBoard or logs) to ``dest`` and write its report there.
    ``dest`` is itself a comparison directory (``plot.py dest`` reproduces the report)."""
    src, dest = Path(src), Path(dest)
    if not (src / "runs").is_dir():
        raise ConfigError(f"{str(src)!r} is not a comparison directory (no runs/ in it)")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("compare.yaml", "random_returns.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    for f in sorted((src / "runs").glob("*/*/preset.yaml")):
        _copy(f, dest / f.relative_to(src))
    for f in sorted((src / "runs").glob("*/*/*/*")):
        if f.name in EXPORT_FILES and f.is_file():
            _copy(f, dest / f.relative_to(src))
    return write_report(dest, warn=warn)


def _copy(f: Path, to: Path) -> None:
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(f, to)
