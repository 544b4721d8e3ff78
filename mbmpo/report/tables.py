"""A summary as text: the long-format rows of ``summary.csv`` and the tables of
``summary.md``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mbmpo.report.stats import Stat, rank_agreement
from mbmpo.report.summary import GroupSummary, Summary

SUMMARY_COLUMNS = ("env", "label", "algo", "seeds", "metric", "at", "value", "ci_low", "ci_high",
                   "iqm", "median", "n_reached", "bound")


def summary_rows(summary: Summary) -> list[dict[str, Any]]:
    """Long-format rows of ``summary.csv`` (columns :data:`SUMMARY_COLUMNS`; ``value`` is the
    mean over seeds, ``median`` the median).

    ``metric``: ``return_at`` (``at`` = budget), ``final_return`` (``at`` = median last
    evaluated step), ``steps_to`` (``at`` = threshold; ``value`` empty if the median seed
    never reached it), ``ratio_vs_<reference>`` (``at`` = threshold; ``bound`` '>'/'<' when
    one side never reached it and its budget bounds the ratio), ``prob_improvement_vs_<reference>``
    (``at`` = budget: the probability that a seed of the label beats one of the reference, with
    its interval; needs ``rliable``), ``wall_hours``,
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
            "iqm": _num(stat.iqm) if stat else "", "median": _num(stat.median) if stat else "",
            "n_reached": n_reached, "bound": bound})

    ref = summary.settings.reference
    for g in summary.groups:
        for b, st in g.at_budget.items():
            add(g, "return_at", b, st.mean, st)
        for b, (p, lo, hi) in g.improvement.items():
            rows.append({"env": g.env_id, "label": g.label, "algo": g.algo, "seeds": " ".join(map(str, g.seeds)),
                         "metric": f"prob_improvement_vs_{ref}", "at": b, "value": _num(p), "ci_low": _num(lo),
                         "ci_high": _num(hi), "iqm": "", "median": "", "n_reached": "", "bound": ""})
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
           f"{conf} percentile-bootstrap confidence interval ({s.n_resamples} resamples), the "
           "median over seeds (med) and, from 4 seeds, the interquartile mean (IQM). Each seed is linearly "
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
        mb = [g.label for g in gs if g.algo == "mbmpo"]
        if mb and len(mb) < len(gs):
            out += [f"MB-MPO ({', '.join(mb)}) is given the env's exact reward function for its imagined "
                    "rewards (unless its config sets `learned_reward`); the other labels learn from "
                    "sampled rewards only.", ""]
        head = ["label", "algo", "seeds", *(steps_label(b) for b in summary.budgets), "final", "hours"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for g in gs:
            cells = [g.label, g.algo or "–", str(len(g.runs))]
            cells += [_stat_cell(g.at_budget[b]) if b in g.at_budget else "–" for b in summary.budgets]
            cells += [f"{_stat_cell(g.final)} @ {steps_label(g.final_step)}", _fmt(g.hours)]
            out.append("| " + " | ".join(cells) + " |")
        better = [g for g in gs if g.improvement]
        if better:
            out += ["", f"Probability that a seed of the label beats a seed of `{s.reference}` at each budget "
                    f"(ties count one half; {conf} stratified-bootstrap interval, `rliable`):", "",
                    "| label | " + " | ".join(steps_label(b) for b in summary.budgets) + " |",
                    "|" + "---|" * (len(summary.budgets) + 1)]
            for g in better:
                cells = [f"{g.improvement[b][0]:.2f} [{g.improvement[b][1]:.2f}, {g.improvement[b][2]:.2f}]"
                         if b in g.improvement else "–" for b in summary.budgets]
                out.append(f"| {g.label} | " + " | ".join(cells) + " |")
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
    med = f", med {_fmt(st.median)}" if st.n >= 2 else ""
    iq = f", IQM {_fmt(st.iqm)}" if st.n >= 4 else ""
    return f"{_fmt(st.mean)}{ci}{med}{iq}"


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
