"""Soft Actor-Critic with automatic entropy tuning (Haarnoja et al. 2018, "Soft Actor-Critic
Algorithms and Applications", arXiv 1812.05905).

One update on a replay minibatch ``(s, a, r, s', d)`` (``d``: terminated, not truncated), with
``alpha = exp(log_alpha)`` held fixed within the update:

* critics (eq. 5, clipped double-Q): ``y = r + gamma (1 - d) (min_k Q'_k(s', a') - alpha log pi(a'|s'))``,
  ``a' ~ pi(.|s')``; loss ``0.5 sum_k mean (Q_k(s, a) - y)^2``;
* actor (eq. 7-9): ``mean(alpha log pi(a~|s) - min_k Q_k(s, a~))``, ``a~ ~ pi(.|s)`` reparameterized;
* temperature (eq. 18): ``-mean(log_alpha (log pi(a~|s) + target_entropy))``;
* targets (Polyak): ``phi' <- (1 - tau) phi' + tau phi`` every ``target_update_every`` updates.

The three losses are computed from the same parameters and minimized by one backward pass and
one Adam step (as the authors' softlearning code does); the actor loss sees the critics through
detached weights, so it sends no gradient into them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from mbmpo.algorithm import EVAL_SEED_OFFSET, Algorithm, check_finite, warn_if_bf16_emulated
from mbmpo.buffers import TransitionDataset
from mbmpo.config import PRECISIONS, BaseConfig, _in_range, _one_of, _positive
from mbmpo.envs import GymVecEnv, check_spaces, evaluate_episodes, make_env_fn
from mbmpo.errors import ConfigError, TrainingError
from mbmpo.sampler import collect
from policies.sac import EnsembleQ, SquashedGaussianActor

STAT_KEYS = ("loss/critic", "loss/actor", "loss/alpha", "train/alpha", "train/entropy", "train/q_mean")


@dataclass
class SACConfig(BaseConfig):
    """SAC settings; defaults are Stable-Baselines3's SAC defaults (2.x). Inherited fields used:
    env_id, seed, total_steps, device, num_envs, num_steps, vectorization, env_kwargs, gamma,
    hidden_sizes (actor), value_hidden_sizes (critics), activation, eval_*, checkpoint_*;
    gae_lambda, init_log_std, ortho_init, clip_obs and clip_reward are ignored."""

    num_steps: int = 1000
    """Vector steps per iteration (one progress.csv row; evaluation/checkpoint checks between)."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Actor MLP hidden layer sizes."""
    value_hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of each critic MLP."""
    activation: str = "relu"
    """Hidden activation of actor and critics."""
    ortho_init: bool = False
    """Unused by SAC (PyTorch's default initialization)."""
    normalize_obs: bool = False
    """Not supported by SAC (must stay False)."""
    normalize_reward: bool = False
    """Not supported by SAC (must stay False)."""
    learning_rate: float = 3e-4
    """Adam learning rate of actor, critics and temperature."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions (FIFO)."""
    batch_size: int = 256
    """Transitions per gradient update."""
    learning_starts: int = 100
    """Real steps with uniformly random actions before the first update."""
    tau: float = 0.005
    """Polyak coefficient of the target critics."""
    train_freq: int = 1
    """Vector steps between two training calls."""
    gradient_steps: int = 1
    """Gradient updates per training call (ignored when utd_ratio is set)."""
    utd_ratio: float | None = None
    """Update-to-data ratio: gradient updates per real env step after learning_starts (e.g. 0.5,
    1, 20); updates are spread over the training calls. Overrides gradient_steps."""
    target_update_every: int = 1
    """Gradient updates between two Polyak updates of the target critics."""
    num_critics: int = 2
    """Q-networks; targets and actor use the minimum over all of them (2: clipped double-Q)."""
    autotune_alpha: bool = True
    """Learn the temperature alpha to keep the policy's entropy near target_entropy."""
    init_alpha: float = 1.0
    """Initial (autotune) or fixed temperature alpha."""
    target_entropy: float | None = None
    """Entropy target of the temperature loss; None: -act_dim."""
    update_precision: str = "float32"
    """Precision of the hidden layers in gradient updates: 'float32' or 'bfloat16' (mixed
    precision under ``torch.autocast``: float32 weights, Adam state, output layers and losses).
    Faster only where bf16 products are native (CPUs with AVX512-BF16 or AMX, GPUs); acting
    and evaluation always run in float32."""

    def validate(self) -> None:
        super().validate()
        _positive(self, "learning_rate", "buffer_size", "batch_size", "train_freq", "gradient_steps",
                  "target_update_every", "init_alpha")
        _in_range(self, "tau", 0.0, 1.0)
        if self.learning_starts < 0:
            raise ConfigError(f"learning_starts must be >= 0, got {self.learning_starts}")
        if self.utd_ratio is not None and not self.utd_ratio > 0:
            raise ConfigError(f"utd_ratio must be > 0 (or null), got {self.utd_ratio}")
        if self.num_critics < 2:
            raise ConfigError(f"num_critics must be >= 2, got {self.num_critics}")
        if self.num_steps % self.train_freq:
            raise ConfigError(f"num_steps ({self.num_steps}) must be a multiple of train_freq ({self.train_freq})")
        if self.normalize_obs or self.normalize_reward:
            raise ConfigError("normalize_obs and normalize_reward are not supported by sac; set them to false")
        _one_of(self, "update_precision", PRECISIONS)


def _rescale_wrapper(low: np.ndarray, high: np.ndarray):
    """None when the action bounds are already [-1, 1], else a wrapper that rescales [-1, 1]."""
    if np.all(low == -1.0) and np.all(high == 1.0):
        return None
    return functools.partial(gym.wrappers.RescaleAction, min_action=np.float32(-1.0), max_action=np.float32(1.0))


class SAC(Algorithm):
    """Soft Actor-Critic for 1-D bounded Box action spaces.

    Example::

        algo = SAC(SACConfig(env_id="HalfCheetah-v5", total_steps=200_000, learning_starts=10_000),
                   out_dir="runs/sac_hc")
        algo.learn()
        action = algo.predict(obs, deterministic=True)

    The replay buffer is part of every checkpoint. A run resumed at an episode boundary (every
    env copy's episode ended with the iteration) repeats the uninterrupted run exactly; resumed
    elsewhere, the unfinished episodes restart (their steps stay in the buffer).
    """

    algo_name: ClassVar[str] = "sac"
    config_cls: ClassVar[type[BaseConfig]] = SACConfig
    console_keys: ClassVar[list[str]] = ["iteration", "real_steps", "train/episode_return",
                                         "eval_return_mean", "time/sps", "time/updates_per_s"]
    config: SACConfig

    def __init__(self, config: SACConfig, out_dir: str | Path | None = None, console: bool = True):
        super().__init__(config, out_dir, console)
        c = config
        probe = make_env_fn(c.env_id, c.env_kwargs)()
        obs_space, act_space = probe.observation_space, probe.action_space
        probe.close()
        check_spaces(obs_space, act_space, need_box_actions=True)
        self._low, self._high = act_space.low.astype(np.float64), act_space.high.astype(np.float64)
        if not (np.isfinite(self._low).all() and np.isfinite(self._high).all()):
            raise ConfigError(f"action space {act_space} is unbounded: sac squashes actions into the bounds")
        self.observation_space, self.action_space = obs_space, act_space
        self._wrapper = _rescale_wrapper(self._low, self._high)
        self.env = GymVecEnv(c.env_id, c.num_envs, seed=c.seed, env_kwargs=c.env_kwargs,
                             vectorization=c.vectorization, device=self.device, wrapper=self._wrapper)
        self.obs_dim, self.act_dim = obs_space.shape[0], act_space.shape[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.actor = SquashedGaussianActor(self.obs_dim, self.act_dim, c.hidden_sizes, c.activation)
            self.critic = EnsembleQ(self.obs_dim, self.act_dim, c.value_hidden_sizes, c.activation,
                                    c.num_critics)
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(c.init_alpha), device=self.device,
                                      requires_grad=c.autotune_alpha)
        self.target_entropy = float(-self.act_dim if c.target_entropy is None else c.target_entropy)
        groups = [{"params": list(self.actor.parameters())}, {"params": list(self.critic.parameters())}]
        if c.autotune_alpha:
            groups.append({"params": [self.log_alpha]})
        self.optimizer = torch.optim.Adam(groups, lr=c.learning_rate, **_fast_adam(self.device))
        self._online = list(self.critic.parameters())
        self._target = list(self.critic_target.parameters())
        self.replay = TransitionDataset(self.obs_dim, self.act_dim, c.buffer_size, dtype=torch.float32)
        self.generator = torch.Generator(self.device).manual_seed(c.seed)  # actor noise in training
        # sampled actions of evaluate()/predict(): their own stream, so they never shift training's
        self.eval_generator = torch.Generator(self.device).manual_seed(c.seed + EVAL_SEED_OFFSET)
        self.replay_generator = torch.Generator().manual_seed(c.seed + 1)  # minibatches, warm-up actions
        self.num_updates = 0
        bf16 = c.update_precision == "bfloat16"
        warn_if_bf16_emulated(["update_precision"] if bf16 else [], self.device)
        self._precision = (functools.partial(torch.autocast, self.device.type, dtype=torch.bfloat16) if bf16
                           else contextlib.nullcontext)
        self._obs: Tensor | None = None
        self._ts: Tensor | None = None

    # ----- acting ---------------------------------------------------------------------------
    def _policy_fn(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.actor.act(obs, self.generator), {}

    def _random_fn(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        u = torch.rand((obs.shape[0], self.act_dim), generator=self.replay_generator)
        return (2.0 * u - 1.0).to(obs.device), {}

    def _to_env_actions(self, a: np.ndarray) -> np.ndarray:
        if self._wrapper is None:
            return a
        return (self._low + 0.5 * (a + 1.0) * (self._high - self._low)).astype(self.action_space.dtype)

    @torch.no_grad()
    def predict(self, obs: np.ndarray | Tensor, deterministic: bool = True) -> np.ndarray:
        """Actions in the env's own bounds for raw observations ``[B, obs_dim]`` (or one
        ``[obs_dim]``): ``tanh(mean)`` when deterministic, else a squashed sample."""
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        single = x.dim() == 1
        x = x.unsqueeze(0) if single else x
        a = self.actor.mode(x) if deterministic else self.actor.act(x, self.eval_generator)
        out = self._to_env_actions(a.cpu().numpy())
        return out[0] if single else out

    def evaluate(self, num_episodes: int = 10, deterministic: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Returns and lengths of ``num_episodes`` episodes on separately seeded env copies;
        never counted as training steps."""
        env = self.eval_env(num_episodes, env_kwargs=self.config.env_kwargs, device=self.device,
                            wrapper=self._wrapper)

        def act(obs: Tensor) -> Tensor:
            return self.actor.mode(obs) if deterministic else self.actor.act(obs, self.eval_generator)

        return evaluate_episodes(env, act, seed=self.eval_seed())

    # ----- learning -------------------------------------------------------------------------
    def updates_due(self) -> int:
        """Gradient updates owed after the latest training call's env steps."""
        c = self.config
        if self.num_timesteps <= c.learning_starts:
            return 0
        if c.utd_ratio is None:
            return c.gradient_steps
        return max(0, math.floor(c.utd_ratio * (self.num_timesteps - c.learning_starts)) - self.num_updates)

    def train(self, num_updates: int) -> list[Tensor]:
        """``num_updates`` gradient updates on fresh uniform minibatches; per update a detached
        ``[len(STAT_KEYS)]`` tensor of statistics."""
        c = self.config
        batch = self.replay.sample_batches(num_updates, c.batch_size, self.replay_generator)
        dev = self.device
        obs, act, next_obs = (batch[k].to(dev) for k in ("obs", "act", "next_obs"))
        reward = batch["reward"].to(dev)
        discount = (~batch["terminated"]).to(dev, torch.float32) * c.gamma  # [U, B]
        stats = []
        for i in range(num_updates):
            stats.append(self._update(obs[i], act[i], reward[i], next_obs[i], discount[i]))
        return stats

    def _update(self, obs: Tensor, act: Tensor, reward: Tensor, next_obs: Tensor, discount: Tensor) -> Tensor:
        alpha = self.log_alpha.detach().exp()
        with self._precision():  # the networks' outputs and everything after them are float32
            with torch.no_grad():
                next_act, next_logp = self.actor.sample(next_obs, self.generator)
                next_q = self.critic_target(next_obs, next_act).min(0).values
                target = reward + discount * (next_q - alpha * next_logp)  # [B]
            pi_act, logp = self.actor.sample(obs, self.generator)
            q = self.critic(obs, act)  # [K, B]
            critic_loss = 0.5 * (q - target).pow(2).mean(-1).sum()
            frozen = [(w.detach(), b.detach()) for w, b in self.critic.layers()]
            actor_loss = (alpha * logp - self.critic(obs, pi_act, frozen).min(0).values).mean()
            alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        loss = critic_loss + actor_loss
        if self.log_alpha.requires_grad:
            loss = loss + alpha_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.num_updates += 1
        if self.num_updates % self.config.target_update_every == 0:
            polyak_update(self._target, self._online, self.config.tau)
        with torch.no_grad():
            return torch.stack([critic_loss, actor_loss, alpha_loss, alpha, -logp.mean(), q.mean()])

    def _iterate(self, bar) -> None:
        c = self.config
        if self._obs is None:
            # seeded by iteration, so a run resumed at an episode boundary repeats exactly
            self._obs = self.env.reset(seed=c.seed + 7919 * self.iteration)
            self._ts = None
        t0 = time.perf_counter()
        t_update, stats, returns, lengths = 0.0, [], [], []
        start_updates = self.num_updates
        n = c.train_freq
        for _ in range(c.num_steps // n):  # one training call per chunk of train_freq vector steps
            fn = self._random_fn if self.num_timesteps < c.learning_starts else self._policy_fn
            roll = collect(self.env, fn, n, self._obs, self._ts)
            self._obs, self._ts = roll.last_obs, roll.last_timesteps
            self.replay.add(roll.obs.cpu(), roll.actions.cpu(), roll.next_obs.cpu(), roll.rewards.cpu(),
                            roll.terminated.cpu())
            returns += roll.episode_returns
            lengths += roll.episode_lengths
            self.num_timesteps += n * c.num_envs
            bar.update(n * c.num_envs)
            due = self.updates_due()
            if due:
                t1 = time.perf_counter()
                stats += self.train(due)
                t_update += time.perf_counter() - t1
        if bool(roll.dones[-1].all()):
            self._obs = None  # every copy just finished an episode: reset (seeded) next iteration
        elapsed = time.perf_counter() - t0
        self.iteration += 1
        self.wall_time += elapsed
        log = self.logger
        log.record("iteration", self.iteration)
        log.record("real_steps", self.num_timesteps)
        new_updates = self.num_updates - start_updates
        if stats:
            means = torch.stack(stats).mean(0).tolist()
            log.record_dict(dict(zip(STAT_KEYS, means)))
            what = check_finite(dict(zip(STAT_KEYS, means)),
                                [*self.actor.parameters(), *self.critic.parameters(), self.log_alpha],
                                "network parameters or log alpha")
            if what is not None:
                where = (f"; last good checkpoint kept at {self.out_dir / 'checkpoints' / 'last.pt'}"
                         if self.out_dir is not None else "")
                raise TrainingError(f"non-finite {what} at iteration {self.iteration} "
                                    f"(real step {self.num_timesteps}){where}")
        self.record_train_returns(returns)
        if lengths:
            log.record("train/episode_length", float(np.mean(lengths)))
        log.record("train/num_updates", self.num_updates)
        log.record("train/replay_size", len(self.replay))
        log.record("time/update_s", t_update)
        log.record("time/sps", c.num_steps * c.num_envs / elapsed)
        if new_updates:
            log.record("time/updates_per_s", new_updates / t_update)
        self.end_iteration()

    # ----- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "algo": self.algo_name,
            "config": self.config.to_dict(),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "replay": self.replay.state_dict(),
            "generator": self.generator.get_state(),
            "replay_generator": self.replay_generator.get_state(),
            "num_updates": self.num_updates,
            "recent_returns": list(self._recent_returns),
            "counters": self.counters(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.replay.load_state_dict(state["replay"])
        self.generator.set_state(state["generator"].cpu())  # generator states are CPU byte tensors
        self.replay_generator.set_state(state["replay_generator"].cpu())
        self.num_updates = int(state["num_updates"])
        self._recent_returns = [float(r) for r in state.get("recent_returns", [])]
        self._obs = self._ts = None


def polyak_update(target: list[Tensor], online: list[Tensor], tau: float) -> None:
    """In place ``target <- (1 - tau) target + tau online`` for matching tensor lists."""
    with torch.no_grad():
        torch._foreach_lerp_(target, online, tau)


def _fast_adam(device: torch.device) -> dict[str, bool]:
    """Adam's fused kernel where this torch build has one for the device, else foreach."""
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
        return {"fused": True}
    except (RuntimeError, ValueError):
        return {"foreach": True}
