"""Distributed PPO (Heess et al. 2017, appendix A) on ``torch.distributed``.

* :mod:`~mbmpo.baselines.dppo.config`: :class:`DPPOConfig`;
* :mod:`~mbmpo.baselines.dppo.worker`: :class:`DPPO`, the algorithm as run by each worker
  (collection with straggler preemption, merged normalization, averaged gradient steps, the
  KL-penalty rule);
* :mod:`~mbmpo.baselines.dppo.launcher`: :func:`launch`, spawning W local workers or running
  as one worker under ``torchrun``.

Example::

    from mbmpo.baselines.dppo import DPPOConfig, launch
    launch("runs/dppo", DPPOConfig(env_id="HalfCheetah-v5"), num_workers=2)
"""

from mbmpo.baselines.dppo.config import KL_COEF_RULES, POLICY_TYPES, DPPOConfig
from mbmpo.baselines.dppo.launcher import launch
from mbmpo.baselines.dppo.worker import DPPO, adapt_kl_coef_per_worker

__all__ = ["DPPO", "KL_COEF_RULES", "POLICY_TYPES", "DPPOConfig", "adapt_kl_coef_per_worker",
           "launch"]
