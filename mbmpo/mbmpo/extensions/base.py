"""The plug-in protocol of MB-MPO: how a research idea hooks into the loop of Algorithm 1
without touching it.

The core calls every enabled plug-in, in order, at these points of an iteration::

    real rollout     -> label_real(rollout)          extra per-row columns of the real data set
    model fit        -> fit_real(data)               fit on the real data set (after the models)
    imagined step    -> reward_cost(step)            subtracted from each imagined reward
    imagined starts  -> start_rows(idx, data, gen)   replace some of the drawn start rows
    pre-update batch -> on_imagined(rollout)         fit on the meta-step's pre-update rollouts
    imagined horizon -> bootstrap(next_obs, term)    added to the last imagined reward
    checkpoint       -> state_dict() / load_state_dict(state)

Every method is optional: the base class does nothing. A plug-in that draws random numbers
uses the run's generators (``algo.generator`` on the host, ``algo.device_generator`` or the one
it is handed on ``algo.device``), so seeded runs stay reproducible. Networks live on
``algo.device``; the real data set a plug-in is handed (``fit_real``, ``start_rows``) is there
too, real rollouts (``label_real``) are on the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from dynamics.model_env import ImaginedStep

if TYPE_CHECKING:
    from mbmpo.buffers import Rollout


class Plugin:
    """Base class of MB-MPO plug-ins; override what the idea needs.

    Class attributes:
        name: key of the plug-in's state in checkpoints (unique per run).
        cost_key: log key of the mean :meth:`reward_cost` per imagined step.
        bootstrap_key: log key of the mean :meth:`bootstrap` value per imagined rollout.
        uncertainty: the kind of ensemble uncertainty :meth:`reward_cost` needs in
            ``step.uncertainty`` ('disagreement' or 'aleatoric'), None when it needs none.
    """

    name: ClassVar[str] = "plugin"
    cost_key: ClassVar[str | None] = None
    bootstrap_key: ClassVar[str | None] = None
    uncertainty: str | None = None

    def setup(self, algo: Any) -> None:
        """Called once when the MB-MPO run is built (``algo`` is the :class:`MBMPO` instance);
        build networks and optimizers here."""
        self.algo = algo

    def dataset_columns(self) -> dict[str, float]:
        """Extra float columns of the real data set: ``{name: fill value}``."""
        return {}

    def label_real(self, rollout: Rollout) -> dict[str, Tensor]:
        """Values ``[T, N]`` of this plug-in's columns for a new real rollout."""
        return {}

    def fit_real(self, data: dict[str, Tensor]) -> dict[str, float]:
        """Fit on the real data set (``TransitionDataset.arrays()``) after the model fit;
        returns scalars to log."""
        return {}

    def on_imagined(self, rollout: Rollout) -> dict[str, float]:
        """Called with each meta-step's pre-update imagined rollout ``[H, N, ...]`` before
        advantages are computed; returns scalars to log."""
        return {}

    def reward_cost(self, step: ImaginedStep) -> Tensor | None:
        """A cost ``[N]`` subtracted from each imagined reward (None: no cost)."""
        return None

    def bootstrap(self, next_obs: Tensor, terminated: Tensor) -> Tensor | None:
        """A value ``[N]`` added to the last reward of imagined rollouts that reach the horizon
        (``next_obs [N, obs_dim]`` the last reached states, ``terminated [N]``); None: none."""
        return None

    def start_rows(self, idx: Tensor, data: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        """Imagined start states drawn from the real data set: ``idx [n]`` are the uniformly
        drawn rows of ``data``; return the rows to start from (default: unchanged)."""
        return idx

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this plug-in (tensors, numbers, dicts of them)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    @property
    def has_reward_cost(self) -> bool:
        return type(self).reward_cost is not Plugin.reward_cost

    @property
    def has_bootstrap(self) -> bool:
        return type(self).bootstrap is not Plugin.bootstrap


def seeded_value_net(algo: Any, seed_offset: int, in_dim: int):
    """An MLP of the run's ``value_hidden_sizes`` on the run's device, built under ``seed +
    seed_offset`` (so a plug-in's initial weights do not depend on which other plug-ins are enabled)."""
    from policies import MLPValue

    c = algo.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed + seed_offset)
        return MLPValue(in_dim, c.value_hidden_sizes, c.activation, c.ortho_init).to(algo.device)
