"""MLP builder shared by policies, value functions and Q-networks."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def activation_cls(name: str) -> type[nn.Module]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; allowed: {sorted(ACTIVATIONS)}") from None


def mlp(
    in_dim: int,
    hidden_sizes: Sequence[int],
    out_dim: int,
    activation: str = "tanh",
    ortho_init: bool = True,
    out_gain: float = 1.0,
) -> nn.Sequential:
    """``Linear -> act -> ... -> Linear`` with optional orthogonal init.

    With ``ortho_init`` hidden layers get gain ``sqrt(2)`` and the output layer ``out_gain``,
    biases zero (the PPO implementation-details recipe); otherwise PyTorch's default init.
    """
    act = activation_cls(activation)
    layers: list[nn.Module] = []
    last = in_dim
    for h in hidden_sizes:
        lin = nn.Linear(last, h)
        if ortho_init:
            nn.init.orthogonal_(lin.weight, math.sqrt(2.0))
            nn.init.zeros_(lin.bias)
        layers += [lin, act()]
        last = h
    out = nn.Linear(last, out_dim)
    if ortho_init:
        nn.init.orthogonal_(out.weight, out_gain)
        nn.init.zeros_(out.bias)
    layers.append(out)
    return nn.Sequential(*layers)
