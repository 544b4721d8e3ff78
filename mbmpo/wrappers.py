"""Wrappers around environments: observation and reward normalization of a batched env,
MiniGrid's flat observations, MuJoCo locomotion with hidden velocities, and action
discretization (for value-based methods such as Gorila on continuous-action tasks).

The gymnasium wrappers (:class:`MiniGridFlatObs`, :class:`HideVelocities`,
:class:`DiscretizeActions`) wrap one ``gym.Env``; :class:`VecNormalize` wraps a batched env
following the protocol of :mod:`mbmpo.envs` (e.g. :class:`mbmpo.envs.GymVecEnv`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from mbmpo.errors import ConfigError
from mbmpo.normalization import RunningMeanStd


class MiniGridFlatObs(gym.ObservationWrapper):
    """MiniGrid's dict observation -> flat Box: the 7x7x3 egocentric image scaled to [0, 1]
    per channel (object, colour, state) and a one-hot of the agent's direction."""

    _SCALE = np.array([10.0, 5.0, 2.0], dtype=np.float32)

    def __init__(self, env: gym.Env):
        super().__init__(env)
        img = env.observation_space["image"]
        self._img_dim = int(np.prod(img.shape))
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self._img_dim + 4,), np.float32)

    def observation(self, observation: dict[str, Any]) -> np.ndarray:
        img = (observation["image"].astype(np.float32) / self._SCALE).reshape(-1)
        direction = np.zeros(4, dtype=np.float32)
        direction[int(observation["direction"])] = 1.0
        return np.concatenate([img, direction])


class HideVelocities(gym.ObservationWrapper):
    """Partially observed MuJoCo locomotion: keep the joint positions, drop the velocities.

    For envs whose observation is ``[qpos (minus excluded x/y), qvel]`` (HalfCheetah, Hopper,
    Walker2d, Swimmer) the first ``obs_dim - nv`` entries are kept; a memoryless policy then
    cannot see how fast it moves, a recurrent one can infer it (the DPPO benchmark's POMDP).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        nv = int(env.unwrapped.model.nv)
        full = env.observation_space
        self._keep = full.shape[0] - nv
        if len(full.shape) != 1 or self._keep <= 0:
            raise ConfigError(f"cannot hide velocities of {env.spec.id if env.spec else env}: "
                              f"observation {full.shape} has no position block before {nv} velocities")
        self.observation_space = gym.spaces.Box(full.low[: self._keep], full.high[: self._keep],
                                                dtype=full.dtype)
        self._checked = False

    def observation(self, observation: np.ndarray) -> np.ndarray:
        if not self._checked:  # the layout assumption, verified once on real data
            qpos = self.env.unwrapped.data.qpos
            if not np.allclose(observation[: self._keep], qpos[len(qpos) - self._keep :]):
                raise ConfigError("cannot hide velocities: the observation does not start with "
                                  "the joint positions")
            self._checked = True
        return observation[: self._keep]


def make_no_velocity_env(base_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make(base_id, **kwargs)`` behind :class:`HideVelocities` (the entry point of
    the ``mbmpo/<name>NoVel-v5`` ids registered by :mod:`mbmpo.envs`)."""
    return HideVelocities(gym.make(base_id, **kwargs))


