"""DPPO scaling on this machine: env steps per second with W = 1, 2, 4 workers.

Weak scaling, as in Heess et al.: every worker collects T steps per iteration, so an
iteration of W workers holds W * T steps and its update costs each worker the same as with
one. For each W the script runs ``scripts/train.py --algo dppo --workers W`` (one torch
thread per worker; W = 4 oversubscribes the 2 cores), skips the first (warm-up) iteration
and reports

* steps/s = global env steps / iteration wall time (rank 0's clock; evaluation excluded),
* the mean per-worker split of an iteration into collect / communicate (all_reduce and
  store calls, including waiting for slower workers) / update (compute of the M + B
  sub-iterations),
* the speed-up over W = 1 (target: W = 2 >= 1.7x).

``--repeats R`` runs the whole sequence R times and reports medians; each round's speed-up
is taken against that round's W = 1 run (a lone process ran 470-616 steps/s here from one
minute to the next, so an unpaired ratio wanders by 15%).

``--independent 2`` also runs 2 single-worker trainings side by side, with no communication,
and sums their rates: the most that 2 processes on this machine can reach, against which the
communicating run's speed-up is judged.

Writes ``results.json``, ``results.csv`` and ``dppo_scaling.png`` into ``--out``::

    python benchmarks/dppo_scaling.py --workers 1 2 --iterations 10 --independent 2 --repeats 3
    python benchmarks/dppo_scaling.py --workers 1 2 4 --iterations 10 --independent 2
    python benchmarks/dppo_scaling.py --workers 1 2 --iterations 2 --out /tmp/smoke  # smoke test

Arguments the script does not know are passed to train.py (e.g. ``--num-steps 512``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbmpo.config import load_yaml  # noqa: E402
from mbmpo.report import read_progress  # noqa: E402

PRESET = ROOT / "scripts" / "configs" / "halfcheetah_dppo.yaml"
SPLIT = ("collect", "comm", "update")


def _steps_per_worker(preset: Path, extra: list[str]) -> int:
    cfg = load_yaml(preset)
    num_steps = int(cfg.get("num_steps", 1000))
    for i, a in enumerate(extra):  # an override of the per-worker batch
        if a == "--num-steps":
            num_steps = int(extra[i + 1])
    return num_steps * int(cfg.get("num_envs", 1))


def _command(workers: int, total: int, seed: int, env: str, preset: Path, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "scripts/train.py", "--preset", str(preset), "--env", env, "--workers",
            str(workers), "--threads", "1", "--total-steps", str(total), "--eval-every", "0",
            "--eval-episodes", "1", "--seed", str(seed), "--out", str(out), *extra]


def _timed_iterations(out: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(global steps, wall seconds) per iteration without the warm-up one, and all columns."""
    cols = read_progress(out / "progress.csv")
    it = slice(1, None)
    return (np.asarray(cols["dist/steps_per_iteration"][it]), np.asarray(cols["time/iteration_s"][it]),
            {k: np.asarray(v[it]) for k, v in cols.items() if k.startswith("time/")})


