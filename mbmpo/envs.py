"""Batched environments behind one torch protocol, shared by real and imagined rollouts.

Protocol (real and imagined envs look the same to the sampler)::

    reset() -> obs [N, obs_dim]
    step(act [N, ...]) -> obs, reward [N], terminated [N], truncated [N], info

All tensors are torch tensors on the env's device. ``info["final_obs"]`` is ``[N, obs_dim]``:
the observation that followed the action (the final one where an episode ended, so
time-limit truncations can bootstrap), equal to ``obs`` elsewhere. ``info["episode"]``
holds numpy arrays ``{"mask": [N] bool, "r": [N], "l": [N]}``: undiscounted raw return and length of the
episodes that ended at this step.

Wrappers (normalization, MiniGrid observations, hidden velocities, action discretization)
live in :mod:`mbmpo.wrappers`.
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import Tensor

from mbmpo.errors import ConfigError
from mbmpo.wrappers import MiniGridFlatObs, make_no_velocity_env

__all__ = ["NO_VELOCITY_ENVS", "SILENCED_MUJOCO_WARNINGS", "GymVecEnv",
           "check_env_id", "check_spaces", "evaluate_episodes", "make_env_fn",
           "quiet_mujoco_deprecation"]


def check_env_id(env_id: str) -> None:
    """Raise ConfigError naming ``env_id`` and close registered ids when it is unknown."""
    if env_id.startswith("MiniGrid"):
        _import_minigrid()
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see gymnasium.registry"
    raise ConfigError(f"unknown env id {env_id!r}{hint}")


def _import_minigrid() -> None:
    try:
        import minigrid  # noqa: F401  (registers the MiniGrid-* ids)
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("MiniGrid env ids need the 'minigrid' package: pip install minigrid") from exc


NO_VELOCITY_ENVS = {f"mbmpo/{name}NoVel-v5": f"{name}-v5"
                    for name in ("HalfCheetah", "Hopper", "Walker2d", "Swimmer")}
"""Partially observed ids (velocities hidden) -> the gymnasium id they wrap."""

for _id, _base in NO_VELOCITY_ENVS.items():
    if _id not in gym.registry:
        gym.register(_id, entry_point=make_no_velocity_env, kwargs={"base_id": _base})


SILENCED_MUJOCO_WARNINGS = ("compiler attribute 'settotalmass' is deprecated",)
"""Starts of the MuJoCo warnings dropped while an env is made. MuJoCo 4 warns that the
``settotalmass`` compiler attribute is deprecated every time it loads a model that sets it
(HalfCheetah's XML), once per env copy and evaluation env; the model is still built as
before, so the message tells a user of this library nothing."""


def _uses_mujoco(env_id: str) -> bool:
    if "mujoco" in sys.modules or env_id in NO_VELOCITY_ENVS:
        return True
    spec = gym.registry.get(env_id)
    return spec is not None and "mujoco" in str(spec.entry_point)


@contextlib.contextmanager
def quiet_mujoco_deprecation() -> Iterator[None]:
    """Inside: MuJoCo warnings starting with one of :data:`SILENCED_MUJOCO_WARNINGS` are
    dropped; every other one goes to the warning callback that was set before, or, without
    one, to the console (stderr) and ``MUJOCO_LOG.TXT`` as MuJoCo's own handler does.

    MuJoCo writes its warnings from C, so neither Python's ``warnings`` nor ``logging`` can
    filter them; its warning callback (``mujoco.set_mju_user_warning``) is swapped for the
    duration and restored afterwards. A no-op when MuJoCo is not installed.
    """
    try:
        import mujoco
    except ImportError:  # pragma: no cover - gymnasium[mujoco] is a dependency
        yield
        return
    previous = mujoco.get_mju_user_warning()

    def on_warning(msg: str) -> None:
        if msg.startswith(SILENCED_MUJOCO_WARNINGS):
            return
        if previous is not None:
            previous(msg)
            return
        log = mujoco.MjLogConfig.get()
        if log.logto_console:
            sys.stderr.write(f"WARNING: {msg}\n\n")
            sys.stderr.flush()
        if log.logto_file:
            mujoco.mju_writeLog("WARNING", msg)

    mujoco.set_mju_user_warning(on_warning)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def make_env_fn(env_id: str, env_kwargs: dict[str, Any] | None = None,
                wrapper: Callable[[gym.Env], gym.Env] | None = None) -> Callable[[], gym.Env]:
    """A thunk that builds one gymnasium env, with the flattening wrapper MiniGrid needs
    and then ``wrapper`` (e.g. :func:`mbmpo.wrappers.discretize_wrapper`) when given.

    MuJoCo's deprecation warning about ``settotalmass`` is silenced while the env is made
    (:func:`quiet_mujoco_deprecation`); every other message is left alone."""
    check_env_id(env_id)
    kwargs = dict(env_kwargs or {})
    quiet = _uses_mujoco(env_id)

    def thunk() -> gym.Env:
        with quiet_mujoco_deprecation() if quiet else contextlib.nullcontext():
            env = gym.make(env_id, **kwargs)
        if env_id.startswith("MiniGrid"):
            env = MiniGridFlatObs(env)
        if wrapper is not None:
            env = wrapper(env)
        return env

    return thunk


def check_spaces(obs_space: gym.Space, act_space: gym.Space, need_box_actions: bool = False,
                 allow_multi_discrete: bool = False):
    """Raise ConfigError unless obs is a flat Box and actions are a 1-D Box (or Discrete, or
    a 1-D MultiDiscrete when ``allow_multi_discrete``)."""
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ConfigError(
            f"observation space {obs_space} is not supported: a flat Box is needed "
            "(wrap Dict/image observations with a flattening wrapper)"
        )
    box_act = isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1
    if need_box_actions and not box_act:
        raise ConfigError(f"action space {act_space} is not supported here: a 1-D Box is needed")
    multi = (allow_multi_discrete and isinstance(act_space, gym.spaces.MultiDiscrete)
             and len(act_space.shape) == 1)
    if not box_act and not multi and not isinstance(act_space, gym.spaces.Discrete):
        raise ConfigError(f"action space {act_space} is not supported: allowed are 1-D Box or Discrete")


class GymVecEnv:
    """gymnasium vector env (SAME_STEP autoreset) behind the torch batch protocol.

    Box actions are clipped to the action bounds for the env step only (the policy's raw
    sample is what the learner stores).

    Args:
        env_id: gymnasium id.
        num_envs: number of env copies N.
        seed: env i is seeded with ``seed + i`` at the first reset.
        env_kwargs: passed to ``gymnasium.make``.
        vectorization: ``"sync"`` (default; cheapest on few cores) or ``"async"``.
        device: torch device of the returned tensors.
        dtype: dtype of returned observations (float64 keeps positions exact for
            reward functions computed from observations).
        wrapper: applied to each env copy after ``gymnasium.make`` (e.g.
            :func:`mbmpo.wrappers.discretize_wrapper`; then MultiDiscrete actions are allowed too).
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        vectorization: str = "sync",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        wrapper: Callable[[gym.Env], gym.Env] | None = None,
    ):
        if vectorization not in ("sync", "async"):
            raise ConfigError(f"vectorization {vectorization!r} is not allowed; use 'sync' or 'async'")
        thunk = make_env_fn(env_id, env_kwargs, wrapper)
        cls = gym.vector.SyncVectorEnv if vectorization == "sync" else gym.vector.AsyncVectorEnv
        self.env = cls([thunk] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
        self.env_id = env_id
        self.num_envs = num_envs
        self.seed = seed
        self.device = torch.device(device)
        self.dtype = dtype
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        check_spaces(self.single_observation_space, self.single_action_space,
                     allow_multi_discrete=wrapper is not None)
        self._box = isinstance(self.single_action_space, gym.spaces.Box)
        if self._box:
            self._low = self.single_action_space.low
            self._high = self.single_action_space.high
        self._ep_ret = np.zeros(num_envs)
        self._ep_len = np.zeros(num_envs, dtype=np.int64)
        self._seeded = False

    def _t(self, x: np.ndarray, dtype: torch.dtype | None = None) -> Tensor:
        return torch.as_tensor(np.asarray(x), dtype=dtype or self.dtype, device=self.device)

    def reset(self, seed: int | None = None) -> Tensor:
        if seed is None and not self._seeded:
            seed = self.seed
        self._seeded = True
        obs, _ = self.env.reset(seed=seed)
        self._ep_ret[:] = 0
        self._ep_len[:] = 0
        return self._t(obs)

    def step(self, act: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        a = act.detach().cpu().numpy()
        a = np.clip(a, self._low, self._high) if self._box else a.astype(np.int64)
        obs, rew, term, trunc, info = self.env.step(a)
        done = np.logical_or(term, trunc)
        self._ep_ret += rew
        self._ep_len += 1
        obs_t = self._t(obs)
        final_t = obs_t
        if done.any():
            final = obs.copy()
            for i in np.flatnonzero(done):
                final[i] = info["final_obs"][i]
            final_t = self._t(final)
        # numpy arrays: episode bookkeeping stays off the torch dispatcher
        episode = {"mask": done, "r": self._ep_ret.copy(), "l": self._ep_len.copy()}
        self._ep_ret[done] = 0
        self._ep_len[done] = 0
        out_info = {"final_obs": final_t, "episode": episode}
        return (obs_t, self._t(rew, torch.float32), self._t(term, torch.bool),
                self._t(trunc, torch.bool), out_info)

    def close(self) -> None:
        self.env.close()


@torch.no_grad()
def evaluate_episodes(
    env: GymVecEnv,
    act_fn: Callable[[Tensor], Tensor],
    obs_fn: Callable[[Tensor], Tensor] | None = None,
    seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run exactly one full episode in each of the env's N copies.

    Args:
        env: a fresh (or reusable) :class:`GymVecEnv`; N copies give N episodes.
        act_fn: ``obs [N, obs_dim] -> actions``; usually the deterministic policy.
        obs_fn: observation transform (e.g. frozen normalization) applied before ``act_fn``.
        seed: reset seed (env i gets ``seed + i``).

    Returns:
        ``(returns [N], lengths [N])`` of the first episode of each copy.
    """
    obs_fn = obs_fn or (lambda o: o)
    obs = env.reset(seed=seed)
    n = env.num_envs
    done = np.zeros(n, dtype=bool)
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    while not done.all():
        obs, _, _, _, info = env.step(act_fn(obs_fn(obs)))
        ep = info["episode"]
        new = np.asarray(ep["mask"]) & ~done
        returns[new] = np.asarray(ep["r"])[new]
        lengths[new] = np.asarray(ep["l"])[new]
        done |= new
    return returns, lengths
