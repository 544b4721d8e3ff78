"""Imagined MDPs: batched rollouts in the learned models, behind the real envs' protocol."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dynamics.ensemble import DynamicsEnsemble, group_rows
from dynamics.reward_fns import RewardFn
from mbmpo.errors import TrainingError


@dataclass
class ImaginedStep:
    """One batched imagined step, as a reward cost sees it.

    Attributes:
        obs, next_obs: ``[N, obs_dim]`` full observations before and after the step.
        act: ``[N, act_dim]`` actions (clipped to the action bounds).
        reward: ``[N]`` reward of the step before any cost.
        uncertainty: ``[N]`` the ensemble's uncertainty at ``(obs, act)`` (same dtype as
            ``reward``) when the env was asked for one, else None.
    """

    obs: Tensor
    act: Tensor
    next_obs: Tensor
    reward: Tensor
    uncertainty: Tensor | None = None


InitFn = Callable[[int, torch.Generator], Tensor]
"""``(num_rows, generator) -> initial full observations [num_rows, obs_dim]``."""


class ImaginedEnv:
    """``N`` imagined environments; row ``i`` always steps with model ``model_idx[i]``.

    Follows the batched protocol of :mod:`mbmpo.envs` (SAME_STEP autoreset,
    ``info["final_obs"]``, ``info["episode"]``), so :func:`mbmpo.sampler.collect` runs on it
    unchanged. Rewards and terminations come from ``reward_fn`` (or the ensemble's reward
    head when ``reward_fn`` is None); episodes are truncated at ``horizon``.

    The env lives on the ensemble's device. With ``host_sync`` (True on the CPU) a step may
    read device values: it restarts only the rows that finished and raises on a NaN/inf
    prediction at once. Without it (an accelerator) a step never waits for the device: every
    row gets a fresh start drawn and the finished rows take theirs (``torch.where``), and the
    NaN/inf error waits for :meth:`check_rollout` at the end of the rollout.

    Args:
        ensemble: the dynamics models.
        model_idx: ``[N]`` long tensor, the model of each row.
        init_fn: draws initial full observations (real env resets or dataset states).
        horizon: imagined episode length.
        reward_fn: exact reward/termination; None uses the learned reward head (no termination).
        action_low, action_high: actions are clipped to these bounds before the model step.
        clip_obs: predicted observations are clipped to ``[-clip_obs, clip_obs]``.
        generator: random source of ``init_fn`` (and of the model draws).
        sample: with a probabilistic ensemble, each step draws the next state (and reward)
            from the model's Gaussian (PETS's trajectory sampling with fixed models per
            row); False steps with its mean. Ignored by deterministic ensembles.
        penalty_coef: lambda of the uncertainty-penalized reward ``r - lambda * u(s, a)`` (MOPO,
            Yu et al. 2020), which discourages the policy from exploiting states and
            actions where the models are unreliable; 0 = off (one model pass per row, not K).
        uncertainty: the kind of ``u`` (see :meth:`DynamicsEnsemble.predict_with_uncertainty`).
        state_cost: optional ``[N, obs_dim] -> [N]`` cost of reaching each predicted state,
            subtracted from its reward.
        costs: further named costs ``(key, fn)``, ``fn(ImaginedStep) -> [N]``, each subtracted
            from the reward in order after the two above (MB-MPO's plug-ins); ``mean_cost(key)``
            reports each one's mean per imagined step.
        cost_uncertainty: the kind of ensemble uncertainty the ``costs`` read from
            ``step.uncertainty`` (None: none, one model pass per row).
        compute_dtype: the models' layers run in this dtype during steps (see
            :meth:`DynamicsEnsemble.compute_dtype`); None: float32.
    """

    def __init__(
        self,
        ensemble: DynamicsEnsemble,
        model_idx: Tensor,
        init_fn: InitFn,
        horizon: int,
        reward_fn: RewardFn | None = None,
        action_low: np.ndarray | Tensor | None = None,
        action_high: np.ndarray | Tensor | None = None,
        clip_obs: float = 1000.0,
        generator: torch.Generator | None = None,
        sample: bool = True,
        penalty_coef: float = 0.0,
        uncertainty: str = "disagreement",
        state_cost: Callable[[Tensor], Tensor] | None = None,
        costs: Sequence[tuple[str, Callable[[ImaginedStep], Tensor]]] = (),
        cost_uncertainty: str | None = None,
        compute_dtype: torch.dtype | None = None,
    ):
        if reward_fn is None and not ensemble.reward_head:
            raise ValueError("ImaginedEnv needs a reward_fn or an ensemble with a reward head")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if not (penalty_coef >= 0 and math.isfinite(penalty_coef)):
            raise ValueError(f"penalty_coef must be a finite number >= 0, got {penalty_coef}")
        if penalty_coef > 0 and cost_uncertainty is not None and cost_uncertainty != uncertainty:
            raise ValueError(f"penalty uncertainty {uncertainty!r} and cost_uncertainty {cost_uncertainty!r} differ")
        self.uncertainty = cost_uncertainty if cost_uncertainty is not None else (
            uncertainty if penalty_coef > 0 else None)
        if self.uncertainty is not None:
            ensemble.check_uncertainty(self.uncertainty)
        self.ensemble = ensemble
        self.device = device = next(ensemble.parameters()).device
        # On the CPU a data-dependent branch costs nothing; on an accelerator every ``.any()``
        # would wait for the device, so steps there run without one (see ``step``).
        self.host_sync = device.type == "cpu"
        self.model_idx = model_idx.long().to(device)
        # grouped on the host: torch.unique would wait for the device
        self.groups = [(k, rows.to(device)) for k, rows in group_rows(model_idx.long().cpu())]
        self.num_envs = int(model_idx.shape[0])
        self.init_fn = init_fn
        self.horizon = horizon
        self.reward_fn = reward_fn
        self.clip_obs = clip_obs
        self.generator = generator or torch.Generator(device).manual_seed(0)
        self.sample = sample and ensemble.probabilistic
        self.low = None if action_low is None else torch.as_tensor(action_low, dtype=torch.float32, device=device)
        self.high = None if action_high is None else torch.as_tensor(action_high, dtype=torch.float32, device=device)
        self._obs: Tensor | None = None
        self._t = torch.zeros(self.num_envs, dtype=torch.long, device=device)
        self._ret = torch.zeros(self.num_envs, dtype=torch.float64, device=device)
        self._nonfinite = torch.zeros(self.num_envs, dtype=torch.bool, device=device)  # rows, when deferred
        self.state_cost = state_cost
        self.compute_dtype = compute_dtype
        self.costs: list[tuple[str, Callable[[ImaginedStep], Tensor]]] = []
        if penalty_coef > 0:
            self.costs.append(("penalty", lambda step: penalty_coef * step.uncertainty))
        if state_cost is not None:
            self.costs.append(("state_cost", lambda step: state_cost(step.next_obs)))
        self.costs += list(costs)
        if len({k for k, _ in self.costs}) != len(self.costs):
            raise ValueError(f"cost keys must be unique, got {[k for k, _ in self.costs]}")
        # summed on the device: no host round trip per step (float64, as a Python float would)
        self._cost_sums = {k: torch.zeros((), dtype=torch.float64, device=device) for k, _ in self.costs}
        self._cost_steps = 0

    def reset(self, seed: int | None = None) -> Tensor:
        if seed is not None:
            self.generator.manual_seed(seed)
        self._obs = self.init_fn(self.num_envs, self.generator).to(self.device)
        self._t.zero_()
        self._ret.zero_()
        self._nonfinite.zero_()
        return self._obs

    @torch.no_grad()
    def step(self, act: Tensor):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        obs = self._obs
        if self.low is not None:
            act = torch.max(torch.min(act, self.high.to(act)), self.low.to(act))
        gen = self.generator if self.sample else None
        u = None
        with self.ensemble.compute_dtype(self.compute_dtype):
            if self.uncertainty is not None:
                next_obs, learned_rew, u = self.ensemble.predict_with_uncertainty(
                    obs, act, self.model_idx, self.uncertainty, gen)
            else:
                next_obs, learned_rew = self.ensemble.predict(obs, act, self.groups, gen)
        bad = ~torch.isfinite(next_obs).all(-1)
        if self.host_sync:
            if bad.any():
                self._raise_nonfinite(bad, f", step {int(self._t.max())}")
        else:
            self._nonfinite |= bad
        next_obs = next_obs.clamp(-self.clip_obs, self.clip_obs)
        if self.reward_fn is not None:
            rew = self.reward_fn.reward(obs, act, next_obs)
            term = self.reward_fn.termination(next_obs)
        else:
            rew = learned_rew
            term = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        if self.costs:
            step = ImaginedStep(obs, act, next_obs, rew, None if u is None else u.to(rew))
            for key, fn in self.costs:
                cost = fn(step).to(rew)
                rew = rew - cost
                self._cost_sums[key] = self._cost_sums[key].to(cost.device) + cost.sum().double()
            self._cost_steps += self.num_envs
        self._t += 1
        self._ret += rew.double()
        trunc = (self._t >= self.horizon) & ~term
        done = term | trunc
        episode = {"mask": done, "r": self._ret.clone(), "l": self._t.clone()}
        new_obs = next_obs
        if not self.host_sync:
            # every row gets a fresh start drawn and the finished ones take it: more draws than
            # the branch below, but no wait for the device
            fresh = self.init_fn(self.num_envs, self.generator).to(next_obs)
            new_obs = torch.where(done.unsqueeze(-1), fresh, next_obs)
            self._t.masked_fill_(done, 0)
            self._ret.masked_fill_(done, 0.0)
        elif done.any():
            rows = torch.nonzero(done).squeeze(-1)
            new_obs = next_obs.clone()
            new_obs[rows] = self.init_fn(len(rows), self.generator).to(next_obs)
            self._t[rows] = 0
            self._ret[rows] = 0.0
        self._obs = new_obs
        return new_obs, rew.float(), term, trunc, {"final_obs": next_obs, "episode": episode}

    def _raise_nonfinite(self, bad: Tensor, where: str = "") -> None:
        rows = torch.nonzero(bad).squeeze(-1)
        models = sorted(set(self.model_idx[rows].tolist()))
        raise TrainingError(f"dynamics model(s) {models} predicted NaN/inf (rows {rows[:5].tolist()}{where})")

    def check_rollout(self) -> None:
        """Raise the NaN/inf error that steps on an accelerator defer (one host round trip per
        rollout instead of one per step); :func:`mbmpo.sampler.collect` calls it at the end."""
        if not self.host_sync and bool(self._nonfinite.any()):
            self._raise_nonfinite(self._nonfinite)

    @property
    def cost_keys(self) -> list[str]:
        """Keys of the costs subtracted from the rewards, in order."""
        return [k for k, _ in self.costs]

    def mean_cost(self, key: str) -> float:
        """Mean of cost ``key`` per imagined step so far (0 for an unknown key)."""
        return float(self._cost_sums.get(key, torch.zeros(()))) / max(self._cost_steps, 1)

    @property
    def mean_penalty(self) -> float:
        """Mean reward penalty ``lambda * u`` per imagined step so far (0 when off)."""
        return self.mean_cost("penalty")

    @property
    def mean_state_cost(self) -> float:
        """Mean ``state_cost`` per imagined step so far (0 without one)."""
        return self.mean_cost("state_cost")

    def close(self) -> None:
        pass


def tasks_model_idx(num_models: int, tasks_per_model: int, rows_per_task: int) -> Tensor:
    """``[K * tasks_per_model * rows_per_task]`` model indices, contiguous per model."""
    return torch.arange(num_models).repeat_interleave(tasks_per_model * rows_per_task)
