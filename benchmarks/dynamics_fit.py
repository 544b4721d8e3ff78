"""Issue 3, benchmark 2: dynamics-model fit time and accuracy on HalfCheetah-v5.

Data: half random actions, half a trained PPO policy with Gaussian action noise (when a
checkpoint is given), full observations (x included). For each data-set size and model
size: seconds to fit K=5 models with per-model early stopping, 1-step validation MSE
(normalized; 1.0 = predicting the mean change), and open-loop error of the predicted
trajectory vs the real one for horizons 1..100 on held-out real trajectories (policy
actions replayed), saved as a plot.

    python benchmarks/dynamics_fit.py --sizes 20000 100000 --ppo runs/bench/ppo_200k/HalfCheetah-v5_tuned_s0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dynamics.ensemble import DynamicsEnsemble  # noqa: E402
from dynamics.trainer import FitConfig, fit_ensemble  # noqa: E402

ENV = "HalfCheetah-v5"


def collect_data(n: int, ppo_dir: str | None, seed: int, traj_len: int = 1000):
    """``n`` transitions in trajectories of ``traj_len``; returns float64 arrays [n_traj, T, ...]."""
    env = gym.make(ENV, exclude_current_positions_from_observation=False)
    policy = None
    if ppo_dir:
        from mbmpo import PPO

        policy = PPO.load(ppo_dir, console=False)
    rng = np.random.default_rng(seed)
    obs_l, act_l, nxt_l = [], [], []
    num_traj = max(1, n // traj_len)
    for i in range(num_traj):
        obs, _ = env.reset(seed=seed * 1000 + i)
        use_policy = policy is not None and i % 2 == 1
        o_t, a_t, n_t = [], [], []
        for _ in range(traj_len):
            if use_policy:
                a = policy.predict(obs[1:], deterministic=True) + rng.normal(0, 0.3, 6)
            else:
                a = rng.uniform(-1, 1, 6)
            a = np.clip(a, -1, 1)
            nxt, _, _, _, _ = env.step(a)
            o_t.append(obs)
            a_t.append(a)
            n_t.append(nxt)
            obs = nxt
        obs_l.append(o_t)
        act_l.append(a_t)
        nxt_l.append(n_t)
    env.close()
    f = lambda x: torch.as_tensor(np.array(x), dtype=torch.float64)  # noqa: E731
    return f(obs_l), f(act_l), f(nxt_l)


@torch.no_grad()
def open_loop_error(ens: DynamicsEnsemble, obs, act, nxt, horizons: int = 100) -> np.ndarray:
    """Mean over models and start points of the normalized squared error after h steps."""
    scale = ens.out_rms.std[: ens.obs_dim].double()
    starts = range(0, obs.shape[1] - horizons, 50)
    errs = np.zeros(horizons)
    count = 0
    for k in range(ens.num_models):
        for s in starts:
            x = obs[:, s]
            for h in range(horizons):
                x, _ = ens.predict_k(k, x, act[:, s + h].float())
                x = x.double()
                # error of the state change from the start, in units of the 1-step change std
                e = ((x - nxt[:, s + h]) / scale).pow(2).mean().item()
                errs[h] += e
            count += 1
    return errs / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--hidden", type=str, nargs="+", default=["512,512", "200,200,200,200"])
    ap.add_argument("--ppo", default=None, help="PPO run directory or checkpoint for policy data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-epochs", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dynamics_fit"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = collect_data(4000, args.ppo, seed=999)
    results = []
    curves = {}
    for n in args.sizes:
        obs, act, nxt = collect_data(n, args.ppo, seed=n)
        flat = [t.reshape(-1, t.shape[-1]) for t in (obs, act, nxt)]
        for hs in args.hidden:
            hidden = tuple(int(h) for h in hs.split(","))
            torch.manual_seed(0)
            ens = DynamicsEnsemble(18, 6, 5, hidden, "relu", num_position_dims=1)
            t0 = time.perf_counter()
            res = fit_ensemble(ens, *flat, config=FitConfig(max_epochs=args.max_epochs),
                               generator=torch.Generator().manual_seed(0))
            fit_s = time.perf_counter() - t0
            ol = open_loop_error(ens, *test)
            key = f"{n // 1000}k {hs}"
            curves[key] = ol.tolist()
            r = {"transitions": n, "hidden": list(hidden), "fit_time_s": fit_s, "epochs": res.epochs,
                 "val_mse_mean": float(np.mean(res.best_val_loss)),
                 "open_loop": {str(h): float(ol[h - 1]) for h in (1, 10, 30, 100)}}
            results.append(r)
            print(json.dumps(r), flush=True)
            (out / "results.json").write_text(json.dumps({"results": results, "curves": curves}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, c in curves.items():
        ax.plot(range(1, len(c) + 1), c, label=key)
    ax.set_yscale("log")
    ax.set_xlabel("open-loop horizon (steps)")
    ax.set_ylabel("squared error / 1-step change variance")
    ax.set_title("HalfCheetah-v5 ensemble open-loop error (held-out trajectories)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "open_loop_error.png", dpi=110)


if __name__ == "__main__":
    main()
