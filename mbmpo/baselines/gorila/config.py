"""Settings of Gorila (:class:`GorilaConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from mbmpo.config import BaseConfig, _in_range, _positive
from mbmpo.errors import ConfigError
from mbmpo.wrappers import FACTORIZATIONS

MODES = ("distributed", "bundled")
REPLAYS = ("local", "global")


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
