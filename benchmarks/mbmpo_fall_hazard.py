"""Is a policy's fall in the real env foreseeable, or a hazard it runs all the time? (diagnosis aid)

For a run directory with a checkpoint, on the real env (MuJoCo state saved and restored):
1. a deterministic episode of θ (as evaluation runs it) from ``--seed``; its fall is the first
   step after ``--min-step`` where the mean reward over the next 20 steps drops below
   ``--collapsed`` (a stumble into a posture the policy never leaves);
2. from the real states ``--before`` steps before that fall, ``--trials`` continuations of
   ``--steps`` steps each, with Gaussian noise of each ``--noise`` std added to θ's mean
   action (0: the deterministic continuation, one trial);
3. per start and noise: the share of continuations whose last 30 steps are collapsed.

If the deterministic continuation always falls but tiny noise makes most continuations run on,
the fall is not determined far ahead: the policy runs with a fall hazard, and a model that
"misses" the fall from far away is not wrong about the likely future. Prints and writes
``fall_hazard.json`` to ``--out``.

    python benchmarks/mbmpo_fall_hazard.py runs/snap/pen5_s1_110k --out benchmarks/results/mbmpo_fall_hazard_hc/pen5_s1_110k
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

from mbmpo import MBMPO  # noqa: E402

State = tuple[np.ndarray, np.ndarray]  # MuJoCo (qpos, qvel)


def recorded_episode(algo: MBMPO, env: gym.Env, seed: int, max_steps: int | None = None
                     ) -> tuple[list[State], np.ndarray]:
    """A deterministic episode of θ (at most ``max_steps``): the simulator state before each
    step, and the rewards ``[T]``."""
    sim = env.unwrapped
    o, _ = env.reset(seed=seed)
    states, rews = [], []
    while max_steps is None or len(rews) < max_steps:
        states.append((sim.data.qpos.copy(), sim.data.qvel.copy()))
        o, r, term, trunc, _ = env.step(algo.predict(o, deterministic=True))
        rews.append(float(r))
        if term or trunc:
            break
    return states, np.asarray(rews)


def continuation(algo: MBMPO, env: gym.Env, seed: int, state: State, steps: int, noise: float,
                 rng: np.random.Generator, random_actions: bool = False) -> tuple[np.ndarray, bool]:
    """From ``state``, ``steps`` real steps of θ's mean action plus Gaussian noise of std
    ``noise`` (or uniformly random actions): the rewards, and whether the env terminated."""
    sim = env.unwrapped
    env.reset(seed=seed)
    sim.set_state(*state)
    ob, rews, term = sim._get_obs(), [], False
    low, high = env.action_space.low, env.action_space.high
    for _ in range(steps):
        if random_actions:
            a = rng.uniform(low, high)
        else:
            a = algo.predict(ob, deterministic=True)
            if noise > 0:
                a = np.clip(a + rng.normal(0.0, noise, a.shape), low, high)
        ob, r, term, _, _ = env.step(a)
        rews.append(float(r))
        if term:
            break
    return np.asarray(rews), bool(term)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--seed", type=int, default=500, help="seed of the real episode")
    p.add_argument("--min-step", type=int, default=50, help="a fall is looked for after this step")
    p.add_argument("--collapsed", type=float, default=0.5, help="reward per step below this is collapsed")
    p.add_argument("--before", type=int, nargs="+", default=[70, 60, 50, 40, 30, 20, 10, 0])
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.02, 0.07])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--steps", type=int, default=120, help="length of each continuation")
    p.add_argument("--out", default="benchmarks/results/mbmpo_fall_hazard")
    args = p.parse_args()
    torch.set_num_threads(1)
    algo = MBMPO.load(args.run_dir, console=False)
    env = gym.make(algo.config.env_id, **algo.env_kwargs)
    states, rews = recorded_episode(algo, env, args.seed)
    window = np.convolve(rews, np.ones(20) / 20, "valid")  # window[t] = mean of rews[t:t+20]
    low = np.nonzero(window[args.min_step:] < args.collapsed)[0]
    summary = {"run": args.run_dir, "seed": args.seed, "episode_return": float(rews.sum()),
               "fall_step": None, "rows": []}
    if len(low) == 0:
        print(json.dumps(summary))
        return
    fall = int(low[0]) + args.min_step
    summary["fall_step"] = fall
    rng = np.random.default_rng(0)
    for sigma in args.noise:
        trials = 1 if sigma == 0 else args.trials
        for b in args.before:
            t0 = fall - b
            if t0 < 0:
                continue
            falls = 0
            for _ in range(trials):
                tail, term = continuation(algo, env, args.seed, states[t0], args.steps, sigma, rng)
                falls += term or float(np.mean(tail[-30:])) < args.collapsed
            summary["rows"].append({"noise": sigma, "steps_before_fall": b, "trials": trials, "falls": falls})
    print(json.dumps(summary))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fall_hazard.json").write_text(json.dumps(summary, indent=1))
    env.close()
    algo.close()


if __name__ == "__main__":
    main()
