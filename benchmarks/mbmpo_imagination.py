"""How fast does a fresh meta-policy learn inside a fixed, fitted ensemble? (MB-MPO tuning aid)

Loads an MB-MPO checkpoint (its ensemble and real data set), re-initialises the policy (or,
with ``--keep-policy``, continues the checkpoint's: does more optimization in the same
models still pay, or has the run reached what its models allow?), runs
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--set", default="{}", help="JSON dict of MBMPOConfig overrides")
    p.add_argument("--meta-steps", type=int, default=80)
    p.add_argument("--eval-episodes", type=int, default=3)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep-policy", action="store_true", help="continue the checkpoint's policy")
    p.add_argument("--eval-every", type=int, default=0, help="real evaluation every N meta-steps (0: at the end)")
    p.add_argument("--out", default="benchmarks/results/mbmpo_imagination")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    over = json.loads(args.set)
    # the outer optimizer's state, the inner step sizes and the policy's shape must match the
    # checkpoint's: switch the outer step, a learned (Meta-SGD) inner step and (for a fresh
    # policy) its architecture after loading
    fresh_only = () if args.keep_policy else ("hidden_sizes", "activation", "init_log_std", "ortho_init")
    late = {k: over.pop(k) for k in list(over)
            if k.startswith("outer") or k == "learn_inner_lr" or k in fresh_only}
    algo = MBMPO.load(args.checkpoint, console=False, **over)
    c = algo.config
    for k, v in late.items():
        setattr(c, k, v)
    torch.manual_seed(args.seed)
    algo.generator.manual_seed(args.seed)
    policy = algo.build_policy()  # with the overrides' std floor, if any
    if args.keep_policy:
        policy.load_state_dict(algo.policy.state_dict())
        policy.clamp_log_std_()
    else:
        algo.inner_lr = algo.initial_inner_lr()
    algo.policy = policy
    if c.outer == "ppo":
        algo.outer_optimizer = torch.optim.Adam(algo.outer_params(), lr=c.outer_learning_rate)
    if c.normalize_obs and not args.keep_policy:
        algo.obs_rms.reset()
        algo.obs_rms.update(algo.dataset.arrays()["obs"][:, algo.num_position_dims :])
    start_eval = float(algo.evaluate(args.eval_episodes)[0].mean())
    print(args.name, {"meta_steps": 0, "real_eval_return": start_eval}, flush=True)
    t0 = time.perf_counter()
    curve, returns = [], []
    for i in range(args.meta_steps):
        stats = algo.meta_step()
        returns.append(stats["imagined/pre_return"])
        if (i + 1) % 20 == 0 or (args.eval_every and (i + 1) % args.eval_every == 0):
            point = {"meta_steps": i + 1, "imagined_return": float(np.mean(returns[-5:])),
                     "kl": stats["meta/kl"], "std": algo.policy.std().mean().item()}
            if args.eval_every and (i + 1) % args.eval_every == 0:
                point["real_eval_return"] = float(algo.evaluate(args.eval_episodes)[0].mean())
            curve.append(point)
            print(args.name, curve[-1], flush=True)
    sec = (time.perf_counter() - t0) / args.meta_steps  # includes the periodic evaluations
    real, _ = algo.evaluate(args.eval_episodes)
    res = {"name": args.name, "checkpoint": args.checkpoint, "keep_policy": args.keep_policy,
           "start_eval_return": start_eval, "overrides": {**over, **late}, "curve": curve,
           "final_imagined_return": float(np.mean(returns[-5:])), "real_eval_return": float(real.mean()),
           "seconds_per_meta_step": sec, "threads": args.threads}
    print(json.dumps(res))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    algo.close()


if __name__ == "__main__":
    main()
