"""How fast does a fresh meta-policy learn inside a fixed, fitted ensemble? (MB-MPO tuning aid)

Loads an MB-MPO checkpoint (its ensemble and real data set), re-initialises the policy, runs
``--meta-steps`` meta-steps with config overrides and reports the imagined pre-update
return every 20 steps, the time per meta-step, and the real evaluation return at the end.
Settings that learn faster per second here are candidates for the full loop; the real
evaluation guards against settings that only exploit the model.

    python benchmarks/mbmpo_imagination.py --checkpoint runs/mbmpo_hc/checkpoints/last.pt \
        --name norm --set '{"normalize_obs": true}' --meta-steps 80 \
        --out benchmarks/results/mbmpo_imagination
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mbmpo import MBMPO  # noqa: E402
from policies import GaussianMLPPolicy  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--set", default="{}", help="JSON dict of MBMPOConfig overrides")
    p.add_argument("--meta-steps", type=int, default=80)
    p.add_argument("--eval-episodes", type=int, default=3)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/mbmpo_imagination")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    over = json.loads(args.set)
    # the outer optimizer's state and the inner step sizes must match the checkpoint's: switch the
    # outer step and a learned (Meta-SGD) inner step after loading
    late = {k: over.pop(k) for k in list(over) if k.startswith("outer") or k == "learn_inner_lr"}
    algo = MBMPO.load(args.checkpoint, console=False, **over)
    c = algo.config
    for k, v in late.items():
        setattr(c, k, v)
    torch.manual_seed(args.seed)
    algo.policy = GaussianMLPPolicy(algo.obs_dim - algo.num_position_dims, algo.act_dim, c.hidden_sizes,
                                    c.activation, c.init_log_std, c.ortho_init)
    algo.inner_lr = algo.initial_inner_lr()
    if c.outer == "ppo":
        algo.outer_optimizer = torch.optim.Adam(algo.outer_params(), lr=c.outer_learning_rate)
    if c.normalize_obs:
        algo.obs_rms.reset()
        algo.obs_rms.update(algo.dataset.arrays()["obs"][:, algo.num_position_dims :])
    t0 = time.perf_counter()
    curve, returns = [], []
    for i in range(args.meta_steps):
        stats = algo.meta_step()
        returns.append(stats["imagined/pre_return"])
        if (i + 1) % 20 == 0:
            curve.append({"meta_steps": i + 1, "imagined_return": float(np.mean(returns[-5:])),
                          "kl": stats["meta/kl"]})
            print(args.name, curve[-1], flush=True)
    sec = (time.perf_counter() - t0) / args.meta_steps
    real, _ = algo.evaluate(args.eval_episodes)
    res = {"name": args.name, "overrides": {**over, **late}, "curve": curve,
           "final_imagined_return": float(np.mean(returns[-5:])), "real_eval_return": float(real.mean()),
           "seconds_per_meta_step": sec, "threads": args.threads}
    print(json.dumps(res))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    algo.close()


if __name__ == "__main__":
    main()
