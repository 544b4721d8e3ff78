"""Gorila: distributed DQN with a parameter server (Nair et al. 2015, arXiv 1507.04296) on Ray.

Processes (Ray actors; the classes live in :mod:`mbmpo.baselines.gorila_core`):

* ``num_param_shards`` parameter-server shards holding the Q-network parameters; each
  applies gradients asynchronously with AdaGrad and drops gradients computed on parameters
  more than ``max_staleness`` versions old;
* ``num_actors`` acting processes (ε-greedy, parameters synced every ``sync_every`` steps)
  writing to their local replay memory or to one global replay actor (``replay``);
* ``num_learners`` learners (DQN or double-DQN gradients against a target network
  refreshed every ``target_update_every`` server updates; gradients whose loss exceeds
  the running mean + ``loss_outlier_k`` std are dropped);
* or, with ``mode="bundled"``, ``num_actors`` bundles of actor + local replay + learner.

The driver (this module's :class:`Gorila`) hands out chunks of work (``num_steps`` acting
steps, ``updates_per_call`` updates), keeps the real-step budget and the learner-update
ratio ``updates_per_step``, logs, evaluates and checkpoints. Ray restarts a crashed actor,
learner or bundle (``max_restarts``) and re-runs its chunk; a restarted server shard reloads
its state from the run's last checkpoint. The driver logs every restart it sees.

Ray is an optional dependency and is imported only when training starts, so ``import
mbmpo`` never imports it; loading a checkpoint to evaluate or predict needs no Ray.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from tqdm.auto import tqdm

from mbmpo.baselines.gorila_core import (
    ActorCore,
    BundleCore,
    ByRef,
    LearnerCore,
    ParamClient,
    ParameterServer,
    RemoteReplay,
    ReplayMemory,
    WorkerSpec,
    initial_server_states,
    linear_epsilon,
    shard_sizes,
)
from mbmpo.checkpoint import save_checkpoint
from mbmpo.config import BaseConfig, _in_range, _positive
from mbmpo.envs import (
    FACTORIZATIONS,
    GymVecEnv,
    bin_values,
    bins_to_actions,
    check_spaces,
    discretize_wrapper,
    evaluate_episodes,
    expand_bins,
    make_env_fn,
)
from mbmpo.errors import CheckpointError, ConfigError, TrainingError
from mbmpo.normalization import RunningMeanStd
from mbmpo.on_policy import resolve_device
from mbmpo.runner import (
    counters,
    end_iteration,
    eval_env,
    eval_seed,
    load_algorithm,
    record_evaluation,
    restore_counters,
    run_training,
)
from policies.q_network import action_nvec, epsilon_greedy

CONSOLE_KEYS = ["iteration", "real_steps", "train/episode_return", "eval_return_mean", "time/sps",
                "learner/updates_per_s"]
MODES = ("distributed", "bundled")
REPLAYS = ("local", "global")
RAY_INSTALL_HINT = "pip install -e '.[ray]' (or: pip install 'ray>=2.9')"


@dataclass
class GorilaConfig(BaseConfig):
    """Gorila settings. Inherited fields used: env_id, seed, total_steps, num_envs (env copies
    per acting process), num_steps (acting steps per chunk), vectorization, env_kwargs, gamma,
    hidden_sizes, activation, ortho_init, normalize_obs, clip_obs, eval_*, checkpoint_every;
    gae_lambda, value_hidden_sizes and init_log_std are ignored."""

    num_steps: int = 100
    """Vector steps an acting process takes per chunk of work handed out by the driver."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Q-network MLP hidden layer sizes."""
    activation: str = "relu"
    """Q-network hidden activation."""
    ortho_init: bool = False
    """Orthogonal initialization of the Q-network (PyTorch's default init when False)."""
    normalize_obs: bool = False
    """Normalize observations with running statistics merged on the parameter server."""
    normalize_reward: bool = False
    """Not supported by Gorila (must stay False)."""
    num_actors: int = 2
    """Acting processes (bundles in bundled mode)."""
    num_learners: int = 1
    """Learner processes (must equal num_actors in bundled mode)."""
    num_param_shards: int = 1
    """Parameter-server shards the flat parameter vector is split over."""
    mode: str = "distributed"
    """'distributed' (separate actor and learner processes) or 'bundled' (actor + local replay
    + learner in one process, the paper's bundled mode)."""
    replay: str = "local"
    """'local': a replay memory inside each acting process, learner j samples actor j mod N's;
    'global': one replay actor shared by all actors and learners."""
    replay_capacity: int = 100_000
    """Transitions per replay memory (each local one, or the global one)."""
    batch_size: int = 64
    """Transitions per gradient."""
    learning_starts: int = 1000
    """Real steps taken before learners start."""
    updates_per_step: float = 0.25
    """Learner updates (over all learners) per real env step after learning_starts, e.g. DQN's
    1 update per 4 steps = 0.25. Held both ways: learners never get ahead of it and acting
    pauses while learners lag more than updates_per_call each behind it, so sample
    efficiency does not depend on process speeds. 0: no coupling, every process runs flat
    out as in the paper (the learning per env step then depends on the machine)."""
    updates_per_call: int = 50
    """Updates a learner makes per chunk of work (one replay round trip per chunk)."""
    learning_rate: float = 0.01
    """AdaGrad step size on the parameter server."""
    adagrad_eps: float = 1e-10
    """AdaGrad epsilon."""
    initial_accumulator: float = 0.0
    """Initial AdaGrad accumulator (torch default 0; TensorFlow uses 0.1)."""
    max_staleness: int = 10
    """Drop gradients computed on parameters more than this many server updates old."""
    loss_outlier_k: float = 3.0
    """Drop a gradient whose |loss| exceeds the learner's running mean + k std (<= 0 disables)."""
    outlier_warmup: int = 100
    """Losses a learner sees before the outlier rule applies."""
    double_q: bool = True
    """Double-DQN targets (the online network picks the next action); plain DQN when False."""
    target_update_every: int = 500
    """Server updates between target-network refreshes (a global count, as in the paper)."""
    max_grad_norm: float = 10.0
    """Clip each gradient's norm before it is pushed (<= 0 disables)."""
    sync_every: int = 50
    """Acting steps between parameter syncs of an acting process."""
    epsilon_start: float = 1.0
    """Initial exploration rate."""
    epsilon_end: float = 0.05
    """Final exploration rate (also used for stochastic evaluation)."""
    epsilon_decay_steps: int = 10_000
    """Real steps over which epsilon is annealed linearly."""
    action_bins: tuple[int, ...] = (11,)
    """Box action spaces only: bins per joint (one value for all joints, or one per joint);
    bin 0 is the lower, the last the upper action bound."""
    action_factorization: str = "factorized"
    """Box action spaces only: 'factorized' (one Q-head per joint, MultiDiscrete) or 'joint'
    (one Q-value per combination of joint bins)."""
    log_every: int = 5000
    """Real steps between rows of progress.csv (one 'iteration' of the driver)."""
    checkpoint_replay: bool = False
    """Also store the replay memories in checkpoints (resume without refilling them)."""
    max_restarts: int = 3
    """Ray restarts per actor, learner or bundle after a crash (-1: unlimited)."""
    cpus_per_worker: float = 0.0
    """Logical CPUs Ray reserves per process (0 packs all onto one machine; use 1 on a
    cluster so Ray spreads them)."""
    ray_num_cpus: int = 0
    """CPUs of a local Ray instance (0: all cores); ignored when RAY_ADDRESS joins a cluster."""
    worker_threads: int = 1
    """torch threads in each Ray process."""
    worker_timeout_s: float = 600.0
    """Abort when no chunk of work finishes for this long."""

    def validate(self) -> None:
        super().validate()
        _positive(self, "num_actors", "num_learners", "num_param_shards", "replay_capacity",
                  "batch_size", "updates_per_call", "learning_rate", "adagrad_eps", "sync_every",
                  "target_update_every", "log_every", "worker_threads", "worker_timeout_s")
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is not allowed; use one of {list(MODES)}")
        if self.replay not in REPLAYS:
            raise ConfigError(f"replay {self.replay!r} is not allowed; use one of {list(REPLAYS)}")
        if self.mode == "bundled" and self.replay == "global":
            raise ConfigError("replay 'global' cannot be combined with mode 'bundled' (a bundle "
                              "holds its own local replay memory)")
        if self.mode == "bundled" and self.num_learners != self.num_actors:
            raise ConfigError(f"mode 'bundled' runs one learner per actor: num_learners must equal "
                              f"num_actors, got {self.num_learners} and {self.num_actors}")
        if self.normalize_reward:
            raise ConfigError("normalize_reward is not supported by gorila; set it to false")
        if self.action_factorization not in FACTORIZATIONS:
            raise ConfigError(f"action_factorization {self.action_factorization!r} is not allowed; "
                              f"use one of {list(FACTORIZATIONS)}")
        if not self.action_bins or any(int(b) < 2 for b in self.action_bins):
            raise ConfigError(f"action_bins must hold counts >= 2, got {list(self.action_bins)}")
        for name in ("learning_starts", "max_staleness", "outlier_warmup", "epsilon_decay_steps",
                     "initial_accumulator", "updates_per_step", "cpus_per_worker", "ray_num_cpus"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_restarts < -1:
            raise ConfigError(f"max_restarts must be >= -1, got {self.max_restarts}")
        _in_range(self, "epsilon_start", 0.0, 1.0)
        _in_range(self, "epsilon_end", 0.0, 1.0)
        if self.device not in ("cpu", "auto"):
            raise ConfigError(f"device {self.device!r} is not supported by gorila: its processes "
                              "run on the CPU; use 'cpu'")


# ----- Ray -------------------------------------------------------------------------------------

def require_ray() -> Any:
    """Import Ray with loopback-safe settings; a missing install is a one-line ConfigError."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError(f"gorila needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


def init_ray(num_cpus: int = 0) -> bool:
    """Start a local Ray instance bound to 127.0.0.1 without a dashboard, or join the cluster
    named by ``RAY_ADDRESS``. Returns True when this call started Ray (the caller shuts it
    down), False when Ray was already initialized."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    root = str(Path(__file__).resolve().parents[2])
    # the worker processes must import this checkout of mbmpo, installed or not
    path = os.environ.get("PYTHONPATH", "")
    if root not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join([root, path]) if path else root
    if os.environ.get("RAY_ADDRESS"):
        ray.init(include_dashboard=False, logging_level="warning")
        return True
    # Ray starts its workers at niceness 15; next to other jobs (e.g. a second training run
    # on the same cores) the actors and learners then get a few percent of a core and a run
    # crawls (measured: 24 env steps/s instead of 420). Workers run at normal priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    with _local_http_only():
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 _node_ip_address="127.0.0.1", logging_level="warning")
    return True


