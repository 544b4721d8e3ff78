"""Reward/termination functions agree with the real envs on real transitions."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from dynamics.reward_fns import REWARD_FNS, get_reward_fn
from mbmpo.errors import ConfigError

# Ant-v5 measures forward velocity on the torso's body position, which its RK4 integrator leaves
# at its last stage's kinematics, so (x' - x) / dt from qpos differs slightly (see dynamics/reward_fns.py).
MUJOCO_IDS = ["Ant-v5", "HalfCheetah-v5", "Hopper-v5", "Swimmer-v5", "Walker2d-v5"]
INEXACT = {"Ant-v5": (0.1, 0.01)}


def rollouts(env_id: str, steps: int, seed: int, **env_kwargs):
    env = gym.make(env_id, exclude_current_positions_from_observation=False, **env_kwargs)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    w = rng.normal(0, 0.5, (act_dim, obs_dim))  # a perturbed linear policy
    data = {k: [] for k in ("obs", "act", "next", "rew", "term")}
    obs, _ = env.reset(seed=seed)
    for t in range(steps):
        if t % 2 == 0:
            a = rng.uniform(low, high)
        else:
            a = np.tanh(w @ np.nan_to_num(obs) * 0.1) * high + rng.normal(0, 0.3, act_dim)
        a = np.clip(a, low, high)  # the action as applied
        nxt, r, term, trunc, _ = env.step(a)
        for k, v in zip(data, (obs, a, nxt, r, term)):
            data[k].append(v)
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return {k: torch.as_tensor(np.array(v), dtype=torch.float64) for k, v in data.items()}


@pytest.mark.parametrize("env_id", MUJOCO_IDS)
def test_reward_and_termination_match_env(env_id):
    d = rollouts(env_id, 1500, seed=0)
    fn = get_reward_fn(env_id)
    pred = fn.reward(d["obs"], d["act"], d["next"])
    abs_err = (pred - d["rew"]).abs()
    if env_id in INEXACT:
        max_err, mean_err = INEXACT[env_id]
        assert abs_err.max().item() <= max_err and abs_err.mean().item() <= mean_err, (
            f"{env_id}: reward error max {abs_err.max().item():.4g} mean {abs_err.mean().item():.4g}")
    else:
        assert abs_err.max().item() <= 1e-4, f"{env_id}: max reward error {abs_err.max().item()}"
    term = fn.termination(d["next"])
    assert torch.equal(term, d["term"].bool()), f"{env_id}: termination disagrees"
    if fn.healthy_reward:
        assert d["term"].any() or env_id == "Ant-v5", f"{env_id}: rollouts never terminated"
    # batched over extra leading dims
    assert fn.reward(d["obs"][:10].reshape(2, 5, -1), d["act"][:10].reshape(2, 5, -1),
                     d["next"][:10].reshape(2, 5, -1)).shape == (2, 5)
    assert fn.policy_obs(d["obs"]).shape[-1] == d["obs"].shape[-1] - fn.num_position_dims


def test_every_locomotion_task_is_registered():
    assert set(MUJOCO_IDS) <= set(REWARD_FNS)


def test_unregistered_env_error_says_how_to_register():
    with pytest.raises(ConfigError, match="no reward function registered for env id 'Pendulum-v1'.*REWARD_FNS"):
        get_reward_fn("Pendulum-v1")


def test_ant_without_contact_forces_in_the_observation_leaves_out_only_the_contact_cost():
    envs = [gym.make("Ant-v5", exclude_current_positions_from_observation=False, include_cfrc_ext_in_observation=inc)
            for inc in (False, True)]
    rng = np.random.default_rng(0)
    rows = {k: [] for k in ("obs", "act", "next", "rew", "full_obs", "full_next", "full_rew")}
    obs, full = (e.reset(seed=0)[0] for e in envs)
    for _ in range(600):
        a = rng.uniform(-1, 1, 8)
        (nxt, r, term, trunc, _), (full_nxt, full_r, *_) = (e.step(a) for e in envs)
        for k, v in zip(rows, (obs, a, nxt, r, full, full_nxt, full_r)):
            rows[k].append(v)
        obs, full = (nxt, full_nxt) if not (term or trunc) else (e.reset(seed=1)[0] for e in envs)
    d = {k: torch.as_tensor(np.array(v), dtype=torch.float64) for k, v in rows.items()}
    assert d["obs"].shape[-1] == 29 and d["full_obs"].shape[-1] == 107
    assert torch.equal(d["rew"], d["full_rew"]) and torch.equal(d["obs"], d["full_obs"][:, :29])  # same physics
    fn = get_reward_fn("Ant-v5")
    contact_cost = fn.extra_cost(d["full_next"])
    assert float(contact_cost.max()) > 0
    truncated = fn.reward(d["obs"], d["act"], d["next"])
    assert torch.allclose(truncated - contact_cost, fn.reward(d["full_obs"], d["act"], d["full_next"]))
    assert float((truncated - d["rew"]).abs().mean()) < 0.01
