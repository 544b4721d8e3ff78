"""MB-MPO's config: the core settings of Algorithm 1 plus one nested config per plug-in.

Defaults are sized for a CPU (the recipe the per-env presets share); the original paper's
cluster-sized values are the preset ``scripts/configs/paper_mbmpo.yaml``. Older flat keys of
the plug-ins (``model_penalty``, ``terminal_value: imagined``, ``fall_penalty``,
``focus_fraction``...) are still read: :func:`upgrade_legacy_keys` maps them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dynamics.reward_fns import REWARD_FNS, get_reward_fn
from mbmpo.config import PRECISIONS, BaseConfig, _one_of, _positive
from mbmpo.errors import ConfigError
from mbmpo.mbmpo.extensions import (
    BUILTIN,
    FallHazardConfig,
    FocusStartsConfig,
    TerminalValueConfig,
    UncertaintyPenaltyConfig,
)

LEGACY_KEYS: dict[str, tuple[str, str]] = {
    "model_penalty": ("uncertainty_penalty", "coef"),
    "model_uncertainty": ("uncertainty_penalty", "uncertainty"),
    "terminal_value_epochs": ("terminal_value", "epochs"),
    "fall_penalty": ("fall_hazard", "cost"),
    "fall_horizon": ("fall_hazard", "horizon"),
    "fall_window": ("fall_hazard", "window"),
    "fall_min_drop": ("fall_hazard", "min_drop"),
    "fall_epochs": ("fall_hazard", "epochs"),
    "focus_fraction": ("focus_starts", "fraction"),
    "focus_window": ("focus_starts", "window"),
    "focus_quantile": ("focus_starts", "quantile"),
}
"""Flat plug-in keys of older configs -> (nested config field, its key). ``terminal_value``
given as a string is ``terminal_value.fit_on``."""


def upgrade_legacy_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Older flat plug-in keys of a config mapping moved into their nested configs."""
    out = dict(data)
    nested: dict[str, dict[str, Any]] = {}
    if isinstance(out.get("terminal_value"), str):
        nested.setdefault("terminal_value", {})["fit_on"] = out.pop("terminal_value")
    for old, (group, key) in LEGACY_KEYS.items():
        if old in out:
            nested.setdefault(group, {})[key] = out.pop(old)
    for group, values in nested.items():
        given = out.get(group)
        if given is not None and not isinstance(given, dict):
            raise ConfigError(f"config key {group!r} must be a mapping, got {given!r}")
        out[group] = {**(given or {}), **values}
    return out


