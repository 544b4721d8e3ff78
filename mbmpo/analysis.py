"""Sample-efficiency analysis of training runs: evaluation return vs real env steps over seeds.

Reads the ``progress.csv`` of runs made by ``scripts/train.py`` (or copies of those files),
puts the seeds of each (env, label) onto a common step grid and computes the mean with a
bootstrap confidence interval, the interquartile mean, returns at fixed budgets, steps to
reach return thresholds, sample-efficiency ratios against a reference label and the
normalized score of the PPO paper's Table 1. :func:`write_report` turns a comparison
directory into ``summary.csv``, ``summary.md`` and plots.

Layout of a comparison directory (made by ``scripts/compare.py``, or by hand)::

    DIR/compare.yaml                    settings; its ``report`` mapping holds ReportSettings
    DIR/runs/<env>/<label>/s<seed>/     one training run each (progress.csv, config.yaml, ...)
    DIR/random_returns.json             cached random-policy returns (normalized score)

``<env>`` is the env id with ``/`` written as ``__``. Example from a script::

    from mbmpo.analysis import load_runs, summarize, ReportSettings
    runs = load_runs({"ppo": ["runs/ppo_s0", "runs/ppo_s1"], "trpo": ["runs/trpo_s0/progress.csv"]})
    summary = summarize(runs, ReportSettings(reference="ppo"))
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mbmpo.config import config_from_dict
from mbmpo.errors import ConfigError

Warn = Callable[[str], None]
DEFAULT_BUDGETS = (50_000, 100_000, 200_000, 1_000_000)
SUMMARY_COLUMNS = ("env", "label", "algo", "seeds", "metric", "at", "value", "ci_low", "ci_high",
                   "iqm", "n_reached", "bound")


# ----- reading runs ----------------------------------------------------------------------
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


# ----- statistics over seeds ---------------------------------------------------------------
def common_grid(xs: Sequence[np.ndarray]) -> np.ndarray:
    """Union of the seeds' x values inside the range every seed covers: ``[G]``.

    No seed is extrapolated: the grid starts at the latest first evaluation and ends at the
    earliest last evaluation.
    """
    lo = max(float(x[0]) for x in xs)
    hi = min(float(x[-1]) for x in xs)
    grid = np.unique(np.concatenate([np.asarray(x, dtype=float) for x in xs]))
    return grid[(grid >= lo) & (grid <= hi)]


def interpolate(x: np.ndarray, y: np.ndarray, at: np.ndarray | float) -> np.ndarray:
    """Linear interpolation of ``y(x)`` at ``at``; NaN outside ``[x[0], x[-1]]``."""
    at = np.asarray(at, dtype=float)
    out = np.interp(at, x, y)
    return np.where((at < x[0]) | (at > x[-1]), np.nan, out)


def bootstrap_ci(values: np.ndarray, confidence: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap confidence interval of the mean over axis 0 (seeds).

    ``values``: ``[S, ...]``; returns ``(low, high)`` of shape ``[...]``, NaN when S < 2.
    The percentile method is used because BCa is undefined for the 2-3 seeds typical here.
    """
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if values.shape[0] < 2:
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan.copy()
    res = bootstrap((values,), np.mean, axis=0, confidence_level=confidence, method="percentile",
                    n_resamples=n_resamples, vectorized=True, rng=np.random.default_rng(seed))
    return np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)


