"""Do an MB-MPO run's models reproduce how its policy's real episodes end? (diagnosis aid)

For a run directory with a checkpoint, on a task with a termination function
(Hopper/Walker2d/Ant):
1. real deterministic episodes of the pre-update policy: length and return;
2. the same policy closed-loop in imagination from real initial states, per model: mean
   length, return and return per step (compare with 1: a matching fall means accurate models);
3. the policy's log-std.
Prints one JSON line and writes ``model_check.json`` to ``--out``.

    python benchmarks/mbmpo_model_check.py runs/compare_hw/runs/Hopper-v5/mbmpo_h50/s0 \
        --out benchmarks/results/mbmpo_model_check_hopper
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

from dynamics.model_env import ImaginedEnv  # noqa: E402
from mbmpo import MBMPO  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=3, help="real episodes")
    p.add_argument("--per-model", type=int, default=20, help="imagined rollouts per model")
    p.add_argument("--horizon", type=int, default=200, help="imagined rollout length")
    p.add_argument("--out", default="benchmarks/results/mbmpo_model_check")
    args = p.parse_args()
    torch.set_num_threads(1)
    algo = MBMPO.load(args.run_dir, console=False)
    env = gym.make(algo.config.env_id, **algo.env_kwargs)

    real = []
    for s in range(args.episodes):
        o, _ = env.reset(seed=100 + s)
        ret, length, term = 0.0, 0, False
        while True:
            o, r, term, trunc, _ = env.step(algo.predict(o, deterministic=True))
            ret, length = ret + float(r), length + 1
            if term or trunc:
                break
        real.append({"length": length, "return": ret, "terminated": bool(term)})

    K = len(algo.ensemble.models)
    idx = torch.arange(K).repeat_interleave(args.per_model)

    def init_fn(n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.as_tensor(np.stack([env.reset(seed=1000 + j)[0] for j in range(n)]), dtype=torch.float64)

    ienv = ImaginedEnv(algo.ensemble, idx, init_fn, args.horizon, algo.reward_fn,
                       algo.action_space.low, algo.action_space.high)
    o = ienv.reset()
    alive = torch.ones(len(idx), dtype=torch.bool)
    length, ret = torch.zeros(len(idx)), torch.zeros(len(idx))
    for _ in range(args.horizon):
        with torch.no_grad():
            a = algo.policy(algo.features(o)).mode()
        o, r, term, trunc, _ = ienv.step(a)
        ret += r.float() * alive
        length += alive.float()
        alive &= ~(term | trunc)
    imagined = [{"model": k, "length": float(length[idx == k].mean()), "return": float(ret[idx == k].mean()),
                 "return_per_step": float((ret[idx == k] / length[idx == k]).mean())} for k in range(K)]

    res = {"run": args.run_dir, "real_episodes": real, "imagined": imagined, "horizon": args.horizon,
           "policy_log_std": [round(v, 3) for v in algo.policy.log_std.detach().tolist()]}
    print(json.dumps(res))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_check.json").write_text(json.dumps(res, indent=1))
    env.close()
    algo.close()


if __name__ == "__main__":
    main()
