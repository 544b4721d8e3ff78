"""Statistics over seeds: a common step grid without extrapolation, bootstrap confidence
intervals, the interquartile mean, returns at budgets, steps to thresholds, sample-efficiency
ratios and the normalized score of the PPO paper's Table 1."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbmpo.report.runs import Run


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
    """Mean, bootstrap CI, IQM and median of one quantity over seeds."""

    mean: float
    ci_low: float
    ci_high: float
    iqm: float
    n: int
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(np.median(self.values)) if self.values else float("nan")


def probability_of_improvement(x: Sequence[float], y: Sequence[float], confidence: float = 0.95,
                               n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float] | None:
    """P(X > Y): the chance that a run of label x beats a run of label y (ties count one half;
    Agarwal et al. 2021), with a percentile-bootstrap interval from ``rliable``'s stratified
    resampling of the runs. ``x``, ``y``: one value per seed. Returns ``(p, low, high)``, or
    None when ``rliable`` (the ``report`` extra) is not installed."""
    try:
        from rliable import library as rly
        from rliable import metrics
    except ImportError:
        return None
    a, b = np.asarray(x, dtype=float)[:, None], np.asarray(y, dtype=float)[:, None]  # [runs, 1 task]
    # rliable 1.2's stratified bootstrap draws from numpy's global RNG whatever random_state
    # says, so the interval is seeded there (and the caller's global state put back)
    outer_state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch (rliable's bootstrap) warns about its own random_state API
            warnings.simplefilter("ignore", FutureWarning)
            est, ci = rly.get_interval_estimates({"p": (a, b)}, metrics.probability_of_improvement,
                                                 reps=n_resamples, confidence_interval_size=confidence,
                                                 random_state=np.random.RandomState(seed))
    finally:
        np.random.set_state(outer_state)
    lo, hi = np.ravel(ci["p"])  # [2, 1]: (low, high) of the one pair
    return float(np.ravel(est["p"])[0]), float(lo), float(hi)


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

