"""Rollout storage for on-policy algorithms; transition stores (FIFO data set, replay memory)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Rollout:
    """``T`` steps of ``N`` parallel envs, time-major.

    Attributes:
        obs: ``[T, N, obs_dim]`` observations the actions were taken in.
        actions: ``[T, N, act_dim]`` raw (unclipped) samples, or ``[T, N]`` for Discrete.
        rewards, terminated, truncated: ``[T, N]``.
        next_obs: ``[T, N, obs_dim]`` observation after each step (the final one at an
            episode end), for bootstrapping and for dynamics-model targets.
        timesteps: ``[T, N]`` step index within the episode (for time features).
        extras: per-step outputs of the policy function, e.g. ``log_prob``/``value`` ``[T, N]``.
        episode_returns, episode_lengths: raw returns and lengths of episodes that ended.
        last_obs, last_timesteps: where the next ``collect`` call continues.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    next_obs: Tensor
    timesteps: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    last_obs: Tensor | None = None
    last_timesteps: Tensor | None = None

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_envs(self) -> int:
        return self.rewards.shape[1]

    def flat(self, name: str) -> Tensor:
        """A field (or extra) with ``[T, N]`` merged into ``[T * N]``."""
        x = self.extras[name] if name in self.extras else getattr(self, name)
        return x.reshape(-1, *x.shape[2:])

    @property
    def dones(self) -> Tensor:
        return self.terminated | self.truncated



def concat_rollouts(parts: list[Rollout]) -> Rollout:
    """Rollouts of consecutive ``collect`` calls (same envs) joined along time."""
    if len(parts) == 1:
        return parts[0]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    return Rollout(cat("obs"), cat("actions"), cat("rewards"), cat("terminated"), cat("truncated"),
                   cat("next_obs"), cat("timesteps"),
                   {k: torch.cat([p.extras[k] for p in parts]) for k in parts[0].extras},
                   [r for p in parts for r in p.episode_returns],
                   [n for p in parts for n in p.episode_lengths],
                   last_obs=parts[-1].last_obs, last_timesteps=parts[-1].last_timesteps)


