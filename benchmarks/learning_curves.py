"""Benchmarks 2-4: learning curves of the model-free baselines.

Runs ``scripts/train.py`` jobs (one torch thread each, ``--jobs`` at a time), skipping runs
that already finished and resuming interrupted ones, then writes per-suite tables and plots
to ``benchmarks/results/<suite>/``:

    python benchmarks/learning_curves.py --suite ppo_200k --jobs 2    # HalfCheetah/Hopper x default/tuned x 3 seeds
    python benchmarks/learning_curves.py --suite ppo_1m --jobs 2      # one seed to 1M steps per preset
    python benchmarks/learning_curves.py --suite trpo_200k
    python benchmarks/learning_curves.py --suite minigrid             # steps until mean return > 0.9
    python benchmarks/learning_curves.py --suite ppo_200k --report    # tables/plots only
    python benchmarks/learning_curves.py --suite dppo_1m --jobs 1      # DPPO (2 workers) vs PPO, 3 seeds
    python benchmarks/learning_curves.py --suite dppo_pomdp --jobs 1   # velocities hidden: GRU vs MLP DPPO
    python benchmarks/learning_curves.py --suite dppo_pomdp_hopper --jobs 1   # the same on Hopper, 500k
    python benchmarks/learning_curves.py --suite dppo_1m --jobs 1 --only "*dppo_s0"   # a subset of the jobs
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbmpo.report import eval_curve, read_progress  # noqa: E402

CFG = ROOT / "scripts" / "configs"
PRESETS = {
    ("HalfCheetah-v5", "default"): CFG / "halfcheetah_ppo.yaml",
    ("HalfCheetah-v5", "tuned"): CFG / "halfcheetah_ppo_tuned.yaml",
    ("Hopper-v5", "default"): CFG / "hopper_ppo.yaml",
    ("Hopper-v5", "tuned"): CFG / "hopper_ppo_tuned.yaml",
}
BUDGETS = [50_000, 100_000, 200_000, 500_000, 1_000_000]


def suite_jobs(suite: str) -> list[dict]:
    jobs = []
    if suite == "ppo_200k":
        for (env, kind), preset in PRESETS.items():
            for s in (0, 1, 2):
                jobs.append(dict(name=f"{env}_{kind}_s{s}", env=env, group=f"{env} {kind}",
                                 preset=preset, seed=s, steps=200_000, extra=[]))
    elif suite == "ppo_1m":
        # One seed to 1M per env with the better preset at 200k: the HalfCheetah tuned preset
        # does not anneal its learning rate, so its 200k seed-0 run is continued (copied, then
        # resumed); on Hopper the zoo-tuned preset stalls at ~1000 (standing still), so the
        # default preset runs from scratch (it anneals over its 1M budget).
        for env, kind, from_run in (("HalfCheetah-v5", "tuned", "ppo_200k/HalfCheetah-v5_tuned_s0"),
                                    ("Hopper-v5", "default", None)):
            jobs.append(dict(name=f"{env}_{kind}_s0", env=env, group=f"{env} {kind}",
                             preset=PRESETS[(env, kind)], seed=0, steps=1_000_000, extra=[],
                             from_run=from_run))
    elif suite == "trpo_200k":
        jobs.append(dict(name="HalfCheetah-v5_trpo_s0", env="HalfCheetah-v5", group="HalfCheetah-v5 trpo",
                         preset=CFG / "halfcheetah_trpo.yaml", seed=0, steps=200_000, extra=[]))
    elif suite == "minigrid":
        for env, steps in (("MiniGrid-Empty-5x5-v0", 50_000), ("MiniGrid-Empty-8x8-v0", 150_000)):
            for s in (0, 1, 2):
                jobs.append(dict(name=f"{env}_s{s}", env=env, group=env, preset=CFG / "minigrid_ppo.yaml",
                                 seed=s, steps=steps, extra=["--eval-every", "2048"]))
    elif suite == "dppo_1m":
        # DPPO with 2 worker processes (both cores) vs single-process PPO at equal real steps:
        # the default preset (PPO's own hyperparameters, the ones the DPPO preset follows) and
        # the tuned one. Run the DPPO jobs with --jobs 1 so their workers own the cores. The
        # tuned PPO preset has a constant learning rate, so its earlier runs are continued
        # where they exist (ppo_1m seed 0, ppo_200k seeds 1 and 2), as the ppo_1m suite does.
        ppo_from = {0: "ppo_1m/HalfCheetah-v5_tuned_s0", 1: "ppo_200k/HalfCheetah-v5_tuned_s1",
                    2: "ppo_200k/HalfCheetah-v5_tuned_s2"}
        for s in (0, 1, 2):
            jobs.append(dict(name=f"HalfCheetah-v5_dppo_s{s}", env="HalfCheetah-v5",
                             group="HalfCheetah-v5 dppo-2w", preset=CFG / "halfcheetah_dppo.yaml",
                             seed=s, steps=1_000_000, extra=["--workers", "2"]))
            jobs.append(dict(name=f"HalfCheetah-v5_tuned_s{s}", env="HalfCheetah-v5",
                             group="HalfCheetah-v5 ppo-tuned", preset=PRESETS[("HalfCheetah-v5", "tuned")],
                             seed=s, steps=1_000_000, extra=[], from_run=ppo_from[s]))
            jobs.append(dict(name=f"HalfCheetah-v5_default_s{s}", env="HalfCheetah-v5",
                             group="HalfCheetah-v5 ppo-default", preset=PRESETS[("HalfCheetah-v5", "default")],
                             seed=s, steps=1_000_000, extra=[]))
    elif suite in ("dppo_pomdp", "dppo_pomdp_hopper"):
        # velocities hidden: recurrent vs feed-forward DPPO. On HalfCheetah the joint positions
        # of one frame already carry much of a gait; Hopper must balance, which needs the
        # velocities, so there memory should matter more (500k steps: Hopper learns sooner).
        base, steps = (("HalfCheetah", 1_000_000) if suite == "dppo_pomdp" else ("Hopper", 500_000))
        env = f"mbmpo/{base}NoVel-v5"
        for kind, extra in (("mlp", []), ("gru", ["--policy-type", "gru"])):
            for s in (0, 1, 2):
                jobs.append(dict(name=f"{base}NoVel-v5_dppo_{kind}_s{s}", env=env,
                                 group=f"{env} dppo-{kind}", preset=CFG / "halfcheetah_dppo.yaml",
                                 seed=s, steps=steps, extra=["--workers", "2", *extra]))
    else:
        raise SystemExit(f"unknown suite {suite!r}")
    return jobs


def run_job(job: dict, runs_dir: Path) -> str:
    out = runs_dir / job["name"]
    ckpt = out / "checkpoints" / "last.pt"
    log = runs_dir / f"{job['name']}.log"
    py = sys.executable
    src = runs_dir.parent / job["from_run"] if job.get("from_run") else None
    if src is not None and not out.exists() and (src / "checkpoints" / "last.pt").exists():
        shutil.copytree(src, out)
    if ckpt.exists():
        rows = read_progress(out / "progress.csv").get("real_steps", [0])
        if rows and rows[-1] >= job["steps"]:
            return f"{job['name']}: done already"
        cmd = [py, "scripts/train.py", "--resume", str(out), "--total-steps", str(job["steps"]), "--threads", "1"]
    else:
        cmd = [py, "scripts/train.py", "--preset", str(job["preset"]), "--env", job["env"], "--seed",
               str(job["seed"]), "--total-steps", str(job["steps"]), "--out", str(out), "--threads", "1",
               *job["extra"]]
    t0 = time.time()
    with log.open("a") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    return f"{job['name']}: exit {rc} after {time.time() - t0:.0f}s"


def value_at(steps: list[float], values: list[float], budget: float) -> float | None:
    """Evaluation return at the first evaluation at or after ``budget`` (within 3%)."""
    for s, v in zip(steps, values):
        if s >= budget:
            return v if s <= budget * 1.03 + 2048 else None
    return None


def steps_to(steps: list[float], values: list[float], threshold: float) -> float | None:
    for s, v in zip(steps, values):
        if v > threshold:
            return s
    return None


def report(suite: str, runs_dir: Path, out: Path, budgets: list[int] = BUDGETS,
           threshold: float | None = None) -> None:
    """Tables and plot; ``threshold`` adds columns with each seed's best evaluation, the mean
    of its evaluations up to the last budget (the area under its learning curve over its
    length: less noisy than the single evaluation at a budget) and the steps of its first
    evaluation above ``threshold``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    jobs = suite_jobs(suite)
    groups: dict[str, list[dict]] = {}
    for job in jobs:
        p = runs_dir / job["name"] / "progress.csv"
        if not p.exists():
            continue
        cols = read_progress(p)
        steps, mean, _ = eval_curve(cols)
        wall = cols.get("wall_time_s", [float("nan")])[-1]
        groups.setdefault(job["group"], []).append(
            dict(seed=job["seed"], steps=steps, ret=mean, wall=wall, final_steps=cols["real_steps"][-1]))
        (out / f"{job['name']}.csv").write_text(p.read_text())
    if not groups:  # and leave the committed summary alone
        raise SystemExit(f"no run of suite {suite!r} under {runs_dir} (expected {runs_dir}/<job>/progress.csv, "
                         f"e.g. {jobs[0]['name']})")
    summary = {}
    lines = []
    if suite == "minigrid":
        lines.append("| env | seed | steps until mean eval return > 0.9 |")
        lines.append("|---|---|---|")
    else:
        extra = [] if threshold is None else ["best", f"mean eval to {budgets[-1] // 1000}k",
                                              f"first eval > {threshold:g}"]
        lines.append("| env / preset | seeds | " + " | ".join([f"{b // 1000}k" for b in budgets] + extra)
                     + " | train steps/s |")
        lines.append("|---|---|" + "---|" * (len(budgets) + len(extra) + 1))
    for g, runs in groups.items():
        entry = {}
        if suite == "minigrid":
            for r in runs:
                st = steps_to(r["steps"], r["ret"], 0.9)
                entry[f"seed{r['seed']}"] = st
                lines.append(f"| {g} | {r['seed']} | {int(st) if st else 'not reached'} |")
        else:
            cells = []
            for b in budgets:
                vals = [value_at(r["steps"], r["ret"], b) for r in runs]
                vals = [v for v in vals if v is not None]
                entry[str(b)] = {"per_seed": vals, "median": float(np.median(vals)) if vals else None}
                cells.append(("median " if len(vals) > 1 else "") + f"{np.median(vals):.0f} ({' / '.join(f'{v:.0f}' for v in vals)})"
                             if vals else "–")
            if threshold is not None:
                best = [max(r["ret"]) for r in runs if r["ret"]]
                first = [steps_to(r["steps"], r["ret"], threshold) for r in runs]
                area = [float(np.mean([v for s, v in zip(r["steps"], r["ret"]) if s <= budgets[-1]]))
                        for r in runs if r["ret"]]
                entry["best"], entry[f"first_above_{threshold:g}"] = best, first
                entry["mean_eval"] = {"per_seed": area, "median": float(np.median(area)) if area else None}
                cells.append(" / ".join(f"{v:.0f}" for v in best) or "–")
                cells.append((f"median {np.median(area):.0f} (" + " / ".join(f"{v:.0f}" for v in area) + ")")
                             if area else "–")
                cells.append(" / ".join(f"{v / 1000:.0f}k" if v is not None else "not reached" for v in first))
            sps = [r["final_steps"] / r["wall"] for r in runs if r["wall"] == r["wall"] and r["wall"] > 0]
            entry["train_sps"] = float(np.median(sps)) if sps else None
            lines.append(f"| {g} | {len(runs)} | " + " | ".join(cells) + f" | {entry['train_sps'] or 0:.0f} |")
        summary[g] = entry
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    envs = sorted({g.split()[0] for g in groups})
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for g, runs in groups.items():
            if g.split()[0] != env:
                continue
            for i, r in enumerate(runs):
                ax.plot(r["steps"], r["ret"], alpha=0.8, label=f"{g} s{r['seed']}",
                        color=f"C{list(groups).index(g)}", ls=["-", "--", ":"][i % 3])
        ax.set_title(env)
        ax.set_xlabel("real env steps")
        ax.set_ylabel("eval return (deterministic)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{suite}.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench"))
    ap.add_argument("--report", action="store_true", help="only write tables/plots")
    ap.add_argument("--budgets", nargs="+", type=int, default=BUDGETS, metavar="STEPS",
                    help="real-step budgets of the table's columns")
    ap.add_argument("--threshold", type=float, metavar="R",
                    help="also report each seed's best evaluation, its mean evaluation up to the last "
                         "budget and its first evaluation above R")
    ap.add_argument("--only", nargs="+", metavar="GLOB",
                    help="run only the jobs whose name matches one of these shell patterns "
                         "(the report still covers every finished job of the suite)")
    args = ap.parse_args()
    runs_dir = Path(args.runs_dir) / args.suite
    runs_dir.mkdir(parents=True, exist_ok=True)
    if not args.report:
        jobs = [j for j in suite_jobs(args.suite)
                if not args.only or any(fnmatch.fnmatch(j["name"], g) for g in args.only)]
        if not jobs:
            raise SystemExit(f"--only {' '.join(args.only)} matches no job of suite {args.suite!r}")
        with ThreadPoolExecutor(args.jobs) as pool:
            for msg in pool.map(lambda j: run_job(j, runs_dir), jobs):
                print(msg, flush=True)
    report(args.suite, runs_dir, ROOT / "benchmarks" / "results" / args.suite, args.budgets, args.threshold)


if __name__ == "__main__":
    main()
