"""MB-MPO (Clavera, Rothfuss et al., CoRL 2018): the loop of Algorithm 1 (:mod:`.algorithm`),
its config (:mod:`.config`), sample processing (:mod:`.task_batch`), outer steps
(:mod:`.outer`) and plug-ins (:mod:`.extensions`)."""

from __future__ import annotations

from mbmpo.mbmpo.algorithm import MBMPO
from mbmpo.mbmpo.config import MBMPOConfig
from mbmpo.mbmpo.extensions import ImaginedStep, Plugin

__all__ = ["MBMPO", "MBMPOConfig", "ImaginedStep", "Plugin"]
