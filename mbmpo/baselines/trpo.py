"""Trust Region Policy Optimization (Schulman et al. 2015) as a model-free baseline.

The policy step is :func:`mbmpo.trpo.trpo_step` (conjugate gradient on Fisher-vector
products + KL-enforcing backtracking line search); the value function is fit by Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mbmpo.buffers import Rollout
from mbmpo.config import BaseConfig, _positive
from mbmpo.errors import ConfigError
from mbmpo.on_policy import OnPolicyAlgorithm
from mbmpo.returns import explained_variance, normalize_advantages
from mbmpo.trpo import trpo_step


@dataclass
class TRPOConfig(BaseConfig):
    """TRPO settings; defaults follow common MuJoCo TRPO setups (KL 0.01, GAE 0.97)."""

    num_steps: int = 5000
    """Steps per env copy per iteration."""
    gae_lambda: float = 0.97
    """GAE lambda."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return."""
    max_kl: float = 0.01
    """Trust-region size delta: mean KL[pi_old, pi_new] <= max_kl."""
    cg_iters: int = 10
    """Conjugate-gradient iterations."""
    cg_damping: float = 0.1
    """Damping added to the Fisher-vector product."""
    backtrack_coeff: float = 0.8
    """Line-search step shrink factor."""
    max_backtracks: int = 10
    """Line-search attempts before the step is rejected."""
    ent_coef: float = 0.0
    """Entropy bonus in the surrogate."""
    vf_learning_rate: float = 1e-3
    """Adam learning rate of the value function."""
    vf_epochs: int = 5
    """Value-function passes per batch."""
    vf_minibatch_size: int = 64
    """Value-function minibatch size."""

    def validate(self) -> None:
        super().validate()
        _positive(self, "max_kl", "cg_iters", "max_backtracks", "vf_learning_rate", "vf_epochs",
                  "vf_minibatch_size")
        if not 0 < self.backtrack_coeff < 1:
            raise ConfigError(f"backtrack_coeff must be in (0, 1), got {self.backtrack_coeff}")
        if self.cg_damping < 0:
            raise ConfigError(f"cg_damping must be >= 0, got {self.cg_damping}")


class TRPO(OnPolicyAlgorithm):
    """TRPO for Box and Discrete action spaces; same interface as :class:`PPO`."""

    algo_name = "trpo"
    config_cls = TRPOConfig
    config: TRPOConfig

    def _build_optimizers(self) -> None:
        self.vf_optimizer = torch.optim.Adam(self.value_fn.parameters(),
                                             lr=self.config.vf_learning_rate,
                                             foreach=True)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vf_optimizer": self.vf_optimizer}

    def update(self, rollout: Rollout, advantages: Tensor, returns: Tensor) -> dict[str, float]:
        c = self.config
        obs, act = rollout.flat("obs"), rollout.flat("actions")
        old_logp, old_val = rollout.flat("log_prob"), rollout.flat("value")
        adv = normalize_advantages(advantages.reshape(-1))
        ret = returns.reshape(-1)
        with torch.no_grad():
            old_dist = self.policy(obs).detach()

        def surrogate() -> Tensor:
            dist = self.policy(obs)
            ratio = (dist.log_prob(act) - old_logp).exp()
            return (ratio * adv).mean() + c.ent_coef * dist.entropy().mean()

        def mean_kl() -> Tensor:
            return old_dist.kl(self.policy(obs)).mean()

        info = trpo_step(list(self.policy.parameters()), surrogate, mean_kl, c.max_kl,
                         c.cg_damping, c.cg_iters, c.backtrack_coeff, c.max_backtracks)
        n = obs.shape[0]
        v_losses = []
        for _ in range(c.vf_epochs):
            perm = torch.randperm(n, generator=self.generator, device=self.generator.device)
            for start in range(0, n, c.vf_minibatch_size):
                idx = perm[start : start + c.vf_minibatch_size].to(obs.device)
                v_loss = 0.5 * ((self.value_fn(obs[idx]) - ret[idx]) ** 2).mean()
                self.vf_optimizer.zero_grad(set_to_none=True)
                v_loss.backward()
                self.vf_optimizer.step()
                v_losses.append(v_loss.detach())
        with torch.no_grad():
            entropy = self.policy(obs).entropy().mean().item()
        return {
            "loss/surrogate_before": info.surrogate_before,
            "loss/surrogate_after": info.surrogate_after,
            "loss/value": torch.stack(v_losses).mean().item(),
            "loss/entropy": entropy,
            "train/kl": info.kl,
            "train/step_accepted": float(info.accepted),
            "train/step_fraction": info.step_fraction,
            "train/num_backtracks": float(info.num_backtracks),
            "train/expected_improve": info.expected_improve,
            "train/explained_variance": explained_variance(old_val, ret),
        }
