"""Is a seeded MB-MPO run the same in every process?

Within one process, seeded runs and resume are bit-exact (tests/test_mbmpo.py). Across
processes they need not be: a CPU kernel whose rounding depends on where its inputs or its
workspace lie in memory gives different bits in different processes, and a chaotic task
(Hopper falls or stays up) turns those bits into different policies.

For each preset, ``--procs`` fresh Python processes each run the same seeded MB-MPO run for
``--steps`` real steps and print SHA-1 hashes of the real dataset, the ensemble's weights and
the policy's parameters; the script counts the distinct results. The runs are the preset
shrunk to about 10 s each (2 models of 64x64, 4 tasks of 2 rollouts of 50 steps, 3 meta-steps
per iteration, 1000 warm-up steps, 500 real steps per iteration), with every other
setting (model type, baseline, terminal value, gamma, std floor, penalties) as in the preset,
so the same kernels run as in the full preset. One torch thread per process.

Writes ``results.json`` and ``results.csv`` into ``--out``::

    python benchmarks/mbmpo_repro.py                         # Hopper and HalfCheetah presets, 6 processes each
    python benchmarks/mbmpo_repro.py --presets scripts/configs/hopper_mbmpo.yaml --procs 12 --steps 2000
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMALL = dict(num_envs=2, num_steps=250, warmup_steps=1000, num_models=2, model_hidden_sizes=(64, 64),
             model_max_epochs=3, meta_batch_size=4, rollouts_per_task=2, imagined_horizon=50,
             num_meta_steps=3, eval_every=0)


def child(preset: str, steps: int, seed: int) -> None:
    """One run in this process; prints its hashes as one JSON line."""
    import torch

    torch.set_num_threads(1)
    from mbmpo import MBMPO, MBMPOConfig
    from mbmpo.config import load_config

    cfg = load_config(MBMPOConfig, preset, **SMALL, seed=seed, total_steps=steps)
    algo = MBMPO(cfg, console=False)
    algo.learn(steps)

    def digest(tensors) -> str:
        h = hashlib.sha1()
        for t in tensors:
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()[:12]

    print(json.dumps({"data": digest(algo.dataset.arrays().values()),
                      "ensemble": digest(algo.ensemble.state_dict().values()),
                      "theta": digest(algo.policy.parameters())}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["scripts/configs/hopper_mbmpo.yaml",
                                                    "scripts/configs/halfcheetah_mbmpo.yaml"])
    p.add_argument("--procs", type=int, default=6, help="fresh processes per preset")
    p.add_argument("--steps", type=int, default=3000, help="real steps per run (warm-up included)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/mbmpo_repro")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.presets[0], args.steps, args.seed)
        return
    rows = []
    for preset in args.presets:
        results = []
        for i in range(args.procs):
            cmd = [sys.executable, __file__, "--child", "--presets", preset, "--steps", str(args.steps),
                   "--seed", str(args.seed)]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                sys.exit(f"process {i} of {preset} failed:\n{done.stderr[-2000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        counts = {k: Counter(r[k] for r in results) for k in ("data", "ensemble", "theta")}
        row = {"preset": preset, "procs": args.procs, "steps": args.steps, "seed": args.seed,
               **{f"distinct_{k}": len(c) for k, c in counts.items()},
               "theta_counts": sorted(counts["theta"].values(), reverse=True)}
        rows.append(row)
        print(f"{preset}: {args.procs} processes x {args.steps} steps -> distinct data / ensemble / theta: "
              f"{row['distinct_data']} / {row['distinct_ensemble']} / {row['distinct_theta']} "
              f"(theta counts {row['theta_counts']})", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
