"""What a report computes: its settings (:class:`ReportSettings`, the ``report`` mapping of
``compare.yaml``) and the statistics of every (env, label) (:func:`summarize`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from mbmpo.config import config_from_dict
from mbmpo.errors import ConfigError
from mbmpo.report.runs import Run
from mbmpo.report.stats import (
    Curve,
    Stat,
    aggregate,
    auto_thresholds,
    efficiency_ratio,
    final_return,
    median_steps,
    normalized_scores,
    probability_of_improvement,
    seed_stat,
    steps_to_threshold,
    value_at,
)

DEFAULT_BUDGETS = (50_000, 100_000, 200_000, 1_000_000)


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
    improvement: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    """budget -> probability that a seed of this label beats one of the reference, with its
    interval (empty without ``rliable``)."""

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
        if g is not ref:
            for b, st in g.at_budget.items():
                if b in ref.at_budget:
                    p = probability_of_improvement(st.values, ref.at_budget[b].values, s.confidence,
                                                   min(s.n_resamples, 2000), s.bootstrap_seed)
                    if p is not None:
                        g.improvement[b] = p
    shown = [int(b) for b in s.budgets if any(int(b) in g.at_budget for g in groups)]
    summary = Summary(s, groups, thresholds, auto, shown)
    if s.normalized_score:
        summary.random_returns = {e: float(v) for e, v in s.random_returns.items()}
        summary.scores = normalized_scores({(g.env_id, g.label): g.final.mean for g in groups},
                                           summary.random_returns)
    return summary
