"""DPPO with one slowed worker: D = W (every gradient step waits for all W workers) against
D = W - 1 (each step takes the first W - 1 gradients and drops the late one).

Heess et al. 2017 (appendix A) update once D of the W workers have sent their gradient. For
each W this script runs W local workers (one torch thread each, the HalfCheetah preset) in
which rank W - 1 sleeps ``--delay`` seconds in every gradient computation, as a worker on a
slower or busier machine would, and measures over ``--iterations`` iterations (after one
warm-up iteration):

* env steps/s = global env steps / iteration wall time (rank 0's clock);
* step ms = mean wall time of one lockstep gradient step (mean over workers);
* late gradients = gradients dropped because W - 1 others had reported first, and the
  share of the collected samples that still reached a gradient step.

``--baseline`` (on by default) adds D = W without the slow worker: the rate a run reaches
when nobody is slow. Writes ``results.json``, ``results.csv`` and ``dppo_d_of_w.png`` into
``--out``::

    python benchmarks/dppo_d_of_w.py --workers 2 4 --delay 0.02 --iterations 5
    python benchmarks/dppo_d_of_w.py --workers 2 --iterations 1 --out /tmp/dw   # smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbmpo import distributed  # noqa: E402
from mbmpo.baselines.dppo import DPPO, DPPOConfig  # noqa: E402
from mbmpo.config import config_from_dict, load_config  # noqa: E402
from mbmpo.report import read_progress  # noqa: E402

PRESET = ROOT / "scripts" / "configs" / "halfcheetah_dppo.yaml"


def _job(config: dict, out_dir: str, slow_rank: int, delay: float) -> None:
    """One worker (spawned): rank ``slow_rank`` sleeps ``delay`` s per gradient computation."""
    rank, _ = distributed.rank_and_world_size()
    algo = DPPO(config_from_dict(DPPOConfig, config), out_dir=out_dir, console=False)
    if rank == slow_rank and delay > 0:
        grads = algo._step_grads

        def slow(*args, **kw):
            time.sleep(delay)
            return grads(*args, **kw)

        algo._step_grads = slow
    try:
        algo.learn(algo.config.total_steps)
    finally:
        algo.close()


def run_one(workers: int, report: int, delay: float, args: argparse.Namespace, tmp: Path) -> dict:
    cfg = load_config(DPPOConfig, args.preset, env_id=args.env, eval_every=0, eval_episodes=1,
                      checkpoint_every_steps=10**9, num_report=report, seed=args.seed,
                      **({"num_steps": args.num_steps} if args.num_steps else {}))
    per_worker = cfg.num_steps * cfg.num_envs
    cfg.total_steps = (args.iterations + 1) * workers * per_worker
    out = tmp / f"w{workers}_d{report}_delay{delay:g}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    distributed.spawn(_job, (cfg.to_dict(), str(out), workers - 1, delay), workers, threads=1,
                      timeout_s=cfg.collective_timeout_s)
    cols = read_progress(out / "progress.csv")
    it = slice(1, None)  # without the warm-up iteration
    steps = np.asarray(cols["dist/steps_per_iteration"][it], dtype=float)
    secs = np.asarray(cols["time/iteration_s"][it], dtype=float)
    late = np.asarray(cols["dist/late_gradients"][it], dtype=float)
    num_steps = cfg.num_minibatches * max(cfg.policy_iters, cfg.value_iters)  # lockstep steps
    row = {"workers": workers, "num_report": report, "slow_delay_s": delay,
           "iterations": len(secs), "steps_per_iteration": float(steps.mean()),
           "steps_per_s": float(steps.sum() / secs.sum()), "iteration_s": float(secs.mean()),
           "step_ms": float(np.mean(cols["time/step_ms"][it])),
           "late_gradients_per_iteration": float(late.mean()),
           "gradient_steps_per_iteration": num_steps,
           # each worker holds the same number of samples: a dropped gradient drops its share
           "samples_used_fraction": float(1.0 - late.mean() / (num_steps * workers)),
           "policy_steps_per_iteration": float(np.mean(cols["train/policy_steps"][it])),
           "wall_s_including_startup": round(time.time() - t0, 1)}
    for name in ("collect", "comm", "update"):
        row[f"{name}_s"] = float(np.mean(cols[f"time/{name}_s"][it]))
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"W={r['workers']} D={r['num_report']}" + ("" if r["slow_delay_s"] else "\nnobody slow")
              for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar(labels, [r["steps_per_s"] for r in rows], color="C0")
    a.set_ylabel("env steps / s (all workers)")
    a.set_title("throughput")
    b.bar(labels, [r["step_ms"] for r in rows], color="C1")
    b.set_ylabel("ms per gradient step")
    b.set_title("gradient step time")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"DPPO, one worker {rows[0]['slow_delay_s'] * 1000:g} ms slower per gradient")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--delay", type=float, default=0.02, help="extra seconds per gradient of the slow worker")
    ap.add_argument("--iterations", type=int, default=5, help="measured iterations per run (+1 warm-up)")
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--preset", default=str(PRESET))
    ap.add_argument("--num-steps", type=int, default=0, help="override T (steps per worker per iteration)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="skip the D = W run without a slow worker")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dppo_d_of_w"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            runs = [(w, args.delay), (w - 1, args.delay)] + ([(w, 0.0)] if args.baseline else [])
            for d, delay in runs:
                rows.append(run_one(w, d, delay, args, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    meta = {"env": args.env, "preset": Path(args.preset).name, "slow_rank": "W - 1",
            "delay_s_per_gradient": args.delay, "cpu_count": os.cpu_count(),
            "loadavg_before": load, "loadavg_after": os.getloadavg()}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    with (out / "results.csv").open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    plot(rows, out / "dppo_d_of_w.png")
    print("| W | D | slow worker | steps/s | ms per gradient step | late gradients / iteration | samples used |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        slow = f"+{r['slow_delay_s'] * 1000:g} ms" if r["slow_delay_s"] else "none"
        print(f"| {r['workers']} | {r['num_report']} | {slow} | {r['steps_per_s']:.0f} | {r['step_ms']:.1f} | "
              f"{r['late_gradients_per_iteration']:.0f} of {r['gradient_steps_per_iteration']} | "
              f"{100 * r['samples_used_fraction']:.0f}% |")


if __name__ == "__main__":
    main()
