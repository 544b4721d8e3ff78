"""Q-network for value-based methods (Gorila / DQN) over discrete or discretized actions.

One network covers the three action layouts:

* ``Discrete(n)``: one head with ``n`` outputs, ``action_nvec = (n,)``;
* a joint product of discretized joints (``DiscretizeActions(..., "joint")``): one head with
  ``prod(bins)`` outputs;
* independent per-joint heads (``DiscretizeActions(..., "factorized")``, a
  ``MultiDiscrete(bins)`` space): ``H = act_dim`` heads, head ``h`` scoring the ``bins[h]``
  values of joint ``h``. Heads with fewer bins than the largest are padded with ``-inf``.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import torch
from torch import Tensor, nn

from policies.mlp import mlp


def action_nvec(space: gym.Space) -> tuple[int, ...]:
    """Actions per head for a ``Discrete`` (one head) or 1-D ``MultiDiscrete`` space."""
    if isinstance(space, gym.spaces.Discrete):
        return (int(space.n),)
    if isinstance(space, gym.spaces.MultiDiscrete) and len(space.shape) == 1:
        return tuple(int(n) for n in space.nvec)
    raise ValueError(f"action space {space} is not supported by a Q-network: allowed are "
                     "Discrete or a 1-D MultiDiscrete (discretize Box actions with "
                     "mbmpo.wrappers.DiscretizeActions)")


class QNetwork(nn.Module):
    """``Q(obs [B, obs_dim]) -> [B, H, n_max]``: an MLP torso and ``H`` linear heads.

    Args:
        obs_dim: observation size.
        action_nvec: actions per head (see module docstring).
        hidden_sizes, activation, ortho_init: the MLP (``policies.mlp.mlp``).
    """

    def __init__(
        self,
        obs_dim: int,
        action_nvec: Sequence[int],
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "relu",
        ortho_init: bool = False,
    ):
        super().__init__()
        self.action_nvec = tuple(int(n) for n in action_nvec)
        if not self.action_nvec or min(self.action_nvec) < 1:
            raise ValueError(f"action_nvec must hold positive counts, got {list(action_nvec)}")
        self.num_heads = len(self.action_nvec)
        self.max_actions = max(self.action_nvec)
        self.net = mlp(obs_dim, hidden_sizes, self.num_heads * self.max_actions, activation,
                       ortho_init, out_gain=1.0)
        valid = torch.arange(self.max_actions) < torch.tensor(self.action_nvec).unsqueeze(-1)
        self._padded = not bool(valid.all())
        self.register_buffer("valid", valid, persistent=False)  # [H, n_max]

    def forward(self, obs: Tensor) -> Tensor:
        q = self.net(obs).reshape(*obs.shape[:-1], self.num_heads, self.max_actions)
        if self._padded:
            q = q.masked_fill(~self.valid, float("-inf"))
        return q

    def greedy(self, obs: Tensor) -> Tensor:
        """Greedy action per head ``[B, H]`` (int64)."""
        return self(obs).argmax(-1)


def random_actions(nvec: Tensor, batch: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform action per head ``[batch, H]``; ``nvec [H]`` counts per head."""
    u = torch.rand(batch, nvec.shape[0], generator=generator)
    return (u * nvec).long().clamp_max(nvec - 1)


def epsilon_greedy(q: Tensor, epsilon: float, generator: torch.Generator | None = None,
                   nvec: Tensor | None = None) -> Tensor:
    """ε-greedy actions ``[B, H]`` from Q-values ``q [B, H, n]``.

    With probability ``epsilon`` a row takes a uniformly random action in every head
    (one coin per row, i.e. per env step, not per head), otherwise the greedy one.
    ``nvec [H]`` limits the random draw per head (default ``n`` everywhere).
    """
    b, h, n = q.shape
    nvec = torch.full((h,), n) if nvec is None else nvec
    greedy = q.argmax(-1)
    if epsilon <= 0.0:
        return greedy
    explore = torch.rand(b, generator=generator) < epsilon
    return torch.where(explore.unsqueeze(-1), random_actions(nvec, b, generator), greedy)
