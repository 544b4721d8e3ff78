"""Gorila's replay memories: :class:`ReplayMemory` (in-process, or run by the driver as the
global replay actor) and :class:`RemoteReplay`, the same interface over a Ray actor."""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import Tensor

from mbmpo.baselines.gorila.ray_support import named_actor, resolve_ref, was_restarted
from mbmpo.buffers import ReplayBuffer


class ReplayMemory:
    """A :class:`~mbmpo.buffers.ReplayBuffer` behind a lock with its own sampling generator.

    Used as an acting process's local memory, inside a bundle, and (as a Ray actor) as the
    global replay memory. The lock lets a threaded Ray actor serve learners' samples while
    its acting loop adds transitions.
    """

    def __init__(self, obs_dim: int, num_heads: int, capacity: int, seed: int,
                 state: dict[str, Any] | None = None):
        self.buffer = ReplayBuffer(obs_dim, num_heads, capacity)
        self.generator = torch.Generator().manual_seed(seed)
        self.lock = threading.Lock()
        # a process Ray restarted after a crash starts empty, not from the resume-time contents
        if state is not None and not was_restarted():
            self.load_state_dict(resolve_ref(state))

    def add(self, obs: Tensor, act: Tensor, next_obs: Tensor, reward: Tensor, terminated: Tensor) -> int:
        with self.lock:
            self.buffer.add(obs, act, next_obs, reward, terminated)
            return len(self.buffer)

    def size(self) -> int:
        return len(self.buffer)

    def flush(self) -> None:
        """In-process memory: every add is already stored."""

    def sample_batches(self, num_batches: int, batch_size: int) -> dict[str, Tensor] | None:
        """``num_batches`` stacked batches, or None while the memory holds fewer than
        ``batch_size`` rows (e.g. just after its process was restarted)."""
        with self.lock:
            if len(self.buffer) < batch_size:
                return None
            return self.buffer.sample_batches(num_batches, batch_size, self.generator)

    def state_dict(self) -> dict[str, Any]:
        with self.lock:
            return self.buffer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self.lock:
            self.buffer.load_state_dict(state)


class RemoteReplay:
    """The :class:`ReplayMemory` interface over a Ray actor (name or handle) exposing ``add``,
    ``size`` and ``sample_batches`` (the global replay actor or an acting process's local
    memory)."""

    def __init__(self, actor: Any):
        self.actor = actor
        self._handle: Any = None
        self._last_add: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"actor": self.actor, "_handle": None, "_last_add": None}

    @property
    def handle(self) -> Any:
        if self._handle is None:
            self._handle = named_actor(self.actor)
        return self._handle

    def add(self, *cols: Tensor) -> None:
        self.flush()  # at most one add in flight: back-pressure instead of an unbounded queue
        self._last_add = self.handle.add.remote(*cols)

    def flush(self) -> None:
        """Wait until every transition sent so far is stored."""
        if self._last_add is not None:
            import ray

            ray.get(self._last_add)
            self._last_add = None

    def size(self) -> int:
        import ray

        return int(ray.get(self.handle.size.remote()))

    def sample_batches(self, num_batches: int, batch_size: int) -> dict[str, Tensor] | None:
        import ray

        return ray.get(self.handle.sample_batches.remote(num_batches, batch_size))

