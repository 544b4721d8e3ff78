"""Do an MB-MPO run's models foresee its policy's real episodes H steps ahead? (diagnosis aid)

For a run directory with a checkpoint:
1. real deterministic episodes of the pre-update policy θ (what evaluation measures);
2. from every ``--stride``-th real state, closed-loop imagined rollouts of the same policy,
   ``--draws`` per model, ``--horizon`` steps, drawn as in training (probabilistic models
   sample each step); an imagined row that terminates adds no reward after it, and only
   windows that lie inside the real episode are compared;
3. per start: the real reward per step over the next H steps, the imagined one (mean and
   range over models), and the models' disagreement on the real (s, a) at the start (the
   ``u`` of the imagined-reward penalty, normalized units).

A large positive gap (imagined − real) is imagination that misses what the real policy runs
into (e.g. a stumble into a posture it never leaves); a gap near 0 where the real reward
drops means the models foresee it and the policy optimization, not the models, is short.
Prints a JSON summary, writes ``foresight.json`` (summary + per-start rows) and
``foresight.png`` (the first four episodes) to ``--out``.

    python benchmarks/mbmpo_foresight.py runs/compare_hc/runs/HalfCheetah-v5/mbmpo_prob_pen5/s1 \
        --out benchmarks/results/mbmpo_foresight_hc_s1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dynamics.model_env import ImaginedEnv  # noqa: E402
from mbmpo import MBMPO  # noqa: E402


def real_episode(algo: MBMPO, env: gym.Env, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One deterministic episode: observations ``[T+1, obs_dim]``, actions ``[T, act_dim]``, rewards ``[T]``."""
    o, _ = env.reset(seed=seed)
    obs, acts, rews = [o], [], []
    while True:
        a = algo.predict(o, deterministic=True)
        o, r, term, trunc, _ = env.step(a)
        obs.append(o), acts.append(a), rews.append(float(r))
        if term or trunc:
            return np.stack(obs), np.stack(acts), np.asarray(rews)


def imagined_reward_per_step(algo: MBMPO, starts: np.ndarray, horizon: int, draws: int,
                             seed: int) -> np.ndarray:
    """Closed-loop imagined reward per step of θ from each start, per model: ``[S, K]``."""
    K = algo.ensemble.num_models
    S = len(starts)
    start = torch.as_tensor(starts, dtype=torch.float64)
    # Row order (start, model, draw): row i starts at start[i // (K * draws)].
    idx = torch.arange(K).repeat_interleave(draws).repeat(S)
    init = start.repeat_interleave(K * draws, dim=0)
    # Rows that terminate are reset to init[:n] and masked out below: what they reset to is unused.
    ienv = ImaginedEnv(algo.ensemble, idx, lambda n, g: init[:n], horizon, algo.reward_fn,
                       algo.action_space.low, algo.action_space.high,
                       generator=torch.Generator().manual_seed(seed))
    o = ienv.reset()
    ret = torch.zeros(len(idx), dtype=torch.float64)
    alive = torch.ones(len(idx), dtype=torch.bool)
    for _ in range(horizon):
        with torch.no_grad():
            a = algo.policy(algo.features(o)).mode()
        o, r, term, _, _ = ienv.step(a)
        ret += r * alive
        alive &= ~term
    return (ret / horizon).view(S, K, draws).mean(-1).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=3, help="real deterministic episodes")
    p.add_argument("--horizon", type=int, default=50, help="imagined rollout length (the preset's)")
    p.add_argument("--stride", type=int, default=10, help="real steps between imagined starts")
    p.add_argument("--draws", type=int, default=4, help="imagined rollouts per model and start")
    p.add_argument("--miss", type=float, default=1.0,
                   help="an optimistic miss: imagined - real reward per step above this")
    p.add_argument("--seed", type=int, default=500, help="seed of the first real episode")
    p.add_argument("--out", default="benchmarks/results/mbmpo_foresight")
    args = p.parse_args()
    torch.set_num_threads(1)
    algo = MBMPO.load(args.run_dir, console=False)
    env = gym.make(algo.config.env_id, **algo.env_kwargs)
    H = args.horizon

    rows, episodes = [], []
    for e in range(args.episodes):
        obs, acts, rews = real_episode(algo, env, args.seed + e)
        t0s = np.arange(0, len(rews) - H + 1, args.stride)
        imag = imagined_reward_per_step(algo, obs[t0s], H, args.draws, seed=e)
        with torch.no_grad():
            _, _, u = algo.ensemble.predict_with_uncertainty(
                torch.as_tensor(obs[t0s], dtype=torch.float64), torch.as_tensor(acts[t0s], dtype=torch.float64),
                torch.zeros(len(t0s), dtype=torch.long), "disagreement")
        for j, t0 in enumerate(t0s):
            rows.append({"episode": e, "t0": int(t0), "real": float(rews[t0:t0 + H].mean()),
                         "imagined": float(imag[j].mean()), "imagined_min": float(imag[j].min()),
                         "imagined_max": float(imag[j].max()), "u": float(u[j])})
        # A stumble into a posture the policy never leaves shows as a flat, low tail.
        episodes.append({"seed": args.seed + e, "return": float(rews.sum()), "length": len(rews),
                         "last_quarter_reward_per_step": float(rews[-len(rews) // 4:].mean())})

    real = np.array([r["real"] for r in rows])
    imag = np.array([r["imagined"] for r in rows])
    u = np.array([r["u"] for r in rows])
    gap = imag - real
    misses = gap > args.miss
    summary = {
        "run": args.run_dir, "horizon": H, "stride": args.stride, "draws": args.draws,
        "real_episodes": episodes, "starts": len(rows),
        "mean_abs_gap": float(np.abs(gap).mean()), "mean_gap": float(gap.mean()),
        "corr_imagined_real": float(np.corrcoef(imag, real)[0, 1]) if real.std() > 0 else None,
        "miss_threshold": args.miss, "optimistic_misses": int(misses.sum()),
        "pessimistic_misses": int((gap < -args.miss).sum()),
        "u_mean_at_misses": float(u[misses].mean()) if misses.any() else None,
        "u_mean_elsewhere": float(u[~misses].mean()) if (~misses).any() else None,
        "model_range_at_misses": float(np.mean([r["imagined_max"] - r["imagined_min"]
                                                for r, m in zip(rows, misses) if m])) if misses.any() else None,
    }
    print(json.dumps(summary))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "foresight.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))

    shown = min(args.episodes, 4)
    fig, axes = plt.subplots(shown, 1, figsize=(8, 2.6 * shown), squeeze=False, sharex=True)
    for e, ax in enumerate(axes[:, 0]):
        rs = [r for r in rows if r["episode"] == e]
        t = [r["t0"] for r in rs]
        ax.plot(t, [r["real"] for r in rs], "k-", label="real")
        ax.plot(t, [r["imagined"] for r in rs], "C0-", label="imagined (mean of models)")
        ax.fill_between(t, [r["imagined_min"] for r in rs], [r["imagined_max"] for r in rs], color="C0", alpha=0.25)
        ax.set_ylabel("reward / step")
        ax.set_title(f"episode seed {episodes[e]['seed']}: return {episodes[e]['return']:.0f}", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    axes[-1, 0].set_xlabel(f"real step of the imagined start (next {H} steps)")
    fig.tight_layout()
    fig.savefig(out / "foresight.png", dpi=100)
    env.close()
    algo.close()


if __name__ == "__main__":
    main()
