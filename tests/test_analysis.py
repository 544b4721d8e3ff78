"""mbmpo.report: aggregation over seeds against hand-computed numbers, thresholds, ratios,
normalized scores, malformed runs and the report files."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from mbmpo.errors import ConfigError
from mbmpo.report import (
    ReportSettings,
    aggregate,
    bootstrap_ci,
    common_grid,
    discover_runs,
    efficiency_ratio,
    export_comparison,
    final_return,
    iqm,
    load_run,
    load_runs,
    median_steps,
    normalized_scores,
    random_policy_return,
    rank_agreement,
    read_progress,
    seed_stat,
    steps_to_threshold,
    summarize,
    summary_rows,
    value_at,
    write_report,
)
from mbmpo.report.stats import probability_of_improvement

ROOT = Path(__file__).resolve().parents[1]


def write_progress(run_dir: Path, evals: list[tuple[float, float]], train_rows_between: int = 1,
                   seconds_per_step: float = 0.01, config: dict | None = None) -> Path:
    """A progress.csv like scripts/train.py writes: training rows without evaluation
    between evaluation rows, plus unrelated columns."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cols = ["iteration", "real_steps", "loss/policy", "wall_time_s", "eval_return_mean", "eval_return_std"]
    rows, it, prev = [], 0, 0.0
    for step, ret in evals:
        for k in range(1, train_rows_between + 1):  # rows that did not evaluate
            s = prev + (step - prev) * k / (train_rows_between + 1)
            it += 1
            rows.append([it, s, 0.1, s * seconds_per_step, "", ""])
        it += 1
        rows.append([it, step, 0.1, step * seconds_per_step, ret, 1.0])
        prev = step
    with (run_dir / "progress.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)
    if config is not None:
        import yaml

        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir


def two_seeds(tmp_path: Path, env: str = "Pendulum-v1", label: str = "a"):
    """Seed 0 evaluates at 1000/2000/3000, seed 1 at 1500/2500/3500 (different steps)."""
    base = tmp_path / "cmp" / "runs" / env / label
    write_progress(base / "s0", [(1000, 0.0), (2000, 10.0), (3000, 20.0)])
    write_progress(base / "s1", [(1500, 5.0), (2500, 15.0), (3500, 35.0)])
    return tmp_path / "cmp"


def test_read_progress_skips_training_rows_and_survives_ragged_rows(tmp_path):
    d = write_progress(tmp_path / "r", [(100, 1.0), (200, 2.0)], train_rows_between=2)
    with (d / "progress.csv").open("a") as f:
        f.write("9,300,0.1,3,3.0,1.0,extra,cells\n7,350\n")  # too many / too few cells
    cols = read_progress(d / "progress.csv")
    assert cols["real_steps"][:6] == [100 / 3, 200 / 3, 100, 100 + 100 / 3, 100 + 200 / 3, 200]
    assert math.isnan(cols["eval_return_mean"][0]) and math.isnan(cols["eval_return_mean"][-1])
    run = load_run(d, env_id="E")
    np.testing.assert_allclose(run.steps, [100, 200, 300])
    np.testing.assert_allclose(run.returns, [1, 2, 3])
    assert run.last_step == 350
    np.testing.assert_allclose(run.hours, np.array([1.0, 2.0, 3.0]) / 3600)


def test_seeds_with_different_steps_are_interpolated_on_a_common_grid(tmp_path):
    runs = discover_runs(two_seeds(tmp_path))
    assert [(r.label, r.env_id, r.seed) for r in runs] == [("a", "Pendulum-v1", 0), ("a", "Pendulum-v1", 1)]
    np.testing.assert_allclose(common_grid([r.steps for r in runs]), [1500, 2000, 2500, 3000])
    curve = aggregate(runs, n_resamples=2000)
    # seed 0 at 1500 = 5 (between 0 and 10), seed 1 at 2000 = 10, at 3000 = 25
    np.testing.assert_allclose(curve.values, [[5, 10, 15, 20], [5, 10, 15, 25]])
    np.testing.assert_allclose(curve.mean, [5, 10, 15, 22.5])
    # two seeds: the bootstrap means are v0, (v0+v1)/2, v1 with probabilities 1/4, 1/2, 1/4,
    # so the 95% percentile interval is [min, max]; equal seeds give a zero-width interval
    np.testing.assert_allclose(curve.ci_low, [5, 10, 15, 20])
    np.testing.assert_allclose(curve.ci_high, [5, 10, 15, 25])
    assert value_at(runs[0], 2200) == pytest.approx(12.0)
    assert value_at(runs[1], 2200) == pytest.approx(12.0)
    assert math.isnan(value_at(runs[0], 3200))  # past seed 0's last evaluation: no extrapolation
    assert math.isnan(value_at(runs[1], 1000))  # before seed 1's first evaluation


def test_bootstrap_ci_and_iqm_against_hand_computation():
    # resampled means of [0, 0, 0, 4] are k with k ~ Binomial(4, 1/4): P(k <= 2) = 0.949 and
    # P(k <= 3) = 0.996, so the 97.5th percentile is 3 and the 2.5th is 0
    lo, hi = bootstrap_ci(np.array([[0.0], [0.0], [0.0], [4.0]]), n_resamples=20_000, seed=3)
    assert (lo[0], hi[0]) == (0.0, 3.0)
    again = bootstrap_ci(np.array([[0.0], [0.0], [1.0], [4.0]]), n_resamples=1000, seed=7)
    assert again == bootstrap_ci(np.array([[0.0], [0.0], [1.0], [4.0]]), n_resamples=1000, seed=7)
    assert all(math.isnan(x[0]) for x in bootstrap_ci(np.array([[1.0]])))
    assert iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm(np.array([0, 1, 2, 3, 100, 4, 5, 6.0])) == pytest.approx(3.5)  # outlier trimmed
    assert iqm(np.array([1.0, 2.0, 9.0])) == pytest.approx(4.0)  # < 4 seeds: the mean


def test_steps_to_threshold_median_and_ratio(tmp_path):
    runs = discover_runs(two_seeds(tmp_path))
    assert steps_to_threshold(runs[0], 15) == 3000  # first evaluation >= 15 is 20 at 3000
    assert steps_to_threshold(runs[1], 15) == 2500  # equal to the threshold counts
    assert steps_to_threshold(runs[0], 30) == math.inf
    assert median_steps([3000, 2500]) == (2750, 2)
    assert median_steps([math.inf, 3500]) == (math.inf, 1)  # half the seeds: not reached
    assert median_steps([1000, math.inf, 2000]) == (2000, 2)
    assert efficiency_ratio(4000, 1000, 5000, 6000) == (4.0, "")
    assert efficiency_ratio(math.inf, 1000, 5000, 6000) == (5.0, ">")
    assert efficiency_ratio(3000, math.inf, 5000, 6000) == (0.5, "<")
    r, b = efficiency_ratio(math.inf, math.inf, 5000, 6000)
    assert math.isnan(r) and b == ""
    assert final_return(runs[1], window=0.1) == 35.0  # only 3500 is in [3150, 3500]
    assert final_return(runs[1], window=0.5) == pytest.approx(25.0)  # 2500 and 3500


def test_summarize_hand_computed(tmp_path):
    cmp = two_seeds(tmp_path)
    write_progress(cmp / "runs" / "Pendulum-v1" / "ref" / "s0", [(1000, 0.0), (2000, 5.0), (3000, 15.0)])
    write_progress(cmp / "runs" / "Pendulum-v1" / "ref" / "s1", [(1000, 0.0), (2000, 15.0), (3000, 16.0)])
    settings = ReportSettings(reference="ref", budgets=[2000, 2200, 3200], thresholds={"*": [15, 30]},
                              labels=["ref", "a"], n_resamples=2000)
    s = summarize(discover_runs(cmp), settings)
    ref, a = s.groups
    assert (ref.label, a.label) == ("ref", "a")
    assert a.at_budget[2000].mean == 10 and a.at_budget[2200].mean == pytest.approx(12)
    assert ref.at_budget[2000].mean == 10 and ref.at_budget[2000].values == [5, 15]
    assert 3200 not in a.at_budget and s.budgets == [2000, 2200]  # seed 0 of 'a' ends at 3000
    assert a.steps_to[15] == (2750, 2) and ref.steps_to[15] == (2500, 2)
    assert a.ratio[15] == (pytest.approx(2500 / 2750), "")
    assert ref.ratio[15] == (1.0, "")
    # 'a' reached 30 with one seed of two: median not reached; ref never: no ratio
    assert a.steps_to[30] == (math.inf, 1) and math.isnan(a.ratio[30][0])
    rows = summary_rows(s)
    row = next(r for r in rows if r["label"] == "a" and r["metric"] == "return_at" and r["at"] == 2200)
    assert row["value"] == pytest.approx(12) and row["seeds"] == "0 1"
    ref_row = next(r for r in rows if r["label"] == "ref" and r["metric"] == "return_at" and r["at"] == 2000)
    assert ref_row["median"] == pytest.approx(10)  # median of the seeds' 5 and 15
    three = seed_stat([1.0, 2.0, 9.0], n_resamples=200)
    assert three.median == 2.0 and three.mean == 4.0

    row = next(r for r in rows if r["label"] == "a" and r["metric"] == "ratio_vs_ref" and r["at"] == 15)
    assert row["value"] == pytest.approx(0.909091)
    # automatic thresholds: from the median first evaluation (0) to the best final return
    # (label 'a': (20 + 35) / 2 = 27.5) at 25/50/75%
    s2 = summarize(discover_runs(cmp), ReportSettings(reference="ref", n_resamples=200))
    assert s2.thresholds["Pendulum-v1"] == [6.88, 13.8, 20.6] and "Pendulum-v1" in s2.auto_thresholds


def test_normalized_scores_and_rank_agreement():
    final = {("E1", "a"): 100.0, ("E1", "b"): 50.0, ("E2", "a"): 10.0, ("E2", "b"): 20.0,
             ("E1", "c"): -10.0}
    scores = normalized_scores(final, {"E1": 0.0, "E2": -10.0})
    assert scores["a"]["E1"] == 1.0 and scores["b"]["E1"] == 0.5 and scores["c"]["E1"] == -0.1
    assert scores["a"]["E2"] == pytest.approx(20 / 30) and scores["b"]["E2"] == 1.0
    assert scores["a"]["mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(scores["c"]["mean"])  # c has no E2 run
    assert math.isnan(normalized_scores(final, {"E1": 0.0})["a"]["mean"])  # no random return for E2
    rho, n = rank_agreement({"x": 0.1, "y": 0.5, "z": 0.9, "w": math.nan}, {"x": 0.2, "y": 0.3, "z": 1.0, "w": 1})
    assert (rho, n) == (pytest.approx(1.0), 3)


def test_random_policy_return_is_seeded():
    r1 = random_policy_return("mbmpo_test/PointMass-v0", num_episodes=3, seed=5)
    assert r1 == random_policy_return("mbmpo_test/PointMass-v0", num_episodes=3, seed=5)
    assert -61.0 < r1 < 0.0  # 30 steps of -|x| - 0.01 a^2 with |x| <= 2 at the start


def test_malformed_runs_warn_and_are_left_out(tmp_path):
    cmp = two_seeds(tmp_path)
    base = cmp / "runs" / "Pendulum-v1" / "bad"
    (base / "s0").mkdir(parents=True)  # not started: no progress.csv
    (base / "s1").mkdir()
    (base / "s1" / "progress.csv").write_text("")  # empty
    (base / "s2").mkdir()
    (base / "s2" / "progress.csv").write_bytes(b"\x00\xff\xfe garbage \x00\n\x00")  # corrupt
    write_progress(base / "s3", [(100, 1.0)])
    text = (base / "s3" / "progress.csv").read_text().splitlines()
    (base / "s3" / "progress.csv").write_text(
        "\n".join([text[0]] + [ln.rsplit(",", 2)[0] + ",," for ln in text[1:]]) + "\n")  # no evals
    (base / "s4").mkdir()
    (base / "s4" / "progress.csv").write_text("a,b\n1,2\n")  # no real_steps column
    warnings = []
    s = write_report(cmp, ReportSettings(n_resamples=200), warn=warnings.append)
    assert [g.label for g in s.groups] == ["a"]
    assert len(warnings) == 5
    for i, why in enumerate(["no progress.csv", "empty", "not a readable CSV", "no evaluation rows",
                             "no 'real_steps' column"]):
        assert str(base / f"s{i}") in warnings[i] and why in warnings[i], warnings[i]
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no readable run"):
        write_report(tmp_path / "empty", warn=warnings.append)


def test_load_runs_from_committed_progress_copies():
    files = sorted((ROOT / "benchmarks" / "results" / "ppo_200k").glob("HalfCheetah-v5_tuned_s*.csv"))
    warnings = []
    runs = load_runs({"ppo_tuned": files, "missing": [ROOT / "nope.csv"]}, env_id="HalfCheetah-v5",
                     warn=warnings.append)
    assert [(r.label, r.seed, r.env_id) for r in runs] == [("ppo_tuned", s, "HalfCheetah-v5") for s in (0, 1, 2)]
    assert len(warnings) == 1 and "nope.csv" in warnings[0]
    for r, f in zip(runs, files):
        last = read_progress(f)
        assert r.returns[-1] == last["eval_return_mean"][-1] and r.steps[-1] >= 200_000
    with pytest.raises(ConfigError, match="env id unknown"):
        load_run(files[0])  # a bare copy does not say its env


def test_report_files_plots_and_normalized_table(tmp_path):
    cmp = two_seeds(tmp_path)
    base = cmp / "runs" / "Pendulum-v1" / "b"
    write_progress(base / "s0", [(1000, -5.0), (2000, 0.0), (3000, 5.0)], seconds_per_step=0.02)
    write_progress(base / "s1", [(1000, -5.0), (2000, 2.0), (3000, 7.0)], seconds_per_step=0.02)
    write_progress(cmp / "runs" / "mbmpo_test__PointMass-v0" / "a" / "s0", [(10, -50.0), (20, -30.0)])
    settings = ReportSettings(reference="b", normalized_score=True, random_returns={"Pendulum-v1": -10.0},
                              paper_scores={"a": 0.8, "b": 0.5}, n_resamples=500, random_episodes=2,
                              budgets=[2000])
    s = write_report(cmp, settings, warn=pytest.fail)
    for env in ("Pendulum-v1", "mbmpo_test__PointMass-v0"):
        for x in ("steps", "hours"):
            for ext in ("png", "svg"):
                f = cmp / f"{env}_return_vs_{x}.{ext}"
                assert f.stat().st_size > 1000, f
    md = (cmp / "summary.md").read_text()
    assert "## Pendulum-v1" in md and "![Pendulum-v1_return_vs_steps.png]" in md
    assert "## Normalized score (PPO paper, Table 1)" in md
    # Pendulum: a final 27.5 (best) -> 1; b final 6 -> (6 + 10) / (27.5 + 10)
    assert s.scores["b"]["Pendulum-v1"] == pytest.approx(16 / 37.5)
    assert "| b | – | 0.43 | – | 0.50 |" in md  # PointMass has no run of b: no mean
    assert "PointMass-v0" in (cmp / "random_returns.json").read_text()  # measured and cached
    with (cmp / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {"return_at", "final_return", "steps_to", "ratio_vs_b", "wall_hours",
            "normalized_score", "paper_score"} <= {r["metric"] for r in rows}
    # the hours view uses wall_time_s: b's seeds took twice as long per step
    hb = next(g for g in s.groups if g.label == "b").hours
    ha = next(g for g in s.groups if g.label == "a" and g.env_id == "Pendulum-v1").hours
    assert hb == pytest.approx(60 / 3600) and ha == pytest.approx(32.5 / 3600)


def test_export_copies_only_the_lean_part(tmp_path):
    cmp = two_seeds(tmp_path)
    ckpt = cmp / "runs" / "Pendulum-v1" / "a" / "s0" / "checkpoints" / "last.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x" * 100)
    (cmp / "compare.yaml").write_text("report:\n  reference: a\n  n_resamples: 300\n")
    dest = tmp_path / "export"
    export_comparison(cmp, dest, warn=pytest.fail)
    assert (dest / "runs" / "Pendulum-v1" / "a" / "s1" / "progress.csv").is_file()
    assert not list(dest.rglob("*.pt"))
    assert (dest / "summary.md").is_file() and (dest / "compare.yaml").is_file()
    assert (dest / "summary.csv").read_text() == (write_report(cmp) and (cmp / "summary.csv").read_text())


def test_probability_of_improvement_against_hand_computation(tmp_path):
    pytest.importorskip("rliable", reason="the probability of improvement needs the report extra (rliable)")
    # pairs (x_i, y_j): 3>1, 3>2, 4>1, 4>2, 5>1, 5>2 win; 3<6, 4<6, 5<6 lose -> 6 of 9
    p, lo, hi = probability_of_improvement([3.0, 4.0, 5.0], [1.0, 2.0, 6.0], n_resamples=300)
    assert p == pytest.approx(6 / 9) and 0 <= lo <= p <= hi <= 1
    # a report rebuilt later gives the same interval, whatever numpy's global RNG holds
    x, y = [1751.0, 2000.0, 1500.0, 1600.0, 1700.0], [1700.0, 1800.0, 1600.0, 2100.0, 1400.0]
    first = [probability_of_improvement(x, y) for _ in range(2)]
    np.random.seed(123)
    assert first[0] == first[1] == probability_of_improvement(x, y)
    assert probability_of_improvement([1.0, 1.0], [1.0, 1.0], n_resamples=100)[0] == 0.5  # ties: one half
    assert probability_of_improvement([9.0, 8.0], [1.0, 2.0], n_resamples=100) == (1.0, 1.0, 1.0)
    cmp = two_seeds(tmp_path)  # label 'a' (10 and 10 at 2000) against a worse reference
    write_progress(cmp / "runs" / "Pendulum-v1" / "ref" / "s0", [(1000, 0.0), (2000, 1.0), (3000, 2.0)])
    write_progress(cmp / "runs" / "Pendulum-v1" / "ref" / "s1", [(1000, 0.0), (2000, 2.0), (3000, 3.0)])
    s = summarize(discover_runs(cmp), ReportSettings(reference="ref", budgets=[2000], n_resamples=300))
    a = next(g for g in s.groups if g.label == "a")
    assert a.improvement[2000][0] == 1.0 and not next(g for g in s.groups if g.label == "ref").improvement
    row = next(r for r in summary_rows(s) if r["metric"] == "prob_improvement_vs_ref")
    assert (row["label"], row["at"], row["value"]) == ("a", 2000, 1.0)
