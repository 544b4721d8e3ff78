"""How far Ant-v5's reward is from a function of its observation, and why.

Two measurements on random actions (seeded):

1. Where the torso's body position ``xpos`` (which the env differences for the forward
   velocity) sits after a step: its distance to the final x (``qpos``) and to the x before
   the step's last substep. Its RK4 integrator leaves ``xpos`` at the kinematics of its last
   stage, close to but not at the end state.
2. The reward error of ``dynamics.reward_fns`` (``(x' - x) / dt`` from the observation) and of
   a correction by the last substep's velocity, ``((x' - h v') - (x - h v)) / dt``.
3. The same function's reward error on the observation without contact forces
   (``include_cfrc_ext_in_observation=False``), which leaves the contact cost out, and the
   contact cost itself.

    python benchmarks/ant_reward_error.py --steps 3000

Writes ``ant_reward_error.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dynamics.reward_fns import REWARD_FNS  # noqa: E402

ENV = "Ant-v5"


def xpos_offsets(steps: int, seed: int) -> dict[str, float]:
    """Distance of the torso's ``xpos`` (x, y) from the final and the before-last-substep position."""
    env = gym.make(ENV).unwrapped
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    m, d = env.model, env.data
    to_end, to_sub = [], []
    for _ in range(steps):
        d.ctrl[:] = rng.uniform(-1, 1, m.nu)
        for _ in range(env.frame_skip - 1):
            mujoco.mj_step(m, d)
        before_last = d.qpos[:2].copy()
        mujoco.mj_step(m, d)
        xpos = d.body("torso").xpos[:2]
        to_end.append(np.abs(xpos - d.qpos[:2]).max())
        to_sub.append(np.abs(xpos - before_last).max())
        if d.qpos[2] < 0.3:  # fallen: start again
            env.reset()
    env.close()
    return {"xpos_to_final_mean": float(np.mean(to_end)), "xpos_to_final_max": float(np.max(to_end)),
            "xpos_to_before_last_substep_mean": float(np.mean(to_sub)),
            "xpos_to_before_last_substep_max": float(np.max(to_sub))}


def random_steps(steps: int, seed: int, **env_kwargs) -> tuple[torch.Tensor, ...]:
    """``(obs, act, next_obs, reward, contact_cost)`` of ``steps`` uniformly random actions on
    the observation the reward function expects (with ``env_kwargs`` on top)."""
    env = gym.make(ENV, **REWARD_FNS[ENV].env_kwargs(), **env_kwargs)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    rows = []
    for _ in range(steps):
        act = rng.uniform(-1, 1, env.action_space.shape)
        nxt, rew, term, trunc, info = env.step(act)
        rows.append((obs, act, nxt, rew, -info["reward_contact"]))
        obs = env.reset()[0] if term or trunc else nxt
    env.close()
    return tuple(torch.as_tensor(np.array(col)) for col in zip(*rows))


def reward_errors(steps: int, seed: int) -> dict[str, float]:
    """|reward error| of the observation-based reward, and of the last-substep velocity correction."""
    fn = REWARD_FNS[ENV]
    probe = gym.make(ENV).unwrapped
    h, vx = float(probe.model.opt.timestep), int(probe.model.nq)  # qvel[0] follows qpos in the full observation
    probe.close()
    o, a, n, r, _ = random_steps(steps, seed)
    ours = fn.reward(o, a, n)
    corrected = ours + ((n[:, 0] - h * n[:, vx]) - (o[:, 0] - h * o[:, vx]) - (n[:, 0] - o[:, 0])) / fn.dt
    e, c = (ours - r).abs(), (corrected - r).abs()
    return {"reward_error_mean": float(e.mean()), "reward_error_max": float(e.max()),
            "corrected_reward_error_mean": float(c.mean()), "corrected_reward_error_max": float(c.max())}


def truncated_errors(steps: int, seed: int) -> dict[str, float]:
    """|reward error| on the 29-entry observation (no contact forces), and the contact cost."""
    o, a, n, r, contact = random_steps(steps, seed, include_cfrc_ext_in_observation=False)
    e = (REWARD_FNS[ENV].reward(o, a, n) - r).abs()
    return {"truncated_obs_reward_error_mean": float(e.mean()), "truncated_obs_reward_error_max": float(e.max()),
            "contact_cost_mean": float(contact.mean()), "contact_cost_max": float(contact.max())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ant_reward_error"))
    args = p.parse_args()
    result = {"env": ENV, "steps": args.steps, "seed": args.seed,
              **xpos_offsets(args.steps, args.seed), **reward_errors(args.steps, args.seed),
              **truncated_errors(args.steps, args.seed)}
    for k, v in result.items():
        print(f"{k:36s} {v}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ant_reward_error.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
