from __future__ import annotations

import os
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
torch.set_num_threads(1)


class PointMass1D(gym.Env):
    """Tiny continuous task: move x toward 0; reward -|x| - 0.01 a^2; 30-step episodes."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.x = 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-2.0, 2.0))
        return np.array([self.x], np.float32), {}

    def step(self, action):
        a = float(np.clip(action[0], -1.0, 1.0))
        self.x = float(np.clip(self.x + 0.3 * a, -10, 10))
        reward = -abs(self.x) - 0.01 * a * a
        return np.array([self.x], np.float32), reward, False, False, {}


class TerminatingChain(gym.Env):
    """Discrete test env: x += 1 each step; terminates at x == 5 with reward 1."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(0.0, 10.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.x = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = 0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x += 1
        term = self.x >= 5
        return np.array([self.x], np.float32), float(term), term, False, {}


def _register():
    if "mbmpo_test/PointMass-v0" not in gym.registry:
        gym.register("mbmpo_test/PointMass-v0", entry_point=PointMass1D, max_episode_steps=30)
    if "mbmpo_test/Chain-v0" not in gym.registry:
        gym.register("mbmpo_test/Chain-v0", entry_point=TerminatingChain, max_episode_steps=3)


_register()


@pytest.fixture
def tmp_run(tmp_path):
    return tmp_path / "run"


def _register_point_mass_reward():
    from dataclasses import dataclass

    from dynamics.reward_fns import REWARD_FNS, RewardFn

    @dataclass(frozen=True)
    class PointMassReward(RewardFn):
        def reward(self, obs, act, next_obs):
            return -next_obs[..., 0].abs() - 0.01 * act.clamp(-1, 1).pow(2).sum(-1)

    REWARD_FNS.setdefault("mbmpo_test/PointMass-v0",
                          PointMassReward("mbmpo_test/PointMass-v0", dt=1.0, num_position_dims=0,
                                          ctrl_cost_weight=0.0))


_register_point_mass_reward()
