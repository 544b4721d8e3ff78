"""Gorila's pieces without Ray: DQN math, the parameter-server shard, acting and learning
processes and the replay memory (Nair et al. 2015, "Massively Parallel Methods for Deep
Reinforcement Learning", arXiv 1507.04296).

Every class here is a plain Python object. ``mbmpo.baselines.gorila`` turns them into Ray
actors (``ray.remote(cls)``) and wires them together with :class:`ParamClient` /
:class:`RemoteReplay`; tests drive them in-process. Nothing in this module imports Ray at
import time.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from mbmpo.buffers import ReplayBuffer
from mbmpo.envs import GymVecEnv
from mbmpo.normalization import RunningMeanStd
from mbmpo.sampler import collect
from policies.q_network import QNetwork, epsilon_greedy

if TYPE_CHECKING:  # pragma: no cover
    from mbmpo.baselines.gorila import GorilaConfig


# ----- pure functions -------------------------------------------------------------------------

def linear_epsilon(step: float, start: float, end: float, decay_steps: int) -> float:
    """Exploration rate annealed linearly from ``start`` to ``end`` over ``decay_steps`` real
    steps, then constant (DQN and Gorila anneal 1 -> 0.1 over the first 1M frames)."""
    if decay_steps <= 0:
        return end
    frac = min(max(step / decay_steps, 0.0), 1.0)
    return start + frac * (end - start)


def td_targets(reward: Tensor, terminated: Tensor, next_q_target: Tensor, gamma: float,
               next_q_online: Tensor | None = None) -> Tensor:
    """One-step TD targets ``y [B]``.

    DQN (Mnih et al. 2015): ``y = r + γ (1 - terminal) max_a Q⁻(s', a)``. Double DQN (van
    Hasselt et al. 2016), when ``next_q_online`` is given: the online network picks
    ``a* = argmax_a Q(s', a)`` and the target network evaluates it, ``Q⁻(s', a*)``.

    With several heads (factorized discretized actions) the per-head values are averaged,
    the shared target of action branching (Tavakoli et al. 2018, eq. 6); one head is plain DQN.

    Args:
        reward, terminated: ``[B]``; truncated steps have ``terminated`` False (bootstrap).
        next_q_target, next_q_online: ``[B, H, n]`` at the next observations.
    """
    if next_q_online is None:
        v = next_q_target.max(-1).values  # [B, H]
    else:
        a_star = next_q_online.argmax(-1, keepdim=True)
        v = next_q_target.gather(-1, a_star).squeeze(-1)  # [B, H]
    v = v.mean(-1)  # [B]
    return reward + gamma * (~terminated).to(v.dtype) * v


def dqn_loss(q: Tensor, actions: Tensor, targets: Tensor) -> Tensor:
    """Huber loss (DQN's error clipping to [-1, 1]) between ``Q(s, a) [B, H]`` and ``y [B]``,
    mean over batch and heads. ``q [B, H, n]``, ``actions [B, H]`` (int64)."""
    q_taken = q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # [B, H]
    return torch.nn.functional.smooth_l1_loss(q_taken, targets.unsqueeze(-1).expand_as(q_taken))


def adagrad_update(params: Tensor, accum: Tensor, grad: Tensor, lr: float, eps: float = 1e-10
                   ) -> tuple[Tensor, Tensor]:
    """One AdaGrad step (Duchi et al. 2011), the parameter server's optimizer in Gorila.

    ``G ← G + g²``, ``θ ← θ − lr · g / (√G + eps)`` (elementwise; same as
    ``torch.optim.Adagrad`` without learning-rate decay). Returns new tensors.
    """
    accum = accum + grad * grad
    return params - lr * grad / (accum.sqrt() + eps), accum


def is_stale(server_version: int, grad_version: int, max_staleness: int) -> bool:
    """A gradient computed on parameters ``grad_version`` is dropped when the server has
    applied more than ``max_staleness`` updates since then. A version ahead of the server's
    (the server was restored from an older checkpoint) is not stale."""
    return server_version - grad_version > max_staleness


def is_loss_outlier(loss: float, mean: float, std: float, k: float) -> bool:
    """Gorila's stability rule: drop a gradient whose |loss| exceeds ``mean + k·std`` of the
    learner's running loss statistics."""
    return abs(loss) > mean + k * std


class LossFilter:
    """Running mean/std of |loss| (``RunningMeanStd``) and :func:`is_loss_outlier`.

    Every loss updates the statistics, dropped or not, so a lasting rise of the loss
    (e.g. growing Q-values) is accepted after a while instead of locking the learner out.
    The rule is off during the first ``warmup`` losses and when ``k <= 0``.
    """

    def __init__(self, k: float = 3.0, warmup: int = 100):
        self.k = k
        self.warmup = warmup
        self.stats = RunningMeanStd(())

    def keep(self, loss: float) -> bool:
        n = int(self.stats.count.item())
        drop = (self.k > 0 and n >= self.warmup and
                is_loss_outlier(loss, self.stats.mean.item(), math.sqrt(self.stats.var.item()), self.k))
        self.stats.update(torch.tensor([abs(loss)], dtype=torch.float64))
        return not drop


# ----- helpers --------------------------------------------------------------------------------

def was_restarted() -> bool:
    """True inside a Ray actor that Ray has restarted after a crash; False outside Ray."""
    ray = sys.modules.get("ray")  # a Ray worker has imported ray before it builds an actor
    if ray is None:
        return False
    try:
        with warnings.catch_warnings():  # Ray deprecates an API this property uses internally
            warnings.simplefilter("ignore")
            return bool(ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed)
    except (RuntimeError, AttributeError, AssertionError):  # e.g. the driver process
        return False


def _as_tensor(x: Tensor | np.ndarray, dtype: torch.dtype) -> Tensor:
    # arrays arriving through Ray are read-only; torch wants writable memory
    return torch.from_numpy(np.array(x, dtype=np.float32)).to(dtype) if isinstance(x, np.ndarray) \
        else x.to(dtype)


@dataclass
class ByRef:
    """A large constructor argument (shard state, replay contents) held in Ray's object store
    by the driver and fetched by the process. Nested in this wrapper, Ray does not count it
    as an object-store argument of a restartable actor; the driver keeps ``ref`` alive for
    restarts."""

    ref: Any

    def get(self) -> Any:
        import ray

        return ray.get(self.ref)


def _resolve(arg: Any) -> Any:
    return arg.get() if isinstance(arg, ByRef) else arg


def shard_sizes(total: int, num_shards: int) -> list[int]:
    """Sizes of ``num_shards`` contiguous slices of a flat parameter vector (``tensor_split``)."""
    return [int(t.numel()) for t in torch.arange(total).tensor_split(num_shards)]


def initial_server_states(flat: Tensor, num_shards: int, obs_dim: int | None,
                          initial_accumulator: float = 0.0) -> list[dict[str, Any]]:
    """Fresh shard states: parameter slices, AdaGrad accumulators, version 0 (shard 0 also
    holds the observation statistics when ``obs_dim`` is given)."""
    states = []
    for i, part in enumerate(flat.detach().float().tensor_split(num_shards)):
        st: dict[str, Any] = {"params": part.clone(), "accum": torch.full_like(part, initial_accumulator),
                              "version": 0, "num_applied": 0, "num_dropped_stale": 0}
        if i == 0 and obs_dim is not None:
            st["obs_rms"] = RunningMeanStd(obs_dim).state_dict()
        states.append(st)
    return states


@dataclass
class WorkerSpec:
    """What every acting/learning process needs to build its env and networks."""

    config: GorilaConfig
    wrapper: Callable[[gym.Env], gym.Env] | None
    obs_dim: int
    action_nvec: tuple[int, ...]
    discrete: bool
    """True for a ``Discrete`` env action space (env actions ``[N]``), False for
    ``MultiDiscrete`` (``[N, H]``)."""

    def q_network(self) -> QNetwork:
        c = self.config
        return QNetwork(self.obs_dim, self.action_nvec, c.hidden_sizes, c.activation, c.ortho_init)


def _obs_rms_from(stats: dict[str, Tensor] | None, obs_dim: int) -> RunningMeanStd | None:
    if stats is None:
        return None
    rms = RunningMeanStd(obs_dim)
    rms.load_state_dict(stats)
    return rms


# ----- parameter server -----------------------------------------------------------------------

class ParameterServer:
    """One shard of the parameter server: a slice of the flat Q-network parameters.

    ``push(grad, version)`` applies a gradient with AdaGrad unless it is stale
    (:func:`is_stale`); each applied update increments ``version``. Shard 0 also merges the
    actors' observation statistics when observation normalization is on.

    Args:
        state: shard state (:func:`initial_server_states` or a checkpoint's).
        learning_rate, eps: AdaGrad step size and epsilon.
        max_staleness: largest accepted ``version - grad_version``.
        restore_path: checkpoint read when Ray restarts this shard after a crash (the
            run's ``checkpoints/last.pt``); without it a restarted shard starts from ``state``.
        shard_index: which entry of the checkpoint's ``servers`` list is this shard's.
    """

    def __init__(self, state: dict[str, Any], learning_rate: float, eps: float = 1e-10,
                 max_staleness: int = 10, restore_path: str | None = None, shard_index: int = 0):
        self.learning_rate = learning_rate
        self.eps = eps
        self.max_staleness = max_staleness
        self.restored_from: str | None = None
        self.restarted = was_restarted()
        if self.restarted and restore_path is not None and Path(restore_path).is_file():
            from mbmpo.checkpoint import load_checkpoint

            state = load_checkpoint(restore_path)["servers"][shard_index]
            self.restored_from = restore_path
        self.load_state_dict(_resolve(state))

    def get(self) -> dict[str, Any]:
        """``{"version", "params" [n] (numpy float32), "obs_stats" (RunningMeanStd state or
        None)}``; numpy travels through Ray faster than torch tensors."""
        return {"version": self.version, "params": self.params.numpy(),
                "obs_stats": self.obs_rms.state_dict() if self.obs_rms is not None else None}

    def push(self, grad: Tensor | np.ndarray, version: int) -> bool:
        """Apply ``grad`` (computed on parameters of ``version``); False when dropped as stale."""
        if is_stale(self.version, version, self.max_staleness):
            self.num_dropped_stale += 1
            return False
        # new tensors every step: arrays handed out by get() are never changed afterwards
        self.params, self.accum = adagrad_update(self.params, self.accum,
                                                 _as_tensor(grad, self.params.dtype),
                                                 self.learning_rate, self.eps)
        self.version += 1
        self.num_applied += 1
        return True

    def push_get(self, grad: Tensor | np.ndarray, version: int) -> dict[str, Any]:
        """:meth:`push` then :meth:`get` in one call (one round trip per learner update);
        the reply also holds ``"applied"``."""
        applied = self.push(grad, version)
        return {**self.get(), "applied": applied}

    def merge_obs_stats(self, mean: Tensor, var: Tensor, count: float) -> None:
        if self.obs_rms is not None:
            self.obs_rms.update_from_moments(mean, var, count)

    def stats(self) -> dict[str, Any]:
        return {"version": self.version, "num_applied": self.num_applied,
                "num_dropped_stale": self.num_dropped_stale, "pid": os.getpid(),
                "restarted": self.restarted, "restored_from": self.restored_from}

    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"params": self.params.clone(), "accum": self.accum.clone(),
                              "version": self.version, "num_applied": self.num_applied,
                              "num_dropped_stale": self.num_dropped_stale}
        if self.obs_rms is not None:
            st["obs_rms"] = self.obs_rms.state_dict()
        return st

    @staticmethod
    def check_state(state: dict[str, Any]) -> None:
        """Raise KeyError/ValueError/RuntimeError unless ``state`` is a valid shard state."""
        ParameterServer.__new__(ParameterServer).load_state_dict(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.params = state["params"].detach().float().clone()
        self.accum = state["accum"].detach().float().clone()
        if self.accum.shape != self.params.shape:
            raise ValueError(f"accumulator shape {tuple(self.accum.shape)} != params "
                             f"{tuple(self.params.shape)}")
        self.version = int(state["version"])
        self.num_applied = int(state.get("num_applied", 0))
        self.num_dropped_stale = int(state.get("num_dropped_stale", 0))
        self.obs_rms = None
        if "obs_rms" in state:
            self.obs_rms = RunningMeanStd(state["obs_rms"]["mean"].shape)
            self.obs_rms.load_state_dict(state["obs_rms"])


def named_actor(name_or_handle: Any) -> Any:
    """A Ray actor handle from its name (handles pass through).

    Processes get each other's names, not handles, as constructor arguments: Ray keeps
    handle arguments of restartable actors in the object store and warns about it.
    """
    if not isinstance(name_or_handle, str):
        return name_or_handle
    import ray

    return ray.get_actor(name_or_handle)


class ParamClient:
    """Pull/push the full flat parameter vector from/to the server shards.

    ``shards`` are :class:`ParameterServer` objects (in-process) or, with ``remote=True``,
    the names (or handles) of their Ray actors. A pull returns one version per shard; a push
    sends each shard its slice of the gradient with that shard's version.
    """

    def __init__(self, shards: Sequence[Any], sizes: Sequence[int], remote: bool):
        self._refs = list(shards)
        self._shards: list[Any] | None = None if remote else self._refs
        self.sizes = list(sizes)
        self.remote = remote

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_shards": None if self.remote else self._shards}

    @property
    def shards(self) -> list[Any]:
        if self._shards is None:
            self._shards = [named_actor(s) for s in self._refs]
        return self._shards

    def _call(self, shard: Any, method: str, *args: Any) -> Any:
        return getattr(shard, method).remote(*args) if self.remote else getattr(shard, method)(*args)

    def results(self, refs: list[Any]) -> list[Any]:
        """Values of calls made with ``remote=True`` (identity in-process)."""
        if not self.remote:
            return refs
        import ray

        return ray.get(refs)

    @staticmethod
    def _unpack(replies: list[dict[str, Any]]) -> tuple[list[int], Tensor, dict[str, Tensor] | None]:
        flat = torch.from_numpy(np.concatenate([r["params"] for r in replies]))
        return [int(r["version"]) for r in replies], flat, replies[0]["obs_stats"]

    def pull(self) -> tuple[list[int], Tensor, dict[str, Tensor] | None]:
        """``(versions [S], params [n], obs_stats of shard 0 or None)``."""
        return self._unpack(self.results([self._call(s, "get") for s in self.shards]))

    def _slices(self, grad: Tensor) -> list[Any]:
        parts = grad.detach().split(self.sizes)
        # numpy views of contiguous slices: Ray serializes just the slice's bytes
        return [g.numpy() if self.remote else g for g in parts]

    def push(self, grad: Tensor, versions: Sequence[int]) -> list[Any]:
        """Send the gradient slices; returns refs (remote) or per-shard applied flags."""
        return [self._call(s, "push", g, v) for s, g, v in zip(self.shards, self._slices(grad), versions)]

    def push_pull(self, grad: Tensor, versions: Sequence[int]
                  ) -> tuple[list[bool], tuple[list[int], Tensor, dict[str, Tensor] | None]]:
        """:meth:`push` and then :meth:`pull`, one round trip per shard: ``(applied flags,
        pull result)``."""
        replies = self.results([self._call(s, "push_get", g, v)
                                for s, g, v in zip(self.shards, self._slices(grad), versions)])
        return [bool(r["applied"]) for r in replies], self._unpack(replies)

    def merge_obs_stats(self, mean: Tensor, var: Tensor, count: float) -> None:
        self._call(self.shards[0], "merge_obs_stats", mean, var, count)


# ----- replay memory --------------------------------------------------------------------------

class ReplayMemory:
    """A :class:`~mbmpo.buffers.ReplayBuffer` behind a lock with its own sampling generator.

    Used as an acting process's local memory, inside a bundle, and (as a Ray actor) as the
    global replay memory. The lock lets a threaded Ray actor serve learners' samples while
    its acting loop adds transitions.
    """

    def __init__(self, obs_dim: int, num_heads: int, capacity: int, seed: int,
                 state: dict[str, Any] | None = None):
        self.buffer = ReplayBuffer(obs_dim, num_heads, capacity)
        self.generator = torch.Generator().manual_seed(seed)
        self.lock = threading.Lock()
        # a process Ray restarted after a crash starts empty, not from the resume-time contents
        if state is not None and not was_restarted():
            self.load_state_dict(_resolve(state))

    def add(self, obs: Tensor, act: Tensor, next_obs: Tensor, reward: Tensor, terminated: Tensor) -> int:
        with self.lock:
            self.buffer.add(obs, act, next_obs, reward, terminated)
            return len(self.buffer)

    def size(self) -> int:
        return len(self.buffer)

    def flush(self) -> None:
        """In-process memory: every add is already stored."""

    def sample_batches(self, num_batches: int, batch_size: int) -> dict[str, Tensor] | None:
        """``num_batches`` stacked batches, or None while the memory holds fewer than
        ``batch_size`` rows (e.g. just after its process was restarted)."""
        with self.lock:
            if len(self.buffer) < batch_size:
                return None
            return self.buffer.sample_batches(num_batches, batch_size, self.generator)

    def state_dict(self) -> dict[str, Any]:
        with self.lock:
            return self.buffer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self.lock:
            self.buffer.load_state_dict(state)


class RemoteReplay:
    """The :class:`ReplayMemory` interface over a Ray actor (name or handle) exposing ``add``,
    ``size`` and ``sample_batches`` (the global replay actor or an acting process's local
    memory)."""

    def __init__(self, actor: Any):
        self.actor = actor
        self._handle: Any = None
        self._last_add: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"actor": self.actor, "_handle": None, "_last_add": None}

    @property
    def handle(self) -> Any:
        if self._handle is None:
            self._handle = named_actor(self.actor)
        return self._handle

    def add(self, *cols: Tensor) -> None:
        self.flush()  # at most one add in flight: back-pressure instead of an unbounded queue
        self._last_add = self.handle.add.remote(*cols)

    def flush(self) -> None:
        """Wait until every transition sent so far is stored."""
        if self._last_add is not None:
            import ray

            ray.get(self._last_add)
            self._last_add = None

    def size(self) -> int:
        import ray

        return int(ray.get(self.handle.size.remote()))

    def sample_batches(self, num_batches: int, batch_size: int) -> dict[str, Tensor] | None:
        import ray

        return ray.get(self.handle.sample_batches.remote(num_batches, batch_size))