def iqm(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (``scipy.stats.trim_mean(x, 0.25)``).

    With fewer than 4 seeds nothing is trimmed and it equals the mean.
    """
    from scipy.stats import trim_mean

    return np.asarray(trim_mean(np.asarray(values, dtype=float), 0.25, axis=axis))


@dataclass
class Stat:
    """Mean, bootstrap CI and IQM of one quantity over seeds."""

    mean: float
    ci_low: float
    ci_high: float
    iqm: float
    n: int
    values: list[float] = field(default_factory=list)


def seed_stat(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000,
              seed: int = 0) -> Stat:
    v = np.asarray(values, dtype=float)
    lo, hi = bootstrap_ci(v[:, None], confidence, n_resamples, seed)
    return Stat(float(v.mean()), float(lo[0]), float(hi[0]), float(iqm(v)), len(v), v.tolist())


@dataclass
class Curve:
    """Seeds of one (env, label) on a common grid."""

    x: np.ndarray
    """[G] grid (real env steps or hours)."""
    values: np.ndarray
    """[S, G] interpolated returns per seed."""
    mean: np.ndarray
    """[G]"""
    ci_low: np.ndarray
    """[G] (NaN with one seed)"""
    ci_high: np.ndarray
    """[G]"""
    iqm: np.ndarray
    """[G]"""


def aggregate(runs: Sequence[Run], x: str = "steps", confidence: float = 0.95,
              n_resamples: int = 10_000, seed: int = 0) -> Curve | None:
    """Interpolate the seeds onto :func:`common_grid` and reduce over them.

    ``x``: ``"steps"`` (real env steps) or ``"hours"`` (training wall-clock). None when the
    seeds share no range (or, for hours, none logged a wall time).
    """
    xs, ys = [], []
    for r in runs:
        xv = getattr(r, x)
        ok = np.isfinite(xv)
        if ok.any():
            xs.append(xv[ok])
            ys.append(r.returns[ok])
    if len(xs) < len(runs) or not xs:
        return None
    grid = common_grid(xs)
    if grid.size == 0:
        return None
    values = np.stack([interpolate(xv, yv, grid) for xv, yv in zip(xs, ys)])  # [S, G]
    lo, hi = bootstrap_ci(values, confidence, n_resamples, seed)
    return Curve(grid, values, values.mean(0), lo, hi, iqm(values))


def value_at(run: Run, budget: float) -> float:
    """Return at ``budget`` real steps, interpolated; NaN outside the run's evaluations."""
    return float(interpolate(run.steps, run.returns, budget))


def steps_to_threshold(run: Run, threshold: float) -> float:
    """Real steps of the first evaluation with return >= ``threshold`` (inf if never)."""
    hit = np.nonzero(run.returns >= threshold)[0]
    return float(run.steps[hit[0]]) if hit.size else math.inf


def median_steps(steps: Sequence[float]) -> tuple[float, int]:
    """Median steps-to-threshold over seeds and how many seeds reached it.

    Seeds that never reached the threshold count as infinitely slow, so the median is
    finite only when more than half of the seeds reached it (it is not biased towards the
    lucky seeds).
    """
    s = np.asarray(steps, dtype=float)
    return float(np.median(s)), int(np.isfinite(s).sum())


def efficiency_ratio(ref_steps: float, steps: float, ref_budget: float, budget: float
                     ) -> tuple[float, str]:
    """Sample-efficiency ratio ``ref_steps / steps`` (>1: fewer real steps than the reference).

    When one side never reached the threshold its budget (last evaluated step) bounds the
    ratio: returns ``(bound, ">")`` or ``(bound, "<")``; ``(nan, "")`` when neither did.
    """
    if math.isfinite(ref_steps) and math.isfinite(steps):
        return ref_steps / steps, ""
    if math.isfinite(steps):
        return ref_budget / steps, ">"
    if math.isfinite(ref_steps):
        return ref_steps / budget, "<"
    return math.nan, ""


def final_return(run: Run, window: float = 0.1) -> float:
    """Mean evaluation return over the last ``window`` fraction of the run's steps
    (at least the last evaluation)."""
    start = run.steps[-1] * (1.0 - window)
    return float(run.returns[run.steps >= start].mean())


def auto_thresholds(runs: Sequence[Run], fractions: Sequence[float] = (0.25, 0.5, 0.75),
                    window: float = 0.1) -> list[float]:
    """Thresholds a fraction of the way from the median first evaluation of all runs to
    the best label's mean final return (3 significant digits)."""
    start = float(np.median([r.returns[0] for r in runs]))
    by_label: dict[str, list[float]] = {}
    for r in runs:
        by_label.setdefault(r.label, []).append(final_return(r, window))
    best = max(float(np.mean(v)) for v in by_label.values())
    if not best > start:
        return []
    return [float(f"{start + f * (best - start):.3g}") for f in fractions]


# ----- normalized score (PPO paper, Table 1) ------------------------------------------------
def normalized_scores(final: Mapping[tuple[str, str], float], random_returns: Mapping[str, float]
                      ) -> dict[str, dict[str, float]]:
    """PPO paper Table 1 score: per env ``(R - R_random) / (R_best - R_random)``, averaged
    over envs.

    ``final``: ``(env, label) -> R`` (mean final return over seeds); ``R_best`` is the best
    label on that env, so the best variant scores 1 and a random policy 0. Returns
    ``label -> {env: score, ..., "mean": score}``; the mean is NaN unless the label has
    every env (and an env without a random return or with ``R_best <= R_random`` is NaN).
    """
    envs = sorted({e for e, _ in final})
    labels = list(dict.fromkeys(lbl for _, lbl in final))
    out: dict[str, dict[str, float]] = {lbl: {} for lbl in labels}
    for env in envs:
        best = max(v for (e, _), v in final.items() if e == env)
        rnd = random_returns.get(env, math.nan)
        for (e, lbl), v in final.items():
            if e == env:
                ok = math.isfinite(rnd) and best > rnd
                out[lbl][env] = (v - rnd) / (best - rnd) if ok else math.nan
    for lbl, per_env in out.items():
        vals = [per_env.get(e, math.nan) for e in envs]
        out[lbl]["mean"] = float(np.mean(vals)) if all(math.isfinite(v) for v in vals) else math.nan
    return out


def random_policy_return(env_id: str, num_episodes: int = 10, seed: int = 0,
                         env_kwargs: Mapping[str, Any] | None = None, max_steps: int = 100_000
                         ) -> float:
    """Mean undiscounted return of uniformly random actions over ``num_episodes`` episodes."""
    from mbmpo.envs import make_env_fn

    env = make_env_fn(env_id, dict(env_kwargs or {}))()
    env.action_space.seed(seed)
    total, steps = [], 0
    try:
        for ep in range(num_episodes):
            env.reset(seed=seed + ep)
            ret, done = 0.0, False
            while not done and steps < max_steps:
                _, r, term, trunc, _ = env.step(env.action_space.sample())
                ret += float(r)
                steps += 1
                done = term or trunc
            total.append(ret)
    finally:
        env.close()
    return float(np.mean(total))


def rank_agreement(ours: Mapping[str, float], paper: Mapping[str, float]) -> tuple[float, int]:
    """Spearman rank correlation between our and the paper's scores over the shared,
    finite labels, and their number (NaN with fewer than 3)."""
    from scipy.stats import spearmanr

    keys = [k for k in paper if k in ours and math.isfinite(ours[k]) and math.isfinite(paper[k])]
    if len(keys) < 3:
        return math.nan, len(keys)
    rho = spearmanr([ours[k] for k in keys], [paper[k] for k in keys]).statistic
    return float(rho), len(keys)


# ----- summary ------------------------------------------------------------------------------
@dataclass
class ReportSettings:
    """What the report computes and shows (the ``report`` mapping of ``compare.yaml``)."""

    budgets: list[int] = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    """Real-step budgets for the return table (a cell needs every seed to get there)."""
    thresholds: dict[str, list[float]] = field(default_factory=dict)
    """Return thresholds per env id ('*': every env); envs without any get automatic ones."""
    threshold_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    """Automatic thresholds: fractions of the way from the median first evaluation to the
    best label's final return."""
    reference: str = "ppo"
    """Label the sample-efficiency ratios are measured against."""
    labels: list[str] = field(default_factory=list)
    """Order of labels in tables and legends (others follow alphabetically)."""
    confidence: float = 0.95
    """Confidence level of the bootstrap intervals."""
    n_resamples: int = 10_000
    """Bootstrap resamples."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap resampling."""
    final_window: float = 0.1
    """'final' return: mean over the evaluations in the last this fraction of a run."""
    normalized_score: bool = False
    """Add the PPO paper's Table-1 normalized score table."""
    random_returns: dict[str, float] = field(default_factory=dict)
    """Random-policy return per env for the normalized score (measured when missing)."""
    random_episodes: int = 10
    """Episodes when measuring a random-policy return."""
    paper_scores: dict[str, float] = field(default_factory=dict)
    """Published normalized score per label, shown beside ours."""
    title: str = ""
    """Heading of summary.md."""

    def validate(self) -> None:
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0 <= self.final_window < 1:
            raise ConfigError(f"final_window must be in [0, 1), got {self.final_window}")
        if self.n_resamples < 100 or self.random_episodes < 1:
            raise ConfigError(f"n_resamples must be >= 100 and random_episodes >= 1, got "
                              f"{self.n_resamples}, {self.random_episodes}")
        if any(int(b) <= 0 for b in self.budgets):
            raise ConfigError(f"budgets must be positive, got {self.budgets}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "report settings"
                  ) -> ReportSettings:
        s = config_from_dict(cls, dict(data or {}), source=source)
        s.validate()
        return s


@dataclass
class GroupSummary:
    """Everything the report says about one (env, label)."""

    env_id: str
    label: str
    algo: str
    runs: list[Run]
    curve: Curve | None
    hours_curve: Curve | None
    at_budget: dict[int, Stat]
    """Budgets every seed reached."""
    final: Stat
    final_step: float
    """Median last evaluated step."""
    steps_to: dict[float, tuple[float, int]]
    """threshold -> (median steps, seeds that reached it)."""
    ratio: dict[float, tuple[float, str]]
    """threshold -> (ratio vs the reference, bound marker)."""
    hours: float
    """Median training wall-clock hours at the last evaluation."""

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


@dataclass
class Summary:
    settings: ReportSettings
    groups: list[GroupSummary]
    thresholds: dict[str, list[float]]
    auto_thresholds: set[str]
    budgets: list[int]
    """Budgets shown (reached by every seed of at least one label)."""
    scores: dict[str, dict[str, float]] | None = None
    random_returns: dict[str, float] = field(default_factory=dict)

    @property
    def envs(self) -> list[str]:
        return list(dict.fromkeys(g.env_id for g in self.groups))


def group_runs(runs: Iterable[Run], order: Sequence[str] = ()) -> dict[tuple[str, str], list[Run]]:
    """``(env, label) -> runs`` sorted by env, then ``order``, then label; seeds sorted."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.env_id, r.label), []).append(r)
    rank = {lbl: i for i, lbl in enumerate(order)}
    keys = sorted(groups, key=lambda k: (k[0], rank.get(k[1], len(rank)), k[1]))
    return {k: sorted(groups[k], key=lambda r: r.seed) for k in keys}


def summarize(runs: Sequence[Run], settings: ReportSettings | None = None) -> Summary:
    """All statistics of the report (see :class:`GroupSummary`)."""
    s = settings or ReportSettings()
    boot = dict(confidence=s.confidence, n_resamples=s.n_resamples, seed=s.bootstrap_seed)
    grouped = group_runs(runs, s.labels)
    thresholds: dict[str, list[float]] = {}
    auto: set[str] = set()
    for env in dict.fromkeys(e for e, _ in grouped):
        given = s.thresholds.get(env, s.thresholds.get("*"))
        if given is None:
            auto.add(env)
            given = auto_thresholds([r for (e, _), rs in grouped.items() if e == env for r in rs],
                                    s.threshold_fractions, s.final_window)
        thresholds[env] = [float(t) for t in given]
    groups = []
    for (env, label), rs in grouped.items():
        at_budget = {}
        for b in s.budgets:
            vals = [value_at(r, b) for r in rs]
            if all(math.isfinite(v) for v in vals):
                at_budget[int(b)] = seed_stat(vals, **boot)
        steps_to = {t: median_steps([steps_to_threshold(r, t) for r in rs]) for t in thresholds[env]}
        hours = [r.hours[-1] for r in rs if math.isfinite(r.hours[-1])]
        groups.append(GroupSummary(
            env_id=env, label=label, algo=next((r.algo for r in rs if r.algo), ""), runs=rs,
            curve=aggregate(rs, "steps", **boot), hours_curve=aggregate(rs, "hours", **boot),
            at_budget=at_budget, final=seed_stat([final_return(r, s.final_window) for r in rs], **boot),
            final_step=float(np.median([r.steps[-1] for r in rs])), steps_to=steps_to, ratio={},
            hours=float(np.median(hours)) if hours else math.nan))
    for g in groups:
        ref = next((h for h in groups if h.env_id == g.env_id and h.label == s.reference), None)
        if ref is None:
            continue
        for t, (st, _) in g.steps_to.items():
            g.ratio[t] = efficiency_ratio(ref.steps_to[t][0], st, ref.final_step, g.final_step)
    shown = [int(b) for b in s.budgets if any(int(b) in g.at_budget for g in groups)]
    summary = Summary(s, groups, thresholds, auto, shown)
    if s.normalized_score:
        summary.random_returns = {e: float(v) for e, v in s.random_returns.items()}
        summary.scores = normalized_scores({(g.env_id, g.label): g.final.mean for g in groups},
                                           summary.random_returns)
    return summary


def summary_rows(summary: Summary) -> list[dict[str, Any]]:
    """Long-format rows of ``summary.csv`` (columns :data:`SUMMARY_COLUMNS`).

    ``metric``: ``return_at`` (``at`` = budget), ``final_return`` (``at`` = median last
    evaluated step), ``steps_to`` (``at`` = threshold; ``value`` empty if the median seed
    never reached it), ``ratio_vs_<reference>`` (``at`` = threshold; ``bound`` '>'/'<' when
    one side never reached it and its budget bounds the ratio), ``wall_hours``,
    ``normalized_score`` (``env`` 'mean' for the average over envs) and ``paper_score``.
    """
    rows = []

    def add(g: GroupSummary | None, metric: str, at: Any, value: float, stat: Stat | None = None,
            n_reached: int | str = "", bound: str = "", env: str = "", label: str = "") -> None:
        rows.append({
            "env": g.env_id if g else env, "label": g.label if g else label,
            "algo": g.algo if g else "", "seeds": " ".join(map(str, g.seeds)) if g else "",
            "metric": metric, "at": at, "value": _num(value),
            "ci_low": _num(stat.ci_low) if stat else "", "ci_high": _num(stat.ci_high) if stat else "",
            "iqm": _num(stat.iqm) if stat else "", "n_reached": n_reached, "bound": bound})

    ref = summary.settings.reference
    for g in summary.groups:
        for b, st in g.at_budget.items():
            add(g, "return_at", b, st.mean, st)
        add(g, "final_return", int(g.final_step), g.final.mean, g.final)
        for t, (st, k) in g.steps_to.items():
            add(g, "steps_to", t, st, n_reached=k)
            if t in g.ratio:
                add(g, f"ratio_vs_{ref}", t, g.ratio[t][0], bound=g.ratio[t][1])
        add(g, "wall_hours", int(g.final_step), g.hours)
    if summary.scores:
        for label, per_env in summary.scores.items():
            for env, v in per_env.items():
                add(None, "normalized_score", "", v, env=env, label=label)
            if label in summary.settings.paper_scores:
                add(None, "paper_score", "", summary.settings.paper_scores[label], env="mean",
                    label=label)
    return rows


def _num(x: float) -> float | str:
    return "" if x is None or not math.isfinite(x) else round(float(x), 6)


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def steps_label(n: float) -> str:
    """``50000 -> '50k'``, ``1000000 -> '1M'``."""
    n = float(n)
    if n >= 1e6 and n % 1e5 == 0:
        return f"{n / 1e6:g}M"
    if n >= 1e4:
        return f"{n / 1e3:.0f}k"
    return f"{n:.0f}"


def summary_markdown(summary: Summary, plots: Mapping[str, Sequence[str]] | None = None) -> str:
    """``summary.md``: per env the return table, steps to thresholds with ratios, plots;
    then the normalized-score table when enabled."""
    s = summary.settings
    conf = f"{s.confidence:.0%}"
    out = [f"# {s.title or 'Sample-efficiency comparison'}", "",
           "Evaluation return (mean over the evaluation episodes of a run) against **real "
           "environment steps**. Per label: mean over seeds with a "
           f"{conf} percentile-bootstrap confidence interval ({s.n_resamples} resamples) and "
           "the interquartile mean (IQM; equals the mean below 4 seeds). Each seed is linearly "
           "interpolated onto a budget, never extrapolated past its last evaluation: '–' = "
           f"not every seed got there. 'final' = mean of the evaluations in the last "
           f"{s.final_window:.0%} of a run. 'hours' = median training wall-clock time "
           "(evaluation excluded; runs sharing the machine slow each other).", ""]
    for env in summary.envs:
        gs = [g for g in summary.groups if g.env_id == env]
        out += [f"## {env}", ""]
        for name in (plots or {}).get(env, []):
            out.append(f"![{name}]({name})")
        out.append("")
        head = ["label", "algo", "seeds", *(steps_label(b) for b in summary.budgets), "final", "hours"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for g in gs:
            cells = [g.label, g.algo or "–", str(len(g.runs))]
            cells += [_stat_cell(g.at_budget[b]) if b in g.at_budget else "–" for b in summary.budgets]
            cells += [f"{_stat_cell(g.final)} @ {steps_label(g.final_step)}", _fmt(g.hours)]
            out.append("| " + " | ".join(cells) + " |")
        thr = summary.thresholds.get(env, [])
        if thr:
            has_ref = any(g.label == s.reference for g in gs)
            how = (" (automatic: fractions "
                   f"{', '.join(f'{f:g}' for f in s.threshold_fractions)} of the way from the "
                   "median first evaluation to the best final return)") if env in summary.auto_thresholds else ""
            out += ["", f"Real steps to reach a return{how}: median over seeds, a seed that never "
                    "reached it counting as never (k/n = seeds that reached it)."
                    + (f" ratio = sample-efficiency ratio vs `{s.reference}` (its steps / this "
                       "label's steps; > 1: fewer real steps; '>'/'<': bounded by the budget of "
                       "the side that never got there)." if has_ref else
                       f" No reference `{s.reference}` on this env, so no ratios."), ""]
            head = ["label"]
            for t in thr:
                head += [f"≥ {_fmt(t)}"] + (["ratio"] if has_ref else [])
            out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for g in gs:
                cells = [g.label]
                for t in thr:
                    st, k = g.steps_to[t]
                    cells.append(f"{steps_label(st) if math.isfinite(st) else 'not reached'} "
                                 f"({k}/{len(g.runs)})")
                    if has_ref:
                        v, b = g.ratio.get(t, (math.nan, ""))
                        cells.append(f"{b}{v:.2f}" if math.isfinite(v) else "–")
                out.append("| " + " | ".join(cells) + " |")
        out.append("")
    if summary.scores is not None:
        out += _scores_markdown(summary)
    return "\n".join(out) + "\n"


def _stat_cell(st: Stat) -> str:
    ci = f" [{_fmt(st.ci_low)}, {_fmt(st.ci_high)}]" if math.isfinite(st.ci_low) else ""
    iq = f" (IQM {_fmt(st.iqm)})" if st.n >= 4 else ""
    return f"{_fmt(st.mean)}{ci}{iq}"


def _scores_markdown(summary: Summary) -> list[str]:
    s, scores, envs = summary.settings, summary.scores or {}, summary.envs
    paper = s.paper_scores
    out = ["## Normalized score (PPO paper, Table 1)", "",
           "Per env, score = (R − R_random) / (R_best − R_random) with R the label's final return "
           "(mean over seeds), R_best the best label on that env and R_random the return of "
           "uniformly random actions; then averaged over envs. The paper averages the last 100 "
           "training episodes of 1M-step runs on 7 MuJoCo tasks (3 seeds); ours uses the "
           "deterministic evaluations at the end of the budget above.", ""]
    head = ["label", "score (mean over envs)", *envs] + (["paper"] if paper else [])
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, per_env in scores.items():
        cells = [label, _score(per_env.get("mean", math.nan))]
        cells += [_score(per_env.get(e, math.nan)) for e in envs]
        if paper:
            cells.append(_score(paper.get(label, math.nan)))
        out.append("| " + " | ".join(cells) + " |")
    rnd = ", ".join(f"{e} {_fmt(v)}" for e, v in summary.random_returns.items() if e in envs)
    out += ["", f"R_random: {rnd or '–'} ({s.random_episodes} episodes of uniformly random "
            "actions unless given).", ""]
    stuck = [e for e in envs if not any(math.isfinite(v.get(e, math.nan)) for v in scores.values())]
    if stuck:
        out += [f"Not normalizable (no label beats the random policy, or no R_random): "
                f"{', '.join(stuck)}.", ""]
    ours = {k: v["mean"] for k, v in scores.items()}
    if paper:
        rho, n = rank_agreement(ours, paper)
        finite = {k: v for k, v in ours.items() if math.isfinite(v)}
        best_ours = max(finite, key=finite.get) if finite else "–"
        shared = {k: v for k, v in paper.items() if k in ours}
        best_paper = max(shared, key=shared.get) if shared else "–"
        out += [f"Ranking: Spearman ρ = {rho:.2f} between our and the paper's scores over {n} "
                f"variants; best variant: ours `{best_ours}`, paper `{best_paper}`."
                if math.isfinite(rho) else "Ranking: fewer than 3 variants with both scores.", ""]
    return out


def _score(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "–"


# ----- comparison directories ----------------------------------------------------------------
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
    from mbmpo.plotting import plot_comparison

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
