"""Dataclass configs, YAML presets and validation.

Each field's docstring is its documentation (``tyro`` shows it as the CLI help).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mbmpo.errors import ConfigError

C = TypeVar("C", bound="BaseConfig")


@dataclass
class BaseConfig:
    """Settings shared by every on-policy algorithm."""

    env_id: str = "HalfCheetah-v5"
    """gymnasium environment id."""
    seed: int = 0
    """Seed of every random draw of the run (networks, sampling, env resets, minibatches)."""
    total_steps: int = 1_000_000
    """Budget of real environment steps used for training (evaluation steps excluded)."""
    device: str = "cpu"
    """torch device: 'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available)."""
    num_envs: int = 1
    """Parallel env copies N collected by one process."""
    num_steps: int = 2048
    """Steps per env copy per iteration (batch = num_envs * num_steps)."""
    vectorization: str = "sync"
    """gymnasium vector env kind: 'sync' or 'async'."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for gymnasium.make."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Policy MLP hidden layer sizes."""
    value_hidden_sizes: tuple[int, ...] = (64, 64)
    """Value MLP hidden layer sizes."""
    activation: str = "tanh"
    """Hidden activation: tanh, relu, silu, elu or gelu."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian policy."""
    ortho_init: bool = True
    """Orthogonal initialization (gain sqrt(2) hidden, 0.01 policy output, 1 value output)."""
    normalize_obs: bool = True
    """Normalize observations with running statistics (frozen for evaluation)."""
    normalize_reward: bool = True
    """Scale rewards by the running std of the discounted return."""
    clip_obs: float = 10.0
    """Clip normalized observations to +-clip_obs."""
    clip_reward: float = 10.0
    """Clip scaled rewards to +-clip_reward."""
    eval_every: int = 10_000
    """Evaluate every this many real steps (0 disables; the final iteration always evaluates)."""
    eval_episodes: int = 10
    """Evaluation episodes per evaluation (never counted as training steps)."""
    eval_deterministic: bool = True
    """Evaluate the distribution's mode (True) or sampled actions (False; e.g. MiniGrid,
    where the argmax policy can loop forever)."""
    checkpoint_every_steps: int = 10_000
    """Save a checkpoint whenever this many real steps have passed since the last one (and at
    the end of the budget), so a crash loses at most this many steps of work."""
    checkpoint_every: int | None = None
    """Older, iteration-based schedule: also save every this many iterations (None = off).
    Still read from older configs, with a warning; prefer ``checkpoint_every_steps``."""

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        _positive(self, "total_steps", "num_envs", "num_steps", "eval_episodes", "checkpoint_every_steps")
        if self.checkpoint_every is not None:
            _positive(self, "checkpoint_every")
            warnings.warn(f"checkpoint_every={self.checkpoint_every} counts iterations; prefer "
                          "checkpoint_every_steps, which counts real env steps", FutureWarning, stacklevel=2)
        _in_range(self, "gamma", 0.0, 1.0)
        _in_range(self, "gae_lambda", 0.0, 1.0)
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.vectorization not in ("sync", "async"):
            raise ConfigError(f"vectorization must be 'sync' or 'async', got {self.vectorization!r}")
        from policies.mlp import ACTIVATIONS

        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation {self.activation!r} is not allowed; use one of {sorted(ACTIVATIONS)}")
        for name in ("hidden_sizes", "value_hidden_sizes"):
            sizes = getattr(self, name)
            if any(int(h) <= 0 for h in sizes):
                raise ConfigError(f"{name} must hold positive sizes, got {list(sizes)}")
        if not (self.device in ("cpu", "auto") or self.device.startswith("cuda")):
            raise ConfigError(f"device {self.device!r} is not allowed; use cpu, cuda[:N] or auto")
        from mbmpo.envs import check_env_id

        check_env_id(self.env_id)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _positive(cfg: Any, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if not v > 0:
            raise ConfigError(f"{n} must be > 0, got {v}")


PRECISIONS = ("float32", "bfloat16")
"""Values of the precision options (MB-MPO's imagined steps and model fits, SAC's updates)."""


def _one_of(cfg: Any, name: str, allowed: tuple[str, ...]) -> None:
    v = getattr(cfg, name)
    if v not in allowed:
        raise ConfigError(f"{name} {v!r} is not allowed; use one of {list(allowed)}")


def _in_range(cfg: Any, name: str, lo: float, hi: float) -> None:
    v = getattr(cfg, name)
    if not (lo <= v <= hi) or math.isnan(v):
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {v}")


def config_from_dict(cls: type[C], data: dict[str, Any] | None, source: str = "config") -> C:
    """Build ``cls`` from a mapping; unknown keys and wrongly typed values raise ConfigError."""
    data = dict(data or {})
    upgrade = getattr(cls, "upgrade", None)
    if upgrade is not None:  # older keys of this config class, mapped to today's
        data = upgrade(data)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r} in {source} for {cls.__name__}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(k, v, hints[k], source) for k, v in data.items()}
    return cls(**kwargs)


def _coerce(name: str, value: Any, hint: Any, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    bad = ConfigError(f"config key {name!r} in {source} has bad value {value!r} (expected {hint})")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        return _coerce(name, value, hint, source)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if dataclasses.is_dataclass(value) and isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise bad
        return config_from_dict(hint, value, source=f"{source}, key {name!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise bad
        return tuple(_coerce(name, v, args[0], source) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise bad
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise bad
        try:
            return float(value)
        except ValueError:
            raise bad from None
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or non-mapping content raises ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[C], path: str | Path, **overrides: Any) -> C:
    """Preset YAML -> ``cls``, with keyword overrides applied on top."""
    data = load_yaml(path)
    data.pop("algo", None)
    data.update(overrides)
    return config_from_dict(cls, data, source=str(path))


def save_config(cfg: BaseConfig, path: str | Path, algo: str | None = None) -> None:
    d = cfg.to_dict()
    if algo is not None:
        d = {"algo": algo, **d}
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))