def run_one(workers: int, iterations: int, env: str, preset: Path, runs: Path, extra: list[str],
            independent: bool = False) -> dict:
    """One DPPO run with ``workers`` ranks, or (``independent``) that many single-worker runs at once.

    The independent mode is the ceiling a communicating run can reach on this machine: the
    same processes competing for the same cores and memory, with no collective at all.
    Its steps/s is the sum of the processes' own rates.
    """
    per_worker = _steps_per_worker(preset, extra)
    tag = f"w{workers}" + ("_independent" if independent else "")
    outs = [runs / f"{tag}_{i}" for i in range(workers if independent else 1)]
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)
    ranks = 1 if independent else workers
    total = (iterations + 1) * ranks * per_worker
    t0 = time.time()
    procs = [subprocess.Popen(_command(ranks, total, i, env, preset, out, extra), cwd=ROOT, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i, out in enumerate(outs)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{tag} failed:\n{err[-3000:]}")
    rates, secs_mean, splits = [], [], []
    for out in outs:
        steps, secs, timing = _timed_iterations(out)
        rates.append(steps.sum() / secs.sum())
        secs_mean.append(secs.mean())
        splits.append(timing)
    row = {"workers": workers, "mode": "independent" if independent else "dppo", "iterations": iterations,
           "steps_per_iteration": float(workers * per_worker), "steps_per_s": float(sum(rates)),
           "iteration_s": float(np.mean(secs_mean)), "wall_s_including_startup": time.time() - t0}
    for name in SPLIT:
        row[f"{name}_s"] = float(np.mean([t[f"time/{name}_s"].mean() for t in splits]))
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = [str(r["workers"]) + (" indep." if r["mode"] == "independent" else "") for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(ws, [r["steps_per_s"] for r in rows], color="C0")
    for i, r in enumerate(rows):
        a.text(i, r["steps_per_s"], f"x{r['speedup']:.2f}", ha="center", va="bottom")
    a.set_xlabel("workers W")
    a.set_ylabel("env steps / s (all workers)")
    a.set_title("DPPO throughput")
    bottom = np.zeros(len(rows))
    for j, name in enumerate(SPLIT):
        vals = np.array([r[f"{name}_s"] for r in rows])
        b.bar(ws, vals, bottom=bottom, color=f"C{j + 1}", label=name)
        bottom += vals
    b.set_xlabel("workers W")
    b.set_ylabel("seconds per iteration (mean over workers)")
    b.set_title("time split")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--iterations", type=int, default=10, help="measured iterations per W (+1 warm-up)")
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--preset", default=str(PRESET))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dppo_scaling"))
    ap.add_argument("--independent", type=int, nargs="*", default=[],
                    help="also run this many single-worker runs at once (no communication): the ceiling")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the whole sequence this many times; report medians (W = 1 is noisy here)")
    args, extra = ap.parse_known_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    rounds: list[list[dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            rows = []
            for w in args.workers:
                rows.append(run_one(w, args.iterations, args.env, Path(args.preset), Path(tmp), extra))
                print(json.dumps(rows[-1]), flush=True)
            for w in args.independent:
                rows.append(run_one(w, args.iterations, args.env, Path(args.preset), Path(tmp), extra,
                                    independent=True))
                print(json.dumps(rows[-1]), flush=True)
            base = next((r["steps_per_s"] for r in rows if r["workers"] == 1 and r["mode"] == "dppo"),
                        rows[0]["steps_per_s"])
            for r in rows:  # paired with the W = 1 run of the same round
                r["round"], r["speedup"] = k, r["steps_per_s"] / base
            rounds.append(rows)
    numeric = [k for k, v in rounds[0][0].items() if isinstance(v, float)]
    rows = [{**r0, **{k: float(np.median([rnd[i][k] for rnd in rounds])) for k in numeric}, "round": "median"}
            for i, r0 in enumerate(rounds[0])]
    meta = {"env": args.env, "preset": str(Path(args.preset).relative_to(ROOT)) if Path(args.preset).is_relative_to(ROOT)
            else args.preset, "extra_args": extra, "cpu_count": os.cpu_count(),
            "loadavg_before": load, "loadavg_after": os.getloadavg()}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                  "rounds": [r for rnd in rounds for r in rnd]}, indent=1))
    with (out / "results.csv").open("w", newline="") as f:  # the medians, then every round
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([*rows, *(r for rnd in rounds for r in rnd)])
    plot(rows, out / "dppo_scaling.png")
    if args.repeats > 1:
        print("speed-up per round: " + "; ".join(
            f"W={r['workers']} {r['mode']}: " + " / ".join(f"x{rnd[i]['speedup']:.2f}" for rnd in rounds)
            for i, r in enumerate(rows)))
    print(f"medians over {args.repeats} round(s); speed-up = median of the per-round ratios to W = 1")
    print("| W | mode | steps/s | speed-up | collect s | communicate s | update s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['mode']} | {r['steps_per_s']:.0f} | x{r['speedup']:.2f} | {r['collect_s']:.2f} | "
              f"{r['comm_s']:.2f} | {r['update_s']:.2f} |")


if __name__ == "__main__":
    main()
