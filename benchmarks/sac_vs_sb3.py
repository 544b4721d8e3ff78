"""Our SAC against Stable-Baselines3's SAC with the same hyperparameters (the preset
scripts/configs/<env>_sac.yaml: SB3's SAC defaults with the zoo's learning_starts), one torch
thread each.

Throughput (always): both libraries warm up with ``--warmup`` random steps, then take
``--updates`` env steps with one gradient update each (train_freq 1, gradient_steps 1),
interleaved in chunks of ``--chunk`` steps so both see the same machine load. Reported per
library: gradient updates per second (time inside the training calls only) and env steps per
second of the whole training phase (acting, env steps, replay and updates).

Returns (``--returns``): for each seed both libraries train in parallel worker processes (one
per core) with the preset (learning_starts 10000) and are evaluated with 10 deterministic
episodes at each ``--eval-at`` step count.

    python benchmarks/sac_vs_sb3.py --updates 3000                         # throughput only
    python benchmarks/sac_vs_sb3.py --returns --seeds 0 1 2 --eval-at 50000 100000
    python benchmarks/sac_vs_sb3.py --update-precision bfloat16            # ours with bf16 hidden layers

``--update-precision`` sets our SAC's ``update_precision`` (SB3 always runs float32); the
CPU's bf16 support is recorded with the throughput (bf16 is fast only where it is native).

Writes throughput.json/.csv and, with --returns, returns.json/.csv, summary.json and
sac_vs_sb3.png under --out (default benchmarks/results/sac_vs_sb3/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def preset(env_id: str) -> Path:
    from scripts.train import default_preset

    path = default_preset(env_id, "sac")
    if path is None:
        raise SystemExit(f"no SAC preset for {env_id}: add scripts/configs/<env>_sac.yaml")
    return path


class Timed:
    """Wraps a training method: total time spent inside it and the updates it made."""

    def __init__(self, fn, count):
        self.fn, self.count, self.seconds, self.updates = fn, count, 0.0, 0

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.updates += self.count(args, kwargs)
        return out


class Ours:
    lib = "mbmpo"

    def __init__(self, env_id: str, seed: int, overrides: dict):
        from mbmpo import SAC, SACConfig
        from mbmpo.config import load_config

        self.algo = SAC(load_config(SACConfig, preset(env_id), env_id=env_id, seed=seed, eval_every=0,
                                    **overrides), console=False)
        self.timed = self.algo.train = Timed(self.algo.train, lambda a, kw: a[0])

    def learn_to(self, steps: int) -> float:
        """Train up to ``steps`` real steps; seconds of training (evaluations excluded)."""
        before = self.algo.wall_time
        self.algo.learn(steps)
        return self.algo.wall_time - before

    def evaluate(self, episodes: int) -> np.ndarray:
        return self.algo.evaluate(episodes)[0]

    @property
    def num_updates(self) -> int:
        return self.algo.num_updates


class SB3:
    lib = "sb3"

    def __init__(self, env_id: str, seed: int, overrides: dict):
        import gymnasium as gym
        import torch
        import yaml
        from stable_baselines3 import SAC as SB3SAC

        p = {**yaml.safe_load(preset(env_id).read_text()), **overrides}
        assert list(p["hidden_sizes"]) == list(p["value_hidden_sizes"]), "SB3 uses one net_arch"
        self.env_id = env_id
        self.model = SB3SAC(
            "MlpPolicy", gym.make(env_id), seed=seed, device="cpu", learning_rate=p["learning_rate"],
            buffer_size=p["buffer_size"], learning_starts=p["learning_starts"], batch_size=p["batch_size"],
            tau=p["tau"], gamma=p["gamma"], train_freq=p["train_freq"], gradient_steps=p["gradient_steps"],
            ent_coef=f"auto_{p['init_alpha']}" if p["autotune_alpha"] else p["init_alpha"],
            policy_kwargs=dict(net_arch=list(p["hidden_sizes"]), activation_fn=torch.nn.ReLU))
        self.timed = self.model.train = Timed(self.model.train, lambda a, kw: kw["gradient_steps"])
        self.eval_envs: list = []

    def learn_to(self, steps: int) -> float:
        t0 = time.perf_counter()
        self.model.learn(steps - self.model.num_timesteps, reset_num_timesteps=False)
        return time.perf_counter() - t0

    def evaluate(self, episodes: int) -> np.ndarray:
        import gymnasium as gym

        while len(self.eval_envs) < episodes:
            self.eval_envs.append(gym.make(self.env_id))
        done = self.model.num_timesteps
        rets = []
        for i, env in enumerate(self.eval_envs[:episodes]):
            obs, _ = env.reset(seed=10_000 + 7919 * done + i)
            total, end = 0.0, False
            while not end:
                act, _ = self.model.predict(obs, deterministic=True)
                obs, r, term, trunc, _ = env.step(act)
                total += float(r)
                end = term or trunc
            rets.append(total)
        return np.array(rets)

    @property
    def num_updates(self) -> int:
        return self.model._n_updates


def setup_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def throughput(args: argparse.Namespace) -> list[dict]:
    import torch

    from mbmpo.algorithm import cpu_bf16_native

    setup_worker(args.threads)
    overrides = dict(learning_starts=args.warmup, num_steps=args.chunk, eval_episodes=1)
    libs = [Ours(args.env, 0, {**overrides, "update_precision": args.update_precision}),
            SB3(args.env, 0, overrides)]
    for lib in libs:
        lib.learn_to(args.warmup)  # random warm-up, no updates
        lib.timed.seconds, lib.timed.updates = 0.0, 0
    phase = {lib.lib: 0.0 for lib in libs}
    load_before = os.getloadavg()[0]  # other processes on the machine slow both libraries alike
    target = args.warmup
    while target < args.warmup + args.updates:
        target = min(target + args.chunk, args.warmup + args.updates)
        for lib in libs:
            phase[lib.lib] += lib.learn_to(target)
    rows = []
    for lib in libs:
        rows.append({"lib": lib.lib, "env": args.env, "threads": args.threads, "updates": lib.timed.updates,
                     "update_time_s": lib.timed.seconds, "updates_per_s": lib.timed.updates / lib.timed.seconds,
                     "env_steps": args.updates, "phase_time_s": phase[lib.lib],
                     "steps_per_s": args.updates / phase[lib.lib],
                     "loadavg_start": round(load_before, 2), "loadavg_end": round(os.getloadavg()[0], 2),
                     "update_precision": args.update_precision if lib.lib == "mbmpo" else "float32",
                     "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                     "cpu_bf16_native": cpu_bf16_native()})
    ours, sb3 = rows
    ratio = {"updates_per_s": ours["updates_per_s"] / sb3["updates_per_s"],
             "steps_per_s": ours["steps_per_s"] / sb3["steps_per_s"]}
    for r in rows:
        print(f"{r['lib']:6s} {r['updates']} updates: {r['updates_per_s']:.1f} updates/s (inside training "
              f"calls), {r['steps_per_s']:.1f} env steps/s with updates", flush=True)
    print(f"ours / SB3: updates/s x{ratio['updates_per_s']:.2f}, steps/s x{ratio['steps_per_s']:.2f}")
    return [*rows, {"lib": "ratio_ours_over_sb3", **ratio}]


def run_returns(lib_name: str, env_id: str, seed: int, eval_at: list[int], episodes: int, threads: int,
                precision: str) -> dict:
    setup_worker(threads)
    lib = Ours(env_id, seed, {"update_precision": precision}) if lib_name == "mbmpo" else SB3(env_id, seed, {})
    evals, train_time = [], 0.0
    for steps in eval_at:
        train_time += lib.learn_to(steps)
        rets = lib.evaluate(episodes)
        evals.append({"steps": steps, "return_mean": float(rets.mean()), "return_std": float(rets.std())})
    return {"lib": lib_name, "env": env_id, "seed": seed, "train_time_s": train_time,
            "update_precision": precision if lib_name == "mbmpo" else "float32",
            "updates": lib.num_updates, "evals": evals}


def returns(args: argparse.Namespace, out: Path) -> list[dict]:
    results = []
    with ProcessPoolExecutor(2) as pool:  # every (seed, library) run queued at once, two at a time
        futs = [pool.submit(run_returns, lib, args.env, seed, args.eval_at, args.episodes, args.threads,
                            args.update_precision)
                for seed in args.seeds for lib in args.libs]
        for f in futs:
            r = f.result()
            results.append(r)
            print(f"{r['lib']:6s} seed {r['seed']}: " + ", ".join(
                f"{e['steps']}:{e['return_mean']:.0f}" for e in r["evals"]), flush=True)
            (out / "returns.json").write_text(json.dumps(results, indent=1))
    summarize_returns(results, out, args.env)
    return results


def summarize_returns(results: list[dict], out: Path, env_id: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["steps"] for e in results[0]["evals"]]
    lines = ["lib,seed," + ",".join(f"return@{s}" for s in steps)]
    lines += [f"{r['lib']},{r['seed']}," + ",".join(f"{e['return_mean']:.1f}" for e in r["evals"]) for r in results]
    (out / "returns.csv").write_text("\n".join(lines) + "\n")
    summary = {lib: {str(s): {"median": float(np.median(v)), "min": float(np.min(v)), "max": float(np.max(v))}
                     for i, s in enumerate(steps)
                     for v in [[r["evals"][i]["return_mean"] for r in results if r["lib"] == lib]]}
               for lib in dict.fromkeys(r["lib"] for r in results)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    fig, ax = plt.subplots(figsize=(6, 4))
    for lib, color in (("sb3", "tab:gray"), ("mbmpo", "tab:blue")):
        for r in (r for r in results if r["lib"] == lib):
            ax.plot([e["steps"] for e in r["evals"]], [e["return_mean"] for e in r["evals"]], color=color,
                    marker="o", alpha=0.7,
                    label=f"{lib} ({r.get('update_precision', 'float32')}) seed {r['seed']}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval return (deterministic)")
    ax.set_title(f"SAC on {env_id}: ours vs SB3, same hyperparameters")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sac_vs_sb3.png", dpi=110)


def write_rows(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per library")
    ap.add_argument("--warmup", type=int, default=1000, help="throughput: random steps before updates")
    ap.add_argument("--updates", type=int, default=3000, help="throughput: env steps (= updates) timed")
    ap.add_argument("--chunk", type=int, default=200, help="throughput: steps per interleaved chunk")
    ap.add_argument("--returns", action="store_true", help="also train for returns (long)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-at", type=int, nargs="+", default=[50_000, 100_000])
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--libs", nargs="+", default=["sb3", "mbmpo"], choices=["sb3", "mbmpo"],
                    help="libraries trained for --returns (the other's figures can come from an earlier run)")
    ap.add_argument("--update-precision", default="float32", choices=["float32", "bfloat16"],
                    help="our SAC's update_precision (SB3 runs float32)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sac_vs_sb3"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = throughput(args)
    (out / "throughput.json").write_text(json.dumps(rows, indent=1))
    write_rows(rows, out / "throughput.csv")
    if args.returns:
        returns(args, out)


if __name__ == "__main__":
    main()
