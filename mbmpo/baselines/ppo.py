"""Proximal Policy Optimization (Schulman et al. 2017) with the MuJoCo implementation
details of Huang et al. (2022), and the four surrogate objectives of the PPO paper's Table 1.

Objectives (``PPOConfig.objective``), with ``r_t = pi(a_t|s_t) / pi_old(a_t|s_t)``:

* ``"clip"``:        ``E[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)]`` (paper eq. 7)
* ``"none"``:        ``E[r_t A_t]`` (no clipping or penalty)
* ``"adaptive_kl"``: ``E[r_t A_t] - beta KL[pi_old, pi]``, beta halved when the KL after the
  update is below ``kl_target / 1.5`` and doubled above ``kl_target * 1.5`` (eq. 8)
* ``"fixed_kl"``:    the same penalty with a constant beta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mbmpo.buffers import Rollout
from mbmpo.config import BaseConfig, _in_range, _positive
from mbmpo.errors import ConfigError
from mbmpo.kl_penalty import ppo_adapt_kl_coef
from mbmpo.objectives import clipped_surrogate
from mbmpo.on_policy import OnPolicyAlgorithm
from mbmpo.returns import explained_variance, normalize_advantages

OBJECTIVES = ("clip", "none", "adaptive_kl", "fixed_kl")


@dataclass
class PPOConfig(BaseConfig):
    """PPO settings; defaults follow CleanRL's ``ppo_continuous_action`` (Huang et al. 2022)."""

    learning_rate: float = 3e-4
    """Adam learning rate (policy and value share one optimizer)."""
    anneal_lr: bool = True
    """Linearly anneal the learning rate to 0 over the training budget."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    update_epochs: int = 10
    """Passes over each batch."""
    minibatch_size: int = 64
    """Samples per gradient step."""
    objective: str = "clip"
    """Surrogate objective: clip, none, adaptive_kl or fixed_kl."""
    clip_coef: float = 0.2
    """Clipping epsilon of the 'clip' objective."""
    kl_coef: float = 1.0
    """Initial (adaptive_kl) or constant (fixed_kl) KL penalty coefficient beta."""
    kl_target: float = 0.01
    """d_target of the adaptive KL penalty."""
    norm_adv: bool = True
    """Normalize advantages per minibatch."""
    clip_vloss: bool = False
    """Clip the value update around the old value prediction (by clip_coef)."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient (the distribution's exact entropy)."""
    vf_coef: float = 0.5
    """Value loss coefficient; the value loss is 0.5 * mean squared error."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip (<= 0 disables)."""
    target_kl: float | None = None
    """Stop the epochs of an update early once the approximate KL exceeds this."""

    def validate(self) -> None:
        super().validate()
        _positive(self, "learning_rate", "update_epochs", "minibatch_size", "adam_eps")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective {self.objective!r} is not allowed; use one of {list(OBJECTIVES)}")
        _in_range(self, "clip_coef", 0.0, 10.0)
        if self.kl_coef < 0 or self.kl_target <= 0:
            raise ConfigError(f"kl_coef must be >= 0 and kl_target > 0, got {self.kl_coef}, {self.kl_target}")
        if self.minibatch_size > self.num_envs * self.num_steps:
            raise ConfigError(f"minibatch_size {self.minibatch_size} exceeds the batch "
                              f"num_envs * num_steps = {self.num_envs * self.num_steps}")


