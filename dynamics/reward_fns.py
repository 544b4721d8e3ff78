"""Exact reward and termination functions of the gymnasium MuJoCo v5 locomotion tasks.

Each function takes the *full* observation that ``gymnasium.make(env_id,
exclude_current_positions_from_observation=False)`` produces, so forward velocity is the
exact ``(x' - x) / dt`` rather than the velocity in the next observation (which differs
from the env's reward: RMSE 0.28 on HalfCheetah-v5). Inputs are torch tensors with any
leading batch dimensions: ``obs, next_obs [..., obs_dim]``, ``act [..., act_dim]`` (the
action as applied, i.e. clipped to the action bounds); outputs are ``[...]``.

Exactness, measured by ``tests/test_reward_fns.py`` on random and perturbed-policy rollouts
in float64: HalfCheetah, Hopper, Walker2d and Swimmer match the env's reward to < 1e-6 and
its termination exactly. Ant-v5 is not exact: the env takes forward velocity from the
torso's body position ``xpos``, which its RK4 integrator leaves at the kinematics of its last
stage (a prediction of the step's end state, not the end state itself: 0.0002 mean, 0.005 max
from the final x on random steps), so the qpos-based ``(x' - x) / dt`` differs (measured on
2000 random steps: mean |error| 0.004, max 0.053; reward error max 0.075). The stage states
are not in the observation, so no function of it removes the error; a correction by the last
substep's velocity (``x - h v``) made it about twelve times larger
(``benchmarks/ant_reward_error.py``). Its termination agrees exactly. Made with
``include_cfrc_ext_in_observation=False`` (29 entries instead of 107, as model-based work
often truncates Ant), the observation holds no contact forces and the function leaves out the
contact cost they give: 0.0013 per step on random actions (max 0.009), below the error above.
Hopper's health check in the env uses the unclipped joint velocities while the observation
holds them clipped to +-10, so a velocity above 100 (not seen in practice) would be judged
healthy here.
Observations must be float64 for the 1e-4 bound: in float32 the x position's rounding
alone gives errors around 1e-3 once the agent is far from the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mbmpo.errors import ConfigError


@dataclass(frozen=True)
class RewardFn:
    """Reward/termination of one env on full observations.

    Attributes:
        env_id: gymnasium id.
        dt: control time step (frame_skip x timestep).
        num_position_dims: leading observation entries that are absolute positions in the
            plane (x, or x and y); policies and models drop them (translation invariance).
        ctrl_cost_weight: weight of ``sum(a^2)``.
        healthy_reward: per-step bonus while healthy (0 for envs without one).
    """

    env_id: str
    dt: float
    num_position_dims: int
    ctrl_cost_weight: float
    healthy_reward: float = 0.0

    def forward_velocity(self, obs: Tensor, next_obs: Tensor) -> Tensor:
        return (next_obs[..., 0] - obs[..., 0]) / self.dt

    def is_healthy(self, next_obs: Tensor) -> Tensor:
        return torch.ones(next_obs.shape[:-1], dtype=torch.bool, device=next_obs.device)

    def extra_cost(self, next_obs: Tensor) -> Tensor:
        return torch.zeros(next_obs.shape[:-1], dtype=next_obs.dtype, device=next_obs.device)

    def reward(self, obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
        r = self.forward_velocity(obs, next_obs) - self.ctrl_cost_weight * act.pow(2).sum(-1)
        if self.healthy_reward:
            r = r + self.healthy_reward * self.is_healthy(next_obs).to(r.dtype)
        return r - self.extra_cost(next_obs)

    def termination(self, next_obs: Tensor) -> Tensor:
        """``[...]`` bool: the episode ends after reaching ``next_obs``."""
        if not self.healthy_reward:
            return torch.zeros(next_obs.shape[:-1], dtype=torch.bool, device=next_obs.device)
        return ~self.is_healthy(next_obs)

    def env_kwargs(self) -> dict[str, bool]:
        """``gymnasium.make`` keywords that give the observation these functions expect."""
        if self.num_position_dims == 0:
            return {}
        return {"exclude_current_positions_from_observation": False}

    def policy_obs(self, obs: Tensor) -> Tensor:
        """The observation without absolute planar position: what policies and models see."""
        return obs[..., self.num_position_dims :]


@dataclass(frozen=True)
class HopperRewardFn(RewardFn):
    def is_healthy(self, next_obs: Tensor) -> Tensor:
        # obs = [x, z, angle, 3 joint angles, 6 velocities (clipped to +-10)]
        z, angle, state = next_obs[..., 1], next_obs[..., 2], next_obs[..., 2:]
        ok_state = ((state > -100.0) & (state < 100.0)).all(-1)
        return ok_state & (z > 0.7) & (angle > -0.2) & (angle < 0.2)


@dataclass(frozen=True)
class Walker2dRewardFn(RewardFn):
    def is_healthy(self, next_obs: Tensor) -> Tensor:
        z, angle = next_obs[..., 1], next_obs[..., 2]
        return (z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0)


@dataclass(frozen=True)
class AntRewardFn(RewardFn):
    contact_cost_weight: float = 5e-4
    state_dim: int = 29  # qpos (15) + qvel (14); contact forces follow

    def is_healthy(self, next_obs: Tensor) -> Tensor:
        z = next_obs[..., 2]
        finite = torch.isfinite(next_obs[..., : self.state_dim]).all(-1)
        return finite & (z >= 0.2) & (z <= 1.0)

    def extra_cost(self, next_obs: Tensor) -> Tensor:
        # already clipped to [-1, 1] by the env; none with include_cfrc_ext_in_observation=False,
        # whose observation leaves the (small) contact cost unobserved
        forces = next_obs[..., self.state_dim :]
        return self.contact_cost_weight * forces.pow(2).sum(-1)


REWARD_FNS: dict[str, RewardFn] = {
    "HalfCheetah-v5": RewardFn("HalfCheetah-v5", dt=0.05, num_position_dims=1, ctrl_cost_weight=0.1),
    "Hopper-v5": HopperRewardFn("Hopper-v5", dt=0.008, num_position_dims=1, ctrl_cost_weight=1e-3,
                                healthy_reward=1.0),
    "Walker2d-v5": Walker2dRewardFn("Walker2d-v5", dt=0.008, num_position_dims=1,
                                    ctrl_cost_weight=1e-3, healthy_reward=1.0),
    "Swimmer-v5": RewardFn("Swimmer-v5", dt=0.04, num_position_dims=2, ctrl_cost_weight=1e-4),
    "Ant-v5": AntRewardFn("Ant-v5", dt=0.05, num_position_dims=2, ctrl_cost_weight=0.5,
                          healthy_reward=1.0),
}


def get_reward_fn(env_id: str) -> RewardFn:
    """The registered function for ``env_id``; ConfigError saying how to add one otherwise."""
    try:
        return REWARD_FNS[env_id]
    except KeyError:
        raise ConfigError(
            f"no reward function registered for env id {env_id!r} (registered: "
            f"{', '.join(sorted(REWARD_FNS))}); add one to dynamics.reward_fns.REWARD_FNS "
            "or enable the learned reward head"
        ) from None