def to_windows(x: Tensor, window: int) -> Tensor:
    """``[T, N, ...] -> [K, (T / K) * N, ...]``: consecutive K-step windows as sequences.

    Sequence ``w * N + n`` holds steps ``w*K .. w*K + K - 1`` of env ``n``; ``x[::K]`` reshaped
    to ``[(T / K) * N, ...]`` is the per-sequence first step. T must be a multiple of K.
    """
    t, n = x.shape[0], x.shape[1]
    if t % window:
        raise ValueError(f"{t} steps do not split into windows of {window}")
    return x.reshape(t // window, window, n, *x.shape[2:]).transpose(0, 1).reshape(
        window, (t // window) * n, *x.shape[2:])


def from_windows(y: Tensor, num_envs: int) -> Tensor:
    """Inverse of :func:`to_windows`: ``[K, (T / K) * N, ...] -> [T, N, ...]``."""
    k, s = y.shape[0], y.shape[1]
    return y.reshape(k, s // num_envs, num_envs, *y.shape[2:]).transpose(0, 1).reshape(
        k * (s // num_envs), num_envs, *y.shape[2:])


class TransitionDataset:
    """FIFO store of real transitions ``(obs, act, next_obs, reward, terminated)``.

    Holds at most ``capacity`` rows (oldest dropped first); ``act_dtype`` int64 stores
    discrete action indices (:class:`ReplayBuffer`); :meth:`sample` draws uniform minibatches
    (experience replay: Gorila, SAC). ``state_dict`` /
    ``load_state_dict`` put the data in checkpoints so a resumed run loses none of it.
    ``num_keys > 0`` gives every row ``num_keys`` uniform keys in [0, 1), drawn when the
    row is added and kept with it (``arrays()["keys"]`` ``[size, num_keys]``): a split of
    the rows that stays the same from one use of the data to the next. ``columns`` maps
    names to fill values: each name keeps one float per row (``arrays()[name]`` ``[size]``, the
    fill value unless given to ``add``), e.g. how much to favour the row as a start state.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int = 100_000,
                 dtype: torch.dtype = torch.float64, act_dtype: torch.dtype = torch.float32,
                 num_keys: int = 0, columns: dict[str, float] | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.obs = torch.zeros(capacity, obs_dim, dtype=dtype)
        self.act = torch.zeros(capacity, act_dim, dtype=act_dtype)
        self.next_obs = torch.zeros(capacity, obs_dim, dtype=dtype)
        self.reward = torch.zeros(capacity, dtype=dtype)
        self.terminated = torch.zeros(capacity, dtype=torch.bool)
        self.keys = torch.zeros(capacity, num_keys) if num_keys > 0 else None
        self.fills = dict(columns or {})
        self.columns = {n: torch.full((capacity,), f, dtype=torch.float64) for n, f in self.fills.items()}
        self.ptr = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs: Tensor, act: Tensor, next_obs: Tensor, reward: Tensor, terminated: Tensor,
            generator: torch.Generator | None = None, keys: Tensor | None = None,
            columns: dict[str, Tensor | None] | None = None) -> None:
        """Append ``[B, ...]`` transitions (any leading dims are flattened).

        With ``num_keys > 0`` the new rows get ``keys`` ``[B, num_keys]`` when given (a
        restored checkpoint), else fresh uniform draws from ``generator``. Each named column gets
        ``columns[name]`` ``[B]`` when given, else its fill value.
        """
        cols = [obs.reshape(-1, self.obs.shape[1]), act.reshape(-1, self.act.shape[1]),
                next_obs.reshape(-1, self.obs.shape[1]), reward.reshape(-1), terminated.reshape(-1)]
        stores = [self.obs, self.act, self.next_obs, self.reward, self.terminated]
        if self.keys is not None:
            if keys is None:
                keys = torch.rand(cols[0].shape[0], self.keys.shape[1], generator=generator)
            cols.append(keys)
            stores.append(self.keys)
        given = columns or {}
        unknown = sorted(set(given) - set(self.columns))
        if unknown:
            raise ValueError(f"dataset has no column(s) {unknown}; its columns are {sorted(self.columns)}")
        for name, store in self.columns.items():
            v = given.get(name)
            cols.append(torch.full((cols[0].shape[0],), self.fills[name]) if v is None else v.reshape(-1))
            stores.append(store)
        b = cols[0].shape[0]
        if b > self.capacity:
            cols = [c[-self.capacity :] for c in cols]
            b = self.capacity
        idx = (self.ptr + torch.arange(b)) % self.capacity
        for store, c in zip(stores, cols):
            store[idx] = c.to(store.dtype)
        self.ptr = (self.ptr + b) % self.capacity
        self.size = min(self.capacity, self.size + b)

    def arrays(self, device: torch.device | str | None = None) -> dict[str, Tensor]:
        """The stored rows, oldest first (copied to ``device`` when given)."""
        idx = (self.ptr - self.size + torch.arange(self.size)) % self.capacity
        out = {"obs": self.obs[idx], "act": self.act[idx], "next_obs": self.next_obs[idx],
               "reward": self.reward[idx], "terminated": self.terminated[idx]}
        if self.keys is not None:
            out["keys"] = self.keys[idx]
        out.update({name: store[idx] for name, store in self.columns.items()})
        return out if device is None else {k: v.to(device) for k, v in out.items()}

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``batch_size`` rows drawn uniformly with replacement (``obs [B, obs_dim]``,
        ``act [B, act_dim]``, ``next_obs``, ``reward [B]``, ``terminated [B]``).

        Draws are positions in the oldest-first order of :meth:`arrays`, so a store rebuilt
        from :meth:`state_dict` returns the same rows for the same generator state."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(self.size, (batch_size,), generator=generator)
        if self.size == self.capacity and self.ptr:  # wrapped ring: oldest row at ptr
            idx = (idx + self.ptr) % self.capacity
        return {"obs": self.obs[idx], "act": self.act[idx], "next_obs": self.next_obs[idx],
                "reward": self.reward[idx], "terminated": self.terminated[idx]}

    def sample_batches(self, num_batches: int, batch_size: int,
                       generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``num_batches`` independent batches stacked: each field ``[num_batches, batch_size, ...]``
        (one gather serves a whole chunk of updates)."""
        flat = self.sample(num_batches * batch_size, generator)
        return {k: v.reshape(num_batches, batch_size, *v.shape[1:]) for k, v in flat.items()}

    def state_dict(self) -> dict[str, Tensor | int]:
        return {**self.arrays(), "capacity": self.capacity}

    def load_state_dict(self, state: dict) -> None:
        if int(state["capacity"]) != self.capacity or state["obs"].shape[1] != self.obs.shape[1]:
            raise ValueError(f"dataset shape mismatch: capacity {state['capacity']} obs_dim "
                             f"{state['obs'].shape[1]} vs {self.capacity}, {self.obs.shape[1]}")
        if self.keys is not None and "keys" not in state:
            raise ValueError("dataset has no per-row keys (saved without a persistent split)")
        self.ptr = self.size = 0
        # a column missing from the checkpoint (an older run) restores as its fill value
        self.add(state["obs"], state["act"], state["next_obs"], state["reward"], state["terminated"],
                 keys=state.get("keys") if self.keys is not None else None,
                 columns={name: state.get(name) for name in self.columns})


class ReplayBuffer(TransitionDataset):
    """Uniform experience replay (DQN / Gorila): the FIFO store of :class:`TransitionDataset`
    with discrete actions ``[B, num_heads]`` (int64) and float32 observations.

    A row is ``(obs, act, next_obs, reward, terminated)``; ``next_obs`` is the final
    observation at a time-limit truncation and ``terminated`` is False there, so the TD
    target bootstraps through truncations.
    """

    def __init__(self, obs_dim: int, num_heads: int = 1, capacity: int = 100_000):
        super().__init__(obs_dim, num_heads, capacity, dtype=torch.float32, act_dtype=torch.int64)
