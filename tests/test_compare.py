"""scripts/compare.py: label/preset parsing, the skip/resume/start decision, failures that do
not stop the others, and tiny end-to-end comparisons (in-process and with subprocesses)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mbmpo.errors import ConfigError, MBMPOError
from mbmpo.report import read_progress
from scripts import compare, plot, train
from tests.procs import HAVE_PROC, child_pids, running
from tests.test_analysis import write_progress

ROOT = Path(__file__).resolve().parents[1]
TINY_PPO = "num_steps=32,minibatch_size=16,update_epochs=1,hidden_sizes=[8],value_hidden_sizes=[8],eval_episodes=2,eval_every=32"
TINY_TRPO = "num_steps=32,vf_epochs=1,vf_minibatch_size=16,hidden_sizes=[8],value_hidden_sizes=[8],eval_episodes=2,eval_every=32"
POINT = "mbmpo_test/PointMass-v0"  # registered by conftest: in-process runs only


class InProcess:
    """Runner calling scripts/train.py's main in this process (sees conftest's test env)."""

    def __init__(self, fail: str | None = None):
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: list[str], log: Path) -> tuple[int, str]:
        self.calls.append(argv)
        if self.fail and any(self.fail in a for a in argv):
            Path(argv[argv.index("--out") + 1]).mkdir(parents=True)  # crashed before logging
            raise RuntimeError("simulated crash")
        try:
            return train.main(argv) or 0, ""
        except MBMPOError as exc:
            return 2, f"error: {exc}"


def point_args(out: Path, steps: str = "64", seeds: str = "2") -> list[str]:
    return ["--algos", f"ppo=ppo,{TINY_PPO}", f"trpo=trpo,{TINY_TRPO}", "--envs", POINT,
            "--seeds", seeds, "--total-steps", steps, "--out", str(out), "--threads", "1",
            "--budgets", "32", "64", "--thresholds", "-1000", "--random-returns", f"{POINT}=-40"]


def test_label_specs_steps_and_seeds():
    v = compare.parse_label_spec("clip0.1=ppo,objective=clip,clip-coef=0.1,hidden_sizes=[64, 64]")
    assert (v.label, v.algo) == ("clip0.1", "ppo")
    assert v.overrides == {"objective": "clip", "clip_coef": 0.1, "hidden_sizes": [64, 64]}
    assert compare.parse_label_spec("trpo").label == "trpo"
    with pytest.raises(ConfigError, match=r"unknown algo 'nope' in --algos 'x=nope'; allowed: .*mbmpo, ppo"):
        compare.parse_label_spec("x=nope")
    with pytest.raises(ConfigError, match="bad label 'a/b'"):
        compare.parse_label_spec("a/b=ppo")
    assert [compare.parse_steps(x) for x in ("200000", "200k", "1M", "1.5e5", 7)] == [200_000, 200_000, 1_000_000, 150_000, 7]
    with pytest.raises(ConfigError, match="bad steps '12q'"):
        compare.parse_steps("12q")
    assert compare.parse_seeds("3") == [0, 1, 2] and compare.parse_seeds("0,2,5") == [0, 2, 5]
    assert compare.parse_seeds([4]) == [4] and compare.parse_seeds("2,") == [2] and compare.parse_seeds("2") == [0, 1]
    for bad in (",", "2,,", "a,1"):
        with pytest.raises(ConfigError, match="bad seeds"):
            compare.parse_seeds(bad)
    assert compare.env_slug("HalfCheetah-v5") == "halfcheetah" and compare.env_slug(POINT) == "pointmass"


def plan_for(tmp_path, *argv):
    return compare.build_plan(compare.parse(["--out", str(tmp_path / "o"), *argv]))


def test_presets_and_overrides_resolved_and_validated(tmp_path):
    plan = plan_for(tmp_path, "--algos", "ppo", "ppo_tuned=ppo", "t=trpo,max_kl=0.02", "--envs", "HalfCheetah-v5",
                    "Hopper-v5", "--presets", "ppo_tuned=scripts/configs/{env}_ppo_tuned.yaml",
                    "ppo:Hopper-v5=scripts/configs/hopper_ppo_tuned.yaml", "--total-steps", "200k", "t=100k")
    v = plan.variants
    assert compare.preset_path(v["ppo"], "HalfCheetah-v5") == ROOT / "scripts/configs/halfcheetah_ppo.yaml"
    assert compare.preset_path(v["ppo"], "Hopper-v5").name == "hopper_ppo_tuned.yaml"
    assert compare.preset_path(v["ppo_tuned"], "Hopper-v5").name == "hopper_ppo_tuned.yaml"
    assert compare.preset_path(v["t"], "Hopper-v5") is None  # no hopper_trpo.yaml: TRPO defaults
    cfg = compare.run_config(v["t"], "HalfCheetah-v5", plan)
    assert cfg["max_kl"] == 0.02 and cfg["num_steps"] == 5000 and "total_steps" not in cfg
    assert plan.budget("t") == 100_000 and plan.budget("ppo") == 200_000
    assert plan.report.reference == "ppo" and plan.report.labels == ["ppo", "ppo_tuned", "t"]
    for argv, msg in [
        (["--algos", "x=ppo,clip_coeff=0.1"], "unknown config key 'clip_coeff' in label 'x'"),
        (["--algos", "x=ppo,objective=kl"], "label 'x' on HalfCheetah-v5 .*objective 'kl' is not allowed"),
        (["--algos", "x=ppo,seed=3"], "'seed' cannot be overridden per label"),
        (["--algos", "ppo", "--presets", "ppo=scripts/configs/nope_{env}.yaml"], "preset 'scripts/configs/nope_halfcheetah.yaml'"),
        (["--algos", "ppo", "--presets", "ppo=scripts/configs/halfcheetah_trpo.yaml"], "is for algo 'trpo'"),
        (["--algos", "ppo", "--reference", "trpo"], "reference 'trpo' is not a label"),
        (["--algos", "ppo", "--total-steps", "trpo=5"], "no label 'trpo'"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            plan_for(tmp_path, *argv, "--envs", "HalfCheetah-v5")
    with pytest.raises(ConfigError, match="unknown env id 'Nope-v0'"):
        plan_for(tmp_path, "--algos", "ppo", "--envs", "Nope-v0")
    with pytest.raises(ConfigError, match="nothing to compare"):
        plan_for(tmp_path, "--envs", "HalfCheetah-v5")


def test_only_restricts_labels_includes_and_reference(tmp_path):
    spec = ROOT / "scripts/configs/compare/halfcheetah.yaml"
    plan = plan_for(tmp_path, "--spec", str(spec), "--only", "mbmpo", "trpo")
    assert list(plan.variants) == ["mbmpo", "trpo"] and plan.includes == []
    assert plan.report.labels == ["mbmpo", "trpo"] and plan.report.reference == "mbmpo"
    plan = plan_for(tmp_path, "--spec", str(spec), "--only", "ppo_tuned")
    assert [inc[0] for inc in plan.includes] == ["ppo_tuned"] and plan.report.reference == "ppo_tuned"
    with pytest.raises(ConfigError, match=r"--only nope: no such label; labels: mbmpo, mbmpo_prob, mbmpo_prob_kl0.02, mbmpo_prob_pen5, mbmpo_prob_pen5_tvimag_fall5, ppo, ppo_tuned, trpo"):
        plan_for(tmp_path, "--spec", str(spec), "--only", "nope")


def test_spec_files_shipped_are_valid(tmp_path):
    t1 = plan_for(tmp_path, "--spec", str(ROOT / "scripts/configs/compare/ppo_table1.yaml"))
    assert len(t1.variants) == 11 and t1.report.normalized_score and t1.report.reference == "clip_0.2"
    assert t1.report.paper_scores["clip_0.2"] == 0.82 and t1.report.paper_scores["none"] == -0.39
    assert compare.run_config(t1.variants["fixed_kl_3"], "Hopper-v5", t1)["kl_coef"] == 3.0
    hc = plan_for(tmp_path, "--spec", str(ROOT / "scripts/configs/compare/halfcheetah.yaml"), "--seeds", "2")
    assert hc.seeds == [0, 1] and hc.budget("mbmpo") == 100_000 and hc.budget("trpo") == 200_000
    # 'mbmpo' keeps the deterministic models it was measured with; the preset now has probabilistic ones
    assert compare.run_config(hc.variants["mbmpo"], "HalfCheetah-v5", hc)["model_type"] == "deterministic"
    assert compare.run_config(hc.variants["mbmpo_prob"], "HalfCheetah-v5", hc)["model_type"] == "probabilistic"
    assert hc.budget("mbmpo_prob") == 200_000 and hc.budget("mbmpo_prob_kl0.02") == 200_000 == hc.budget("mbmpo_prob_pen5")
    assert hc.budget("mbmpo_prob_pen5_tvimag_fall5") == 200_000
    # labels keep the max KL they were measured with; the preset's is now 0.02
    assert compare.run_config(hc.variants["mbmpo_prob_kl0.02"], "HalfCheetah-v5", hc)["max_kl"] == 0.02
    assert all(compare.run_config(hc.variants[k], "HalfCheetah-v5", hc)["max_kl"] == 0.01 for k in ("mbmpo", "mbmpo_prob"))
    ab = plan_for(tmp_path, "--spec", str(ROOT / "scripts/configs/compare/mbmpo_ablation.yaml"))
    cfgs = {k: compare.run_config(v, "HalfCheetah-v5", ab) for k, v in ab.variants.items()}
    # the ablations on today's preset change only their own fields against it
    preset = yaml.safe_load((ROOT / "scripts/configs/halfcheetah_mbmpo.yaml").read_text())
    for label, own in {"mbmpo_pre22_k1": {"num_models": 1}, "mbmpo_pre22_alpha0": {"inner_lr": 0.0},
                       "mbmpo_pre22_ppo_outer": {"outer": "ppo", "inner_kl_coef": 0.0005}}.items():
        c = cfgs.pop(label)
        assert set(preset) - compare.RESERVED <= set(c) and {k: v for k, v in c.items() if preset.get(k) != v} == own
    kls = {k: c["max_kl"] for k, c in cfgs.items()}
    assert kls.pop("mbmpo_kl0.03") == kls.pop("mbmpo_prob_kl0.03") == 0.03 and kls.pop("mbmpo_prob_kl0.02") == 0.02
    assert all(kls.pop(k) == 0.02 for k in ("mbmpo_prob_meta60", "mbmpo_prob_meta15", "mbmpo_prob_it1k", "mbmpo_prob_pi64",
                                            "mbmpo_prob_pen1", "mbmpo_prob_pen5", "mbmpo_prob_pen10",
                                            "mbmpo_prob_pen5_std0.15", "mbmpo_prob_pen7.5",
                                            "mbmpo_prob_pen5_focus0.25", "mbmpo_prob_pen5_tv",
                                            "mbmpo_prob_pen5_tvimag", "mbmpo_prob_pen5_tvimag_fall5"))
    assert set(kls.values()) == {0.01}
    # the screens change one thing each against the preset (30 meta-steps, 500 steps per env, 32x32)
    assert [cfgs[k]["num_meta_steps"] for k in ("mbmpo_prob_kl0.02", "mbmpo_prob_meta60", "mbmpo_prob_meta15")] == [30, 60, 15]
    assert (cfgs["mbmpo_prob_it1k"]["num_steps"], cfgs["mbmpo_prob_it1k"]["num_meta_steps"]) == (250, 15)
    assert list(cfgs["mbmpo_prob_pi64"]["hidden_sizes"]) == [64, 64]
    # the preset penalizes imagined rewards (model_penalty 5.0); every label measured
    # without the penalty pins it off, the screens set their own
    pens = {k: c["model_penalty"] for k, c in cfgs.items()}
    assert [pens.pop(k) for k in ("mbmpo_prob_pen1", "mbmpo_prob_pen5", "mbmpo_prob_pen10",
                                  "mbmpo_prob_pen5_std0.15", "mbmpo_prob_pen7.5",
                                  "mbmpo_prob_pen5_focus0.25", "mbmpo_prob_pen5_tv",
                                  "mbmpo_prob_pen5_tvimag", "mbmpo_prob_pen5_tvimag_fall5")] == [1.0, 5.0, 10.0, 5.0, 7.5, 5.0, 5.0, 5.0, 5.0]
    assert set(pens.values()) == {0.0}
    # the penalized preset with a floor under the std; every other penalized label has none
    stds = {k: c.get("min_std", 0.0) for k, c in cfgs.items() if k.startswith("mbmpo_prob_pen")}
    assert stds == {"mbmpo_prob_pen1": 0.0, "mbmpo_prob_pen5": 0.0, "mbmpo_prob_pen10": 0.0, "mbmpo_prob_pen5_std0.15": 0.15,
                    "mbmpo_prob_pen7.5": 0.0, "mbmpo_prob_pen5_focus0.25": 0.0, "mbmpo_prob_pen5_tv": 0.0,
                    "mbmpo_prob_pen5_tvimag": 0.0, "mbmpo_prob_pen5_tvimag_fall5": 0.0}
    # focused imagined starts on one label only
    focus = {k: c.get("focus_fraction", 0.0) for k, c in cfgs.items()}
    assert focus.pop("mbmpo_prob_pen5_focus0.25") == 0.25 and set(focus.values()) == {0.0}
    tv = {k: (c.get("terminal_value", "off"), c.get("terminal_value_epochs", 5)) for k, c in cfgs.items()}
    assert tv.pop("mbmpo_prob_pen5_tv") == ("real", 10) and tv.pop("mbmpo_prob_pen5_tvimag") == ("imagined", 2)
    assert tv.pop("mbmpo_prob_pen5_tvimag_fall5") == ("imagined", 2)
    assert {on for on, _ in tv.values()} == {"off"}  # the preset's epochs (2) are unused when off
    # the fall-hazard cost on one label only
    falls = {k: c.get("fall_penalty", 0.0) for k, c in cfgs.items()}
    assert falls.pop("mbmpo_prob_pen5_tvimag_fall5") == 5.0 and set(falls.values()) == {0.0}
    # that label is the preset, so it matches the preset file field for field
    assert all(cfgs["mbmpo_prob_pen5_tvimag_fall5"][k] == v for k, v in preset.items() if k not in compare.RESERVED)
    hc_cfgs = {k: compare.run_config(hc.variants[k], "HalfCheetah-v5", hc)
               for k in ("mbmpo", "mbmpo_prob", "mbmpo_prob_kl0.02", "mbmpo_prob_pen5", "mbmpo_prob_pen5_tvimag_fall5")}
    assert {k: c["model_penalty"] for k, c in hc_cfgs.items()} == {
        "mbmpo": 0.0, "mbmpo_prob": 0.0, "mbmpo_prob_kl0.02": 0.0, "mbmpo_prob_pen5": 5.0, "mbmpo_prob_pen5_tvimag_fall5": 5.0}
    assert {k: (c["terminal_value"], c["fall_penalty"]) for k, c in hc_cfgs.items()} == {
        "mbmpo": ("off", 0.0), "mbmpo_prob": ("off", 0.0), "mbmpo_prob_kl0.02": ("off", 0.0),
        "mbmpo_prob_pen5": ("off", 0.0), "mbmpo_prob_pen5_tvimag_fall5": ("imagined", 5.0)}
    imports = compare.plan_imports(hc)
    assert {(d.parent.name, d.name) for _, d, _ in imports} == {
        ("ppo", "s0"), ("ppo", "s1"), ("ppo", "s2"), ("ppo_tuned", "s0"), ("ppo_tuned", "s1"),
        ("ppo_tuned", "s2")}


def test_hopper_walker_labels_keep_the_settings_they_were_measured_with(tmp_path):
    # the Hopper preset took mbmpo_tvimag_g995_std0.3's settings; every older label
    # pins the values before it, which on Walker2d-v5 are that preset's own
    hw = plan_for(tmp_path, "--spec", str(ROOT / "scripts/configs/compare/mbmpo_hopper_walker.yaml"))
    keys = ("gamma", "terminal_value", "terminal_value_epochs", "min_std")
    old = dict(zip(keys, (0.99, "off", 5, 0.0)))
    own = {"mbmpo": {}, "mbmpo_h50": {}, "mbmpo_prob_kl0.02": {}, "mbmpo_std0.3": {"min_std": 0.3},
           "mbmpo_h50_tvimag": {"terminal_value": "imagined", "terminal_value_epochs": 2},
           "mbmpo_tvimag": {"terminal_value": "imagined", "terminal_value_epochs": 2},
           "mbmpo_tvimag_g995": {"terminal_value": "imagined", "terminal_value_epochs": 2, "gamma": 0.995},
           "mbmpo_tvimag_g995_std0.3": {"terminal_value": "imagined", "terminal_value_epochs": 2, "gamma": 0.995,
                                        "min_std": 0.3}}
    assert set(own) | {"ppo"} == set(hw.variants)
    for env in ("Hopper-v5", "Walker2d-v5"):
        for label, fields in own.items():
            cfg = compare.run_config(hw.variants[label], env, hw)
            assert {k: cfg[k] for k in keys} == {**old, **fields}, (env, label)
    presets = {env: {k: v for k, v in yaml.safe_load((ROOT / f"scripts/configs/{name}_mbmpo.yaml").read_text()).items()
                     if k not in compare.RESERVED}
               for env, name in (("Hopper-v5", "hopper"), ("Walker2d-v5", "walker2d"))}

    def is_preset(label: str, env: str) -> bool:
        return compare.same_config(compare.run_config(hw.variants[label], env, hw), presets[env])

    assert is_preset("mbmpo_tvimag_g995_std0.3", "Hopper-v5") and is_preset("mbmpo", "Walker2d-v5")
    assert not is_preset("mbmpo", "Hopper-v5")


def test_run_status_decisions(tmp_path):
    assert compare.run_status(tmp_path / "missing", 100) == "start"
    short = write_progress(tmp_path / "short", [(50, 1.0)])
    assert compare.run_status(short, 100) == "start"  # no checkpoint: start over
    (short / "checkpoints").mkdir()
    (short / "checkpoints" / "last.pt").write_bytes(b"x")
    assert compare.run_status(short, 100) == "resume"
    assert compare.run_status(short, 50) == "done"  # budget reached: never retrained
    broken = tmp_path / "broken"
    (broken / "checkpoints").mkdir(parents=True)
    (broken / "checkpoints" / "last.pt").write_bytes(b"x")
    (broken / "progress.csv").write_bytes(b"\x00\x00")
    assert compare.run_status(broken, 100) == "resume"
    done = write_progress(tmp_path / "done", [(50, 1.0), (120, 2.0)])
    assert compare.run_status(done, 100) == "done"
    (done / "imported.yaml").write_text("source: x\n")
    assert compare.run_status(done, 10**9) == "imported"


def test_in_process_compare_skips_resumes_and_reports(tmp_path, capsys):
    out = tmp_path / "cmp"
    runner = InProcess()
    assert compare.main(point_args(out), runner=runner) == 0
    assert len(runner.calls) == 4 and all("--preset" in c for c in runner.calls)
    assert [c[c.index("--seed") + 1] for c in runner.calls] == ["0", "0", "1", "1"]  # seeds outermost
    ppo0 = out / "runs" / "mbmpo_test__PointMass-v0" / "ppo" / "s0"
    assert read_progress(ppo0 / "progress.csv")["real_steps"] == [32, 64]
    cfg = yaml.safe_load((ppo0 / "config.yaml").read_text())
    assert cfg["hidden_sizes"] == [8] and cfg["eval_episodes"] == 2 and cfg["seed"] == 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {(r["label"], r["metric"], r["at"]) for r in rows} >= {("ppo", "return_at", "64"),
                                                                  ("trpo", "ratio_vs_ppo", "-1000.0")}
    assert (out / "mbmpo_test__PointMass-v0_return_vs_steps.svg").stat().st_size > 1000
    trpo1 = out / "runs" / "mbmpo_test__PointMass-v0" / "trpo" / "s1"
    ckpt_at_64 = (trpo1 / "checkpoints" / "last.pt").read_bytes()
    # same command again: everything finished, nothing trained twice
    runner2 = InProcess()
    assert compare.main(point_args(out), runner=runner2) == 0 and runner2.calls == []
    # a larger budget resumes every run from its checkpoint and continues its progress.csv
    runner3 = InProcess()
    assert compare.main(point_args(out, steps="96"), runner=runner3) == 0
    assert len(runner3.calls) == 4 and all(c[0] == "--resume" and c[3] == "96" for c in runner3.calls)
    assert read_progress(ppo0 / "progress.csv")["real_steps"] == [32, 64, 96]
    # a run interrupted at 64 steps (its checkpoint and progress.csv from then) is resumed,
    # the finished ones are skipped
    (trpo1 / "checkpoints" / "last.pt").write_bytes(ckpt_at_64)
    with (trpo1 / "progress.csv").open() as f:
        lines = f.readlines()
    (trpo1 / "progress.csv").write_text("".join(lines[:-1]))
    runner4 = InProcess()
    assert compare.main(point_args(out, steps="96"), runner=runner4) == 0
    assert runner4.calls == [["--resume", str(trpo1), "--total-steps", "96", "--threads", "1"]]
    assert read_progress(trpo1 / "progress.csv")["real_steps"] == [32, 64, 96]
    # a changed label config is refused instead of being mixed with the old runs
    changed = [a.replace("update_epochs=1", "update_epochs=2") for a in point_args(out, steps="96")]
    with pytest.raises(ConfigError, match="label 'ppo' on mbmpo_test/PointMass-v0 already has runs"):
        compare.main(changed, runner=InProcess())
    # a field written out at the value the runs had (a pin added when a preset changes) is
    # the same config: nothing is refused or retrained
    pinned = [a.replace("update_epochs=1", "update_epochs=1,clip_coef=0.2") for a in point_args(out, steps="96")]
    runner5 = InProcess()
    assert compare.main(pinned, runner=runner5) == 0 and runner5.calls == []
    assert compare.same_config({"algo": "ppo"}, {"algo": "ppo", "clip_coef": 0.2})
    assert not compare.same_config({"algo": "ppo"}, {"algo": "ppo", "clip_coef": 0.3})
    assert not compare.same_config({"algo": "ppo"}, {"algo": "trpo"})


def test_failed_run_is_reported_and_the_others_finish(tmp_path, capsys):
    out = tmp_path / "cmp"
    runner = InProcess(fail="trpo/s1")
    assert compare.main(point_args(out), runner=runner) == 1
    err = capsys.readouterr().err
    assert "failed: mbmpo_test/PointMass-v0/trpo/s1: RuntimeError: simulated crash" in err
    assert "warning: skipping run" in err and "trpo/s1" in err  # the report leaves it out
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["seeds"] for r in rows if r["label"] == "trpo"} == {"0"}
    assert {r["seeds"] for r in rows if r["label"] == "ppo"} == {"0 1"}


def test_include_existing_runs_dry_run_and_plot_cli(tmp_path, capsys):
    src = tmp_path / "src"
    write_progress(src / "Pendulum-v1_old_s0", [(100, 1.0), (200, 2.0)])
    write_progress(src / "Pendulum-v1_old_s4", [(100, 3.0), (200, 5.0)])
    csvs = []
    for d in sorted(src.iterdir()):
        (d / "progress.csv").rename(src / f"{d.name}.csv")
        csvs.append(src / f"{d.name}.csv")
    out = tmp_path / "cmp"
    args = ["--include", f"old:Pendulum-v1={src}/Pendulum-v1_old_s*.csv", "--out", str(out),
            "--budgets", "150"]
    assert compare.main([*args, "--dry-run"]) == 0 and not out.exists()
    assert compare.main(args) == 0
    s4 = out / "runs" / "Pendulum-v1" / "old" / "s4"
    assert (s4 / "imported.yaml").is_file() and compare.run_status(s4, 10**6) == "imported"
    assert "| old | – | 2 | 2.75 [1.5, 4], med 2.75 |" in (out / "summary.md").read_text()  # (1.5 + 4) / 2 at 150
    with pytest.raises(ConfigError, match="matched nothing"):
        compare.main(["--include", "x:Pendulum-v1=/nonexistent/*.csv", "--out", str(out)])
    with pytest.raises(ConfigError, match="env of .* unknown"):
        compare.main(["--include", f"x={csvs[0]}", "--out", str(tmp_path / "c2")])
    # plot.py: a comparison dir makes the report; run dirs still make one PNG, bad ones warned
    capsys.readouterr()
    assert plot.main([str(out)]) == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    png = tmp_path / "curves.png"
    assert plot.main([str(s4), str(bad), "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    assert f"warning: skipping run '{bad}': no progress.csv" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no readable run"):
        plot.main([str(bad), "--out", str(png)])


@pytest.mark.timeout(120)
def test_end_to_end_two_algorithms_in_subprocesses(tmp_path):
    """The real path: train.py subprocesses (two at once), then the report."""
    out = tmp_path / "cmp"
    tiny_ppo = TINY_PPO.replace("eval_every=32", "eval_every=64").replace("num_steps=32", "num_steps=64")
    tiny_ppo = tiny_ppo.replace("minibatch_size=16", "minibatch_size=64").replace("eval_episodes=2", "eval_episodes=1")
    tiny_trpo = TINY_TRPO.replace("eval_every=32", "eval_every=64").replace("num_steps=32", "num_steps=64")
    tiny_trpo = tiny_trpo.replace("eval_episodes=2", "eval_episodes=1")
    proc = subprocess.run(
        [sys.executable, "scripts/compare.py", "--algos", f"ppo=ppo,{tiny_ppo}", f"trpo=trpo,{tiny_trpo}",
         "--envs", "Pendulum-v1", "--seeds", "1", "--total-steps", "128", "--jobs", "2",
         "--out", str(out), "--budgets", "128"],
        cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    assert "2 runs, 2 start; 2 at a time, 1 thread(s) each" in proc.stdout
    for label in ("ppo", "trpo"):
        run = out / "runs" / "Pendulum-v1" / label / "s0"
        assert read_progress(run / "progress.csv")["real_steps"] == [64, 128]
        assert (run / "checkpoints" / "last.pt").is_file()
        assert (out / "logs" / f"Pendulum-v1__{label}__s0.log").is_file()
    md = (out / "summary.md").read_text()
    assert "| ppo | ppo | 1 |" in md and "| trpo | trpo | 1 |" in md
    for x in ("steps", "hours"):
        assert (out / f"Pendulum-v1_return_vs_{x}.png").stat().st_size > 1000
    # a bad algo name: one clear line (run_main prints "error: ..." and exits with 2)
    with pytest.raises(ConfigError, match=r"^unknown algo 'nope' in --algos 'nope'; allowed: "):
        compare.main(["--algos", "nope", "--envs", "Pendulum-v1", "--out", str(out)])


@pytest.mark.skipif(not HAVE_PROC, reason="finds the training run through /proc")
@pytest.mark.timeout(120)
def test_sigterm_stops_the_training_runs_it_started(tmp_path):
    out = tmp_path / "cmp"
    progress = out / "runs" / "Pendulum-v1" / "ppo" / "s0" / "progress.csv"
    proc = subprocess.Popen([sys.executable, "scripts/compare.py", "--algos", f"ppo=ppo,{TINY_PPO}", "--envs",
                             "Pendulum-v1", "--total-steps", "100000000", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not progress.exists():
            time.sleep(0.2)
        assert progress.exists(), "the training run did not start"
        children = child_pids(proc.pid)
        assert len(children) == 1, children
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert not running(children[0])
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in filter(running, children):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped 1 training run(s); the same command resumes them" in err


def test_headline_protocol_held_out_seeds_same_evaluation_clean_tree(tmp_path, monkeypatch):
    out = tmp_path / "cmp"

    def head_args(seeds: str) -> list[str]:  # labels without evaluation settings of their own
        strip = lambda t: ",".join(x for x in t.split(",") if not x.startswith("eval_"))  # noqa: E731
        return ["--algos", f"ppo=ppo,{strip(TINY_PPO)}", f"trpo=trpo,{strip(TINY_TRPO)}", "--envs", POINT,
                "--seeds", seeds, "--total-steps", "64", "--out", str(out), "--headline"]

    # seeds 100-104 are held out: a tuning or screening comparison may not use them
    with pytest.raises(ConfigError, match="seed 100 is held out for headline figures"):
        compare.build_plan(compare.parse(point_args(out, seeds="99,100")))
    # a headline comparison runs them only, trains everything itself and evaluates every label alike
    with pytest.raises(ConfigError, match="held-out seeds 100-104 only, got seed 3"):
        compare.build_plan(compare.parse(head_args("3,100")))
    with pytest.raises(ConfigError, match="--include is not allowed"):
        compare.build_plan(compare.parse([*head_args("100,101"), "--include", "ppo=nowhere/*"]))
    monkeypatch.setattr(compare, "source_tree_dirty", lambda: False)
    plan = compare.build_plan(compare.parse(head_args("100,101")))
    assert plan.headline and plan.seeds == [100, 101]
    for label in ("ppo", "trpo"):
        cfg = compare.run_config(plan.variants[label], POINT, plan)
        assert {k: cfg[k] for k in compare.HEADLINE_EVAL} == compare.HEADLINE_EVAL
    with pytest.raises(ConfigError, match="'eval_episodes' is set by the headline protocol"):
        compare.build_plan(compare.parse(["--algos", f"ppo=ppo,{TINY_PPO},eval_episodes=3", "--envs", POINT,
                                          "--seeds", "100,", "--out", str(out), "--headline"]))
    # a dirty source tree stops a headline comparison, unless allowed and then recorded
    monkeypatch.setattr(compare, "source_tree_dirty", lambda: True)
    with pytest.raises(ConfigError, match="uncommitted changes: headline runs start from a clean commit"):
        compare.build_plan(compare.parse(head_args("100,")))
    plan = compare.build_plan(compare.parse([*head_args("100,"), "--allow-dirty"]))
    compare.write_compare_yaml(plan)
    record = yaml.safe_load((out / "compare.yaml").read_text())
    assert record["headline"] is True and record["source_dirty"] is True
    assert compare.build_plan(compare.parse(["--spec", str(out / "compare.yaml"), "--out", str(tmp_path / "again"),
                                             "--allow-dirty"])).headline  # compare.yaml is a spec again


def test_ray_backend_runs_each_job_as_a_task_on_loopback(tmp_path):
    pytest.importorskip("ray", reason="the Ray backend needs the optional ray package")
    out = tmp_path / "cmp"
    tiny = TINY_PPO.replace("eval_every=32", "eval_every=64").replace("num_steps=32", "num_steps=64")
    tiny = tiny.replace("minibatch_size=16", "minibatch_size=64").replace("eval_episodes=2", "eval_episodes=1")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)  # a local instance on 127.0.0.1
    cmd = [sys.executable, "scripts/compare.py", "--algos", f"ppo=ppo,{tiny}", "--envs", "Pendulum-v1",
           "--seeds", "2", "--total-steps", "128", "--jobs", "2", "--threads", "1", "--backend", "ray",
           "--out", str(out), "--budgets", "128"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    for s in (0, 1):
        run = out / "runs" / "Pendulum-v1" / "ppo" / f"s{s}"
        assert read_progress(run / "progress.csv")["real_steps"] == [64, 128]
    assert "| ppo | ppo | 2 |" in (out / "summary.md").read_text()
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "2 runs, 2 done" in again.stdout  # finished runs are skipped
