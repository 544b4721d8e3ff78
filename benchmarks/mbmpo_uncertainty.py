"""How large is the models' uncertainty u(s, a), and does it track their error? (penalty sizing)

For a run directory with a checkpoint (the uncertainty penalty ``model_penalty`` is
``r - lambda * u``, u as in :meth:`DynamicsEnsemble.predict_with_uncertainty`):
1. imagined rollouts as a meta-step collects them (pre-update policy, the run's horizon,
   rows spread over the K models): imagined reward per step, and the quantiles of u
   (disagreement and, for probabilistic models, aleatoric) per step;
2. real transitions of the pre-update policy (stochastic, fresh episodes): u against the
   ensemble's real one-step error ``mean_k || mu_k(s, a) - (s' - s) ||_2`` in the same
   normalized units; their Spearman correlation says whether u ranks errors right.
Prints one JSON line and writes ``uncertainty.json`` to ``--out``.

    python benchmarks/mbmpo_uncertainty.py runs/compare_hc/runs/HalfCheetah-v5/mbmpo_prob_kl0.02/s0 \
        --out benchmarks/results/mbmpo_uncertainty_hc
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from dynamics.ensemble import UNCERTAINTIES  # noqa: E402
from mbmpo import MBMPO  # noqa: E402

QUANTILES = (0.1, 0.5, 0.9, 0.99)


def summary(u: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(u.flatten().double(), torch.tensor(QUANTILES, dtype=torch.float64))
    return {"mean": round(float(u.mean()), 4), **{f"q{int(p * 100)}": round(float(v), 4) for p, v in zip(QUANTILES, q)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--real-steps", type=int, default=2000, help="real transitions for the error check")
    p.add_argument("--out", default="benchmarks/results/mbmpo_uncertainty")
    args = p.parse_args()
    torch.set_num_threads(1)
    algo = MBMPO.load(args.run_dir, console=False)
    ens, c = algo.ensemble, algo.config
    kinds = [k for k in UNCERTAINTIES if k != "aleatoric" or ens.probabilistic]

    # 1. imagined rollouts, exactly as a meta-step draws them (no penalty applied)
    env = algo.imagined_env()
    env.costs, env.uncertainty = [], None  # measure u without changing the rewards
    obs = env.reset()
    rews, us = [], {k: [] for k in kinds}
    with torch.no_grad():
        for _ in range(c.imagined_horizon):
            act, _ = algo.pre_policy_fn(obs)
            clipped = torch.max(torch.min(act, env.high.to(act)), env.low.to(act))
            for k in kinds:
                us[k].append(ens.predict_with_uncertainty(obs, clipped, env.model_idx, k)[2])
            obs, r, *_ = env.step(act)
            rews.append(r)
    rew = torch.stack(rews)
    imagined = {"reward_per_step": round(float(rew.mean()), 4), "rows": env.num_envs, "horizon": c.imagined_horizon}
    for k in kinds:
        u = torch.stack(us[k])  # [H, N]
        imagined[k] = {**summary(u), "by_step": [round(float(u[t].mean()), 4) for t in (0, c.imagined_horizon // 2, -1)]}

    # 2. real transitions: does u rank the models' real errors?
    genv = gym.make(c.env_id, **algo.env_kwargs)
    o, _ = genv.reset(seed=12345)
    rows = []
    for _ in range(args.real_steps):
        a = algo.predict(o, deterministic=False)
        o2, _, term, trunc, _ = genv.step(a)
        rows.append((o, a, o2))
        o = genv.reset()[0] if term or trunc else o2
    genv.close()
    ob, ac, nx = (torch.as_tensor(np.stack(x), dtype=torch.float64) for x in zip(*rows))
    with torch.no_grad():
        x = ens.in_rms.normalize(ens.inputs(ob, ac).float())
        target = ens.out_rms.normalize(ens.targets(ob, nx).float())[:, : ens.obs_dim]
        err = torch.stack([(ens.forward_model(k, x)[:, : ens.obs_dim] - target).norm(dim=-1)
                           for k in range(ens.num_models)]).mean(0)
        idx = torch.zeros(len(ob), dtype=torch.long)
        real = {"transitions": len(ob), "error": summary(err)}
        for k in kinds:
            u = ens.predict_with_uncertainty(ob, ac, idx, k)[2].float()
            real[k] = {**summary(u), "spearman_with_error": round(float(spearmanr(u, err).statistic), 3)}

    res = {"run": args.run_dir, "real_steps_of_run": algo.num_timesteps, "imagined": imagined, "real": real}
    print(json.dumps(res))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "uncertainty.json").write_text(json.dumps(res, indent=1))
    algo.close()


if __name__ == "__main__":
    main()
