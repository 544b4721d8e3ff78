"""Gorila's parameter server: one shard (:class:`ParameterServer`, a plain object that the
driver runs as a Ray actor) and the client the acting and learning processes use to pull
parameters from and push gradients to all shards (:class:`ParamClient`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mbmpo.baselines.gorila.dqn import adagrad_update, is_stale
from mbmpo.baselines.gorila.ray_support import named_actor, resolve_ref, was_restarted
from mbmpo.normalization import RunningMeanStd


def _as_tensor(x: Tensor | np.ndarray, dtype: torch.dtype) -> Tensor:
    # arrays arriving through Ray are read-only; torch wants writable memory
    return torch.from_numpy(np.array(x, dtype=np.float32)).to(dtype) if isinstance(x, np.ndarray) \
        else x.to(dtype)


def shard_sizes(total: int, num_shards: int) -> list[int]:
    """Sizes of ``num_shards`` contiguous slices of a flat parameter vector (``tensor_split``)."""
    return [int(t.numel()) for t in torch.arange(total).tensor_split(num_shards)]


def initial_server_states(flat: Tensor, num_shards: int, obs_dim: int | None,
                          initial_accumulator: float = 0.0) -> list[dict[str, Any]]:
    """Fresh shard states: parameter slices, AdaGrad accumulators, version 0 (shard 0 also
    holds the observation statistics when ``obs_dim`` is given)."""
    states = []
    for i, part in enumerate(flat.detach().float().tensor_split(num_shards)):
        st: dict[str, Any] = {"params": part.clone(), "accum": torch.full_like(part, initial_accumulator),
                              "version": 0, "num_applied": 0, "num_dropped_stale": 0}
        if i == 0 and obs_dim is not None:
            st["obs_rms"] = RunningMeanStd(obs_dim).state_dict()
        states.append(st)
    return states


class ParameterServer:
    """One shard of the parameter server: a slice of the flat Q-network parameters.

    ``push(grad, version)`` applies a gradient with AdaGrad unless it is stale
    (:func:`is_stale`); each applied update increments ``version``. Shard 0 also merges the
    actors' observation statistics when observation normalization is on.

    Args:
        state: shard state (:func:`initial_server_states` or a checkpoint's).
        learning_rate, eps: AdaGrad step size and epsilon.
        max_staleness: largest accepted ``version - grad_version``.
        restore_path: checkpoint read when Ray restarts this shard after a crash (the
            run's ``checkpoints/last.pt``); without it a restarted shard starts from ``state``.
        shard_index: which entry of the checkpoint's ``servers`` list is this shard's.
    """

    def __init__(self, state: dict[str, Any], learning_rate: float, eps: float = 1e-10,
                 max_staleness: int = 10, restore_path: str | None = None, shard_index: int = 0):
        self.learning_rate = learning_rate
        self.eps = eps
        self.max_staleness = max_staleness
        self.restored_from: str | None = None
        self.restarted = was_restarted()
        if self.restarted and restore_path is not None and Path(restore_path).is_file():
            from mbmpo.checkpoint import load_checkpoint

            state = load_checkpoint(restore_path)["servers"][shard_index]
            self.restored_from = restore_path
        self.load_state_dict(resolve_ref(state))

    def get(self) -> dict[str, Any]:
        """``{"version", "params" [n] (numpy float32), "obs_stats" (RunningMeanStd state or
        None)}``; numpy travels through Ray faster than torch tensors."""
        return {"version": self.version, "params": self.params.numpy(),
                "obs_stats": self.obs_rms.state_dict() if self.obs_rms is not None else None}

    def push(self, grad: Tensor | np.ndarray, version: int) -> bool:
        """Apply ``grad`` (computed on parameters of ``version``); False when dropped as stale."""
        if is_stale(self.version, version, self.max_staleness):
            self.num_dropped_stale += 1
            return False
        # new tensors every step: arrays handed out by get() are never changed afterwards
        self.params, self.accum = adagrad_update(self.params, self.accum,
                                                 _as_tensor(grad, self.params.dtype),
                                                 self.learning_rate, self.eps)
        self.version += 1
        self.num_applied += 1
        return True

    def push_get(self, grad: Tensor | np.ndarray, version: int) -> dict[str, Any]:
        """:meth:`push` then :meth:`get` in one call (one round trip per learner update);
        the reply also holds ``"applied"``."""
        applied = self.push(grad, version)
        return {**self.get(), "applied": applied}

    def merge_obs_stats(self, mean: Tensor, var: Tensor, count: float) -> None:
        if self.obs_rms is not None:
            self.obs_rms.update_from_moments(mean, var, count)

    def stats(self) -> dict[str, Any]:
        return {"version": self.version, "num_applied": self.num_applied,
                "num_dropped_stale": self.num_dropped_stale, "pid": os.getpid(),
                "restarted": self.restarted, "restored_from": self.restored_from}

    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"params": self.params.clone(), "accum": self.accum.clone(),
                              "version": self.version, "num_applied": self.num_applied,
                              "num_dropped_stale": self.num_dropped_stale}
        if self.obs_rms is not None:
            st["obs_rms"] = self.obs_rms.state_dict()
        return st

    @staticmethod
    def check_state(state: dict[str, Any]) -> None:
        """Raise KeyError/ValueError/RuntimeError unless ``state`` is a valid shard state."""
        ParameterServer.__new__(ParameterServer).load_state_dict(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.params = state["params"].detach().float().clone()
        self.accum = state["accum"].detach().float().clone()
        if self.accum.shape != self.params.shape:
            raise ValueError(f"accumulator shape {tuple(self.accum.shape)} != params "
                             f"{tuple(self.params.shape)}")
        self.version = int(state["version"])
        self.num_applied = int(state.get("num_applied", 0))
        self.num_dropped_stale = int(state.get("num_dropped_stale", 0))
        self.obs_rms = None
        if "obs_rms" in state:
            self.obs_rms = RunningMeanStd(state["obs_rms"]["mean"].shape)
            self.obs_rms.load_state_dict(state["obs_rms"])


class ParamClient:
    """Pull/push the full flat parameter vector from/to the server shards.

    ``shards`` are :class:`ParameterServer` objects (in-process) or, with ``remote=True``,
    the names (or handles) of their Ray actors. A pull returns one version per shard; a push
    sends each shard its slice of the gradient with that shard's version.
    """

    def __init__(self, shards: Sequence[Any], sizes: Sequence[int], remote: bool):
        self._refs = list(shards)
        self._shards: list[Any] | None = None if remote else self._refs
        self.sizes = list(sizes)
        self.remote = remote

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_shards": None if self.remote else self._shards}

    @property
    def shards(self) -> list[Any]:
        if self._shards is None:
            self._shards = [named_actor(s) for s in self._refs]
        return self._shards

    def _call(self, shard: Any, method: str, *args: Any) -> Any:
        return getattr(shard, method).remote(*args) if self.remote else getattr(shard, method)(*args)

    def results(self, refs: list[Any]) -> list[Any]:
        """Values of calls made with ``remote=True`` (identity in-process)."""
        if not self.remote:
            return refs
        import ray

        return ray.get(refs)

    @staticmethod
    def _unpack(replies: list[dict[str, Any]]) -> tuple[list[int], Tensor, dict[str, Tensor] | None]:
        flat = torch.from_numpy(np.concatenate([r["params"] for r in replies]))
        return [int(r["version"]) for r in replies], flat, replies[0]["obs_stats"]

    def pull(self) -> tuple[list[int], Tensor, dict[str, Tensor] | None]:
        """``(versions [S], params [n], obs_stats of shard 0 or None)``."""
        return self._unpack(self.results([self._call(s, "get") for s in self.shards]))

    def _slices(self, grad: Tensor) -> list[Any]:
        parts = grad.detach().split(self.sizes)
        # numpy views of contiguous slices: Ray serializes just the slice's bytes
        return [g.numpy() if self.remote else g for g in parts]

    def push(self, grad: Tensor, versions: Sequence[int]) -> list[Any]:
        """Send the gradient slices; returns refs (remote) or per-shard applied flags."""
        return [self._call(s, "push", g, v) for s, g, v in zip(self.shards, self._slices(grad), versions)]

    def push_pull(self, grad: Tensor, versions: Sequence[int]
                  ) -> tuple[list[bool], tuple[list[int], Tensor, dict[str, Tensor] | None]]:
        """:meth:`push` and then :meth:`pull`, one round trip per shard: ``(applied flags,
        pull result)``."""
        replies = self.results([self._call(s, "push_get", g, v)
                                for s, g, v in zip(self.shards, self._slices(grad), versions)])
        return [bool(r["applied"]) for r in replies], self._unpack(replies)

    def merge_obs_stats(self, mean: Tensor, var: Tensor, count: float) -> None:
        self._call(self.shards[0], "merge_obs_stats", mean, var, count)

