"""Policies, value functions and the factory that picks one for a gymnasium action space."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
from torch import nn

from policies.categorical import CategoricalMLPPolicy
from policies.distributions import Categorical, DiagGaussian, Distribution
from policies.gaussian_mlp import GaussianMLPPolicy
from policies.mlp import mlp
from policies.q_network import QNetwork
from policies.recurrent import RecurrentGaussianPolicy, RecurrentValue
from policies.value import LinearFeatureBaseline, MLPValue

__all__ = [
    "Categorical",
    "CategoricalMLPPolicy",
    "DiagGaussian",
    "Distribution",
    "GaussianMLPPolicy",
    "LinearFeatureBaseline",
    "MLPValue",
    "QNetwork",
    "RecurrentGaussianPolicy",
    "RecurrentValue",
    "make_policy",
    "mlp",
]


def make_policy(
    obs_space: gym.Space,
    act_space: gym.Space,
    hidden_sizes: Sequence[int] = (64, 64),
    activation: str = "tanh",
    init_log_std: float = 0.0,
    ortho_init: bool = True,
) -> nn.Module:
    """Gaussian policy for a Box action space, categorical for Discrete; ValueError otherwise."""
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(
            f"observation space {obs_space} is not supported: policies need a flat Box; "
            "wrap the env with a flattening observation wrapper"
        )
    obs_dim = obs_space.shape[0]
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        return GaussianMLPPolicy(
            obs_dim, act_space.shape[0], hidden_sizes, activation, init_log_std, ortho_init
        )
    if isinstance(act_space, gym.spaces.Discrete):
        return CategoricalMLPPolicy(obs_dim, int(act_space.n), hidden_sizes, activation, ortho_init)
    raise ValueError(
        f"action space {act_space} is not supported: allowed are a 1-D Box or Discrete"
    )
