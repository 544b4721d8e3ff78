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

Writes ``results.json``, ``results.csv`` and ``dppo_scaling.png`` into ``--out``::

    python benchmarks/dppo_scaling.py --workers 1 2 4 --iterations 10
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
from mbmpo.plotting import read_progress  # noqa: E402

PRESET = ROOT / "scripts" / "configs" / "halfcheetah_dppo.yaml"
SPLIT = ("collect", "comm", "update")


def run_one(workers: int, iterations: int, env: str, preset: Path, runs: Path, extra: list[str]) -> dict:
    steps_per_worker = int(load_yaml(preset).get("num_steps", 1000)) * int(load_yaml(preset).get("num_envs", 1))
    for i, a in enumerate(extra):  # an override of the per-worker batch
        if a == "--num-steps":
            steps_per_worker = int(extra[i + 1]) * int(load_yaml(preset).get("num_envs", 1))
    out = runs / f"w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    total = (iterations + 1) * workers * steps_per_worker
    cmd = [sys.executable, "scripts/train.py", "--preset", str(preset), "--env", env, "--workers",
           str(workers), "--threads", "1", "--total-steps", str(total), "--eval-every", "0",
           "--eval-episodes", "1", "--seed", "0", "--out", str(out), *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"W={workers} failed:\n{proc.stderr[-3000:]}")
    cols = read_progress(out / "progress.csv")
    it = slice(1, None)  # drop the warm-up iteration
    steps = np.asarray(cols["dist/steps_per_iteration"][it])
    secs = np.asarray(cols["time/iteration_s"][it])
    row = {"workers": workers, "iterations": len(steps), "steps_per_iteration": float(steps.mean()),
           "steps_per_s": float(steps.sum() / secs.sum()), "iteration_s": float(secs.mean()),
           "wall_s_including_startup": time.time() - t0}
    for name in SPLIT:
        row[f"{name}_s"] = float(np.mean(cols[f"time/{name}_s"][it]))
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = [str(r["workers"]) for r in rows]
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
    args, extra = ap.parse_known_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            rows.append(run_one(w, args.iterations, args.env, Path(args.preset), Path(tmp), extra))
            print(json.dumps(rows[-1]), flush=True)
    base = next((r["steps_per_s"] for r in rows if r["workers"] == 1), rows[0]["steps_per_s"])
    for r in rows:
        r["speedup"] = r["steps_per_s"] / base
    meta = {"env": args.env, "preset": str(Path(args.preset).relative_to(ROOT)) if Path(args.preset).is_relative_to(ROOT)
            else args.preset, "extra_args": extra, "cpu_count": os.cpu_count(),
            "loadavg_before": load, "loadavg_after": os.getloadavg()}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "dppo_scaling.png")
    print("| W | steps/s | speed-up | collect s | communicate s | update s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['steps_per_s']:.0f} | x{r['speedup']:.2f} | {r['collect_s']:.2f} | "
              f"{r['comm_s']:.2f} | {r['update_s']:.2f} |")


if __name__ == "__main__":
    main()
