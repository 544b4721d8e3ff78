"""Gorila's acting and learning processes: :class:`ActorCore` (ε-greedy acting into a replay
memory), :class:`LearnerCore` (DQN gradients pushed to the parameter server) and
:class:`BundleCore` (the paper's bundled mode: both in one process).

Every class here is a plain Python object: the driver (:class:`mbmpo.baselines.gorila.Gorila`)
turns them into Ray actors (``ray.remote(cls)``) and wires them together with
:class:`~mbmpo.baselines.gorila.server.ParamClient` /
:class:`~mbmpo.baselines.gorila.replay.RemoteReplay`; tests drive them in-process. Nothing
here imports Ray at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from mbmpo.baselines.gorila.config import GorilaConfig
from mbmpo.baselines.gorila.dqn import LossFilter, dqn_loss, linear_epsilon, td_targets
from mbmpo.baselines.gorila.ray_support import was_restarted
from mbmpo.baselines.gorila.replay import ReplayMemory
from mbmpo.baselines.gorila.server import ParamClient
from mbmpo.envs import GymVecEnv
from mbmpo.normalization import RunningMeanStd
from mbmpo.sampler import collect
from policies.q_network import QNetwork, epsilon_greedy


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
