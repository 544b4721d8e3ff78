"""Distributed PPO (Heess et al. 2017, appendix A) on ``torch.distributed``.

* :mod:`~mbmpo.baselines.dppo.config`: :class:`DPPOConfig`;
* :mod:`~mbmpo.baselines.dppo.worker`: :class:`DPPO`, the algorithm as run by each worker
  (collection, merged normalization, averaged gradient steps with the per-worker KL stop,
  D-of-W updates that drop late gradients or preempt slow collection, the KL-penalty rule);
* :mod:`~mbmpo.baselines.dppo.launcher`: :func:`launch`, spawning W local workers or running
  as one worker under ``torchrun``.

Example::

    from mbmpo.baselines.dppo import DPPOConfig, launch
    launch("runs/dppo", DPPOConfig(env_id="HalfCheetah-v5"), num_workers=2)
"""

from mbmpo.baselines.dppo.config import (
    KL_COEF_RULES,
    KL_STOP_RULES,
    POLICY_TYPES,
    STRAGGLER_MODES,
    DPPOConfig,
)
from mbmpo.baselines.dppo.launcher import launch
from mbmpo.baselines.dppo.worker import DPPO
from mbmpo.kl_penalty import adapt_kl_coef_per_worker

__all__ = ["DPPO", "KL_COEF_RULES", "KL_STOP_RULES", "POLICY_TYPES", "STRAGGLER_MODES", "DPPOConfig",
           "adapt_kl_coef_per_worker", "launch"]
