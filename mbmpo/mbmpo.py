"""MB-MPO: model-based meta-policy optimization (Clavera, Rothfuss et al., CoRL 2018).

One iteration (Algorithm 1 of the paper; DESIGN.md "Data flow")::

    real env --collect(adapted policies theta'_k; random actions first)--> dataset (FIFO)
    dataset --> fit K dynamics models (per-model early stopping)
    repeat num_meta_steps:
        imagined MDPs (task t uses model t // tasks_per_model for its whole rollout)
        pre-update rollouts with theta -> advantages (linear feature baseline, GAE)
        theta'_t = theta + alpha * grad J_t(theta)          (differentiable VPG step)
        post-update rollouts with theta'_t -> advantages
        outer step on the mean post-update surrogate: TRPO (KL <= delta on the
        post-update policies, CG through the inner step) or PPO-style clipping
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from dynamics.ensemble import UNCERTAINTIES, DynamicsEnsemble
from dynamics.model_env import ImaginedEnv, tasks_model_idx
from dynamics.reward_fns import REWARD_FNS, RewardFn, get_reward_fn
from dynamics.trainer import FitConfig, fit_ensemble
from mbmpo.buffers import Rollout, TransitionDataset
from mbmpo.checkpoint import save_checkpoint
from mbmpo.config import BaseConfig, _positive
from mbmpo.envs import GymVecEnv, check_spaces, evaluate_episodes
from mbmpo.errors import CheckpointError, ConfigError
from mbmpo.hazard import fit_hazard, hazard_cost
from mbmpo.kl_penalty import ppo_adapt_kl_coef
from mbmpo.logger import Logger
from mbmpo.meta import (
    adapt_tasks,
    forward_per_row,
    forward_per_task,
    likelihood_ratio_objective,
    policy_params,
)
from mbmpo.normalization import RunningMeanStd
from mbmpo.on_policy import resolve_device
from mbmpo.returns import discount_cumsum, fall_ahead, gae, reward_drop
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
from mbmpo.sampler import collect
from mbmpo.td_value import fit_td_value, half_mse, terminal_values
from mbmpo.trpo import trpo_step
from policies import GaussianMLPPolicy, LinearFeatureBaseline, MLPValue
from policies.value import minibatch_pass

CONSOLE_KEYS = ["iteration", "real_steps", "eval_return_mean", "imagined/pre_return",
                "imagined/post_return", "model/val_loss_mean", "time/iteration_s"]


@dataclass
class MBMPOConfig(BaseConfig):
    """MB-MPO settings. Paper values (original TensorFlow scripts) are noted where ours differ."""

    hidden_sizes: tuple[int, ...] = (32, 32)
    """Policy MLP hidden sizes (paper: 32, 32)."""
    num_envs: int = 4
    """Real env copies; copy i collects with the adapted policy of task i % meta_batch_size."""
    num_steps: int = 1000
    """Real steps per env copy per iteration (paper: 20 x 200 = 4000 real steps per iteration)."""
    normalize_obs: bool = False
    """Normalize policy inputs with the real data set's statistics (refreshed every iteration)."""
    normalize_reward: bool = False
    """Not supported by MB-MPO (imagined rewards come from the reward function)."""
    gae_lambda: float = 1.0
    """GAE lambda (paper: 1)."""
    warmup_steps: int = 5000
    """Random-action real steps collected before the first model fit."""
    collect_with: str = "adapted"
    """Policy that collects real data: 'adapted' (theta'_k, tailored exploration) or 'pre_update'."""
    dataset_capacity: int = 100_000
    """FIFO capacity of the real transition data set."""
    num_models: int = 5
    """Ensemble size K."""
    model_hidden_sizes: tuple[int, ...] = (512, 512)
    """Hidden sizes of every dynamics model."""
    model_activation: str = "relu"
    """Activation of the dynamics models."""
    model_weight_norm: bool = False
    """Weight normalization in the dynamics models."""
    model_type: str = "deterministic"
    """'deterministic' (the paper: each model predicts the state change, fitted by squared
    error) or 'probabilistic' (PETS: each model predicts a diagonal Gaussian over it, fitted
    by its negative log-likelihood)."""
    model_sample: bool = True
    """Probabilistic models: imagined steps draw the next state from the predicted Gaussian
    (false: its mean)."""
    model_penalty: float = 0.0
    """Weight lambda of the uncertainty penalty on imagined rewards, ``r - lambda * u(s, a)``
    (MOPO, Yu et al. 2020): the policy gains nothing from states and actions where the models
    are unreliable. ``u`` is in normalized state-change units (about 0.1 on HalfCheetah's
    visited states at 200k real steps, disagreement; BENCHMARKS.md 7.18). 0 = off; the
    HalfCheetah preset's 5.0 raised the median at 100k from 3634 to 4049 (7.18)."""
    model_uncertainty: str = "disagreement"
    """The penalty's ``u``: 'disagreement' (the spread of the K models' mean predictions) or
    'aleatoric' (the largest predicted std of the K models, MOPO's; probabilistic models)."""
    learned_reward: bool = False
    """Learn a reward head (for envs without an exact reward function)."""
    model_learning_rate: float = 1e-3
    """Adam learning rate of the models."""
    model_batch_size: int = 500
    """Model minibatch size."""
    model_max_epochs: int = 500
    """Upper bound on model epochs per fit."""
    model_val_fraction: float = 0.2
    """Per-model validation split."""
    model_split: str = "resample"
    """'resample': each fit draws a new random split per model, so warm-started models are
    validated on rows earlier fits trained on; 'persistent': every real transition is
    assigned to each model's train or validation set once, when collected (as the original
    code keeps its data sets), so validation rows are never trained on."""
    model_bootstrap: bool = False
    """Bootstrap-resample each model's training split."""
    model_early_stop_ema: float = 0.99
    """Persistence of the smoothed validation loss for per-model early stopping."""
    model_early_stopping: bool = True
    """False: every fit trains each model model_max_epochs epochs and keeps its last weights."""
    meta_batch_size: int = 20
    """Tasks per meta-step (must be divisible by num_models; paper: 20)."""
    rollouts_per_task: int = 50
    """Imagined trajectories per task (paper: 50)."""
    imagined_horizon: int = 200
    """Imagined trajectory length (paper: 200)."""
    imagined_init: str = "reset"
    """Imagined start states: 'reset' (real initial states) or 'dataset' (real visited states)."""
    focus_fraction: float = 0.0
    """'dataset' starts: this fraction of each batch of imagined start states is drawn from the
    real states around the largest falls of the real reward (the top ``focus_quantile`` of rows
    by :func:`mbmpo.returns.reward_drop` over ``focus_window`` steps; rows without a fall are
    never picked), the rest uniformly. Aimed at stumbles the models foresee only a few steps
    ahead, which uniform starts rarely reach (BENCHMARKS.md 7.19, 7.21). 0 = uniform."""
    focus_window: int = 25
    """Real steps on each side of a step for ``reward_drop``."""
    focus_quantile: float = 0.01
    """Share of the dataset's rows, by largest reward drop, that focused starts are drawn from."""
    terminal_value: str = "off"
    """Bootstrap every imagined rollout that reaches the horizon: its last reward gains
    ``gamma V(s_H)``, with V an MLP (``value_hidden_sizes``) fitted by TD(0) (:mod:`mbmpo.td_value`;
    model-based value expansion). 'real': on the real dataset after every model fit (the value
    of the policies that collected it); 'imagined': on each meta-step's pre-update imagined
    transitions (the value of theta in the models, penalty included). Without it ('off'), what
    follows the horizon counts 0, so a lasting failure within it costs at most H steps of
    reward (BENCHMARKS.md 7.21)."""
    terminal_value_epochs: int = 5
    """TD(0) rounds (one Bellman backup and one pass over the data each) per fit."""
    fall_penalty: float = 0.0
    """c of a fall-hazard cost on imagined rewards, ``r - c p(s')`` (0 = off): ``p`` is a classifier
    (:mod:`mbmpo.hazard`, an MLP of ``value_hidden_sizes``) of whether a fall of the real reward
    starts within the next ``fall_horizon`` real steps, fitted on the real dataset after every model
    fit. The models miss how often the gait falls (BENCHMARKS.md 7.21); the classifier learns it from
    the real episodes. About (value lost in a fall) / ``fall_horizon`` makes the cost the expected
    loss per step."""
    fall_horizon: int = 50
    """N: real steps ahead that a fall counts for the hazard label."""
    fall_window: int = 100
    """W of :func:`mbmpo.returns.fall_ahead`: a fall starts where the mean reward over the next W
    steps is at least ``fall_min_drop`` below the mean over the W steps before. A long window
    counts lasting falls, not stumbles that recover: on the last 100k real rows of the two 200k
    runs of BENCHMARKS.md 7.22, W = 100 labels 5.7% of rows of the steady seed and 14.8% of the
    collapsing one; W = 25 labels 11.4% and 9.2%."""
    fall_min_drop: float = 2.0
    """Reward drop per step that counts as a fall (HalfCheetah runs at 4-6 per step and a collapsed
    cheetah earns about 0)."""
    fall_epochs: int = 3
    """Passes over the real dataset per fit of the hazard classifier."""
    imagined_clip_obs: float = 1000.0
    """Predicted observations are clipped to +-this."""
    num_meta_steps: int = 30
    """Meta-steps (outer updates) per iteration (paper: 30)."""
    inner_lr: float = 0.001
    """Inner VPG step size alpha (paper: 0.001)."""
    learn_inner_lr: bool = False
    """Learn a per-parameter inner step size (Meta-SGD) in the outer step."""
    num_inner_steps: int = 1
    """Inner adaptation steps."""
    first_order: bool = False
    """Drop second-order terms of the meta-gradient."""
    outer: str = "trpo"
    """Outer step: 'trpo' (paper) or 'ppo' (clipped surrogate, ProMP lineage)."""
    max_kl: float = 0.01
    """TRPO outer step: mean KL bound on the post-update policies (paper: 0.01)."""
    cg_iters: int = 10
    """TRPO conjugate-gradient iterations."""
    cg_damping: float = 1e-5
    """TRPO Fisher damping (rllab default 1e-5)."""
    backtrack_coeff: float = 0.8
    """TRPO line-search shrink factor."""
    max_backtracks: int = 15
    """TRPO line-search attempts."""
    fvp_subsample: float = 0.2
    """Fraction of each task's samples used for the Fisher-vector products (1.0 = all)."""
    outer_learning_rate: float = 1e-3
    """PPO outer step: Adam learning rate."""
    outer_epochs: int = 5
    """PPO outer step: epochs per meta-step (adapted policies recomputed every epoch)."""
    outer_clip: float = 0.3
    """PPO outer step: clipping epsilon."""
    inner_kl_coef: float = 0.0
    """PPO outer step: initial weight eta of the KL penalty on the inner step (ProMP):
    ``- eta * KL(pi_theta_old || pi_theta)`` on the pre-update samples keeps the pre-update
    policy, the inner step's starting point, near the one that collected them. 0 = off."""
    inner_kl_target: float = 0.01
    """Target of that KL; eta is halved below target / 1.5 and doubled above target * 1.5
    after every meta-step (ProMP, the PPO paper's rule)."""
    adaptive_inner_kl: bool = True
    """Adapt eta as above (otherwise it stays at ``inner_kl_coef``)."""
    normalize_adv: bool = True
    """Normalize advantages per task."""
    baseline: str = "linear"
    """Value baseline of the imagined returns: 'linear' (per-task linear feature baseline, the
    paper's) or 'mlp' (one MLP value function on features and time, refit every batch)."""
    baseline_epochs: int = 5
    """'mlp' baseline: Adam epochs per batch (minibatches of 1024)."""
    min_std: float = 0.0
    """Floor under the policy std, per action dimension (0 = none; rllab's ``min_std``). Without
    one the outer step shrinks the std of theta from 0.61 to under 0.1 within 50k real steps
    on HalfCheetah (BENCHMARKS.md 7.7); floors of 0.2 and 0.35 did not raise the return
    there (7.8)."""
    eval_every: int = 8000
    """Evaluate every this many real steps (the final iteration always evaluates)."""
    eval_adapted: bool = True
    """Also evaluate the adapted policies (logged as eval_adapted_return_mean)."""
    checkpoint_every: int = 1
    """Save a checkpoint every this many iterations."""

    def validate(self) -> None:
        super().validate()
        _positive(self, "num_models", "meta_batch_size", "rollouts_per_task", "imagined_horizon",
                  "num_meta_steps", "num_inner_steps", "model_batch_size", "model_max_epochs",
                  "dataset_capacity", "max_kl", "cg_iters", "max_backtracks", "outer_epochs",
                  "terminal_value_epochs", "fall_horizon", "fall_window", "fall_epochs")
        if self.meta_batch_size % self.num_models:
            raise ConfigError(f"meta_batch_size {self.meta_batch_size} is not divisible by "
                              f"num_models {self.num_models}")
        for name, allowed in (("outer", ("trpo", "ppo")), ("imagined_init", ("reset", "dataset")),
                              ("terminal_value", ("off", "real", "imagined")),
                              ("model_split", ("resample", "persistent")),
                              ("model_type", ("deterministic", "probabilistic")),
                              ("collect_with", ("adapted", "pre_update")),
                              ("baseline", ("linear", "mlp")),
                              ("model_uncertainty", UNCERTAINTIES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} {getattr(self, name)!r} is not allowed; use one of {list(allowed)}")
        if self.normalize_reward:
            raise ConfigError("normalize_reward is not supported by MB-MPO (set it to false)")
        if not (self.model_penalty >= 0 and math.isfinite(self.model_penalty)):
            raise ConfigError(f"model_penalty must be a finite number >= 0 (0 = off), got {self.model_penalty}")
        if self.model_penalty > 0 and self.model_uncertainty == "aleatoric" and self.model_type != "probabilistic":
            raise ConfigError("model_uncertainty 'aleatoric' needs model_type 'probabilistic'")
        if not 0 <= self.focus_fraction <= 1 or not 0 < self.focus_quantile <= 1 or self.focus_window < 1:
            raise ConfigError(f"focus_fraction must be in [0, 1], focus_quantile in (0, 1] and focus_window "
                              f">= 1, got {self.focus_fraction}, {self.focus_quantile}, {self.focus_window}")
        if not (self.fall_penalty >= 0 and math.isfinite(self.fall_penalty)) or not self.fall_min_drop > 0:
            raise ConfigError(f"fall_penalty must be a finite number >= 0 (0 = off) and fall_min_drop > 0, "
                              f"got {self.fall_penalty}, {self.fall_min_drop}")
        if self.focus_fraction > 0 and self.imagined_init != "dataset":
            raise ConfigError(f"focus_fraction {self.focus_fraction} needs imagined_init 'dataset', "
                              f"got {self.imagined_init!r}")
        if not (self.min_std >= 0 and math.isfinite(self.min_std)):
            raise ConfigError(f"min_std must be a finite number >= 0 (0 = no floor), got {self.min_std}")
        if self.warmup_steps < 0 or self.inner_lr < 0:
            raise ConfigError(f"warmup_steps and inner_lr must be >= 0, got {self.warmup_steps}, {self.inner_lr}")
        if self.inner_kl_coef < 0 or self.inner_kl_target <= 0:
            raise ConfigError(f"inner_kl_coef must be >= 0 and inner_kl_target > 0, got "
                              f"{self.inner_kl_coef}, {self.inner_kl_target}")
        if not 0 < self.fvp_subsample <= 1:
            raise ConfigError(f"fvp_subsample must be in (0, 1], got {self.fvp_subsample}")
        if not 0 < self.model_val_fraction < 1:
            raise ConfigError(f"model_val_fraction must be in (0, 1), got {self.model_val_fraction}")
        if self.env_id not in REWARD_FNS and not self.learned_reward:
            get_reward_fn(self.env_id)  # raises the one-line error that says how to fix it

    @property
    def tasks_per_model(self) -> int:
        return self.meta_batch_size // self.num_models


@dataclass
class TaskBatch:
    """Imagined samples grouped by task: tensors ``[T, B, ...]`` (B = rollouts x horizon)."""

    obs: Tensor
    act: Tensor
    log_prob: Tensor
    adv: Tensor
    dist: Any  # sampling distribution, tensors [T, B, act_dim]
    mean_return: float
    terminal_value: float = 0.0  # mean gamma V(s_H) added to the last rewards (0 without one)


class MBMPO:
    """Model-based meta-policy optimization.

    Example::

        algo = MBMPO(MBMPOConfig(env_id="HalfCheetah-v5", total_steps=50_000), out_dir="runs/mbmpo")
        algo.learn()
        action = algo.predict(obs)      # pre-update policy, full observation in
    """

    algo_name: ClassVar[str] = "mbmpo"
    config_cls: ClassVar[type[BaseConfig]] = MBMPOConfig

    def __init__(self, config: MBMPOConfig, out_dir: str | Path | None = None, console: bool = True):
        if not isinstance(config, MBMPOConfig):
            raise ConfigError(f"MBMPO needs an MBMPOConfig, got {type(config).__name__}")
        config.validate()
        c = self.config = config
        self.device = resolve_device(c.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.console = console
        self.reward_fn: RewardFn | None = None if c.learned_reward else get_reward_fn(c.env_id)
        env_kwargs = dict(c.env_kwargs)
        if self.reward_fn is not None:
            env_kwargs = {**self.reward_fn.env_kwargs(), **env_kwargs}
        self.env_kwargs = env_kwargs
        self.env = GymVecEnv(c.env_id, c.num_envs, seed=c.seed, env_kwargs=env_kwargs,
                             vectorization=c.vectorization, dtype=torch.float64)
        check_spaces(self.env.single_observation_space, self.env.single_action_space, need_box_actions=True)
        self.action_space = self.env.single_action_space
        self._act_low = torch.as_tensor(self.action_space.low, dtype=torch.float32)
        self._act_high = torch.as_tensor(self.action_space.high, dtype=torch.float32)
        self.obs_dim = self.env.single_observation_space.shape[0]
        self.act_dim = self.action_space.shape[0]
        self.num_position_dims = self.reward_fn.num_position_dims if self.reward_fn else 0
        feat_dim = self.obs_dim - self.num_position_dims
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.policy = self.build_policy()
            self.ensemble = self.build_ensemble()
        self.inner_lr: float | dict[str, Tensor] = self.initial_inner_lr()
        self.obs_rms = RunningMeanStd(feat_dim)
        self.value_fn: MLPValue | None = None
        self.value_optimizer: torch.optim.Optimizer | None = None
        if c.baseline == "mlp":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.seed + 1)
                self.value_fn = MLPValue(feat_dim + 1, c.value_hidden_sizes, c.activation, c.ortho_init)
            self.value_optimizer = torch.optim.Adam(self.value_fn.parameters(), lr=1e-3)
        self.terminal_value: MLPValue | None = None
        self.terminal_value_optimizer: torch.optim.Optimizer | None = None
        if c.terminal_value != "off":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.seed + 2)
                self.terminal_value = MLPValue(feat_dim, c.value_hidden_sizes, c.activation, c.ortho_init)
            with torch.no_grad():  # V = 0 until fitted: early bootstraps add nothing, not noise
                self.terminal_value.net[-1].weight.zero_()
                self.terminal_value.net[-1].bias.zero_()
            self.terminal_value_optimizer = torch.optim.Adam(self.terminal_value.parameters(), lr=1e-3)
        self.hazard: MLPValue | None = None
        self.hazard_optimizer: torch.optim.Optimizer | None = None
        if c.fall_penalty > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.seed + 3)
                self.hazard = MLPValue(feat_dim, c.value_hidden_sizes, c.activation, c.ortho_init)
            self.hazard_optimizer = torch.optim.Adam(self.hazard.parameters(), lr=1e-3)
        columns = {"priority": 0.0} if c.focus_fraction > 0 else {}
        if self.hazard is not None:
            columns["fall_ahead"] = float("nan")  # unknown until labelled
        self.dataset = TransitionDataset(self.obs_dim, self.act_dim, c.dataset_capacity,
                                         num_keys=c.num_models if c.model_split == "persistent" else 0,
                                         columns=columns)
        self.init_states = torch.zeros(0, self.obs_dim, dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(c.seed)
        self.fit_config = FitConfig(
            learning_rate=c.model_learning_rate, batch_size=c.model_batch_size,
            max_epochs=c.model_max_epochs, val_fraction=c.model_val_fraction,
            bootstrap=c.model_bootstrap, early_stop_ema=c.model_early_stop_ema,
            early_stopping=c.model_early_stopping)
        self.outer_optimizer = None
        self.inner_kl_coef = float(c.inner_kl_coef)
        if c.outer == "ppo":
            self.outer_optimizer = torch.optim.Adam(self.outer_params(), lr=c.outer_learning_rate)
        self.collect_params: dict[str, Tensor] | None = None  # adapted params for real collection
        self.num_timesteps = 0
        self.iteration = 0
        self.wall_time = 0.0
        self._last_eval_step = 0
        self._obs: Tensor | None = None
        self._ts: Tensor | None = None
        self._eval_env: GymVecEnv | None = None
        self._recent_returns: list[float] = []
        self.logger: Logger | None = None
        self.row_task = torch.arange(c.num_envs) % c.meta_batch_size

    def build_policy(self) -> GaussianMLPPolicy:
        """A freshly initialised policy of the config's shape (draws from torch's global RNG)."""
        c = self.config
        return GaussianMLPPolicy(self.obs_dim - self.num_position_dims, self.act_dim, c.hidden_sizes,
                                 c.activation, c.init_log_std, c.ortho_init,
                                 math.log(c.min_std) if c.min_std > 0 else None)

    def build_ensemble(self, model_type: str | None = None) -> DynamicsEnsemble:
        """Freshly initialised dynamics models of the config's shape, of ``model_type``
        (default: the config's) (draws from torch's global RNG)."""
        c = self.config
        return DynamicsEnsemble(self.obs_dim, self.act_dim, c.num_models, c.model_hidden_sizes,
                                c.model_activation, self.num_position_dims, c.model_weight_norm,
                                reward_head=c.learned_reward,
                                probabilistic=(model_type or c.model_type) == "probabilistic")

    # ----- features and acting ---------------------------------------------------------
    def features(self, obs: Tensor) -> Tensor:
        """Full observation ``[..., obs_dim]`` -> policy input ``[..., feat_dim]`` (float32)."""
        f = obs[..., self.num_position_dims :]
        if self.config.normalize_obs and self.obs_rms.count.item() > 0:
            f = self.obs_rms.normalize(f, self.config.clip_obs)
        return f.float()

    def initial_inner_lr(self) -> float | dict[str, Tensor]:
        """α for ``self.policy``: the configured float, or (``learn_inner_lr``, Meta-SGD) one
        learnable tensor per policy parameter, shaped like it and filled with ``inner_lr``."""
        c = self.config
        if not c.learn_inner_lr:
            return c.inner_lr
        return {n: torch.full_like(p, c.inner_lr, requires_grad=True) for n, p in self.policy.named_parameters()}

    def outer_params(self) -> list[Tensor]:
        extra = list(self.inner_lr.values()) if isinstance(self.inner_lr, dict) else []
        return list(self.policy.parameters()) + extra

    @torch.no_grad()
    def predict(self, obs: np.ndarray | Tensor, deterministic: bool = True) -> np.ndarray:
        """Pre-update policy actions for full observations ``[B, obs_dim]`` (or one row): those
        of ``gymnasium.make(env_id, **algo.env_kwargs)``, which keep the positions the reward
        functions need (e.g. ``exclude_current_positions_from_observation=False``)."""
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float64)
        if x.shape[-1] != self.obs_dim:
            raise ValueError(f"observation has {x.shape[-1]} entries, this policy takes {self.obs_dim}: "
                             f"make the env with gymnasium.make({self.config.env_id!r}, **algo.env_kwargs) "
                             f"= {self.env_kwargs}")
        single = x.dim() == 1
        dist = self.policy(self.features(x.unsqueeze(0) if single else x))
        act = dist.mode() if deterministic else dist.sample(self.generator)
        a = np.clip(act.numpy(), self.action_space.low, self.action_space.high)
        return a[0] if single else a

    def _pre_policy_fn(self, obs: Tensor):
        dist = self.policy(self.features(obs))
        act = dist.sample(self.generator)
        return act, {"log_prob": dist.log_prob(act)}

    def _adapted_policy_fn(self, stacked: dict[str, Tensor], row_task: Tensor | None = None):
        """Row i acts with task ``row_task[i]``'s parameters; ``None`` means rows are split into
        equal contiguous blocks per task (imagined rollouts), which avoids a per-row gather."""
        num_tasks = next(iter(stacked.values())).shape[0]

        def fn(obs: Tensor):
            f = self.features(obs)
            if row_task is None:
                d = forward_per_task(self.policy, stacked, f.view(num_tasks, -1, f.shape[-1]))
                dist = type(d)(*(t.reshape(-1, t.shape[-1]) for t in d))
            else:
                dist = forward_per_row(self.policy, stacked, row_task, f)
            act = dist.sample(self.generator)
            return act, {"log_prob": dist.log_prob(act)}

        return fn

    def _random_policy_fn(self, obs: Tensor):
        u = torch.rand((obs.shape[0], self.act_dim), generator=self.generator)
        return self._act_low + u * (self._act_high - self._act_low), {}

    # ----- real data and models ----------------------------------------------------------
    def _collect_real(self) -> Rollout:
        c = self.config
        if self.num_timesteps == 0 and c.warmup_steps > 0:
            steps, fn = math.ceil(c.warmup_steps / c.num_envs), self._random_policy_fn
        elif c.collect_with == "adapted" and self.collect_params is not None:
            steps, fn = c.num_steps, self._adapted_policy_fn(self.collect_params, self.row_task)
        else:
            steps, fn = c.num_steps, self._pre_policy_fn
        if self._obs is None:
            # seeded by iteration, so a run resumed at an episode boundary repeats exactly
            self._obs = self.env.reset(seed=c.seed + 7919 * self.iteration)
            self._ts = None
        roll = collect(self.env, fn, steps, self._obs, self._ts)
        self._obs, self._ts = roll.last_obs, roll.last_timesteps
        if bool(roll.dones[-1].all()):
            self._obs = None  # every copy just finished an episode: reset (seeded) next time
        # the models learn from the action the env applied (imagined steps clip the same way)
        applied = torch.max(torch.min(roll.actions, self._act_high), self._act_low)
        columns = {}
        if "priority" in self.dataset.columns:
            columns["priority"] = reward_drop(roll.rewards, roll.dones, roll.timesteps, c.focus_window)
        if "fall_ahead" in self.dataset.columns:
            columns["fall_ahead"] = fall_ahead(roll.rewards, roll.dones, roll.timesteps, c.fall_window,
                                               c.fall_min_drop, c.fall_horizon)
        self.dataset.add(roll.obs, applied, roll.next_obs, roll.rewards, roll.terminated, self.generator,
                         columns=columns)
        starts = roll.obs[roll.timesteps == 0]
        self.init_states = torch.cat([self.init_states, starts])[-10_000:]
        return roll

    def _init_fn(self, n: int, gen: torch.Generator) -> Tensor:
        c = self.config
        if c.imagined_init == "reset" and len(self.init_states) > 0:
            return self.init_states[torch.randint(len(self.init_states), (n,), generator=gen)].clone()
        data = self.dataset.arrays()
        idx = torch.randint(len(data["obs"]), (n,), generator=gen)
        m = round(c.focus_fraction * n)
        if m > 0 and "priority" in data:
            focus = self._focus_rows(data["priority"])
            if len(focus) > 0:
                # spread over the batch: rows are split into contiguous blocks per task and model
                where = torch.randperm(n, generator=gen)[:m]
                idx[where] = focus[torch.randint(len(focus), (m,), generator=gen)]
        return data["obs"][idx].clone()

    def _focus_rows(self, priority: Tensor) -> Tensor:
        """Dataset rows that focused starts are drawn from: the top ``focus_quantile`` by
        reward drop, without rows whose drop is 0 (``[<= size]`` row indices)."""
        k = max(1, int(self.config.focus_quantile * len(priority)))
        top = torch.topk(priority, min(k, len(priority))).indices
        return top[priority[top] > 0]

    def fit_models(self) -> dict[str, float]:
        data = self.dataset.arrays()
        val_mask = data["keys"] < self.config.model_val_fraction if "keys" in data else None
        res = fit_ensemble(self.ensemble, data["obs"], data["act"], data["next_obs"],
                           data["reward"] if self.config.learned_reward else None,
                           self.fit_config, self.generator, val_mask)
        if self.config.normalize_obs:
            self.obs_rms.reset()
            self.obs_rms.update(data["obs"][:, self.num_position_dims :])
        stats = res.log_dict()
        if self.config.terminal_value == "real":
            stats.update(self._fit_terminal_value(data["obs"], data["reward"], data["next_obs"], data["terminated"]))
        if self.hazard is not None and self.hazard_optimizer is not None:
            t0 = time.perf_counter()
            with torch.enable_grad():
                stats.update(fit_hazard(self.hazard, self.hazard_optimizer, self.features(data["next_obs"]),
                                        data["fall_ahead"], self.config.fall_epochs, generator=self.generator))
            stats["time/fall_fit_s"] = time.perf_counter() - t0
        return stats

    def _fit_terminal_value(self, obs: Tensor, reward: Tensor, next_obs: Tensor, terminated: Tensor) -> dict[str, float]:
        """TD(0) fit of the terminal value on transitions ``[..., obs_dim]`` / ``[...]``."""
        assert self.terminal_value is not None and self.terminal_value_optimizer is not None
        t0 = time.perf_counter()
        d = obs.shape[-1]
        with torch.enable_grad():
            stats = fit_td_value(self.terminal_value, self.terminal_value_optimizer,
                                 self.features(obs.reshape(-1, d)), reward.reshape(-1),
                                 self.features(next_obs.reshape(-1, d)), terminated.reshape(-1),
                                 self.config.gamma, self.config.terminal_value_epochs, generator=self.generator)
        stats["time/value_fit_s"] = time.perf_counter() - t0
        return stats

    # ----- imagined data ----------------------------------------------------------------
    def _imagined_env(self) -> ImaginedEnv:
        c = self.config
        idx = tasks_model_idx(c.num_models, c.tasks_per_model, c.rollouts_per_task)
        return ImaginedEnv(self.ensemble, idx, self._init_fn, c.imagined_horizon, self.reward_fn,
                           self.action_space.low, self.action_space.high, c.imagined_clip_obs,
                           self.generator, sample=c.model_sample, penalty_coef=c.model_penalty,
                           uncertainty=c.model_uncertainty, state_cost=self._fall_cost if self.hazard is not None else None)

    def _fall_cost(self, next_obs: Tensor) -> Tensor:
        """``fall_penalty * p(s')`` for ``[N, obs_dim]`` reached states -> ``[N]``."""
        assert self.hazard is not None
        return hazard_cost(self.hazard, self.features(next_obs), self.config.fall_penalty)

    def _task_batch(self, roll: Rollout) -> TaskBatch:
        """Per-task advantages (GAE on the baseline's values), normalized per task."""
        c = self.config
        t_tasks = c.meta_batch_size
        r = c.rollouts_per_task
        trunc = roll.truncated.clone()
        trunc[-1] |= ~roll.terminated[-1]  # the rollout's end cuts the last episode
        rewards, terminated = roll.rewards.double(), roll.terminated
        boot_mean = 0.0
        if self.terminal_value is not None:
            # the last reward carries gamma V(s_H); the baselines then see that step as final
            boot = terminal_values(self.terminal_value, self.features(roll.next_obs[-1]), roll.terminated[-1], c.gamma)
            boot_mean = float(boot.mean())
            rewards = rewards.clone()
            rewards[-1] += boot
            terminated = terminated.clone()
            terminated[-1] = True
            trunc[-1] = False
        dones = terminated | trunc
        rets = discount_cumsum(rewards, c.gamma, dones)  # [H, N]
        feats = self.features(roll.obs)  # [H, N, D]
        next_feats = self.features(roll.next_obs)
        ts, next_ts = roll.timesteps, roll.timesteps + 1
        fit_values = self._linear_values if self.value_fn is None else self._mlp_values
        values, next_values = fit_values(feats, ts, next_feats, next_ts, rets)
        adv, _ = gae(rewards, values, next_values, terminated, trunc, c.gamma, c.gae_lambda)

        def by_task(x: Tensor) -> Tensor:  # [H, N, ...] -> [T, r * H, ...]
            x = x.reshape(x.shape[0], t_tasks, r, *x.shape[2:]).transpose(0, 1)
            return x.reshape(t_tasks, -1, *x.shape[3:])

        adv_t = by_task(adv).float()
        if c.normalize_adv:
            adv_t = (adv_t - adv_t.mean(1, keepdim=True)) / (adv_t.std(1, keepdim=True) + 1e-8)
        ep_ret = float(np.mean(roll.episode_returns)) if roll.episode_returns else float("nan")
        return TaskBatch(by_task(feats), by_task(roll.actions), by_task(roll.extras["log_prob"]), adv_t,
                         None, ep_ret, boot_mean)

    def _linear_values(self, feats: Tensor, ts: Tensor, next_feats: Tensor, next_ts: Tensor,
                       rets: Tensor) -> tuple[Tensor, Tensor]:
        """Per-task linear feature baselines fitted on each task's returns (rllab, MB-MPO).
        Inputs ``[H, N, ...]``; returns ``(V(s_t), V(s_{t+1}))``, both ``[H, N]``."""
        r = self.config.rollouts_per_task
        values = torch.empty_like(rets)
        next_values = torch.empty_like(rets)
        for t in range(self.config.meta_batch_size):
            cols = slice(t * r, (t + 1) * r)
            base = LinearFeatureBaseline(feats.shape[-1])
            base.fit(feats[:, cols].reshape(-1, feats.shape[-1]).double(), ts[:, cols].reshape(-1),
                     rets[:, cols].reshape(-1))
            values[:, cols] = base(feats[:, cols].double(), ts[:, cols])
            next_values[:, cols] = base(next_feats[:, cols].double(), next_ts[:, cols])
        return values, next_values

    def _mlp_values(self, feats: Tensor, ts: Tensor, next_feats: Tensor, next_ts: Tensor,
                    rets: Tensor) -> tuple[Tensor, Tensor]:
        """One MLP value function on (features, t / horizon), refit on this batch's returns."""
        c = self.config
        assert self.value_fn is not None and self.value_optimizer is not None

        def inputs(f: Tensor, t: Tensor) -> Tensor:
            return torch.cat([f, (t.float() / c.imagined_horizon).unsqueeze(-1)], -1)

        x = inputs(feats, ts).reshape(-1, feats.shape[-1] + 1)
        y = rets.float().reshape(-1)
        with torch.enable_grad():  # callers may sample under no_grad
            for _ in range(c.baseline_epochs):
                minibatch_pass(self.value_fn, self.value_optimizer, x, y, half_mse, 1024, self.generator)
        with torch.no_grad():
            values = self.value_fn(x).reshape(rets.shape).double()
            next_values = self.value_fn(inputs(next_feats, next_ts)).double()
        return values, next_values

    def _adapt_all(self, pre: TaskBatch, create_graph: bool) -> dict[str, Tensor]:
        c = self.config
        base = policy_params(self.policy)
        if not create_graph:
            base = {n: p.detach().requires_grad_() for n, p in base.items()}
        lr = self.inner_lr
        if isinstance(lr, dict) and not create_graph:
            lr = {n: v.detach() for n, v in lr.items()}
        stacked = adapt_tasks(self.policy, base, pre.obs, pre.act, pre.adv, pre.log_prob, lr,
                              first_order=c.first_order or not create_graph, num_steps=c.num_inner_steps)
        return stacked if create_graph else {n: v.detach() for n, v in stacked.items()}

    def meta_step(self) -> dict[str, float]:
        """One outer update on fresh imagined data; returns scalars to log."""
        c = self.config
        env = self._imagined_env()
        t0 = time.perf_counter()
        with torch.no_grad():
            pre_roll = collect(env, self._pre_policy_fn, c.imagined_horizon)
        value_stats = {}
        if c.terminal_value == "imagined":
            value_stats = self._fit_terminal_value(pre_roll.obs, pre_roll.rewards, pre_roll.next_obs, pre_roll.terminated)
        pre = self._task_batch(pre_roll)
        t1 = time.perf_counter()
        adapted = self._adapt_all(pre, create_graph=False)
        t2 = time.perf_counter()
        with torch.no_grad():
            post_roll = collect(env, self._adapted_policy_fn(adapted), c.imagined_horizon)
        post = self._task_batch(post_roll)
        with torch.no_grad():
            post.dist = forward_per_task(self.policy, adapted, post.obs).detach()
        t3 = time.perf_counter()
        stats = self._outer_trpo(pre, post) if c.outer == "trpo" else self._outer_ppo(pre, post)
        self.policy.clamp_log_std_()
        t4 = time.perf_counter()
        stats.update({"imagined/pre_return": pre.mean_return, "imagined/post_return": post.mean_return,
                      "time/imagined_sampling_s": (t1 - t0) + (t3 - t2), "time/inner_step_s": t2 - t1,
                      "time/outer_step_s": t4 - t3})
        if c.model_penalty > 0:  # the imagined returns above are net of it
            stats["imagined/penalty"] = env.mean_penalty
        if self.hazard is not None:  # the imagined returns above are net of it
            stats["imagined/fall_cost"] = env.mean_state_cost
        if self.terminal_value is not None:  # not in the imagined returns above
            stats["imagined/terminal_value"] = post.terminal_value
        stats.update(value_stats)
        return stats

    def _outer_surrogate_and_kl(self, pre: TaskBatch, post: TaskBatch):
        def dist_new():
            stacked = self._adapt_all(pre, create_graph=True)
            return forward_per_task(self.policy, stacked, post.obs)

        def surrogate() -> Tensor:
            # tasks have equal sample counts, so the mean of task means is the overall mean
            return likelihood_ratio_objective(dist_new(), post.act, post.adv, post.log_prob).mean()

        def kl() -> Tensor:
            return post.dist.kl(dist_new()).mean()

        return surrogate, kl

    def _subsample(self, batch: TaskBatch, frac: float) -> TaskBatch:
        """The same random fraction of every task's samples (for cheaper Fisher products)."""
        b = batch.obs.shape[1]
        idx = torch.randperm(b, generator=self.generator)[: max(1, int(b * frac))]
        dist = None if batch.dist is None else type(batch.dist)(*(t[:, idx] for t in batch.dist))
        return TaskBatch(batch.obs[:, idx], batch.act[:, idx], batch.log_prob[:, idx], batch.adv[:, idx],
                         dist, batch.mean_return)

    def _outer_trpo(self, pre: TaskBatch, post: TaskBatch) -> dict[str, float]:
        c = self.config
        surrogate, kl = self._outer_surrogate_and_kl(pre, post)
        fvp_kl = kl
        if c.fvp_subsample < 1.0:
            _, fvp_kl = self._outer_surrogate_and_kl(self._subsample(pre, c.fvp_subsample),
                                                     self._subsample(post, c.fvp_subsample))
        info = trpo_step(self.outer_params(), surrogate, kl, c.max_kl, c.cg_damping, c.cg_iters,
                         c.backtrack_coeff, c.max_backtracks, line_search_no_grad=False,
                         fvp_kl_fn=fvp_kl)
        return {"meta/kl": info.kl, "meta/surrogate_change": info.surrogate_after - info.surrogate_before,
                "meta/step_accepted": float(info.accepted), "meta/num_backtracks": float(info.num_backtracks)}

    def _outer_ppo(self, pre: TaskBatch, post: TaskBatch) -> dict[str, float]:
        """ProMP-style outer step: Adam on the clipped post-update surrogate, re-adapting
        theta'_k(theta) every epoch, minus ``eta * KL(pi_theta_old || pi_theta)`` on the
        pre-update samples when ``inner_kl_coef > 0``."""
        c = self.config
        assert self.outer_optimizer is not None
        pre_old = self.policy(pre.obs).detach()  # frozen theta_old on the pre-update samples
        eta = self.inner_kl_coef
        first = last = float("nan")
        for _ in range(c.outer_epochs):
            stacked = self._adapt_all(pre, create_graph=True)
            d = forward_per_task(self.policy, stacked, post.obs)
            ratio = (d.log_prob(post.act) - post.log_prob).exp()
            obj = torch.min(ratio * post.adv, ratio.clamp(1 - c.outer_clip, 1 + c.outer_clip) * post.adv).mean()
            if eta > 0:
                obj = obj - eta * pre_old.kl(self.policy(pre.obs)).mean()
            self.outer_optimizer.zero_grad(set_to_none=True)
            (-obj).backward()
            self.outer_optimizer.step()
            last = obj.item()
            first = last if math.isnan(first) else first
        with torch.no_grad():
            inner_kl = pre_old.kl(self.policy(pre.obs)).mean().item()
        if eta > 0 and c.adaptive_inner_kl:
            self.inner_kl_coef = ppo_adapt_kl_coef(eta, inner_kl, c.inner_kl_target)
        _, kl = self._outer_surrogate_and_kl(pre, post)  # the inner step needs autograd
        return {"meta/kl": kl().detach().item(), "meta/surrogate_change": last - first,
                "meta/inner_kl": inner_kl, "meta/inner_kl_coef": eta}

    # ----- the loop -----------------------------------------------------------------------
    def learn(self, total_steps: int | None = None) -> MBMPO:
        """Train until ``total_steps`` real steps (warm-up included); stops at the first
        iteration boundary at or after the budget."""
        run_training(self, total_steps, CONSOLE_KEYS)
        return self

    def _iterate(self, bar) -> None:
        c = self.config
        log = self.logger
        t0 = time.perf_counter()
        roll = self._collect_real()
        steps = roll.num_steps * roll.num_envs
        t1 = time.perf_counter()
        model_stats = self.fit_models()
        t2 = time.perf_counter()
        sums: dict[str, float] = {}
        for _ in range(c.num_meta_steps):
            for k, v in self.meta_step().items():
                sums[k] = sums.get(k, 0.0) + v
        meta_stats = {k: v / c.num_meta_steps for k, v in sums.items()}
        if c.collect_with == "adapted" or c.eval_adapted:
            with torch.no_grad():
                pre = self._task_batch(collect(self._imagined_env(), self._pre_policy_fn, c.imagined_horizon))
            self.collect_params = self._adapt_all(pre, create_graph=False)
        t3 = time.perf_counter()
        self.iteration += 1
        self.num_timesteps += steps
        self.wall_time += t3 - t0
        bar.update(steps)
        self._recent_returns = (self._recent_returns + roll.episode_returns)[-20:]
        log.record("iteration", self.iteration)
        log.record("real_steps", self.num_timesteps)
        if self._recent_returns:
            log.record("real/episode_return", float(np.mean(self._recent_returns)))
        log.record_dict(model_stats)
        log.record_dict(meta_stats)
        if "priority" in self.dataset.columns and c.focus_fraction > 0:
            drops = self.dataset.arrays()["priority"]
            focus = self._focus_rows(drops)
            log.record("imagined/focus_rows", len(focus))
            log.record("imagined/focus_min_drop", float(drops[focus].min()) if len(focus) else 0.0)
        # the state-independent std of theta: a shrinking std is how exploration dies out
        log.record("policy/std_mean", self.policy.std().mean().item())
        log.record("time/real_sampling_s", t1 - t0)
        log.record("time/model_fit_s", t2 - t1)
        log.record("time/meta_s", t3 - t2)
        log.record("time/iteration_s", t3 - t0)
        end_iteration(self, self._record_evaluation)

    def _record_evaluation(self) -> None:
        c = self.config
        record_evaluation(self.logger, *self.evaluate(c.eval_episodes))
        if c.eval_adapted and self.collect_params is not None:
            record_evaluation(self.logger, *self.evaluate(c.eval_episodes, adapted=True), prefix="eval_adapted")

    @torch.no_grad()
    def evaluate(self, num_episodes: int = 10, adapted: bool = False,
                 deterministic: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Full real episodes (not training samples) of the pre-update policy, or of the
        adapted policies (episode i uses task i % meta_batch_size)."""
        c = self.config
        env = eval_env(self, num_episodes, env_kwargs=self.env_kwargs, dtype=torch.float64)
        row_task = torch.arange(num_episodes) % c.meta_batch_size

        def act(obs: Tensor) -> Tensor:
            f = self.features(obs)
            if adapted and self.collect_params is not None:
                d = forward_per_row(self.policy, self.collect_params, row_task, f)
            else:
                d = self.policy(f)
            return d.mode() if deterministic else d.sample(self.generator)

        return evaluate_episodes(env, act, seed=eval_seed(self))

    # ----- persistence ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "algo": self.algo_name,
            "config": self.config.to_dict(),
            "policy": self.policy.state_dict(),
            "inner_lr": ({n: v.detach() for n, v in self.inner_lr.items()}
                         if isinstance(self.inner_lr, dict) else {}),
            "ensemble": self.ensemble.state_dict(),
            "obs_rms": self.obs_rms.state_dict(),
            "dataset": self.dataset.state_dict(),
            "init_states": self.init_states,
            "collect_params": self.collect_params or {},
            "outer_optimizer": self.outer_optimizer.state_dict() if self.outer_optimizer else {},
            "inner_kl_coef": self.inner_kl_coef,
            "value_fn": self.value_fn.state_dict() if self.value_fn is not None else {},
            "value_optimizer": self.value_optimizer.state_dict() if self.value_optimizer else {},
            "terminal_value": self.terminal_value.state_dict() if self.terminal_value is not None else {},
            "terminal_value_optimizer": (self.terminal_value_optimizer.state_dict()
                                         if self.terminal_value_optimizer else {}),
            "hazard": self.hazard.state_dict() if self.hazard is not None else {},
            "hazard_optimizer": self.hazard_optimizer.state_dict() if self.hazard_optimizer else {},
            "generator": self.generator.get_state(),
            "counters": counters(self),
        }

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, self.state_dict())

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        try:
            self.policy.load_state_dict(state["policy"])
            self.ensemble.load_state_dict(state["ensemble"])
            self.obs_rms.load_state_dict(state["obs_rms"])
            self.dataset.load_state_dict(state["dataset"])
            if isinstance(self.inner_lr, dict):
                with torch.no_grad():
                    for n, v in self.inner_lr.items():
                        v.copy_(state["inner_lr"][n])
            if self.outer_optimizer is not None:
                self.outer_optimizer.load_state_dict(state["outer_optimizer"])
            if self.value_fn is not None and self.value_optimizer is not None:
                self.value_fn.load_state_dict(state["value_fn"])
                self.value_optimizer.load_state_dict(state["value_optimizer"])
            if self.terminal_value is not None and self.terminal_value_optimizer is not None:
                self.terminal_value.load_state_dict(state["terminal_value"])
                self.terminal_value_optimizer.load_state_dict(state["terminal_value_optimizer"])
            if self.hazard is not None and self.hazard_optimizer is not None:
                self.hazard.load_state_dict(state["hazard"])
                self.hazard_optimizer.load_state_dict(state["hazard_optimizer"])
            self.generator.set_state(state["generator"])
            self.inner_kl_coef = float(state.get("inner_kl_coef", self.config.inner_kl_coef))
            cnt = state["counters"]
        except (KeyError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{source} does not match this mbmpo setup: {first}") from None
        self.init_states = state["init_states"]
        self.collect_params = dict(state["collect_params"]) or None
        restore_counters(self, cnt)

    @classmethod
    def load(cls, path: str | Path, out_dir: str | Path | None = None, console: bool = True,
             **overrides: Any) -> MBMPO:
        """Rebuild from a checkpoint (file or run directory) to resume training or act."""
        return load_algorithm(cls, path, out_dir, console, overrides)

    def close(self) -> None:
        self.env.close()
        if self._eval_env is not None:
            self._eval_env.close()
        if self.logger is not None:
            self.logger.close()