class PPO(OnPolicyAlgorithm):
    """PPO for Box (Gaussian policy) and Discrete (categorical policy) action spaces.

    Example::

        algo = PPO(PPOConfig(env_id="HalfCheetah-v5", total_steps=100_000), out_dir="runs/ppo")
        algo.learn()
        action = algo.predict(obs, deterministic=True)
    """

    algo_name = "ppo"
    config_cls = PPOConfig
    config: PPOConfig

    def _build_optimizers(self) -> None:
        self.params = list(self.policy.parameters()) + list(self.value_fn.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=self.config.learning_rate,
                                          eps=self.config.adam_eps, foreach=True)
        self.kl_coef = float(self.config.kl_coef)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {"kl_coef": self.kl_coef}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.kl_coef = float(state.get("kl_coef", self.config.kl_coef))

    def update(self, rollout: Rollout, advantages: Tensor, returns: Tensor) -> dict[str, float]:
        c = self.config
        if c.anneal_lr:
            frac = 1.0 - self.iteration / self.num_iterations(self.total_steps)
            for g in self.optimizer.param_groups:
                g["lr"] = frac * c.learning_rate
        obs = rollout.flat("obs")
        act = rollout.flat("actions")
        old_logp = rollout.flat("log_prob")
        old_val = rollout.flat("value")
        adv = advantages.reshape(-1)
        ret = returns.reshape(-1)
        use_kl = c.objective in ("adaptive_kl", "fixed_kl")
        with torch.no_grad():
            old_dist = self.policy(obs).detach() if use_kl else None
        n = obs.shape[0]
        rows: list[Tensor] = []  # per minibatch: policy loss, value loss, entropy, approx kl, clip frac
        for _epoch in range(c.update_epochs):
            perm = torch.randperm(n, generator=self.generator, device=self.generator.device).to(obs.device)
            # one gather per epoch; minibatches are then contiguous slices (views)
            e_obs, e_act, e_logp, e_adv, e_ret, e_val = (
                x[perm] for x in (obs, act, old_logp, adv, ret, old_val))
            e_old = old_dist.index(perm) if use_kl else None
            for start in range(0, n, c.minibatch_size):
                mb = slice(start, start + c.minibatch_size)
                dist = self.policy(e_obs[mb])
                logratio = dist.log_prob(e_act[mb]) - e_logp[mb]
                ratio = logratio.exp()
                mb_adv = normalize_advantages(e_adv[mb]) if c.norm_adv else e_adv[mb]
                if c.objective == "clip":
                    pg = clipped_surrogate(ratio, mb_adv, c.clip_coef)
                else:
                    pg = ratio * mb_adv
                pg_loss = -pg.mean()
                if use_kl:
                    pg_loss = pg_loss + self.kl_coef * e_old.index(mb).kl(dist).mean()
                entropy = dist.entropy().mean()
                v = self.value_fn(e_obs[mb])
                if c.clip_vloss:
                    v_clip = e_val[mb] + (v - e_val[mb]).clamp(-c.clip_coef, c.clip_coef)
                    v_loss = 0.5 * torch.max((v - e_ret[mb]) ** 2, (v_clip - e_ret[mb]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((v - e_ret[mb]) ** 2).mean()
                loss = pg_loss - c.ent_coef * entropy + c.vf_coef * v_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if c.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(self.params, c.max_grad_norm, foreach=True)
                self.optimizer.step()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfrac = ((ratio - 1).abs() > c.clip_coef).float().mean()
                    rows.append(torch.stack([pg_loss, v_loss, entropy, approx_kl, clipfrac]).detach())
            if c.target_kl is not None and rows[-1][3].item() > c.target_kl:
                break
        means = torch.stack(rows).mean(0).tolist()
        stats = {"loss/policy": means[0], "loss/value": means[1], "loss/entropy": means[2],
                 "train/approx_kl": means[3], "train/clip_fraction": means[4],
                 "train/learning_rate": self.optimizer.param_groups[0]["lr"]}
        with torch.no_grad():
            if use_kl:
                kl = old_dist.kl(self.policy(obs)).mean().item()
                stats["train/kl"] = kl
                stats["train/kl_coef"] = self.kl_coef
                if c.objective == "adaptive_kl":
                    self.kl_coef = ppo_adapt_kl_coef(self.kl_coef, kl, c.kl_target)
            stats["train/explained_variance"] = explained_variance(old_val, ret)
        return stats
