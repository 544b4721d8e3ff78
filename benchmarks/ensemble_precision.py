"""Time of one imagined ensemble step (``predict_with_uncertainty``: the K models' means, the
drawn next state and the disagreement) in float32 and in bfloat16, on this CPU.

bf16 products are native only on CPUs with AVX512-BF16 or AMX; elsewhere oneDNN emulates
them. The figures say what ``imagined_precision: bfloat16`` costs on the machine at hand.
HalfCheetah-v5 sizes (17 observation entries, 6 actions), 5 probabilistic (512, 512) models,
200 rows per step (the preset's 20 tasks x 10 rollouts).

    python benchmarks/ensemble_precision.py [--threads 1] [--steps 200] [--repeats 3]

Writes results.json under --out (default benchmarks/results/ensemble_precision/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dynamics.ensemble import DynamicsEnsemble  # noqa: E402
from mbmpo.algorithm import cpu_bf16_native  # noqa: E402


def time_step(ens: DynamicsEnsemble, dtype: torch.dtype | None, rows: int, steps: int) -> float:
    """Mean milliseconds per step of ``rows`` rows, after one untimed step."""
    gen = torch.Generator().manual_seed(0)
    obs, act = torch.randn(rows, ens.obs_dim, generator=gen), torch.rand(rows, ens.act_dim, generator=gen)
    idx = torch.arange(rows) % ens.num_models
    with torch.no_grad(), ens.compute_dtype(dtype):
        ens.predict_with_uncertainty(obs, act, idx, "disagreement")
        t0 = time.perf_counter()
        for _ in range(steps):
            ens.predict_with_uncertainty(obs, act, idx, "disagreement")
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ensemble_precision"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ens = DynamicsEnsemble(17, 6, 5, (512, 512), probabilistic=True)
    load = os.getloadavg()[0]
    ms: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        ms["float32"].append(time_step(ens, None, args.rows, args.steps))
        ms["bfloat16"].append(time_step(ens, torch.bfloat16, args.rows, args.steps))
    best = {k: min(v) for k, v in ms.items()}
    out = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_native": cpu_bf16_native(),
           "threads": args.threads, "rows": args.rows, "steps": args.steps, "ms_per_step": ms,
           "best_ms_per_step": best, "bf16_over_float32": best["bfloat16"] / best["float32"],
           "loadavg_start": load, "loadavg_end": os.getloadavg()[0]}
    print(f"{out['cpu_capability']}, native bf16: {out['cpu_bf16_native']}, {args.threads} thread(s), "
          f"{args.rows} rows: float32 {best['float32']:.2f} ms, bfloat16 {best['bfloat16']:.2f} ms per step "
          f"(bf16 takes {out['bf16_over_float32']:.2f}x float32's time; load {load:.1f})")
    d = Path(args.out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
