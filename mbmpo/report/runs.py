"""Reading training runs: ``progress.csv`` columns, one run's evaluation curve
(:class:`Run`), runs by label, and every run of a comparison directory."""

from __future__ import annotations

import csv
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mbmpo.errors import ConfigError

Warn = Callable[[str], None]


def read_progress(path: str | Path) -> dict[str, list[float]]:
    """Columns of a ``progress.csv`` as float lists (empty or non-numeric cells become NaN).

    Raises ConfigError when the file is missing or not readable as CSV text.
    """
    p = Path(path)
    try:
        with p.open(newline="") as f:
            reader = csv.DictReader(f)
            names = list(reader.fieldnames or [])
            rows = list(reader)
    except FileNotFoundError:
        raise ConfigError(f"{str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{str(p)!r} is not a readable CSV file ({type(exc).__name__})") from None
    cols: dict[str, list[float]] = {k: [] for k in names}
    for row in rows:
        for k in names:  # cells past the header (key None) of a corrupt row are ignored
            v = row.get(k)
            try:
                x = float(v) if v not in (None, "") else float("nan")
            except (TypeError, ValueError):
                x = float("nan")
            cols[k].append(x)
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


@dataclass
class Run:
    """The evaluation curve of one training run (one seed)."""

    label: str
    env_id: str
    seed: int
    source: str
    """Path the run was read from."""
    steps: np.ndarray
    """[E] real env steps at each evaluation, strictly increasing."""
    returns: np.ndarray
    """[E] mean evaluation return at those steps."""
    hours: np.ndarray
    """[E] training wall-clock hours at those steps (NaN where not logged)."""
    last_step: float
    """Last ``real_steps`` logged on any row (the run's progress)."""
    algo: str = ""


def load_run(path: str | Path, label: str | None = None, env_id: str | None = None,
             seed: int | None = None) -> Run:
    """Read one run from a run directory or a ``progress.csv`` file (copies included).

    ``env_id``/``seed``/``label`` default to the run's ``config.yaml`` (or ``imported.yaml``)
    beside the file, then to the file name (``..._s3.csv`` is seed 3). A missing, empty or
    corrupt file, or one without evaluation rows, raises ConfigError naming ``path``.
    """
    p = Path(path)
    csv_path = p / "progress.csv" if p.is_dir() else p
    where = f"run {str(p)!r}"
    if not csv_path.is_file():
        raise ConfigError(f"{where}: no progress.csv (not started, or not a run directory)")
    try:
        cols = read_progress(csv_path)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not cols or "real_steps" not in cols:
        raise ConfigError(f"{where}: progress.csv is empty or has no 'real_steps' column")
    steps = np.asarray(cols["real_steps"], dtype=float)
    if not np.isfinite(steps).any():
        raise ConfigError(f"{where}: progress.csv has no data rows")
    ret = np.asarray(cols.get("eval_return_mean", [math.nan] * len(steps)), dtype=float)
    wall = np.asarray(cols.get("wall_time_s", [math.nan] * len(steps)), dtype=float)
    ok = np.isfinite(steps) & np.isfinite(ret)
    if not ok.any():
        raise ConfigError(f"{where}: progress.csv has no evaluation rows (eval_return_mean)")
    last_step = float(np.nanmax(steps))
    steps, ret, wall = steps[ok], ret[ok], wall[ok]
    # a resumed run may repeat a step; keep the row logged last
    _, idx = np.unique(steps[::-1], return_index=True)
    idx = len(steps) - 1 - idx
    meta = {**_read_yaml_quiet(csv_path.parent / "imported.yaml"),
            **_read_yaml_quiet(csv_path.parent / "config.yaml")}
    env = env_id or meta.get("env_id")
    if not env:
        raise ConfigError(f"{where}: env id unknown (no config.yaml beside it); give it explicitly")
    if seed is None:
        seed = meta.get("seed")
    if seed is None:
        m = re.search(r"(?:^|_)s(\d+)$", csv_path.stem if csv_path.stem != "progress"
                      else csv_path.parent.name)
        seed = int(m.group(1)) if m else 0
    algo = str(meta.get("algo", ""))
    return Run(label=label or algo or csv_path.parent.name, env_id=str(env), seed=int(seed),
               source=str(p), steps=steps[idx], returns=ret[idx], hours=wall[idx] / 3600.0,
               last_step=last_step, algo=algo)


def load_runs(sources: Mapping[str, Sequence[str | Path]], env_id: str | None = None,
              warn: Warn | None = None) -> list[Run]:
    """Runs from a mapping ``label -> [run dir or progress.csv, ...]``.

    E.g. ``{"ppo": sorted(Path("benchmarks/results/ppo_200k").glob("HalfCheetah-v5_tuned_s*.csv"))}``
    with ``env_id="HalfCheetah-v5"``. Unreadable entries are reported through ``warn``
    (default: :func:`warnings.warn`) and left out.
    """
    warn = warn or _default_warn
    runs = []
    for label, paths in sources.items():
        for p in paths:
            try:
                runs.append(load_run(p, label=label, env_id=env_id))
            except ConfigError as exc:
                warn(f"skipping {exc}")
    return runs


def env_dirname(env_id: str) -> str:
    """Directory/file name of an env id (``/`` of namespaced ids becomes ``__``)."""
    return env_id.replace("/", "__")


def discover_runs(comparison_dir: str | Path, warn: Warn | None = None) -> list[Run]:
    """Every readable run under ``DIR/runs/<env>/<label>/s<seed>/``; others are warned about."""
    warn = warn or _default_warn
    root = Path(comparison_dir) / "runs"
    if not root.is_dir():
        raise ConfigError(f"{str(comparison_dir)!r} is not a comparison directory (no runs/ in it)")
    runs = []
    for env_dir in _subdirs(root):
        for label_dir in _subdirs(env_dir):
            for run_dir in _subdirs(label_dir):
                m = re.fullmatch(r"s(\d+)", run_dir.name)
                try:
                    runs.append(load_run(run_dir, label=label_dir.name,
                                         env_id=env_dir.name.replace("__", "/"),
                                         seed=int(m.group(1)) if m else None))
                except ConfigError as exc:
                    warn(f"skipping {exc}")
    return runs


def _subdirs(d: Path) -> list[Path]:
    def key(p: Path) -> tuple:
        m = re.fullmatch(r"s(\d+)", p.name)
        return (0, int(m.group(1)), "") if m else (1, 0, p.name)

    return sorted((p for p in d.iterdir() if p.is_dir()), key=key)


def _read_yaml_quiet(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _default_warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)
