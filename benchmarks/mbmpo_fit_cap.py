"""Cost and accuracy of one MB-MPO model fit with and without ``model_epoch_rows``, in
float32 and in bfloat16 (``model_fit_precision``).

Loads an MB-MPO checkpoint (its real data set and warm-started ensemble, e.g. the end of a
100k-step HalfCheetah preset run) and fits the ensemble once per cap, each time from the
checkpoint's weights with the same seeded generator, so every fit draws the same
train/validation split. Reports per cap and precision: seconds, seconds per model-epoch,
epochs per model and the validation
mean squared error of every model (normalized units; what early stopping reads). With the
default ``model_split: resample`` earlier fits trained on some of those validation rows, the
same rows for every cap, so the errors compare across caps, not with a fresh model's.

    python benchmarks/mbmpo_fit_cap.py runs/explore_hc_s0 --caps 0 20000 10000 --threads 2
    python benchmarks/mbmpo_fit_cap.py runs/explore_hc_s0 --caps 0 --precisions float32 bfloat16 \
        --out benchmarks/results/mbmpo_fit_precision

Writes ``fit_cap.json`` and ``fit_cap.csv`` to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dynamics.trainer import fit_ensemble  # noqa: E402
from mbmpo import MBMPO  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="MB-MPO checkpoint file or run directory")
    p.add_argument("--caps", type=int, nargs="+", default=[0, 20000, 10000], help="model_epoch_rows values")
    p.add_argument("--precisions", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                   help="model_fit_precision values (every cap is fitted in each)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the fits' generator (split and minibatches)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mbmpo_fit_cap"))
    args = p.parse_args()
    if any(c < 0 for c in args.caps):
        raise SystemExit(f"--caps must be >= 0 (0 = every training row), got {args.caps}")
    torch.set_num_threads(args.threads)
    algo = MBMPO.load(args.checkpoint, console=False)
    data = algo.dataset.arrays()
    start = copy.deepcopy(algo.ensemble.state_dict())
    val_mask = data["keys"] < algo.config.model_val_fraction if "keys" in data else None
    rows = []
    for precision in args.precisions:
        for cap in args.caps:
            algo.ensemble.load_state_dict(start)
            cfg = replace(algo.fit_config, epoch_rows=cap, precision=getattr(torch, precision))
            gen = torch.Generator().manual_seed(args.seed)
            t0 = time.perf_counter()
            res = fit_ensemble(algo.ensemble, data["obs"], data["act"], data["next_obs"], None, cfg, gen, val_mask)
            sec = time.perf_counter() - t0
            after = res.best_val_loss  # the validation error of the weights the fit keeps
            row = {"cap": cap, "precision": precision, "rows": int(len(data["obs"])), "seconds": round(sec, 2),
                   "s_per_model_epoch": round(sec / sum(res.epochs), 3), "epochs": res.epochs,
                   "val_mse": [round(v, 5) for v in after], "val_mse_mean": round(sum(after) / len(after), 5)}
            rows.append(row)
            print(f"{precision} cap {cap or 'all':>6}: {sec:6.1f} s ({row['s_per_model_epoch']} s per model-epoch), "
                  f"epochs {res.epochs}, validation MSE {row['val_mse_mean']:.4f}", flush=True)
    algo.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit_cap.json").write_text(json.dumps({"checkpoint": str(args.checkpoint), "threads": args.threads,
                                                  "fits": rows}, indent=2) + "\n")
    with open(out / "fit_cap.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["precision", "cap", "rows", "seconds", "s_per_model_epoch", "val_mse_mean", "epochs"])
        for r in rows:
            w.writerow([r["precision"], r["cap"], r["rows"], r["seconds"], r["s_per_model_epoch"], r["val_mse_mean"],
                        " ".join(map(str, r["epochs"]))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
