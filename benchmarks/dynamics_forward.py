"""Issue 3, benchmark 1: imagined-step throughput of the ensemble forward, three ways.

K = 5 models of HalfCheetah-v5 size (in 23 = 17 obs features + 6 actions, out 18), hidden
(512, 512) and (200, 200, 200, 200), at 1k / 10k / 50k rows per step in total (split evenly
over the models). In the same run: a plain loop over the K models, one batched
``[K, in, out]`` matmul (``torch.baddbmm``), and ``torch.vmap`` over stacked weights. Each
figure is also given as a fraction of the compute-bound limit: model FLOPs per step x
steps/s divided by the GFLOP/s that a plain ``torch.mm`` of the same layer shapes reaches.

    python benchmarks/dynamics_forward.py [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call, stack_module_state

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dynamics.ensemble import DynamicsEnsemble  # noqa: E402

IN, OUT, K = 23, 18, 5


def timeit(fn, min_time=1.0) -> float:
    """Seconds per call (median of 5 blocks)."""
    fn()
    n, t = 1, 0.0
    while t < 0.2:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        n *= 2
    reps = max(1, int(n * min_time / 5 / max(t, 1e-9)))
    blocks = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        blocks.append((time.perf_counter() - t0) / reps)
    return sorted(blocks)[2]


def layer_dims(hidden):
    dims = [IN, *hidden, OUT]
    return list(zip(dims[:-1], dims[1:]))


@torch.no_grad()
def bench(hidden, rows: int) -> dict:
    ens = DynamicsEnsemble(IN - 6 + 1, 6, K, hidden, "relu", num_position_dims=1).eval()
    per = rows // K
    x = torch.randn(K, per, IN)
    flops_per_row = sum(2 * i * o for i, o in layer_dims(hidden))

    def loop():
        return [m(x[k]) for k, m in enumerate(ens.models)]

    linears = [[m for m in model if isinstance(m, torch.nn.Linear)] for model in ens.models]
    ws = [torch.stack([ls[j].weight.T for ls in linears]).contiguous() for j in range(len(linears[0]))]
    bs = [torch.stack([ls[j].bias for ls in linears]).unsqueeze(1) for j in range(len(linears[0]))]

    def batched():
        h = x
        for j, (w, b) in enumerate(zip(ws, bs)):
            h = torch.baddbmm(b, h, w)
            if j < len(ws) - 1:
                h = torch.relu(h)
        return h

    params, buffers = stack_module_state([copy.deepcopy(m) for m in ens.models])
    base = copy.deepcopy(ens.models[0]).to("meta")

    def call(p, b, xx):
        return functional_call(base, (p, b), (xx,))

    vm = torch.vmap(call)

    def vmapped():
        return vm(params, buffers, x)

    ref = torch.stack(loop())
    assert torch.allclose(batched(), ref, atol=1e-4) and torch.allclose(vmapped(), ref, atol=1e-4)
    # compute-bound reference: plain mm of every layer shape, K times
    mats = [(torch.randn(per, i), torch.randn(i, o)) for i, o in layer_dims(hidden)]

    def mm_only():
        for _ in range(K):
            for a, b in mats:
                torch.mm(a, b)

    t_mm = timeit(mm_only)
    peak = flops_per_row * rows / t_mm
    out = {"hidden": list(hidden), "rows": rows, "mm_gflops": peak / 1e9}
    for name, fn in (("loop", loop), ("batched_bmm", batched), ("vmap", vmapped)):
        t = timeit(fn)
        sps = rows / t
        out[name] = {"steps_per_s": sps, "fraction_of_mm": flops_per_row * sps / peak}
    return out


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, hidden in zip(axes, ((512, 512), (200, 200, 200, 200))):
        rs = [r for r in results if tuple(r["hidden"]) == hidden]
        xs = range(len(rs))
        for j, name in enumerate(("loop", "batched_bmm", "vmap")):
            ax.bar([x + 0.27 * (j - 1) for x in xs], [r[name]["steps_per_s"] / 1e3 for r in rs], 0.27, label=name)
        ax.set_xticks(list(xs), [f"{r['rows'] // 1000}k rows" for r in rs])
        ax.set_ylabel("imagined steps / s (thousands)")
        ax.set_title(f"K=5 x {hidden}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "dynamics_forward.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dynamics_forward"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from results.json")
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads((Path(args.out) / "results.json").read_text())["results"], Path(args.out))
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    print("| hidden | rows | loop steps/s (% of mm) | batched bmm | vmap | mm GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for hidden in ((512, 512), (200, 200, 200, 200)):
        for rows in (1_000, 10_000, 50_000):
            r = bench(hidden, rows)
            results.append(r)
            cells = [f"{r[n]['steps_per_s'] / 1e3:.0f}k ({100 * r[n]['fraction_of_mm']:.0f}%)"
                     for n in ("loop", "batched_bmm", "vmap")]
            print(f"| {hidden} | {rows} | " + " | ".join(cells) + f" | {r['mm_gflops']:.1f} |", flush=True)
    (out / "results.json").write_text(json.dumps({"threads": args.threads, "results": results}, indent=1))
    plot(results, out)


if __name__ == "__main__":
    main()
