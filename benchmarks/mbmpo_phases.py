"""Where an MB-MPO run spends its wall time, from its progress.csv (no re-running).

Per run: total training wall time (evaluation excluded) per 100k real steps and its split
into real sampling, model fitting, imagined sampling, inner step and outer step. The
meta-step columns are per-meta-step means, so they are multiplied by ``num_meta_steps``
from the run's config.yaml. Writes ``phases.json`` next to ``--out``:

    python benchmarks/mbmpo_phases.py runs/compare_hc/runs/HalfCheetah-v5/mbmpo/s* \
        --out benchmarks/results/mbmpo_phases
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from mbmpo.config import load_yaml  # noqa: E402
from mbmpo.report import read_progress  # noqa: E402

PER_ITERATION = {"real sampling": "time/real_sampling_s", "model fit": "time/model_fit_s"}
PER_META_STEP = {"imagined sampling": "time/imagined_sampling_s", "inner step": "time/inner_step_s",
                 "outer step": "time/outer_step_s"}


def phases(run_dir: Path) -> dict[str, float]:
    cols = read_progress(run_dir / "progress.csv")  # {column: [float per row]} (NaN = empty)
    meta_steps = int(load_yaml(run_dir / "config.yaml")["num_meta_steps"])

    def total(col: str) -> float:
        return float(np.nansum(cols[col]))

    steps = cols["real_steps"][-1]
    out = {"real_steps": steps, "wall_s": cols["wall_time_s"][-1]}
    for name, col in PER_ITERATION.items():
        out[name] = total(col)
    for name, col in PER_META_STEP.items():
        out[name] = meta_steps * total(col)
    out["other"] = out["wall_s"] - sum(out[n] for n in (*PER_ITERATION, *PER_META_STEP))
    out["minutes_per_100k"] = out["wall_s"] / 60 * 100_000 / steps
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    res = {str(r): phases(Path(r)) for r in args.runs}
    for run, ph in res.items():
        parts = ", ".join(f"{k} {100 * ph[k] / ph['wall_s']:.0f}%"
                          for k in (*PER_ITERATION, *PER_META_STEP, "other"))
        print(f"{run}: {ph['real_steps']:.0f} steps, {ph['minutes_per_100k']:.1f} min per 100k ({parts})")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "phases.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
