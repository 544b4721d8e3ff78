"""The default ``torch.distributed`` process group of a DPPO worker and collectives on flat
tensors (no-ops without a process group).

Under ``torchrun`` the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) is already set and this process is one of the workers; local runs get the
same variables from the launcher (:mod:`mbmpo.distributed.launcher`).

The default process group is process-global in torch; its key-value store (used for the
straggler counter) and the shared-memory reducer (:mod:`mbmpo.distributed.reducer`) are
kept next to it in this module for the same lifetime.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mbmpo.distributed.reducer import PeerLostError, SharedMemoryReducer

_STORE: Any = None
_SHM: SharedMemoryReducer | None = None


def under_torchrun() -> bool:
    """True when torchrun (or another launcher with the same contract) started this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, W)`` of the default process group; ``(0, 1)`` without one."""
    if is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init(backend: str = "gloo", timeout_s: float = 120.0) -> tuple[int, int]:
    """Join the default process group via the ``env://`` rendezvous; returns ``(rank, W)``.

    ``timeout_s`` bounds every collective and store operation, so a hung peer ends the run
    with an error instead of a hang.
    """
    global _STORE
    timeout = timedelta(seconds=timeout_s)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store, rank, world = next(dist.rendezvous("env://", rank, world, timeout=timeout))
    store.set_timeout(timeout)
    dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=rank,
                            world_size=world, timeout=timeout)
    # torchrun's agent store outlives worker restarts: keep each restart's keys apart
    _STORE = dist.PrefixStore(f"mbmpo/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    return rank, world


def shutdown() -> None:
    global _STORE, _SHM
    _STORE = None
    _SHM = None
    if is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a failed peer can make teardown raise; nothing to save
            pass


def store() -> Any:
    """The key-value store of the default process group."""
    if _STORE is not None:
        return _STORE
    if is_initialized():  # the group was created by someone else: use torch's own store
        return dist.PrefixStore("mbmpo", dist.distributed_c10d._get_default_store())
    raise RuntimeError("no process group: call mbmpo.distributed.init() first")


def set_shared_memory_reducer(reducer: SharedMemoryReducer | None) -> None:
    """Let :func:`all_reduce_sum_` sum CPU tensors through ``reducer`` (None: through the
    process group); cleared by :func:`shutdown`."""
    global _SHM
    _SHM = reducer


def shared_memory_reducer() -> SharedMemoryReducer | None:
    """The reducer :func:`all_reduce_sum_` uses for CPU tensors, or None."""
    return _SHM


# ----- collectives (no-ops without a process group) ----------------------------------------
def all_reduce_sum_(t: Tensor) -> Tensor:
    """Sum ``t`` over workers in place (every worker gets the same bytes)."""
    if is_initialized() and dist.get_world_size() > 1:
        if _SHM is not None and _SHM.supports(t):
            _SHM.all_reduce_sum_(t)
        elif dist.get_backend() == "nccl" and t.device.type != "cuda":  # nccl reduces GPU tensors
            g = t.cuda()
            dist.all_reduce(g)
            t.copy_(g)
        else:
            dist.all_reduce(t)
    return t


def default_backend(device: str) -> str:
    """``nccl`` for a CUDA run (one GPU per worker: cuda:LOCAL_RANK), else ``gloo``."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda and dist.is_nccl_available() else "gloo"


def broadcast_tensors_(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every worker with rank ``src``'s values (one message per dtype)."""
    if not (is_initialized() and dist.get_world_size() > 1):
        return
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src)
        i = 0
        with torch.no_grad():
            for t in group:
                t.copy_(flat[i : i + t.numel()].view_as(t))
                i += t.numel()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every worker (pickled; for checkpoints and small metadata)."""
    if not (is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means another worker (or the connection to it) failed."""
    if isinstance(exc, (PeerLostError, getattr(dist, "DistError", ()))):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        k in text for k in ("connection closed by peer", "connection reset", "broken pipe",
                            "timed out", "timeout", "gloo", "nccl", "socket"))

