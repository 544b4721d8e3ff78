"""Gorila benchmark 2: env steps/s and learner updates/s for 1, 2 and 4 acting processes.

For each actor count, one Gorila run on CartPole-v1 (preset ``cartpole_gorila.yaml``, one
learner unless ``--learners``) with the update ratio switched off (``updates_per_step 0``:
every process runs flat out, as in the paper) is warmed up for ``--warmup`` steps (process
start-up, replay fill), then timed over ``--steps`` more real steps:

    env steps/s     = timed real steps / wall time
    updates/s       = learner updates finished in that window / wall time
    server updates/s = gradients the parameter server applied in that window / wall time

Writes ``results.json``, ``results.csv`` and ``gorila_throughput.png`` to ``--out``:

    python benchmarks/gorila_throughput.py                          # actors 1 2 4, 30k timed steps each
    python benchmarks/gorila_throughput.py --env HalfCheetah-v5 --preset scripts/configs/halfcheetah_gorila.yaml
    python benchmarks/gorila_throughput.py --actors 1 2 --steps 2000 --warmup 1000 --out /tmp/gt   # smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbmpo.baselines.gorila import Gorila, GorilaConfig, init_ray  # noqa: E402
from mbmpo.config import load_config  # noqa: E402


def measure(args: argparse.Namespace, num_actors: int) -> dict:
    cfg = load_config(GorilaConfig, args.preset, env_id=args.env, num_actors=num_actors,
                      num_learners=args.learners, mode=args.mode, updates_per_step=0.0,
                      learning_starts=min(args.warmup, 1000), total_steps=args.warmup + args.steps,
                      eval_every=0, log_every=args.warmup + args.steps, seed=args.seed)
    if args.mode == "bundled":
        cfg.num_learners = num_actors
    algo = Gorila(cfg, console=False)
    try:
        algo.learn(args.warmup)
        steps0, updates0 = algo.num_timesteps, algo.num_updates
        applied0 = sum(s["num_applied"] for s in algo.state_dict()["servers"])
        t0 = time.perf_counter()
        algo.learn(args.warmup + args.steps)
        wall = time.perf_counter() - t0
        applied = sum(s["num_applied"] for s in algo.state_dict()["servers"]) - applied0
        row = {"actors": num_actors, "learners": cfg.num_learners, "mode": args.mode,
               "env_steps": algo.num_timesteps - steps0, "updates": algo.num_updates - updates0,
               "wall_s": round(wall, 2),
               "env_steps_per_s": round((algo.num_timesteps - steps0) / wall, 1),
               "updates_per_s": round((algo.num_updates - updates0) / wall, 1),
               "server_updates_per_s": round(applied / wall, 1),
               "restarts": len(algo.events)}
    finally:
        algo.close()
    return row


def plot(out: Path, rows: list[dict], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    x = [str(r["actors"]) for r in rows]
    for ax, key, label in ((axes[0], "env_steps_per_s", "env steps/s (all actors)"),
                           (axes[1], "updates_per_s", "learner updates/s")):
        ax.bar(x, [r[key] for r in rows], color="tab:blue" if key.startswith("env") else "tab:orange")
        for i, r in enumerate(rows):
            ax.text(i, r[key], f"{r[key]:.0f}", ha="center", va="bottom")
        ax.set_xlabel("acting processes")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    png = out / "gorila_throughput.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--learners", type=int, default=1)
    p.add_argument("--mode", choices=["distributed", "bundled"], default="distributed")
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--preset", default=str(ROOT / "scripts" / "configs" / "cartpole_gorila.yaml"))
    p.add_argument("--steps", type=int, default=30_000, help="timed real steps per actor count")
    p.add_argument("--warmup", type=int, default=5000, help="untimed real steps first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ray-cpus", type=int, default=0, help="CPUs of the local Ray instance (0: all)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gorila_throughput"))
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    init_ray(args.ray_cpus)
    rows = []
    for n in args.actors:
        rows.append(measure(args, n))
        print(json.dumps(rows[-1]), flush=True)
    meta = {"env_id": args.env, "preset": Path(args.preset).name, "mode": args.mode,
            "timed_steps": args.steps, "warmup_steps": args.warmup, "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "updates_per_step": 0.0, "results": rows}
    import ray

    meta["ray"] = ray.__version__
    (out / "results.json").write_text(json.dumps(meta, indent=2))
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    png = plot(out, rows, f"Gorila throughput on {args.env} ({os.cpu_count()} cores, "
                          f"{args.learners if args.mode == 'distributed' else 'one per actor'} learner(s))")
    print(f"wrote {out / 'results.json'}, {png}")


if __name__ == "__main__":
    main()
