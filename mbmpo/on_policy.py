"""Shared on-policy training loop (PPO, TRPO and DPPO subclass it).

One iteration: collect ``num_envs x num_steps`` real steps with the current policy ->
GAE advantages with time-limit bootstrapping -> algorithm-specific ``update`` -> logging,
evaluation on separate episodes, checkpoint.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from mbmpo.algorithm import Algorithm, check_finite
from mbmpo.buffers import Rollout
from mbmpo.config import BaseConfig
from mbmpo.envs import GymVecEnv, evaluate_episodes
from mbmpo.errors import TrainingError
from mbmpo.returns import gae
from mbmpo.sampler import collect
from mbmpo.wrappers import VecNormalize
from policies import MLPValue, make_policy


class OnPolicyAlgorithm(Algorithm):
    """Base of the model-free on-policy baselines.

    Args:
        config: the algorithm's config dataclass (validated here).
        out_dir: run directory for ``config.yaml``, ``progress.csv``, ``tb/`` and
            ``checkpoints/``; ``None`` writes nothing.
        console: print progress to the console.
    """

    console_keys: ClassVar[list[str]] = ["iteration", "real_steps", "train/episode_return", "eval_return_mean",
                                         "time/sps"]

    def __init__(self, config: BaseConfig, out_dir: str | Path | None = None, console: bool = True):
        super().__init__(config, out_dir, console)
        c = config
        self.env = self._make_env(c.seed)
        self.observation_space = self.env.single_observation_space
        self.action_space = self.env.single_action_space
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.policy, self.value_fn = self._make_networks()
        self.generator = torch.Generator(self.device).manual_seed(c.seed)
        self._obs: Tensor | None = None
        self._ts: Tensor | None = None
        self._build_optimizers()

    # ----- hooks for subclasses -------------------------------------------------------
    def _make_env(self, seed: int) -> VecNormalize:
        """The normalized training env; env copy i is seeded with ``seed + i``."""
        c = self.config
        venv = GymVecEnv(c.env_id, c.num_envs, seed=seed, env_kwargs=c.env_kwargs,
                         vectorization=c.vectorization, device=self.device)
        return VecNormalize(venv, c.normalize_obs, c.normalize_reward, c.clip_obs,
                            c.clip_reward, c.gamma)

    def _make_networks(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """``(policy, value_fn)``, built under the run's seed."""
        c = self.config
        policy = make_policy(self.observation_space, self.action_space, c.hidden_sizes,
                             c.activation, c.init_log_std, c.ortho_init)
        value_fn = MLPValue(self.observation_space.shape[0], c.value_hidden_sizes, c.activation,
                            c.ortho_init)
        return policy.to(self.device), value_fn.to(self.device)

    def _build_optimizers(self) -> None:
        raise NotImplementedError

    def update(self, rollout: Rollout, advantages: Tensor, returns: Tensor) -> dict[str, float]:
        """Improve policy/value on one batch; returns scalars to log."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ----- acting ---------------------------------------------------------------------
    def _policy_fn(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        # called inside collect(), which already disables autograd
        dist = self.policy(obs)
        act = dist.sample(self.generator)
        return act, {"log_prob": dist.log_prob(act), "value": self.value_fn(obs)}

    @torch.no_grad()
    def predict(self, obs: np.ndarray | Tensor, deterministic: bool = True) -> np.ndarray:
        """Actions for raw env observations ``[B, obs_dim]`` (or one ``[obs_dim]``).

        Observations are normalized with the frozen training statistics; Box actions are
        clipped to the action bounds.
        """
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        single = x.dim() == 1
        x = self.env.normalize_obs(x.unsqueeze(0) if single else x)
        dist = self.policy(x)
        act = dist.mode() if deterministic else dist.sample(self.generator)
        a = act.cpu().numpy()
        if hasattr(self.action_space, "low"):
            a = np.clip(a, self.action_space.low, self.action_space.high)
        return a[0] if single else a

    # ----- the loop -------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.config.num_envs * self.config.num_steps

    def num_iterations(self, total_steps: int) -> int:
        return math.ceil(total_steps / self.batch_size)

    def compute_advantages(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            next_values = self.value_fn(rollout.next_obs)  # [T, N]
        return gae(rollout.rewards, rollout.extras["value"], next_values, rollout.terminated,
                   rollout.truncated, self.config.gamma, self.config.gae_lambda)

    def _iterate(self, bar) -> None:
        c = self.config
        t0 = time.perf_counter()
        rollout = collect(self.env, self._policy_fn, c.num_steps, self._obs, self._ts)
        self._obs, self._ts = rollout.last_obs, rollout.last_timesteps
        t1 = time.perf_counter()
        adv, ret = self.compute_advantages(rollout)
        stats = self.update(rollout, adv, ret)
        t2 = time.perf_counter()
        self._check_finite(stats)
        self.iteration += 1
        self.num_timesteps += self.batch_size
        self.wall_time += t2 - t0
        bar.update(self.batch_size)
        log = self.logger
        log.record("iteration", self.iteration)
        log.record("real_steps", self.num_timesteps)
        log.record_dict(stats)
        self.record_train_returns(rollout.episode_returns)
        if rollout.episode_lengths:
            log.record("train/episode_length", float(np.mean(rollout.episode_lengths)))
        log.record("time/collect_s", t1 - t0)
        log.record("time/update_s", t2 - t1)
        log.record("time/sps", self.batch_size / (t2 - t0))
        self.end_iteration()

    def _check_finite(self, stats: dict[str, float]) -> None:
        what = check_finite(stats, self.policy.parameters(), "policy parameters")
        if what is not None:
            where = (f"; last good checkpoint kept at {self.out_dir / 'checkpoints' / 'last.pt'}"
                     if self.out_dir is not None else "")
            raise TrainingError(f"non-finite {what} at iteration {self.iteration + 1} "
                                f"(real step {self.num_timesteps}){where}")

    def evaluate(self, num_episodes: int = 10, deterministic: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Returns and lengths of ``num_episodes`` full episodes on separate env copies.

        These steps are never counted as training steps; observation normalization uses
        the frozen training statistics.
        """
        env = self.eval_env(num_episodes, env_kwargs=self.config.env_kwargs, device=self.device)

        def act(obs: Tensor) -> Tensor:
            dist = self.policy(obs)
            return dist.mode() if deterministic else dist.sample(self.generator)

        return evaluate_episodes(env, act, self.env.normalize_obs, seed=self.eval_seed())

    # ----- persistence ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "algo": self.algo_name,
            "config": self.config.to_dict(),
            "policy": self.policy.state_dict(),
            "value_fn": self.value_fn.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "env_normalizer": self.env.state_dict(),
            "generator": self.generator.get_state(),
            "counters": self.counters(),
            "extra": self.extra_state(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.value_fn.load_state_dict(state["value_fn"])
        for k, opt in self.optimizers().items():
            opt.load_state_dict(state["optimizers"][k])
        self.env.load_state_dict(state["env_normalizer"])
        self.generator.set_state(state["generator"].cpu() if self.device.type == "cpu" else state["generator"])
        self.load_extra_state(state.get("extra", {}))