@dataclass
class MBMPOConfig(BaseConfig):
    """MB-MPO settings. Where a default differs from the paper's (original TensorFlow
    scripts), the paper's value is noted."""

    total_steps: int = 100_000
    """Budget of real environment steps used for training (warm-up included)."""
    hidden_sizes: tuple[int, ...] = (32, 32)
    """Policy MLP hidden sizes (paper: 32, 32)."""
    init_log_std: float = -0.5
    """Initial log std of the Gaussian policy (paper: 0)."""
    num_envs: int = 4
    """Real env copies; each collects with the adapted policy of a task of another model."""
    num_steps: int = 500
    """Real steps per env copy per iteration (paper: 20 x 200 = 4000 real steps per iteration)."""
    normalize_obs: bool = True
    """Normalize policy inputs with the real data set's statistics (refreshed every iteration;
    paper: off)."""
    normalize_reward: bool = False
    """Not supported by MB-MPO (imagined rewards come from the reward function)."""
    gae_lambda: float = 1.0
    """GAE lambda (paper: 1)."""
    warmup_steps: int = 4000
    """Random-action real steps collected before the first model fit (paper: 5000)."""
    collect_with: str = "adapted"
    """Policy that collects real data: 'adapted' (theta'_k of every model, the paper's tailored
    exploration) or 'pre_update' (theta)."""
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
    learned_reward: bool = False
    """Learn a reward head (for envs without an exact reward function)."""
    model_learning_rate: float = 1e-3
    """Adam learning rate of the models."""
    model_batch_size: int = 500
    """Model minibatch size."""
    model_max_epochs: int = 10
    """Upper bound on model epochs per fit (paper: 500; the models are warm-started)."""
    model_epoch_rows: int = 0
    """Training rows each model sees per epoch, a fresh random subset of its training split
    every epoch; 0 = all (the paper). A cap makes each epoch cheaper on a large data set, but
    early stopping may then run more epochs; validation still uses every validation row."""
    model_fit_precision: str = "float32"
    """Precision of the models' layers while fitting: 'float32' or 'bfloat16' (mixed precision
    under ``torch.autocast`` with float32 weights and Adam state; about 1.5x faster fit steps on
    CPUs with AVX512-BF16 or AMX). The validation error that early stopping reads stays float32."""
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
    rollouts_per_task: int = 10
    """Imagined trajectories per task (paper: 50)."""
    imagined_horizon: int = 50
    """Imagined trajectory length (paper: 200)."""
    imagined_init: str = "dataset"
    """Imagined start states: 'reset' (real initial states, the paper's) or 'dataset' (real
    visited states)."""
    imagined_clip_obs: float = 1000.0
    """Predicted observations are clipped to +-this."""
    imagined_precision: str = "float32"
    """Precision of the models' layers in imagined steps: 'float32' or 'bfloat16' (faster model
    forwards on CPUs with AVX512-BF16 or AMX; outputs about 0.3% off). Model fitting has its
    own setting, ``model_fit_precision``."""
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
    """Floor under the policy std, per action dimension (0 = none; rllab's ``min_std``).
    Without one the outer step can shrink the std of theta until exploration dies out."""
    eval_every: int = 4000
    """Evaluate every this many real steps (the final iteration always evaluates)."""
    eval_adapted: bool = True
    """Also evaluate the adapted policies of every model (logged as eval_adapted_return_mean)."""
    checkpoint_every_steps: int = 2000
    """Save a checkpoint whenever this many real steps have passed since the last one."""
    uncertainty_penalty: UncertaintyPenaltyConfig = field(default_factory=UncertaintyPenaltyConfig)
    """Plug-in: imagined rewards ``r - coef * u(s, a)`` (MOPO)."""
    terminal_value: TerminalValueConfig = field(default_factory=TerminalValueConfig)
    """Plug-in: ``gamma V(s_H)`` added at the imagined horizon, V fitted by TD(0)."""
    fall_hazard: FallHazardConfig = field(default_factory=FallHazardConfig)
    """Plug-in: imagined rewards ``r - cost * p(s')``, p a classifier of real falls."""
    focus_starts: FocusStartsConfig = field(default_factory=FocusStartsConfig)
    """Plug-in: a share of imagined starts at real states where the reward fell."""

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Hook of :func:`mbmpo.config.config_from_dict`: older flat plug-in keys."""
        return upgrade_legacy_keys(data)

    def validate(self) -> None:
        super().validate()
        _positive(self, "num_models", "meta_batch_size", "rollouts_per_task", "imagined_horizon",
                  "num_meta_steps", "num_inner_steps", "model_batch_size", "model_max_epochs",
                  "dataset_capacity", "max_kl", "cg_iters", "max_backtracks", "outer_epochs")
        if self.meta_batch_size % self.num_models:
            raise ConfigError(f"meta_batch_size {self.meta_batch_size} is not divisible by "
                              f"num_models {self.num_models}")
        for name, allowed in (("outer", ("trpo", "ppo")), ("imagined_init", ("reset", "dataset")),
                              ("model_split", ("resample", "persistent")),
                              ("model_type", ("deterministic", "probabilistic")),
                              ("collect_with", ("adapted", "pre_update")),
                              ("baseline", ("linear", "mlp")),
                              ("imagined_precision", PRECISIONS), ("model_fit_precision", PRECISIONS)):
            _one_of(self, name, allowed)
        if self.normalize_reward:
            raise ConfigError("normalize_reward is not supported by MB-MPO (set it to false)")
        for name in BUILTIN:
            getattr(self, name).validate(self)
        if not (self.min_std >= 0 and math.isfinite(self.min_std)):
            raise ConfigError(f"min_std must be a finite number >= 0 (0 = no floor), got {self.min_std}")
        if self.warmup_steps < 0 or self.inner_lr < 0:
            raise ConfigError(f"warmup_steps and inner_lr must be >= 0, got {self.warmup_steps}, {self.inner_lr}")
        if self.inner_kl_coef < 0 or self.inner_kl_target <= 0:
            raise ConfigError(f"inner_kl_coef must be >= 0 and inner_kl_target > 0, got "
                              f"{self.inner_kl_coef}, {self.inner_kl_target}")
        if not 0 < self.fvp_subsample <= 1:
            raise ConfigError(f"fvp_subsample must be in (0, 1], got {self.fvp_subsample}")
        if self.model_epoch_rows < 0:
            raise ConfigError(f"model_epoch_rows must be >= 0 (0 = every training row), got {self.model_epoch_rows}")
        if not 0 < self.model_val_fraction < 1:
            raise ConfigError(f"model_val_fraction must be in (0, 1), got {self.model_val_fraction}")
        if self.env_id not in REWARD_FNS and not self.learned_reward:
            get_reward_fn(self.env_id)  # raises the one-line error that says how to fix it

    @property
    def tasks_per_model(self) -> int:
        return self.meta_batch_size // self.num_models
