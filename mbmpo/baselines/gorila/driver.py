"""The Gorila driver (:class:`Gorila`): starts the Ray processes, hands out chunks of work,
keeps the step budget and the update ratio, logs, evaluates and checkpoints."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from tqdm.auto import tqdm

from mbmpo.algorithm import Algorithm, resolve_device
from mbmpo.baselines.gorila.config import GorilaConfig
from mbmpo.baselines.gorila.dqn import linear_epsilon
from mbmpo.baselines.gorila.ray_support import ByRef, init_ray, require_ray
from mbmpo.baselines.gorila.replay import RemoteReplay, ReplayMemory
from mbmpo.baselines.gorila.server import (
    ParamClient,
    ParameterServer,
    initial_server_states,
    shard_sizes,
)
from mbmpo.baselines.gorila.workers import ActorCore, BundleCore, LearnerCore, WorkerSpec
from mbmpo.config import BaseConfig
from mbmpo.envs import check_spaces, evaluate_episodes, make_env_fn
from mbmpo.errors import CheckpointError, TrainingError
from mbmpo.normalization import RunningMeanStd
from mbmpo.wrappers import bin_values, bins_to_actions, discretize_wrapper, expand_bins
from policies.q_network import action_nvec, epsilon_greedy

CONSOLE_KEYS = ["iteration", "real_steps", "train/episode_return", "eval_return_mean", "time/sps",
                "learner/updates_per_s"]


class Gorila(Algorithm):
    """Distributed DQN on Ray (see :mod:`mbmpo.baselines.gorila`).

    Example::

        algo = Gorila(GorilaConfig(env_id="CartPole-v1", total_steps=50_000, num_actors=2,
                                   num_learners=1), out_dir="runs/gorila")
        algo.learn()
        action = algo.predict(obs)   # greedy action for a raw env observation
        algo.close()                 # stops the Ray processes (and Ray, if it started it)

    Asynchronous training is not bit-reproducible across runs; seeds fix the initial
    network, the env resets and every process's random draws.
    """

    algo_name: ClassVar[str] = "gorila"
    config_cls: ClassVar[type[BaseConfig]] = GorilaConfig
    console_keys: ClassVar[list[str]] = CONSOLE_KEYS
    # the classes run as Ray actors; a subclass may swap in its own (e.g. a learner delayed
    # on purpose, to watch the staleness rule drop its gradients)
    actor_cls: ClassVar[type] = ActorCore
    learner_cls: ClassVar[type] = LearnerCore
    bundle_cls: ClassVar[type] = BundleCore

    def __init__(self, config: GorilaConfig, out_dir: str | Path | None = None, console: bool = True):
        super().__init__(config, out_dir, console)
        c = config
        self.device = resolve_device("cpu")  # the learner processes run on CPU
        probe = make_env_fn(c.env_id, c.env_kwargs)()
        raw_space, obs_space, act_space = probe.action_space, probe.observation_space, probe.action_space
        self.wrapper: Callable[[gym.Env], gym.Env] | None = None
        self._bin_values: list[np.ndarray] | None = None
        try:
            check_spaces(obs_space, raw_space)
            if isinstance(raw_space, gym.spaces.Box):
                bins = expand_bins(c.action_bins, raw_space.shape[0])
                self.wrapper = discretize_wrapper(bins, c.action_factorization)
                self._bin_values = bin_values(raw_space.low, raw_space.high, bins)
                act_space = self.wrapper(probe).action_space
        finally:
            probe.close()
        self.observation_space, self.action_space = obs_space, raw_space
        self.obs_dim = obs_space.shape[0]
        self.spec = WorkerSpec(c, self.wrapper, self.obs_dim, action_nvec(act_space),
                               isinstance(act_space, gym.spaces.Discrete))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.q_net = self.spec.q_network()
        self.nvec = torch.tensor(self.spec.action_nvec)
        self.obs_rms = RunningMeanStd(self.obs_dim) if c.normalize_obs else None
        self.num_params = int(parameters_to_vector(self.q_net.parameters()).numel())
        self._server_states = initial_server_states(
            parameters_to_vector(self.q_net.parameters()).detach(), c.num_param_shards,
            self.obs_dim if c.normalize_obs else None, c.initial_accumulator)
        self._replay_states: list[dict[str, Any] | None] = []
        self.generator = torch.Generator().manual_seed(c.seed)
        self.num_updates = 0
        self.num_dropped_outlier = 0
        self.num_dropped_stale = 0  # pushes the server dropped as stale, from the learners' replies
        self.events: list[str] = []
        self._ray: Any = None
        self._owns_ray = False
        self._servers: list[Any] = []
        self._workers: dict[str, Any] = {}
        self._replay_actor: Any = None
        self._pending: dict[Any, tuple[str, int, int]] = {}  # ref -> (worker, steps, updates)
        self._pids: dict[str, int] = {}
        self._waiting: set[str] = set()  # learners whose replay was not ready yet
        self._acc: dict[str, Any] = self._fresh_acc()
        self._server_pids: list[int] = []
        self._client: ParamClient | None = None
        self._arg_refs: list[Any] = []

    # ----- acting -----------------------------------------------------------------------------
    def _normalize(self, obs: Tensor) -> Tensor:
        return obs if self.obs_rms is None else self.obs_rms.normalize(obs, self.config.clip_obs)

    def _env_action(self, idx: Tensor) -> Tensor:
        return idx[:, 0] if self.spec.discrete else idx

    @torch.no_grad()
    def _act_indices(self, obs: Tensor, deterministic: bool) -> Tensor:
        q = self.q_net(self._normalize(obs))
        eps = 0.0 if deterministic else self.config.epsilon_end
        return epsilon_greedy(q, eps, self.generator, self.nvec)

    @torch.no_grad()
    def predict(self, obs: np.ndarray | Tensor, deterministic: bool = True) -> np.ndarray:
        """Actions for raw env observations ``[B, obs_dim]`` (or one ``[obs_dim]``): greedy
        (or ε-greedy with ``epsilon_end``); discretized Box actions are mapped back to
        continuous values, so the result can be passed to the unwrapped env."""
        self._sync_local()
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        single = x.dim() == 1
        idx = self._act_indices(x.unsqueeze(0) if single else x, deterministic)
        if self._bin_values is not None:
            factorized = self.config.action_factorization == "factorized"
            a = bins_to_actions(idx.numpy() if factorized else idx[:, 0].numpy(), self._bin_values,
                                self.config.action_factorization)
        else:
            a = self._env_action(idx).numpy()
        return a[0] if single else a

    def evaluate(self, num_episodes: int = 10, deterministic: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Returns and lengths of ``num_episodes`` episodes with the server's current
        parameters (greedy, or ε-greedy with ``epsilon_end``); never counted as training steps."""
        self._sync_local()
        env = self.eval_env(num_episodes, env_kwargs=self.config.env_kwargs, wrapper=self.wrapper)
        # raw observations: _act_indices normalizes them itself
        return evaluate_episodes(env, lambda o: self._env_action(self._act_indices(o, deterministic)),
                                 seed=self.eval_seed())

    # ----- Ray processes ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self._servers)

    def _start(self) -> None:
        if self.running:
            return
        c = self.config
        ray = self._ray = require_ray()
        self._owns_ray = init_ray(c.ray_num_cpus)
        prefix = f"gorila-{uuid.uuid4().hex[:8]}"  # actor names of this run
        restore = str(self.out_dir / "checkpoints" / "last.pt") if self.out_dir is not None else None
        server_cls = ray.remote(ParameterServer)
        names = [f"{prefix}-server{i}" for i in range(c.num_param_shards)]
        # large arguments by reference, kept alive here for restarts
        self._arg_refs = [ByRef(ray.put(st)) for st in self._server_states]
        self._servers = [server_cls.options(name=n, num_cpus=c.cpus_per_worker, max_restarts=-1,
                                            max_task_retries=-1).remote(
            st, c.learning_rate, c.adagrad_eps, c.max_staleness, restore, i)
            for i, (n, st) in enumerate(zip(names, self._arg_refs))]
        client = ParamClient(names, shard_sizes(self.num_params, c.num_param_shards), remote=True)
        opts = dict(num_cpus=c.cpus_per_worker, max_restarts=c.max_restarts,
                    max_task_retries=c.max_restarts)

        def replay_state(i: int) -> ByRef | None:
            if i >= len(self._replay_states) or self._replay_states[i] is None:
                return None
            self._arg_refs.append(ByRef(ray.put(self._replay_states[i])))
            return self._arg_refs[-1]

        if c.mode == "bundled":
            bundle_cls = ray.remote(self.bundle_cls)
            for i in range(c.num_actors):
                self._workers[f"bundle{i}"] = bundle_cls.options(name=f"{prefix}-bundle{i}", **opts).remote(
                    self.spec, i, client, replay_state(i))
        else:
            replay_name = f"{prefix}-replay"
            if c.replay == "global":
                self._replay_actor = ray.remote(ReplayMemory).options(
                    name=replay_name, max_concurrency=4, **opts,
                ).remote(self.obs_dim, len(self.spec.action_nvec), c.replay_capacity, c.seed + 999,
                         replay_state(0))
            # threaded: a local memory serves learners' samples while the actor steps its envs
            actor_cls = ray.remote(self.actor_cls)
            learner_cls = ray.remote(self.learner_cls)
            for i in range(c.num_actors):
                target = RemoteReplay(replay_name) if c.replay == "global" else None
                self._workers[f"actor{i}"] = actor_cls.options(
                    name=f"{prefix}-actor{i}", max_concurrency=4, **opts,
                ).remote(self.spec, i, client, target, replay_state(i))
            for j in range(c.num_learners):
                source = replay_name if c.replay == "global" else f"{prefix}-actor{j % c.num_actors}"
                self._workers[f"learner{j}"] = learner_cls.options(name=f"{prefix}-learner{j}", **opts).remote(
                    self.spec, j, client, RemoteReplay(source))
        self._client = client
        self._server_pids = [s["pid"] for s in ray.get([s.stats.remote() for s in self._servers])]

    def _stop(self) -> None:
        if not self.running:
            return
        ray = self._ray
        handles = [*self._workers.values(), *self._servers]
        if self._replay_actor is not None:
            handles.append(self._replay_actor)
        for h in handles:
            ray.kill(h)
        self._workers.clear()
        self._servers = []
        self._replay_actor = None
        self._pending.clear()
        self._arg_refs = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def _sync_local(self) -> None:
        """Copy the server's parameters (and observation statistics) into the local network."""
        if self.running:
            _, flat, obs_stats = self._client.pull()
        else:
            flat = torch.cat([s["params"] for s in self._server_states])
            obs_stats = self._server_states[0].get("obs_rms")
        vector_to_parameters(flat, self.q_net.parameters())
        if self.obs_rms is not None and obs_stats is not None:
            self.obs_rms.load_state_dict(obs_stats)

    # ----- the loop ---------------------------------------------------------------------------
    def learn(self, total_steps: int | None = None) -> Gorila:
        """Train until ``total_steps`` real env steps over all actors (the config's budget when
        None). Calling again with a larger budget, or after :meth:`load`, continues the run;
        the Ray processes stay up until :meth:`close`."""
        require_ray()
        self._start()
        super().learn(total_steps)
        self._drain()  # learner chunks still running
        self._sync_local()
        return self

    @staticmethod
    def _fresh_acc() -> dict[str, Any]:
        return {"steps": 0, "updates": 0, "pushed": 0, "applied": 0, "dropped_stale": 0,
                "dropped_outlier": 0, "loss_sum": 0.0, "q_sum": 0.0, "lengths": [], "epsilon": None}

    def _in_flight(self) -> tuple[int, int]:
        steps = sum(s for _, s, _ in self._pending.values())
        updates = sum(u for _, _, u in self._pending.values())
        return steps, updates

    def _busy(self) -> set[str]:
        return {name for name, _, _ in self._pending.values()}

    def _submit(self) -> None:
        """Hand a chunk of work to every idle process, within the step budget and the
        update ratio."""
        c = self.config
        busy = self._busy()
        steps_fl, updates_fl = self._in_flight()
        remaining = self.total_steps - self.num_timesteps - steps_fl
        learning = self.num_timesteps >= c.learning_starts

        def allowed_updates() -> int:
            if c.updates_per_step <= 0:
                return c.updates_per_call
            # the ratio counts from learning_starts, like DQN's update schedule
            budget = int(c.updates_per_step * (self.num_timesteps - c.learning_starts))
            return budget - self.num_updates - updates_fl

        # acting pauses while the learners lag more than one chunk each behind the ratio
        # (not while a learner waits for its replay memory to fill: that needs acting)
        num_learners = sum(n.startswith("learner") for n in self._workers)
        lag = (int(c.updates_per_step * (self.num_timesteps - c.learning_starts)) - self.num_updates
               if learning and c.updates_per_step > 0 else 0)
        actors_wait = num_learners > 0 and not self._waiting and lag > c.updates_per_call * num_learners

        for name, h in self._workers.items():
            if name in busy:
                continue
            if name.startswith("learner"):
                if not learning or name in self._waiting:
                    continue
                k = min(c.updates_per_call, allowed_updates())
                if k <= 0:
                    continue
                self._pending[h.learn.remote(k)] = (name, 0, k)
                updates_fl += k
                continue
            if remaining <= 0 or (actors_wait and name.startswith("actor")):
                continue
            t = min(c.num_steps, math.ceil(remaining / c.num_envs))
            steps = t * c.num_envs
            remaining -= steps
            if name.startswith("actor"):
                self._pending[h.act.remote(t, self.num_timesteps)] = (name, steps, 0)
                continue
            # bundle: the updates that keep the ratio once this chunk's steps are taken
            committed = self.total_steps - remaining
            if c.updates_per_step <= 0:
                k = c.updates_per_call if committed > c.learning_starts else 0
            else:
                k = max(0, int(c.updates_per_step * (committed - c.learning_starts))
                        - self.num_updates - updates_fl)
            updates_fl += k
            self._pending[h.run.remote(t, k, self.num_timesteps)] = (name, steps, k)

    def _event(self, text: str) -> None:
        self.events.append(text)
        if self.console:
            tqdm.write(f"[gorila] {text}")  # above the progress bar, not through it
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with (self.out_dir / "events.log").open("a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} real_steps={self.num_timesteps} {text}\n")

    def _handle(self, ref: Any) -> int:
        """Fold one finished chunk into the counters; returns the env steps it added."""
        ray = self._ray
        name, steps, _ = self._pending.pop(ref)
        try:
            res = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self._event(f"{name} died and will not be restarted (max_restarts={self.config.max_restarts}"
                        f" used up): {first[:200]}; continuing without it")
            self._workers.pop(name, None)
            return 0
        except ray.exceptions.RayTaskError as exc:
            first = str(exc).strip().splitlines()[-1]
            raise TrainingError(f"{name} failed: {first[:300]}") from None
        old = self._pids.get(name)
        if old is not None and res["pid"] != old:
            lost = "; its local replay memory starts empty" if not name.startswith("learner") \
                and (self.config.replay == "local" or name.startswith("bundle")) else ""
            self._event(f"{name} was restarted by Ray (pid {old} -> {res['pid']}){lost}")
        self._pids[name] = res["pid"]
        acc = self._acc
        learn = res if name.startswith("learner") else res.get("learn")
        if steps:
            self.num_timesteps += res["steps"]
            acc["steps"] += res["steps"]
            self._recent_returns = (self._recent_returns + list(res["episode_returns"]))[-20:]
            acc["lengths"] += list(res["episode_lengths"])
            acc["epsilon"] = res["epsilon"]
            self._waiting.clear()  # replay has grown: waiting learners may try again
        if learn is not None:
            if not learn.get("ready", True):
                self._waiting.add(name)
            for k in ("updates", "pushed", "applied", "dropped_stale", "dropped_outlier",
                      "loss_sum", "q_sum"):
                acc[k] += learn.get(k, 0)
            self.num_updates += learn.get("updates", 0)
            self.num_dropped_outlier += learn.get("dropped_outlier", 0)
            self.num_dropped_stale += learn.get("dropped_stale", 0)
        return res.get("steps", 0) if steps else 0

    def _wait_one(self) -> int:
        ray = self._ray
        if not self._pending:
            raise TrainingError("no Ray process can take work any more (all actors died or the "
                                "budget cannot be reached); see events.log")
        done, _ = ray.wait(list(self._pending), num_returns=1, timeout=self.config.worker_timeout_s)
        if not done:
            names = sorted(self._busy())
            raise TrainingError(f"no chunk of work finished within worker_timeout_s="
                                f"{self.config.worker_timeout_s}s (busy: {', '.join(names)})")
        return sum(self._handle(ref) for ref in done)

    def _drain(self) -> None:
        """At the end of the budget: let learners finish the updates the ratio owes for the
        steps taken (with a ratio), then wait for everything in flight."""
        catch_up = self.config.updates_per_step > 0  # else learners would never stop
        if catch_up:
            self._submit()
        while self._pending:
            self._wait_one()
            if catch_up:
                self._submit()

    def _check_servers(self) -> dict[str, Any]:
        stats = self._ray.get([s.stats.remote() for s in self._servers])
        for i, st in enumerate(stats):
            if st["pid"] != self._server_pids[i]:
                how = (f"restored from {st['restored_from']}" if st["restored_from"]
                       else "restarted from the run's initial parameters (no checkpoint yet)")
                self._event(f"parameter server shard {i} was restarted by Ray and {how}; "
                            f"version now {st['version']}")
                self._server_pids[i] = st["pid"]
        return {"version": stats[0]["version"], "applied": sum(s["num_applied"] for s in stats),
                "dropped_stale": sum(s["num_dropped_stale"] for s in stats)}

    def _iterate(self, bar) -> None:
        c = self.config
        t0 = time.perf_counter()
        start_steps, start_updates = self.num_timesteps, self.num_updates
        boundary = min(self.total_steps, (self.num_timesteps // c.log_every + 1) * c.log_every)
        while self.num_timesteps < boundary:
            self._submit()
            bar.update(self._wait_one())
        if self.num_timesteps >= self.total_steps:
            self._drain()
        elapsed = time.perf_counter() - t0
        self.iteration += 1
        self.wall_time += elapsed
        server = self._check_servers()
        acc, self._acc = self._acc, self._fresh_acc()
        log = self.logger
        log.record("iteration", self.iteration)
        log.record("real_steps", self.num_timesteps)
        if self._recent_returns:
            log.record("train/episode_return", float(np.mean(self._recent_returns)))
        if acc["lengths"]:
            log.record("train/episode_length", float(np.mean(acc["lengths"])))
        eps = acc["epsilon"] if acc["epsilon"] is not None else linear_epsilon(
            self.num_timesteps, c.epsilon_start, c.epsilon_end, c.epsilon_decay_steps)
        log.record("train/epsilon", eps)
        log.record("learner/updates", self.num_updates)
        if acc["updates"]:
            log.record("learner/loss", acc["loss_sum"] / acc["updates"])
            log.record("learner/q_mean", acc["q_sum"] / acc["updates"])
        log.record("learner/dropped_outlier_total", self.num_dropped_outlier)
        log.record("learner/dropped_stale_total", self.num_dropped_stale)
        log.record("server/version", server["version"])
        log.record("server/applied_total", server["applied"])
        log.record("server/dropped_stale_total", server["dropped_stale"])
        log.record("events/count", len(self.events))
        log.record("time/sps", (self.num_timesteps - start_steps) / max(elapsed, 1e-9))
        log.record("learner/updates_per_s", (self.num_updates - start_updates) / max(elapsed, 1e-9))
        self.end_iteration()

    # ----- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        ray = self._ray
        if self.running:
            self._server_states = ray.get([s.state_dict.remote() for s in self._servers])
            if self.config.checkpoint_replay:
                holders = ([self._replay_actor] if self._replay_actor is not None else
                           [h for n, h in self._workers.items() if not n.startswith("learner")])
                self._replay_states = ray.get([h.state_dict.remote() if h is self._replay_actor
                                               else h.replay_state.remote() for h in holders])
        self._sync_local()
        state = {
            "algo": self.algo_name,
            "config": self.config.to_dict(),
            "q_network": self.q_net.state_dict(),
            "servers": self._server_states,
            "generator": self.generator.get_state(),
            "counters": {**self.counters(), "num_updates": self.num_updates,
                         "num_dropped_outlier": self.num_dropped_outlier,
                         "num_dropped_stale": self.num_dropped_stale},
        }
        if self.config.checkpoint_replay:
            state["replay"] = [s for s in self._replay_states if s is not None]
        return state

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        if self.running:
            raise CheckpointError("load a checkpoint into a Gorila that has not started training")
        try:
            servers = list(state["servers"])
            if len(servers) != self.config.num_param_shards:
                raise ValueError(f"{len(servers)} server shards, config has {self.config.num_param_shards}")
            total = sum(int(s["params"].numel()) for s in servers)
            if total != self.num_params:
                raise ValueError(f"{total} parameters, this Q-network has {self.num_params}")
            for s in servers:  # validates every field
                ParameterServer.check_state(s)
            self.q_net.load_state_dict(state["q_network"])
            self.generator.set_state(state["generator"])
            cnt = state["counters"]
            replay = list(state.get("replay", []))
            for r in replay:
                ReplayMemory(self.obs_dim, len(self.spec.action_nvec), self.config.replay_capacity, 0, r)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{source} does not match this {self.algo_name} setup: {first}") from None
        self._server_states = servers
        self._replay_states = replay
        self.restore_counters(cnt)
        self.num_updates = int(cnt.get("num_updates", 0))
        self.num_dropped_outlier = int(cnt.get("num_dropped_outlier", 0))
        self.num_dropped_stale = int(cnt.get("num_dropped_stale", 0))
        self._sync_local()

    def close(self) -> None:
        """Stop the Ray processes (and Ray itself when :meth:`learn` started it)."""
        self._stop()
        super().close()
