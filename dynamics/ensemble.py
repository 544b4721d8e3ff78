"""Ensemble of K deterministic MLP dynamics models predicting normalized state changes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mbmpo.normalization import RunningMeanStd
from policies.mlp import mlp


class DynamicsEnsemble(nn.Module):
    """K MLPs ``f_k(norm([s_feat, a])) -> norm(s' - s)`` (+ optionally a reward).

    ``s_feat`` is the observation without its first ``num_position_dims`` entries (absolute
    planar position: the dynamics are translation invariant); the target is the change of
    the *full* observation, so positions are still predicted. Input and target statistics
    are recomputed on the whole dataset at each fit (:meth:`set_normalization`).

    The forward pass is a plain loop over the K models: measured faster on CPU than one
    batched ``[K, in, out]`` matmul or ``torch.vmap`` (benchmarks/dynamics_forward.py).

    Args:
        obs_dim: full observation size.
        act_dim: action size.
        num_models: K.
        hidden_sizes: hidden layer sizes of every model.
        activation: hidden activation name.
        num_position_dims: leading observation entries left out of the model input.
        weight_norm: reparametrize every linear layer with weight normalization.
        reward_head: also predict the reward (for envs without an exact reward function).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        num_models: int = 5,
        hidden_sizes: Sequence[int] = (512, 512),
        activation: str = "relu",
        num_position_dims: int = 0,
        weight_norm: bool = False,
        reward_head: bool = False,
    ):
        super().__init__()
        if num_models < 1:
            raise ValueError(f"num_models must be >= 1, got {num_models}")
        self.obs_dim, self.act_dim, self.num_models = obs_dim, act_dim, num_models
        self.num_position_dims = num_position_dims
        self.reward_head = reward_head
        self.in_dim = obs_dim - num_position_dims + act_dim
        self.out_dim = obs_dim + int(reward_head)
        self.models = nn.ModuleList(
            mlp(self.in_dim, hidden_sizes, self.out_dim, activation, ortho_init=False)
            for _ in range(num_models)
        )
        if weight_norm:
            for m in self.models:
                for i, layer in enumerate(m):
                    if isinstance(layer, nn.Linear):
                        m[i] = nn.utils.parametrizations.weight_norm(layer)
        self.in_rms = RunningMeanStd(self.in_dim)
        self.out_rms = RunningMeanStd(self.out_dim)

    def inputs(self, obs: Tensor, act: Tensor) -> Tensor:
        """``[..., obs_dim], [..., act_dim] -> [..., in_dim]`` (unnormalized)."""
        return torch.cat([obs[..., self.num_position_dims :], act], dim=-1)

    def targets(self, obs: Tensor, next_obs: Tensor, reward: Tensor | None = None) -> Tensor:
        """``[..., out_dim]`` unnormalized targets: ``next_obs - obs`` (and the reward)."""
        delta = next_obs - obs
        if self.reward_head:
            if reward is None:
                raise ValueError("this ensemble has a reward head: targets() needs the reward")
            delta = torch.cat([delta, reward.unsqueeze(-1)], dim=-1)
        return delta

    @torch.no_grad()
    def set_normalization(self, obs: Tensor, act: Tensor, next_obs: Tensor,
                          reward: Tensor | None = None) -> None:
        """Recompute input and target mean/std on a whole dataset ``[B, ...]``."""
        self.in_rms.reset()
        self.out_rms.reset()
        self.in_rms.update(self.inputs(obs, act))
        self.out_rms.update(self.targets(obs, next_obs, reward))

    def forward_model(self, k: int, x_norm: Tensor) -> Tensor:
        """Model k on normalized inputs ``[B, in_dim] -> [B, out_dim]`` (normalized)."""
        return self.models[k](x_norm)

    def forward(self, x_norm: Tensor) -> Tensor:
        """Every model on its own batch: ``[K, B, in_dim] -> [K, B, out_dim]`` (normalized)."""
        return torch.stack([m(x_norm[k]) for k, m in enumerate(self.models)])

    def predict_k(self, k: int, obs: Tensor, act: Tensor) -> tuple[Tensor, Tensor | None]:
        """Model k: ``obs [B, obs_dim], act [B, act_dim] -> (next_obs [B, obs_dim], reward [B] | None)``."""
        x = self.in_rms.normalize(self.inputs(obs, act).float())
        y = self.out_rms.denormalize(self.models[k](x)).to(obs.dtype)
        next_obs = obs + y[..., : self.obs_dim]
        return next_obs, (y[..., self.obs_dim] if self.reward_head else None)

    def predict(self, obs: Tensor, act: Tensor, model_idx: Tensor | Sequence[tuple[int, Tensor]]
                ) -> tuple[Tensor, Tensor | None]:
        """Row i predicted by model ``model_idx[i]``.

        Args:
            obs: ``[B, obs_dim]``; act: ``[B, act_dim]``.
            model_idx: ``[B]`` long tensor, or precomputed groups ``[(k, row_indices)]``
                (cheaper when the assignment is fixed, as in :class:`ImaginedEnv`).

        Returns:
            ``(next_obs [B, obs_dim], reward [B] or None)``.
        """
        groups = group_rows(model_idx) if isinstance(model_idx, Tensor) else model_idx
        next_obs = torch.empty_like(obs)
        reward = torch.empty(obs.shape[0], dtype=obs.dtype, device=obs.device) if self.reward_head else None
        for k, rows in groups:
            nxt, rew = self.predict_k(k, obs[rows], act[rows])
            next_obs[rows] = nxt
            if reward is not None:
                reward[rows] = rew
        return next_obs, reward


def group_rows(model_idx: Tensor) -> list[tuple[int, Tensor]]:
    """``[B]`` model indices -> ``[(k, rows of model k)]`` for the models present."""
    return [(int(k), torch.nonzero(model_idx == k).squeeze(-1)) for k in torch.unique(model_idx)]
