"""Uncertainty-penalized imagined rewards ``r - lambda * u(s, a)`` (MOPO, Yu et al. 2020): the
policy gains nothing from states and actions where the models disagree or are unsure.

``relative: true`` states the penalty in units that carry across tasks (MOPO's bound on the
value error scales with the reward's range; a fixed weight in the models' units does not):

    cost(s, a) = lambda * sigma_r * max(0, u(s, a) / u_ref - 1)

with ``sigma_r`` the std of the real rewards per step (newest rows, after every model fit) and
``u_ref`` a quantile of ``u`` on real (s, a): by default on each new real batch before the
models are fitted to it (``ref_on: fresh``, their disagreement on data like the policy's that
they have not trained on), or after the fit on the newest rows (``fitted``, an in-sample level
that shrinks as the models fit their data). Below ``u_ref`` the cost is zero, so on tasks that
end early (Hopper, Walker2d, Ant) a penalty paid on every step does not make ending the episode
pay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dynamics.ensemble import UNCERTAINTIES
from mbmpo.errors import ConfigError
from mbmpo.mbmpo.extensions.base import ImaginedStep, Plugin

if TYPE_CHECKING:
    from mbmpo.buffers import Rollout


@dataclass
class UncertaintyPenaltyConfig:
    """Settings of the uncertainty penalty (``coef`` 0 = off)."""

    coef: float = 0.0
    """lambda of ``r - lambda * u(s, a)``; ``u`` is in normalized state-change units. 0 = off."""
    uncertainty: str = "disagreement"
    """``u``: 'disagreement' (spread of the K models' mean predictions) or 'aleatoric' (the
    largest predicted std of the K models, MOPO's; needs probabilistic models)."""
    relative: bool = False
    """False: ``cost = coef * u``. True: ``cost = coef * sigma_r * max(0, u / u_ref - 1)``, the
    excess of ``u`` over its level on real data, in real-reward stds (module docstring)."""
    ref_quantile: float = 0.9
    """``u_ref`` (relative only): this quantile of ``u`` over the ``ref_rows`` newest real rows."""
    ref_rows: int = 5000
    """Newest real (s, a) rows ``u_ref`` and ``sigma_r`` are measured on (relative only)."""
    ref_on: str = "fresh"
    """Where ``u_ref`` is measured (relative only): 'fresh' (each new real batch, before the fit)
    or 'fitted' (the newest rows, after the fit)."""

    @property
    def enabled(self) -> bool:
        return self.coef > 0

    def validate(self, core: Any) -> None:
        if not (self.coef >= 0 and math.isfinite(self.coef)):
            raise ConfigError(f"uncertainty_penalty.coef must be a finite number >= 0 (0 = off), got {self.coef}")
        if self.uncertainty not in UNCERTAINTIES:
            raise ConfigError(f"uncertainty_penalty.uncertainty {self.uncertainty!r} is not allowed; "
                              f"use one of {list(UNCERTAINTIES)}")
        if self.enabled and self.uncertainty == "aleatoric" and core.model_type != "probabilistic":
            raise ConfigError("uncertainty_penalty.uncertainty 'aleatoric' needs model_type 'probabilistic'")
        if not 0.0 < self.ref_quantile <= 1.0:
            raise ConfigError(f"uncertainty_penalty.ref_quantile must be in (0, 1], got {self.ref_quantile}")
        if self.ref_rows < 1:
            raise ConfigError(f"uncertainty_penalty.ref_rows must be >= 1, got {self.ref_rows}")
        if self.ref_on not in ("fresh", "fitted"):
            raise ConfigError(f"uncertainty_penalty.ref_on {self.ref_on!r} is not allowed; use one of ['fresh', 'fitted']")


def relative_penalty(u: Tensor, u_ref: float, reward_std: float, coef: float) -> Tensor:
    """``coef * reward_std * max(0, u / u_ref - 1)`` for uncertainties ``u [N]`` -> ``[N]``."""
    return coef * reward_std * torch.clamp(u / u_ref - 1.0, min=0.0)


class UncertaintyPenalty(Plugin):
    """Subtracts ``coef * u(s, a)`` (or its relative form) from every imagined reward; logs its
    mean as ``imagined/penalty``."""

    name = "uncertainty_penalty"
    cost_key = "imagined/penalty"

    def __init__(self, config: UncertaintyPenaltyConfig):
        self.config = config
        self.uncertainty = config.uncertainty
        # until the first fit has measured them: u_ref = inf makes the relative cost zero
        self.u_ref, self.reward_std = math.inf, 0.0

    def _measure_u_ref(self, obs: Tensor, act: Tensor) -> None:
        """``u_ref`` <- the ``ref_quantile`` of the models' ``u`` on real ``obs [B, obs_dim]``, ``act [B, act_dim]``."""
        c = self.config
        dev = self.algo.device
        model_idx = torch.zeros(len(obs), dtype=torch.long, device=dev)
        with torch.no_grad():
            u = self.algo.ensemble.predict_with_uncertainty(obs.to(dev, torch.float32), act.to(dev, torch.float32),
                                                            model_idx, c.uncertainty)[2].double()
        # the floor keeps identical models from dividing by zero
        self.u_ref = max(float(torch.quantile(u, c.ref_quantile)), 1e-8)

    def label_real(self, rollout: Rollout) -> dict[str, Tensor]:
        c = self.config
        # before the first fit (an empty data set) the models are untrained: nothing to measure
        if c.relative and c.ref_on == "fresh" and len(self.algo.dataset) > 0:
            act = self.algo.applied_actions(rollout.actions)
            self._measure_u_ref(rollout.obs.reshape(-1, rollout.obs.shape[-1])[-c.ref_rows:],
                                act.reshape(-1, act.shape[-1])[-c.ref_rows:])
        return {}

    def fit_real(self, data: dict[str, Tensor]) -> dict[str, float]:
        c = self.config
        if not c.relative:
            return {}
        if c.ref_on == "fitted":
            self._measure_u_ref(data["obs"][-c.ref_rows:], data["act"][-c.ref_rows:])
        self.reward_std = float(data["reward"][-c.ref_rows:].double().std(unbiased=False))
        return {"imagined/penalty_u_ref": self.u_ref, "imagined/penalty_reward_std": self.reward_std}

    def reward_cost(self, step: ImaginedStep) -> Tensor:
        assert step.uncertainty is not None
        c = self.config
        if c.relative:
            return relative_penalty(step.uncertainty, self.u_ref, self.reward_std, c.coef)
        return c.coef * step.uncertainty

    def state_dict(self) -> dict[str, Any]:
        return {"u_ref": self.u_ref, "reward_std": self.reward_std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # checkpoints written before the relative form hold no state for this plug-in
        self.u_ref = float(state.get("u_ref", math.inf))
        self.reward_std = float(state.get("reward_std", 0.0))