@contextlib.contextmanager
def _local_http_only():
    """Environment for the Ray daemons started inside: HTTP(S) through a closed loopback port.

    Even with usage stats disabled and no dashboard, Ray 2.x starts a dashboard process whose
    usage-stats module probes cloud metadata endpoints (169.254.169.254,
    metadata.google.internal) at startup (measured here with strace). With this proxy those
    requests fail on 127.0.0.1 and no packet leaves the machine; loopback traffic between
    Ray's own processes is exempt (NO_PROXY). The caller's environment is restored afterwards.
    """
    proxy = "http://127.0.0.1:9"  # discard port: nothing listens, requests fail at once
    local = "127.0.0.1,localhost,::1"
    keys = {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
            "NO_PROXY": local, "no_proxy": local}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ----- the driver ------------------------------------------------------------------------------

class Gorila:
    """Distributed DQN on Ray (see the module docstring).

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

    def __init__(self, config: GorilaConfig, out_dir: str | Path | None = None, console: bool = True):
        if not isinstance(config, GorilaConfig):
            raise ConfigError(f"Gorila needs a GorilaConfig, got {type(config).__name__}")
        config.validate()
        c = self.config = config
        self.device = resolve_device("cpu")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.console = console
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
        self.num_timesteps = 0
        self.iteration = 0
        self.wall_time = 0.0
        self.num_updates = 0
        self.num_dropped_outlier = 0
        self._last_eval_step = 0
        self._eval_env: GymVecEnv | None = None
        self._recent_returns: list[float] = []
        self.logger = None
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
        env = eval_env(self, num_episodes, env_kwargs=self.config.env_kwargs, wrapper=self.wrapper)
        # raw observations: _act_indices normalizes them itself
        return evaluate_episodes(env, lambda o: self._env_action(self._act_indices(o, deterministic)),
                                 seed=eval_seed(self))

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
            bundle_cls = ray.remote(BundleCore)
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
            actor_cls = ray.remote(ActorCore)
            learner_cls = ray.remote(LearnerCore)
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
        run_training(self, total_steps, CONSOLE_KEYS)
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
        log.record("server/version", server["version"])
        log.record("server/applied_total", server["applied"])
        log.record("server/dropped_stale_total", server["dropped_stale"])
        log.record("events/count", len(self.events))
        log.record("time/sps", (self.num_timesteps - start_steps) / max(elapsed, 1e-9))
        log.record("learner/updates_per_s", (self.num_updates - start_updates) / max(elapsed, 1e-9))
        end_iteration(self, lambda: record_evaluation(log, *self.evaluate(c.eval_episodes,
                                                                        c.eval_deterministic)))

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
            "counters": {**counters(self), "num_updates": self.num_updates,
                         "num_dropped_outlier": self.num_dropped_outlier},
        }
        if self.config.checkpoint_replay:
            state["replay"] = [s for s in self._replay_states if s is not None]
        return state

    def save(self, path: str | Path) -> None:
        """Save parameters, AdaGrad state, server versions, counters (and replay memories
        with ``checkpoint_replay``) to resume or evaluate."""
        save_checkpoint(path, self.state_dict())

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
        restore_counters(self, cnt)
        self.num_updates = int(cnt.get("num_updates", 0))
        self.num_dropped_outlier = int(cnt.get("num_dropped_outlier", 0))
        self._sync_local()

    @classmethod
    def load(cls, path: str | Path, out_dir: str | Path | None = None, console: bool = True,
             **overrides: Any) -> Gorila:
        """Rebuild from a checkpoint (file or run directory) to resume, evaluate or predict
        (the latter two need no Ray)."""
        return load_algorithm(cls, path, out_dir, console, overrides)

    def close(self) -> None:
        """Stop the Ray processes (and Ray itself when :meth:`learn` started it)."""
        self._stop()
        if self._eval_env is not None:
            self._eval_env.close()
            self._eval_env = None
        if self.logger is not None:
            self.logger.close()
