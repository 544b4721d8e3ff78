"""Latency of one all_reduce on this machine, the floor under DPPO's 'communicate' time:
every DPPO gradient step is one synchronous all_reduce.

W processes (spawned as DPPO spawns its workers: one torch thread each, 127.0.0.1) sum
float32 tensors of several sizes back to back, without other work in between, so the
figure is pure collective latency, through both paths: gloo's ``all_reduce`` on loopback,
and :class:`mbmpo.distributed.SharedMemoryReducer` (what ``mbmpo.distributed.all_reduce_sum_``
uses in a local run). Each path and size: 20 warm-up calls, then ``--calls`` timed ones;
rank 0 reports the median, mean and 90th percentile per call.

Writes ``results.json`` and ``results.csv`` into ``--out``::

    python benchmarks/allreduce_latency.py                     # W = 2, sizes 100 / 10k / 50k
    python benchmarks/allreduce_latency.py --workers 2 --sizes 11000 --calls 300

11k floats is the preset's fused policy + value gradient (two 64x64 MLPs on HalfCheetah).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbmpo import distributed  # noqa: E402


def measure(sizes: list[int], calls: int, out: str) -> None:
    """Runs in every worker (inside the process group)."""
    rows = []
    paths = {"gloo": dist.all_reduce, "shared_memory": distributed.all_reduce_sum_}
    if distributed.shared_memory_reducer() is None:  # the launcher could not set it up (it said why)
        del paths["shared_memory"]
    for path, reduce in paths.items():
        for n in sizes:
            t = torch.ones(n)
            for _ in range(20):
                reduce(t)
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                reduce(t)
                times.append(time.perf_counter() - t0)
            ms = np.array(times) * 1e3
            rows.append(dict(path=path, workers=dist.get_world_size(), floats=n, calls=calls,
                             median_ms=float(np.median(ms)), p90_ms=float(np.percentile(ms, 90)),
                             mean_ms=float(ms.mean())))
    if dist.get_rank() == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "results.json").write_text(json.dumps(rows, indent=1))
        with open(Path(out, "results.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print("| path | W | floats | median ms | mean ms | p90 ms |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['path']} | {r['workers']} | {r['floats']} | {r['median_ms']:.3f} | "
                  f"{r['mean_ms']:.3f} | {r['p90_ms']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000, 50_000])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "allreduce_latency"))
    a = ap.parse_args()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    distributed.spawn(measure, (a.sizes, a.calls, a.out), a.workers, threads=1)


if __name__ == "__main__":
    main()
