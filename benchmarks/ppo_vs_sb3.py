"""Benchmark 1: our PPO vs Stable-Baselines3 PPO with the same hyperparameters.

Both use the rl-baselines3-zoo HalfCheetah preset (scripts/configs/halfcheetah_ppo_tuned.yaml),
one torch thread each, on HalfCheetah-v5. For every seed the two libraries train in
parallel worker processes (one per core) so both see the same machine load.
Reported: env steps per second over training (evaluation excluded) and deterministic
evaluation return (10 episodes) at the same step counts.

    python benchmarks/ppo_vs_sb3.py --steps 200000 --seeds 0 1 2 --eval-every 50000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PRESET = ROOT / "scripts" / "configs" / "halfcheetah_ppo_tuned.yaml"


def run_ours(seed: int, steps: int, eval_every: int, episodes: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from mbmpo import PPO, PPOConfig
    from mbmpo.config import load_config

    cfg = load_config(PPOConfig, PRESET, seed=seed, total_steps=steps, eval_every=0)
    algo = PPO(cfg, console=False)
    evals, done = [], 0
    while done < steps:
        algo.learn(min(steps, done + eval_every))
        done = algo.num_timesteps
        rets, _ = algo.evaluate(episodes)
        evals.append({"steps": done, "return_mean": float(rets.mean()), "return_std": float(rets.std())})
    train_time = algo.wall_time  # collection + updates only, evaluations excluded
    algo.close()
    return {"lib": "mbmpo", "seed": seed, "steps": done, "train_time_s": train_time,
            "sps": done / train_time, "evals": evals}


def run_sb3(seed: int, steps: int, eval_every: int, episodes: int) -> dict:
    import gymnasium as gym
    import torch
    import yaml
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(1)
    p = yaml.safe_load(PRESET.read_text())
    venv = VecNormalize(DummyVecEnv([lambda: gym.make("HalfCheetah-v5")]), gamma=p["gamma"])
    model = SB3PPO(
        "MlpPolicy", venv, seed=seed, device="cpu", n_steps=p["num_steps"], batch_size=p["minibatch_size"],
        n_epochs=p["update_epochs"], learning_rate=p["learning_rate"], gamma=p["gamma"],
        gae_lambda=p["gae_lambda"], clip_range=p["clip_coef"], ent_coef=p["ent_coef"],
        vf_coef=p["vf_coef"] / 2.0,  # SB3's value loss has no 0.5 factor
        max_grad_norm=p["max_grad_norm"],
        policy_kwargs=dict(log_std_init=p["init_log_std"], ortho_init=p["ortho_init"],
                           activation_fn=torch.nn.ReLU,
                           net_arch=dict(pi=list(p["hidden_sizes"]), vf=list(p["value_hidden_sizes"]))),
    )
    eval_envs = [gym.make("HalfCheetah-v5") for _ in range(episodes)]
    evals, train_time, done = [], 0.0, 0
    while done < steps:
        t0 = time.perf_counter()
        model.learn(min(eval_every, steps - done), reset_num_timesteps=False)
        train_time += time.perf_counter() - t0
        done = model.num_timesteps
        rets = []
        for i, env in enumerate(eval_envs):
            obs, _ = env.reset(seed=10_000 + 7919 * done + i)
            total, end = 0.0, False
            while not end:
                act, _ = model.predict(venv.normalize_obs(obs), deterministic=True)
                obs, r, term, trunc, _ = env.step(act)
                total += r
                end = term or trunc
            rets.append(total)
        evals.append({"steps": done, "return_mean": float(np.mean(rets)), "return_std": float(np.std(rets))})
    return {"lib": "sb3", "seed": seed, "steps": done, "train_time_s": train_time,
            "sps": done / train_time, "evals": evals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-every", type=int, default=50_000)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ppo_vs_sb3"))
    ap.add_argument("--sequential", action="store_true",
                    help="one run at a time (standalone throughput on an idle machine)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with ProcessPoolExecutor(1 if args.sequential else 2) as pool:
        for seed in args.seeds:
            fa = pool.submit(run_sb3, seed, args.steps, args.eval_every, args.episodes)
            fb = pool.submit(run_ours, seed, args.steps, args.eval_every, args.episodes)
            for f in (fa, fb):
                r = f.result()
                results.append(r)
                print(f"{r['lib']:6s} seed {r['seed']}: {r['sps']:.0f} steps/s, evals "
                      + ", ".join(f"{e['steps']}:{e['return_mean']:.0f}" for e in r["evals"]), flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=1))
    summarize(results, out)


def summarize(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    libs = ["sb3", "mbmpo"]
    sps = {lib: [r["sps"] for r in results if r["lib"] == lib] for lib in libs}
    lines = ["lib,seed,sps," + ",".join(f"return@{e['steps']}" for e in results[0]["evals"])]
    for r in results:
        lines.append(f"{r['lib']},{r['seed']},{r['sps']:.1f}," + ",".join(f"{e['return_mean']:.1f}" for e in r["evals"]))
    (out / "results.csv").write_text("\n".join(lines) + "\n")
    summary = {"median_sps": {lib: float(np.median(v)) for lib, v in sps.items()}}
    summary["sps_ratio_ours_over_sb3"] = summary["median_sps"]["mbmpo"] / summary["median_sps"]["sb3"]
    steps = [e["steps"] for e in results[0]["evals"]]
    summary["median_return"] = {
        lib: {str(s): float(np.median([r["evals"][i]["return_mean"] for r in results if r["lib"] == lib]))
              for i, s in enumerate(steps)} for lib in libs}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for lib, color in zip(libs, ["tab:gray", "tab:blue"]):
        for r in (r for r in results if r["lib"] == lib):
            a1.plot([e["steps"] for e in r["evals"]], [e["return_mean"] for e in r["evals"]], color=color,
                    alpha=0.7, marker="o", label=f"{lib} seed {r['seed']}")
    a1.set_xlabel("env steps")
    a1.set_ylabel("eval return (10 episodes)")
    a1.legend(fontsize=7)
    a1.set_title("HalfCheetah-v5, zoo-tuned PPO hyperparameters")
    a2.bar(libs, [summary["median_sps"][lib] for lib in libs], color=["tab:gray", "tab:blue"])
    a2.set_ylabel("env steps / s (median over seeds, 1 thread)")
    a2.set_title(f"throughput ratio ours/SB3 = {summary['sps_ratio_ours_over_sb3']:.2f}")
    fig.tight_layout()
    fig.savefig(out / "ppo_vs_sb3.png", dpi=110)


if __name__ == "__main__":
    main()
