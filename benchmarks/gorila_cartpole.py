"""Gorila benchmark 1: real env steps until CartPole-v1's mean evaluation return reaches 475.

Trains Gorila (preset ``scripts/configs/cartpole_gorila.yaml``: 2 acting processes, 1 learner)
once per seed in one local Ray instance, evaluating ``--eval-episodes`` greedy episodes every
``--eval-every`` real steps, and stops a seed at the first evaluation with mean return
>= ``--threshold`` or at ``--max-steps``. Writes ``results.json``, ``results.csv``, one
``progress.csv`` per seed and ``gorila_cartpole.png`` (evaluation curves) to ``--out``.

The layout flags run the paper's other arrangements: ``--mode bundled`` (actor + local
replay + learner in each of ``--actors`` processes), ``--replay global`` (one replay actor
shared by all), ``--shards 2`` (the parameter vector split over two server shards).
``--slow-learner-delay S`` makes learner 1 (of ``--learners`` >= 2) sleep S seconds before
every push, so that the other learner moves the server on meanwhile and the staleness rule
(``max_staleness``, ``--max-staleness``) drops its gradients; the drops are reported beside
the loss-outlier drops::

    python benchmarks/gorila_cartpole.py                                   # 3 seeds, <= 100k steps each
    python benchmarks/gorila_cartpole.py --seeds 0 --max-steps 40000 --mode bundled \
        --out benchmarks/results/gorila_cartpole_bundled
    python benchmarks/gorila_cartpole.py --seeds 0 --max-steps 40000 --replay global \
        --out benchmarks/results/gorila_cartpole_global_replay
    python benchmarks/gorila_cartpole.py --seeds 0 --max-steps 40000 --shards 2 \
        --out benchmarks/results/gorila_cartpole_shards2
    python benchmarks/gorila_cartpole.py --seeds 0 --max-steps 40000 --learners 2 --slow-learner-delay 0.2 \
        --out benchmarks/results/gorila_cartpole_stale
    python benchmarks/gorila_cartpole.py --seeds 0 --max-steps 4000 --out /tmp/gc   # smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbmpo.baselines.gorila import Gorila, GorilaConfig, LearnerCore, init_ray  # noqa: E402
from mbmpo.config import load_config  # noqa: E402
from mbmpo.report import eval_curve, read_progress  # noqa: E402


class SlowLearner(LearnerCore):
    """Learner 1 sleeps ``delay_s`` before each push (this script's ``--slow-learner-delay``)."""

    delay_s = 0.0

    def __init__(self, spec, index, params, replay):
        super().__init__(spec, index, params, replay)
        if index == 1 and self.delay_s > 0:
            push_pull = self.params.push_pull

            def delayed(grad, versions):
                time.sleep(self.delay_s)
                return push_pull(grad, versions)

            self.params.push_pull = delayed


class SlowLearnerGorila(Gorila):
    learner_cls = SlowLearner


def run_seed(args: argparse.Namespace, seed: int, work: Path) -> dict:
    learners = args.actors if args.mode == "bundled" else args.learners
    overrides = dict(seed=seed, total_steps=args.max_steps, eval_every=args.eval_every,
                     log_every=args.eval_every, eval_episodes=args.eval_episodes,
                     num_actors=args.actors, num_learners=learners, checkpoint_every_steps=10**9,
                     mode=args.mode, replay=args.replay, num_param_shards=args.shards)
    if args.max_staleness is not None:
        overrides["max_staleness"] = args.max_staleness
    cfg = load_config(GorilaConfig, args.preset, **overrides)
    run_dir = work / f"s{seed}"
    cls = Gorila
    if args.slow_learner_delay > 0:
        SlowLearner.delay_s = args.slow_learner_delay  # travels with the class to the Ray process
        cls = SlowLearnerGorila
    algo = cls(cfg, out_dir=run_dir, console=not args.quiet)
    t0 = time.perf_counter()
    reached = None
    try:
        for budget in range(args.eval_every, args.max_steps + args.eval_every, args.eval_every):
            algo.learn(min(budget, args.max_steps))
            steps, mean, _ = eval_curve(read_progress(run_dir / "progress.csv"))
            if mean and mean[-1] >= args.threshold:
                reached = int(steps[-1])
                break
            if algo.num_timesteps >= args.max_steps:
                break
    finally:
        algo.close()
    wall = time.perf_counter() - t0
    cols = read_progress(run_dir / "progress.csv")
    steps, mean, _ = eval_curve(cols)
    return {"seed": seed, "steps_to_threshold": reached, "real_steps": algo.num_timesteps,
            "learner_updates": algo.num_updates, "wall_s": round(wall, 1),
            "best_eval_return": max(mean) if mean else None,
            "final_eval_return": mean[-1] if mean else None,
            "server_applied": int(cols["server/applied_total"][-1]),
            "dropped_stale": int(cols["server/dropped_stale_total"][-1]),
            "dropped_outlier": int(cols["learner/dropped_outlier_total"][-1]), "events": algo.events}


def plot(out: Path, rows: list[dict], threshold: float, label: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in rows:
        steps, mean, std = eval_curve(read_progress(out / f"progress_s{r['seed']}.csv"))
        hit = r["steps_to_threshold"]
        ax.plot(steps, mean, marker="o", ms=3,
                label=f"seed {r['seed']}: " + (f"{hit} steps" if hit else "not reached"))
    ax.axhline(threshold, color="k", ls="--", lw=1)
    ax.set_xlabel("real environment steps (all actors)")
    ax.set_ylabel("evaluation return (mean of greedy episodes)")
    ax.set_title(f"Gorila on CartPole-v1: steps to mean return {threshold:g}\n{label}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    png = out / "gorila_cartpole.png"
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", default=str(ROOT / "scripts" / "configs" / "cartpole_gorila.yaml"))
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--learners", type=int, default=1, help="learners (bundled mode: one per actor)")
    p.add_argument("--mode", choices=["distributed", "bundled"], default="distributed")
    p.add_argument("--replay", choices=["local", "global"], default="local")
    p.add_argument("--shards", type=int, default=1, help="parameter-server shards")
    p.add_argument("--max-staleness", type=int, default=None, help="override the preset's max_staleness")
    p.add_argument("--slow-learner-delay", type=float, default=0.0,
                   help="learner 1 sleeps this many seconds before each push (needs --learners >= 2)")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--threshold", type=float, default=475.0)
    p.add_argument("--eval-every", type=int, default=2000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--ray-cpus", type=int, default=0, help="CPUs of the local Ray instance (0: all)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gorila_cartpole"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if args.slow_learner_delay > 0 and (args.mode == "bundled" and args.actors < 2
                                        or args.mode == "distributed" and args.learners < 2):
        p.error("--slow-learner-delay needs a second learner (--learners 2, or 2 bundles)")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    init_ray(args.ray_cpus)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gorila_cartpole_") as tmp:
        for seed in args.seeds:
            row = run_seed(args, seed, Path(tmp))
            shutil.copy(Path(tmp) / f"s{seed}" / "progress.csv", out / f"progress_s{seed}.csv")
            rows.append(row)
            print(f"seed {seed}: steps to {args.threshold:g}: {row['steps_to_threshold']} "
                  f"(best eval {row['best_eval_return']}, {row['wall_s']} s; gradients applied "
                  f"{row['server_applied']}, dropped stale {row['dropped_stale']}, dropped as "
                  f"outliers {row['dropped_outlier']})", flush=True)
    hits = [r["steps_to_threshold"] for r in rows if r["steps_to_threshold"] is not None]
    label = (f"mode {args.mode}, replay {args.replay}, {args.actors} actor(s), "
             f"{args.actors if args.mode == 'bundled' else args.learners} learner(s), {args.shards} shard(s)"
             + (f", learner 1 +{args.slow_learner_delay:g} s per push" if args.slow_learner_delay else ""))
    summary = {
        "env_id": "CartPole-v1", "threshold": args.threshold, "actors": args.actors,
        "learners": args.actors if args.mode == "bundled" else args.learners, "mode": args.mode,
        "replay": args.replay, "param_shards": args.shards,
        "max_staleness": (args.max_staleness if args.max_staleness is not None
                          else load_config(GorilaConfig, args.preset).max_staleness),
        "slow_learner_delay_s": args.slow_learner_delay, "layout": label,
        "max_steps": args.max_steps, "eval_every": args.eval_every,
        "eval_episodes": args.eval_episodes, "preset": Path(args.preset).name,
        "seeds_reached": f"{len(hits)}/{len(rows)}",
        "median_steps_to_threshold": float(np.median(hits)) if len(hits) == len(rows) else None,
        "torch": torch.__version__, "runs": rows,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "events"])
        w.writeheader()
        w.writerows([{k: v for k, v in r.items() if k != "events"} for r in rows])
    png = plot(out, rows, args.threshold, label)
    print(f"{summary['seeds_reached']} seeds reached {args.threshold:g}; median steps "
          f"{summary['median_steps_to_threshold']}; wrote {out / 'results.json'}, {png}")


if __name__ == "__main__":
    main()