class VecNormalize:
    """Observation normalization and reward scaling for a batched env (Huang et al. 2022).

    Observations: ``clip((o - mean) / std, +-clip_obs)`` with running statistics.
    Rewards: divided by the running std of the discounted return, then clipped.
    ``training=False`` freezes the statistics (evaluation). ``state_dict`` /
    ``load_state_dict`` save and restore them.

    ``venv`` is a batched env following the protocol of :mod:`mbmpo.envs` (e.g.
    :class:`~mbmpo.envs.GymVecEnv`) with ``num_envs``, ``device`` and the single spaces.
    """

    def __init__(
        self,
        venv: Any,
        norm_obs: bool = True,
        norm_reward: bool = True,
        clip_obs: float = 10.0,
        clip_reward: float = 10.0,
        gamma: float = 0.99,
        eps: float = 1e-8,
    ):
        self.venv = venv
        self.num_envs = venv.num_envs
        self.device = venv.device
        self.single_observation_space = venv.single_observation_space
        self.single_action_space = venv.single_action_space
        self.norm_obs, self.norm_reward = norm_obs, norm_reward
        self.clip_obs, self.clip_reward, self.gamma = clip_obs, clip_reward, gamma
        self.obs_rms = RunningMeanStd(self.single_observation_space.shape, eps).to(self.device)
        self.ret_rms = RunningMeanStd((), eps).to(self.device)
        self._ret = torch.zeros(self.num_envs, dtype=torch.float64, device=self.device)
        self.training = True

    def normalize_obs(self, obs: Tensor) -> Tensor:
        if not self.norm_obs:
            return obs
        return self.obs_rms.normalize(obs, self.clip_obs)

    def reset(self, seed: int | None = None) -> Tensor:
        obs = self.venv.reset(seed)
        self._ret.zero_()
        if self.training and self.norm_obs:
            self.obs_rms.update(obs)
        return self.normalize_obs(obs)

    def step(self, act: Tensor):
        obs, rew, term, trunc, info = self.venv.step(act)
        if self.training and self.norm_obs:
            self.obs_rms.update(obs)
        if self.norm_reward:
            self._ret = self._ret * self.gamma + rew.double()
            if self.training:
                self.ret_rms.update(self._ret)
            rew = (rew / self.ret_rms.std.float()).clamp(-self.clip_reward, self.clip_reward)
            self._ret[term | trunc] = 0.0
        norm = self.normalize_obs(obs)
        final = info["final_obs"]
        info["final_obs"] = norm if final is obs else self.normalize_obs(final)
        return norm, rew, term, trunc, info

    def state_dict(self) -> dict[str, Any]:
        return {"obs_rms": self.obs_rms.state_dict(), "ret_rms": self.ret_rms.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.obs_rms.load_state_dict(state["obs_rms"])
        self.ret_rms.load_state_dict(state["ret_rms"])

    def close(self) -> None:
        self.venv.close()


# ----- action discretization (value-based methods such as Gorila on MuJoCo tasks) ---------

FACTORIZATIONS = ("factorized", "joint")
MAX_JOINT_ACTIONS = 4096
"""Largest joint-product action set accepted (one Q-value per joint action)."""


def expand_bins(bins: int | Sequence[int], act_dim: int) -> list[int]:
    """One bin count per action dimension: an int or a length-1 sequence is repeated."""
    counts = [int(bins)] * act_dim if isinstance(bins, int | np.integer) else [int(b) for b in bins]
    if len(counts) == 1:
        counts = counts * act_dim
    if len(counts) != act_dim:
        raise ConfigError(f"action_bins {list(counts)} must hold 1 or {act_dim} (= action dims) "
                          "entries")
    if any(b < 2 for b in counts):
        raise ConfigError(f"action_bins must be >= 2 per dimension, got {counts}")
    return counts


def bin_values(low: np.ndarray, high: np.ndarray, bins: Sequence[int]) -> list[np.ndarray]:
    """Per dimension ``d``: ``bins[d]`` evenly spaced values from ``low[d]`` to ``high[d]``.

    Bin 0 is the lower bound, the last bin the upper bound; an odd count contains the midpoint.
    """
    return [np.linspace(lo, hi, b, dtype=np.float64) for lo, hi, b in zip(low, high, bins)]


def bins_to_actions(idx: np.ndarray, values: Sequence[np.ndarray], factorization: str) -> np.ndarray:
    """Bin indices -> continuous actions.

    Args:
        idx: ``[..., act_dim]`` one bin per dimension (``"factorized"``) or ``[...]`` one
            joint index (``"joint"``; mixed radix, the last dimension varies fastest, as
            ``numpy.unravel_index``).
        values: per-dimension bin values from :func:`bin_values`.
        factorization: ``"factorized"`` or ``"joint"``.

    Returns:
        ``[..., act_dim]`` float32 actions.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if factorization == "joint":
        idx = np.stack(np.unravel_index(idx, [len(v) for v in values]), axis=-1)
    return np.stack([v[idx[..., d]] for d, v in enumerate(values)], axis=-1).astype(np.float32)


class DiscretizeActions(gym.ActionWrapper):
    """A 1-D Box action space as a discrete one: ``bins[d]`` evenly spaced values per joint,
    from the lower to the upper bound (:func:`bin_values`).

    Two layouts (``factorization``):

    * ``"joint"``: ``Discrete(prod(bins))``, every combination of joint values is one action
      (the exact product space; only usable for few joints/bins, at most
      ``MAX_JOINT_ACTIONS`` actions).
    * ``"factorized"``: ``MultiDiscrete(bins)``, one index per joint. A Q-network then has one
      head per joint (``policies.q_network.QNetwork`` with ``action_nvec = bins``) whose
      greedy choices are made independently per joint (action branching, Tavakoli et al.
      2018); the number of outputs grows with the sum instead of the product of the bins.
    """

    def __init__(self, env: gym.Env, bins: int | Sequence[int] = 11, factorization: str = "factorized"):
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ConfigError(f"action discretization needs a 1-D Box action space, got {space}")
        if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise ConfigError(f"action discretization needs finite action bounds, got {space}")
        if factorization not in FACTORIZATIONS:
            raise ConfigError(f"action factorization {factorization!r} is not allowed; use one of "
                              f"{list(FACTORIZATIONS)}")
        self.bins = expand_bins(bins, space.shape[0])
        self.factorization = factorization
        self.values = bin_values(space.low, space.high, self.bins)
        if factorization == "joint":
            n = int(np.prod(self.bins))
            if n > MAX_JOINT_ACTIONS:
                raise ConfigError(f"joint action space of {' x '.join(map(str, self.bins))} = {n} "
                                  f"actions exceeds {MAX_JOINT_ACTIONS}; use fewer action_bins or "
                                  "action_factorization 'factorized'")
            self.action_space = gym.spaces.Discrete(n)
        else:
            self.action_space = gym.spaces.MultiDiscrete(self.bins)

    def action(self, action: Any) -> np.ndarray:
        return bins_to_actions(np.asarray(action), self.values, self.factorization)


def discretize_wrapper(bins: int | Sequence[int], factorization: str = "factorized"
                       ) -> Callable[[gym.Env], gym.Env]:
    """A picklable ``env -> DiscretizeActions(env, bins, factorization)`` for
    :func:`mbmpo.envs.make_env_fn`."""
    return functools.partial(DiscretizeActions, bins=tuple(bins) if not isinstance(bins, int) else bins,
                             factorization=factorization)