# ----- acting and learning processes ----------------------------------------------------------

def _worker_seed(base: int, offset: int) -> int:
    # a restarted process must not replay its predecessor's episodes and random draws
    return base + offset + (os.getpid() * 7919 if was_restarted() else 0)


class ActorCore:
    """An acting process: ε-greedy Q-network in ``num_envs`` env copies, parameters synced
    from the server every ``sync_every`` vector steps, transitions written to its local
    replay memory (``replay=None``) or to the given (global) one.

    Args:
        spec: env and network description.
        index: actor number (seeds, pairing with learners).
        params: a :class:`ParamClient`.
        replay: where transitions go; ``None`` keeps a local :class:`ReplayMemory`.
        replay_state: checkpointed contents of the local memory.
    """

    def __init__(self, spec: WorkerSpec, index: int, params: ParamClient, replay: Any = None,
                 replay_state: dict[str, Any] | None = None):
        c = spec.config
        torch.set_num_threads(c.worker_threads)
        self.spec, self.index, self.params = spec, index, params
        self.restarted = was_restarted()
        seed = _worker_seed(c.seed, 1000 * (index + 1))
        self.env = GymVecEnv(c.env_id, c.num_envs, seed=seed, env_kwargs=c.env_kwargs,
                             vectorization=c.vectorization, wrapper=spec.wrapper)
        self.replay = replay if replay is not None else ReplayMemory(
            spec.obs_dim, len(spec.action_nvec), c.replay_capacity, seed, replay_state)
        self.net = spec.q_network()
        self.generator = torch.Generator().manual_seed(seed)
        self.nvec = torch.tensor(spec.action_nvec)
        self.obs_rms: RunningMeanStd | None = None
        self.new_obs = RunningMeanStd(spec.obs_dim) if c.normalize_obs else None
        self.epsilon = c.epsilon_start
        self._obs: Tensor | None = None
        self._ts: Tensor | None = None
        self._since_sync = 0
        self._synced = False
        self.version = -1

    def sync(self) -> None:
        """Send new observation statistics, then pull parameters (and global statistics)."""
        if self.new_obs is not None and self.new_obs.count.item() > 0:
            self.params.merge_obs_stats(self.new_obs.mean.clone(), self.new_obs.var.clone(),
                                        float(self.new_obs.count.item()))
            self.new_obs.reset()
        versions, flat, obs_stats = self.params.pull()
        vector_to_parameters(flat, self.net.parameters())
        self.obs_rms = _obs_rms_from(obs_stats, self.spec.obs_dim)
        self.version = versions[0]
        self._since_sync = 0
        self._synced = True

    def _normalize(self, obs: Tensor) -> Tensor:
        if self.obs_rms is None:
            return obs
        return self.obs_rms.normalize(obs, self.spec.config.clip_obs)

    def _policy_fn(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        idx = epsilon_greedy(self.net(self._normalize(obs)), self.epsilon, self.generator, self.nvec)
        return (idx[:, 0] if self.spec.discrete else idx), {}

    def act(self, num_steps: int, global_step: int) -> dict[str, Any]:
        """Take ``num_steps`` vector steps (``num_steps * num_envs`` env steps).

        ``global_step`` is the run's real-step count when the chunk was handed out; the
        exploration rate follows it, advanced by this actor's own steps times the number of
        actors (an estimate of the others' progress).
        """
        c = self.spec.config
        returns: list[float] = []
        lengths: list[int] = []
        done = 0
        while done < num_steps:
            if not self._synced or self._since_sync >= c.sync_every:
                self.sync()
            t = min(num_steps - done, c.sync_every - self._since_sync)
            self.epsilon = linear_epsilon(global_step + done * c.num_envs * c.num_actors,
                                          c.epsilon_start, c.epsilon_end, c.epsilon_decay_steps)
            roll = collect(self.env, self._policy_fn, t, self._obs, self._ts)
            self._obs, self._ts = roll.last_obs, roll.last_timesteps
            act = roll.flat("actions").reshape(t * c.num_envs, -1)
            if self.new_obs is not None:
                self.new_obs.update(roll.flat("obs"))
            self.replay.add(roll.flat("obs"), act, roll.flat("next_obs"), roll.flat("rewards"),
                            roll.flat("terminated"))
            returns += roll.episode_returns
            lengths += roll.episode_lengths
            done += t
            self._since_sync += t
        self.replay.flush()  # a finished chunk's transitions are in the memory
        return {"steps": num_steps * c.num_envs, "episode_returns": returns,
                "episode_lengths": lengths, "epsilon": self.epsilon, "pid": os.getpid(),
                "restarted": self.restarted}

    # local replay served to learners (threaded Ray actor)
    def size(self) -> int:
        return self.replay.size()

    def sample_batches(self, num_batches: int, batch_size: int) -> dict[str, Tensor] | None:
        return self.replay.sample_batches(num_batches, batch_size)

    def replay_state(self) -> dict[str, Any] | None:
        return self.replay.state_dict() if isinstance(self.replay, ReplayMemory) else None


class LearnerCore:
    """A learning process: samples replay, computes DQN / double-DQN gradients against a
    target network, drops outlier losses, pushes gradients to the server.

    Every gradient is computed on the server's current parameters (Gorila, Algorithm 1): a
    push returns the parameters after it in the same round trip. The target network is refreshed from the server whenever the server
    has applied ``target_update_every`` updates since the last refresh (a global count).
    """

    def __init__(self, spec: WorkerSpec, index: int, params: ParamClient, replay: Any):
        c = spec.config
        torch.set_num_threads(c.worker_threads)
        self.spec, self.index, self.params, self.replay = spec, index, params, replay
        self.restarted = was_restarted()
        self.net = spec.q_network()
        self.target = spec.q_network()
        self.target.requires_grad_(False)
        self.filter = LossFilter(c.loss_outlier_k, c.outlier_warmup)
        self._target_version: int | None = None
        self.num_target_updates = 0

    def learn(self, num_updates: int) -> dict[str, Any]:
        """``num_updates`` gradient computations (fewer pushes when losses are dropped)."""
        c = self.spec.config
        out: dict[str, Any] = {"updates": 0, "pushed": 0, "applied": 0, "dropped_stale": 0,
                               "dropped_outlier": 0, "loss_sum": 0.0, "q_sum": 0.0,
                               "pid": os.getpid(), "restarted": self.restarted}
        # one round trip: None while the memory is too small (e.g. its actor just restarted)
        batches = self.replay.sample_batches(num_updates, c.batch_size)
        out["ready"] = batches is not None
        if batches is None:
            return out
        params = list(self.net.parameters())
        applied: list[bool] = []
        pulled = None
        for i in range(num_updates):
            versions, flat, obs_stats = pulled if pulled is not None else self.params.pull()
            pulled = None
            vector_to_parameters(flat, params)
            if self._target_version is None or abs(versions[0] - self._target_version) >= c.target_update_every:
                vector_to_parameters(flat, self.target.parameters())
                self._target_version = versions[0]
                self.num_target_updates += 1
            rms = _obs_rms_from(obs_stats, self.spec.obs_dim)
            b = {k: v[i] for k, v in batches.items()}
            obs, next_obs = b["obs"], b["next_obs"]
            if rms is not None:
                obs, next_obs = rms.normalize(obs, c.clip_obs), rms.normalize(next_obs, c.clip_obs)
            with torch.no_grad():
                next_online = self.net(next_obs) if c.double_q else None
                y = td_targets(b["reward"], b["terminated"], self.target(next_obs), c.gamma, next_online)
            q = self.net(obs)
            loss = dqn_loss(q, b["act"], y)
            out["updates"] += 1
            out["loss_sum"] += loss.item()
            out["q_sum"] += q.detach().gather(-1, b["act"].unsqueeze(-1)).mean().item()
            if not self.filter.keep(loss.item()):
                out["dropped_outlier"] += 1
                continue
            grads = torch.autograd.grad(loss, params)
            if c.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(grads, c.max_grad_norm, foreach=True)
            flags, pulled = self.params.push_pull(parameters_to_vector(grads), versions)
            applied += flags  # one flag per shard and push
            out["pushed"] += 1
        out["applied"] = sum(applied)
        out["dropped_stale"] = len(applied) - out["applied"]
        return out


class BundleCore:
    """Gorila's bundled mode: one acting process, its local replay memory and one learner
    in the same process, alternating ``num_steps`` acting steps and ``num_updates`` updates."""

    def __init__(self, spec: WorkerSpec, index: int, params: ParamClient,
                 replay_state: dict[str, Any] | None = None):
        self.actor = ActorCore(spec, index, params, None, replay_state)
        self.learner = LearnerCore(spec, index, params, self.actor.replay)

    def run(self, num_steps: int, num_updates: int, global_step: int) -> dict[str, Any]:
        out = self.actor.act(num_steps, global_step) if num_steps > 0 else {}
        res = self.learner.learn(num_updates) if num_updates > 0 else {"updates": 0, "ready": True}
        return {"steps": 0, "episode_returns": [], "episode_lengths": [], **out,
                "learn": res, "pid": os.getpid(), "restarted": self.actor.restarted}

    def replay_state(self) -> dict[str, Any] | None:
        return self.actor.replay_state()
