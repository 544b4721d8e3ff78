"""torch.distributed plumbing for DPPO.

* :mod:`~mbmpo.distributed.process_group`: joining the default process group (``env://``
  rendezvous), its store, and collectives on flat tensors (no-ops without a group);
* :mod:`~mbmpo.distributed.reducer`: the shared-memory all-reduce of the workers of one machine;
* :mod:`~mbmpo.distributed.launcher`: the local launcher (W spawned processes, watchdog,
  failure reports) and running as one worker under ``torchrun``.

Every public name is importable from this package, e.g. ``from mbmpo.distributed import spawn``.
"""

from mbmpo.distributed.launcher import (
    LAUNCHER_LOST_EXIT,
    PEER_LOST_EXIT,
    WorkerError,
    exit_with_launcher,
    free_port,
    run_under_torchrun,
    spawn,
)
from mbmpo.distributed.process_group import (
    all_reduce_sum_,
    broadcast_object,
    broadcast_tensors_,
    default_backend,
    init,
    is_initialized,
    is_peer_failure,
    rank_and_world_size,
    set_shared_memory_reducer,
    shared_memory_reducer,
    shutdown,
    store,
    under_torchrun,
)
from mbmpo.distributed.reducer import PeerLostError, SharedMemoryReducer

__all__ = [
    "LAUNCHER_LOST_EXIT", "PEER_LOST_EXIT", "PeerLostError", "SharedMemoryReducer", "WorkerError",
    "all_reduce_sum_", "broadcast_object", "broadcast_tensors_", "default_backend",
    "exit_with_launcher", "free_port", "init", "is_initialized", "is_peer_failure",
    "rank_and_world_size", "run_under_torchrun", "set_shared_memory_reducer",
    "shared_memory_reducer", "shutdown", "spawn", "store", "under_torchrun",
]
