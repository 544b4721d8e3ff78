"""Can a collapsed HalfCheetah get up again? (diagnosis aid)

Runs θ deterministically for ``--steps-in`` steps of a real episode (by then the episodes of
``runs/snap/pen5_s1_110k`` have collapsed), saves the MuJoCo state, and from it runs 300 steps
``--trials`` times with θ's mean action plus Gaussian noise of each ``--noise`` std, and with
uniformly random actions. Prints the reward per step over the last 100 steps of each trial:
about -0.15 (the control cost at zero velocity) means still collapsed.

    python benchmarks/mbmpo_escape.py runs/snap/pen5_s1_110k
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mbmpo_fall_hazard import continuation, recorded_episode  # noqa: E402

from mbmpo import MBMPO  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--seed", type=int, default=500, help="seed of the real episode")
    p.add_argument("--steps-in", type=int, default=250, help="steps of theta before the state is saved")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.3, 0.6])
    p.add_argument("--trials", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    algo = MBMPO.load(args.run_dir, console=False)
    env = gym.make(algo.config.env_id, **algo.env_kwargs)
    states, _ = recorded_episode(algo, env, args.seed, args.steps_in + 1)
    saved = states[-1]  # after steps_in steps
    env.reset(seed=args.seed)
    env.unwrapped.set_state(*saved)
    o = env.unwrapped._get_obs()
    # with exclude_current_positions_from_observation=False: obs[1] is the height, obs[2] the pitch
    print(f"saved state: height {o[1]:.2f}, pitch {o[2]:.2f} rad")
    rng = np.random.default_rng(0)
    for noise in [*args.noise, None]:  # None: uniformly random actions
        trials = 1 if noise == 0 else args.trials
        outs = [round(float(continuation(algo, env, args.seed, saved, 300, noise or 0.0, rng,
                                         random_actions=noise is None)[0][-100:].mean()), 2)
                for _ in range(trials)]
        print("random" if noise is None else f"noise {noise}", "reward per step over the last 100 of 300 steps:", outs)
    env.close()
    algo.close()


if __name__ == "__main__":
    main()
