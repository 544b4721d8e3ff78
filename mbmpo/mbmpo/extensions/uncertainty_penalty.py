"""Uncertainty-penalized imagined rewards ``r - lambda * u(s, a)`` (MOPO, Yu et al. 2020): the
policy gains nothing from states and actions where the models disagree or are unsure."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from dynamics.ensemble import UNCERTAINTIES
from mbmpo.errors import ConfigError
from mbmpo.mbmpo.extensions.base import ImaginedStep, Plugin


@dataclass
class UncertaintyPenaltyConfig:
    """Settings of the uncertainty penalty (``coef`` 0 = off)."""

    coef: float = 0.0
    """lambda of ``r - lambda * u(s, a)``; ``u`` is in normalized state-change units. 0 = off."""
    uncertainty: str = "disagreement"
    """``u``: 'disagreement' (spread of the K models' mean predictions) or 'aleatoric' (the
    largest predicted std of the K models, MOPO's; needs probabilistic models)."""

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


class UncertaintyPenalty(Plugin):
    """Subtracts ``coef * u(s, a)`` from every imagined reward; logs its mean as ``imagined/penalty``."""

    name = "uncertainty_penalty"
    cost_key = "imagined/penalty"

    def __init__(self, config: UncertaintyPenaltyConfig):
        self.config = config
        self.uncertainty = config.uncertainty

    def reward_cost(self, step: ImaginedStep) -> Tensor:
        assert step.uncertainty is not None
        return self.config.coef * step.uncertainty
