"""Per-phase wall-clock of MB-MPO's HalfCheetah preset, today's code beside an older commit.

Each source tree trains the preset for ``--steps`` real steps in its own process (same seed,
same threads, one after the other) and its ``progress.csv`` is split into phases:

    real sampling    time/real_sampling_s
    model fit        time/model_fit_s less the plug-in fits done there
    imagined sampling  num_meta_steps * time/imagined_sampling_s less imagined plug-in fits
    inner step       num_meta_steps * time/inner_step_s
    outer step       num_meta_steps * time/outer_step_s
    plug-in fits     time/fall_fit_s + time/value_fit_s (times num_meta_steps when per meta-step)
    collect params   the rest of time/meta_s (the imagined batch that adapts the collectors)
    evaluation+other process wall clock less the training iterations (evaluation, start-up, I/O)

    python benchmarks/mbmpo_speed.py --old 8ccd224 --steps 12000 --threads 2
    python benchmarks/mbmpo_speed.py --profile      # torch profiler, top ops per phase (today's code)
    python benchmarks/mbmpo_speed.py --old '' --device cuda   # per-phase times on a GPU (timers do not
                                                    # synchronize it: time may move between phases)
    python benchmarks/mbmpo_speed.py --old '' --steps 40000 --variant 'fit20k=--model-epoch-rows 20000'
                                                    # today's code beside itself with one change

Prints the table and writes ``speed.json``, ``speed.csv`` and ``speed.png`` (``profile.txt``
with ``--profile``) to ``--out``. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESET = "scripts/configs/halfcheetah_mbmpo.yaml"
GPU_PATH_COMMIT = "51ff60e"  # the first commit whose MB-MPO runs on a GPU
PHASES = ["real sampling", "model fit", "imagined sampling", "inner step", "outer step", "plug-in fits",
          "collect params", "evaluation+other"]


def col_sum(rows: list[dict[str, str]], key: str) -> float:
    return sum(float(r[key]) for r in rows if r.get(key) not in (None, ""))


def phases(run_dir: Path, process_s: float) -> dict[str, float]:
    """Seconds per phase of one run (see the module docstring)."""
    import yaml

    with open(run_dir / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    m = int(cfg["num_meta_steps"])
    tv = cfg.get("terminal_value", "off")  # older configs: a string; today: {fit_on: ...}
    fit_on = tv if isinstance(tv, str) else tv["fit_on"]
    # a terminal value fitted on imagined data is logged per meta-step, inside imagined sampling
    value = col_sum(rows, "time/value_fit_s")
    value_meta, value_real = (m * value, 0.0) if fit_on == "imagined" else (0.0, value)
    fall = col_sum(rows, "time/fall_fit_s")
    out = {
        "real sampling": col_sum(rows, "time/real_sampling_s"),
        "model fit": col_sum(rows, "time/model_fit_s") - fall - value_real,
        "imagined sampling": m * col_sum(rows, "time/imagined_sampling_s") - value_meta,
        "inner step": m * col_sum(rows, "time/inner_step_s"),
        "outer step": m * col_sum(rows, "time/outer_step_s"),
        "plug-in fits": fall + value_real + value_meta,
    }
    meta = col_sum(rows, "time/meta_s")
    out["collect params"] = meta - m * (col_sum(rows, "time/imagined_sampling_s") + col_sum(rows, "time/inner_step_s")
                                        + col_sum(rows, "time/outer_step_s"))
    out["evaluation+other"] = process_s - col_sum(rows, "time/iteration_s")
    out["total"] = process_s
    return out


def run(src: Path, out: Path, steps: int, threads: int, device: str, extra: list[str]) -> float:
    """Train the preset from source tree ``src`` into ``out``; returns the process's wall clock."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, str(src / "scripts" / "train.py"), "--preset", PRESET, "--total-steps", str(steps),
           "--seed", "0", "--threads", str(threads), "--out", str(out), "--eval-every", "4000", *extra]
    if device != "cpu":
        cmd += ["--device", device]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=src, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def profile(out_dir: Path, threads: int, device: str) -> str:
    """torch profiler over one MB-MPO iteration of today's code, top ops per phase."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from mbmpo import MBMPO, MBMPOConfig
    from mbmpo.config import load_config

    torch.set_num_threads(threads)
    cfg = load_config(MBMPOConfig, ROOT / PRESET, eval_every=0, num_meta_steps=5, device=device)
    algo = MBMPO(cfg, console=False)
    algo.learn(cfg.warmup_steps + cfg.num_envs * cfg.num_steps)  # warm-up and one iteration
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    text = []
    for name, fn in (("real sampling", algo.collect_real), ("model fit", algo.fit_models),
                     ("meta-step (imagined sampling, inner and outer step)", algo.meta_step),
                     ("evaluation", lambda: algo.evaluate(5, adapted=True))):
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            fn()
            sec = time.perf_counter() - t0
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40)
        text.append(f"== {name}: {sec:.2f} s ({threads} threads, {device})\n{table}")
    algo.close()
    return "\n".join(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", default="8ccd224", help="older commit to compare with ('' = none)")
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mbmpo_speed"))
    p.add_argument("--profile", action="store_true", help="only write the torch profiler summary")
    p.add_argument("--bf16", action="store_true", help="also run today's code with imagined_precision bfloat16")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="also run today's code with these train.py flags, e.g. "
                        "'fit20k=--model-epoch-rows 20000' (repeatable: one change measured on its own)")
    args = p.parse_args()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error(f"--device {args.device}: CUDA is not available on this machine")
    gpu_path = ["git", "merge-base", "--is-ancestor", GPU_PATH_COMMIT, args.old]
    if (args.device != "cpu" and args.old and not args.profile
            and subprocess.run(gpu_path, cwd=ROOT, capture_output=True).returncode != 0):
        p.error(f"--device {args.device}: commit {args.old} runs MB-MPO on the CPU only (the GPU path came "
                f"with {GPU_PATH_COMMIT}); use --old '' (today's code alone) or a later commit")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        (out / "profile.txt").write_text(profile(out, args.threads, args.device))
        print((out / "profile.txt").read_text())
        return 0
    variants = []
    for spec in args.variant:
        name, sep, flags = spec.partition("=")
        if not sep or not name.strip() or not flags.split():
            raise SystemExit(f"--variant {spec!r}: expected NAME=FLAGS, e.g. 'fit20k=--model-epoch-rows 20000'")
        variants.append((name.strip(), flags.split()))
    head = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sources = []
        if args.old:
            old_src = Path(tmp) / "old"
            subprocess.run(["git", "worktree", "add", "--detach", str(old_src), args.old], cwd=ROOT, check=True,
                           capture_output=True)
            sources.append((f"old {args.old}", old_src, []))
        sources.append((f"new {head}", ROOT, []))
        if args.bf16:
            sources.append((f"new {head} bf16", ROOT, ["--imagined-precision", "bfloat16"]))
        sources += [(f"new {head} {name}", ROOT, flags) for name, flags in variants]
        try:
            for label, src, extra in sources:
                run_dir = Path(tmp) / label.replace(" ", "_")
                sec = run(src, run_dir, args.steps, args.threads, args.device, extra)
                results[label] = phases(run_dir, sec)
                print(f"{label}: {sec:.0f} s", flush=True)
        finally:
            if args.old:
                subprocess.run(["git", "worktree", "remove", "--force", str(Path(tmp) / "old")], cwd=ROOT,
                               capture_output=True)
    labels = list(results)
    print(f"\nMB-MPO HalfCheetah preset, {args.steps} real steps, {args.threads} threads, {args.device}")
    print(f"{'phase':<20}" + "".join(f"{lab:>24}" for lab in labels) + ("   speed-up" if len(labels) >= 2 else ""))
    with open(out / "speed.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phase", *labels])
        for ph in [*PHASES, "total"]:
            vals = [results[lab][ph] for lab in labels]
            w.writerow([ph, *(f"{v:.2f}" for v in vals)])
            ratio = "".join(f"{vals[0] / v:>9.2f}x" for v in vals[1:] if v > 0) if len(vals) >= 2 else ""
            print(f"{ph:<20}" + "".join(f"{v:>24.1f}" for v in vals) + ratio)
    (out / "speed.json").write_text(json.dumps({"steps": args.steps, "threads": args.threads, "device": args.device,
                                                "seconds": results}, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    left = [0.0] * len(labels)
    for ph in PHASES:
        vals = [max(results[lab][ph], 0.0) for lab in labels]
        ax.barh(labels, vals, left=left, label=ph)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("seconds")
    ax.set_title(f"MB-MPO HalfCheetah preset, {args.steps} real steps, {args.threads} threads ({args.device})")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    fig.tight_layout()
    fig.savefig(out / "speed.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
