"""Gorila: distributed DQN with a parameter server (Nair et al. 2015, arXiv 1507.04296) on Ray.

Processes (Ray actors; the classes are plain Python objects in
:mod:`~mbmpo.baselines.gorila.server`, :mod:`~mbmpo.baselines.gorila.replay` and
:mod:`~mbmpo.baselines.gorila.workers`, with the update rules in
:mod:`~mbmpo.baselines.gorila.dqn`):

* ``num_param_shards`` parameter-server shards holding the Q-network parameters; each
  applies gradients asynchronously with AdaGrad and drops gradients computed on parameters
  more than ``max_staleness`` versions old;
* ``num_actors`` acting processes (ε-greedy, parameters synced every ``sync_every`` steps)
  writing to their local replay memory or to one global replay actor (``replay``);
* ``num_learners`` learners (DQN or double-DQN gradients against a target network
  refreshed every ``target_update_every`` server updates; gradients whose loss exceeds
  the running mean + ``loss_outlier_k`` std are dropped);
* or, with ``mode="bundled"``, ``num_actors`` bundles of actor + local replay + learner.

The driver (:class:`Gorila`, :mod:`~mbmpo.baselines.gorila.driver`) hands out chunks of
work (``num_steps`` acting steps, ``updates_per_call`` updates), keeps the real-step budget
and the learner-update ratio ``updates_per_step``, logs, evaluates and checkpoints. Ray
restarts a crashed actor, learner or bundle (``max_restarts``) and re-runs its chunk; a
restarted server shard reloads its state from the run's last checkpoint. The driver logs
every restart it sees.

Ray is an optional dependency and is imported only when training starts
(:mod:`~mbmpo.baselines.gorila.ray_support`), so ``import mbmpo`` never imports it; loading a
checkpoint to evaluate or predict needs no Ray. Settings: :class:`GorilaConfig`
(:mod:`~mbmpo.baselines.gorila.config`).
"""

from mbmpo.baselines.gorila.config import MODES, REPLAYS, GorilaConfig
from mbmpo.baselines.gorila.dqn import (
    LossFilter,
    adagrad_update,
    dqn_loss,
    is_loss_outlier,
    is_stale,
    linear_epsilon,
    td_targets,
)
from mbmpo.baselines.gorila.driver import CONSOLE_KEYS, Gorila
from mbmpo.baselines.gorila.ray_support import RAY_INSTALL_HINT, init_ray, require_ray
from mbmpo.baselines.gorila.replay import RemoteReplay, ReplayMemory
from mbmpo.baselines.gorila.server import (
    ParamClient,
    ParameterServer,
    initial_server_states,
    shard_sizes,
)
from mbmpo.baselines.gorila.workers import ActorCore, BundleCore, LearnerCore, WorkerSpec

__all__ = [
    "CONSOLE_KEYS", "MODES", "RAY_INSTALL_HINT", "REPLAYS", "ActorCore", "BundleCore", "Gorila",
    "GorilaConfig", "LearnerCore", "LossFilter", "ParamClient", "ParameterServer", "RemoteReplay",
    "ReplayMemory", "WorkerSpec", "adagrad_update", "dqn_loss", "init_ray", "initial_server_states",
    "is_loss_outlier", "is_stale", "linear_epsilon", "require_ray", "shard_sizes", "td_targets",
]
