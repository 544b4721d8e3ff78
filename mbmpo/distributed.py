"""torch.distributed plumbing for DPPO: process-group setup, the local launcher and its
watchdog, torchrun detection, and collectives on flat tensors.

Local runs spawn W processes (``torch.multiprocessing``, start method ``spawn``) that meet
on 127.0.0.1 (``GLOO_SOCKET_IFNAME=lo``) at a free port. Under ``torchrun`` the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) is already set
and this process is one of the workers, so nothing is spawned.

Failure handling: a worker that loses a peer gets an error at its next collective
(immediately when the peer's process died; after ``timeout_s`` when it hangs) and exits with
:data:`PEER_LOST_EXIT`; the launcher's watchdog notices the first non-zero exit,
gives the others ``grace_s`` to stop on their own (the interpreter teardown of a process
holding torch, MuJoCo and TensorBoard takes 1-3 s on a loaded 2-core machine), terminates
the rest and raises one :class:`WorkerError` naming the rank that failed first. The workers
never outlive the launcher: a SIGTERM to the launcher stops them before it exits, and each
worker exits on its own within a second of the launcher vanishing (SIGKILL, OOM killer),
so a resumed run never shares its directory with orphans of the old one.

Sums on one machine: gloo's all_reduce costs about 1 ms median, 2 ms mean and 4 ms at the
90th percentile per call here, whatever the size up to 50k floats, while the shared-memory sum
below, with one pipe message to and from each peer, takes 0.2 ms: the cost is gloo's hand-offs
between its threads (``benchmarks/allreduce_latency.py``). DPPO calls
it once per minibatch step, so ``spawn`` also gives its workers a :class:`SharedMemoryReducer`
(every worker writes its tensor into shared memory, one barrier, every worker adds the W
slots in rank order) and :func:`all_reduce_sum_` uses it for CPU tensors. Everything else
(broadcasts, the store, failure detection by the watchdog) stays on the process group, and
workers started by ``torchrun`` (possibly on several machines) use gloo/nccl for all of it.

The default process group is process-global in torch; its key-value store (used for the
straggler counter) and the shared-memory reducer are kept next to it in this module for the
same lifetime.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mbmpo import errors
from mbmpo.errors import MBMPOError, TrainingError

PEER_LOST_EXIT = 75
"""Exit status of a worker that stopped because another worker failed."""

LAUNCHER_LOST_EXIT = 76
"""Exit status of a worker that stopped because the process that spawned it is gone."""

_STORE: Any = None
_SHM: SharedMemoryReducer | None = None


class PeerLostError(RuntimeError):
    """A collective could not complete: another worker failed or did not arrive in time."""


class WorkerError(TrainingError):
    """A distributed worker died or failed; ``rank`` names the first one (or -1 if unknown)."""

    def __init__(self, message: str, rank: int = -1):
        super().__init__(message)
        self.rank = rank


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


# ----- collectives (no-ops without a process group) ----------------------------------------
class SharedMemoryReducer:
    """All-reduce (sum) among the W processes of one machine through shared memory.

    Data: two slots of ``[W, capacity_bytes]`` shared bytes, used in turn. A call writes this
    worker's row of the current slot, passes a barrier, and adds the W rows in rank order,
    so every worker computes the same bytes. A worker writes a slot again only two calls
    later, after the barrier of the call in between, which every worker passes only once it
    has read that slot: one barrier per call suffices. Tensors larger than the capacity go
    through in chunks.

    Barrier: one duplex pipe per pair of workers; each worker sends one byte to every peer
    and reads one from every peer (one hop, about 0.05 ms here). The pipes are also the
    failure detector: when a peer's process dies its end closes and the read fails at once;
    a peer that does not arrive within ``timeout_s`` ends the wait with an error too.

    :meth:`create` (in the launcher) returns one reducer per rank; each holds only its own
    pipe ends, and the launcher closes its copies once the workers have started.
    """

    def __init__(self, buf: Tensor, rank: int, links: dict[int, Any], timeout_s: float = 120.0):
        self.buf, self.rank, self.links, self.timeout_s = buf, rank, links, timeout_s
        self.world = buf.shape[1]
        self.calls = 0

    @staticmethod
    def create(world: int, ctx: Any, capacity_bytes: int = 1 << 20) -> list[SharedMemoryReducer]:
        if capacity_bytes % 8:
            raise ValueError(f"capacity_bytes must be a multiple of 8, got {capacity_bytes}")
        buf = torch.zeros(2, world, capacity_bytes, dtype=torch.uint8).share_memory_()
        links: list[dict[int, Any]] = [{} for _ in range(world)]
        for i in range(world):
            for j in range(i + 1, world):
                links[i][j], links[j][i] = ctx.Pipe(duplex=True)
        return [SharedMemoryReducer(buf, r, links[r]) for r in range(world)]

    def close(self) -> None:
        for conn in self.links.values():
            conn.close()

    def supports(self, t: Tensor) -> bool:
        return t.device.type == "cpu" and t.dtype != torch.bool

    def _barrier(self) -> None:
        peer = -1
        try:
            for peer, conn in self.links.items():  # noqa: B007 (the except clause names the peer)
                conn.send_bytes(b"\0")
            deadline = time.monotonic() + self.timeout_s
            for peer, conn in self.links.items():
                if not conn.poll(max(0.0, deadline - time.monotonic())):
                    raise PeerLostError(f"worker rank {peer} did not reach the shared-memory all_reduce "
                                        f"within {self.timeout_s:g} s (timed out)")
                conn.recv_bytes()
        except (EOFError, OSError) as exc:  # the peer's end closed: its process is gone
            raise PeerLostError(f"worker rank {peer} is gone (shared-memory all_reduce: "
                                f"{type(exc).__name__})") from None

    def all_reduce_sum_(self, t: Tensor) -> Tensor:
        """Sum ``t`` over the workers in place; raises :class:`PeerLostError` if one fails."""
        flat = t.detach().reshape(-1)
        size = t.element_size()
        per_chunk = self.buf.shape[-1] // size
        total = torch.empty_like(flat)
        for start in range(0, flat.numel(), per_chunk):
            part = flat[start : start + per_chunk]
            rows = self.buf[self.calls % 2, :, : part.numel() * size].view(t.dtype)  # [W, n]
            rows[self.rank].copy_(part)
            self.calls += 1
            self._barrier()
            acc = total[start : start + part.numel()]
            acc.copy_(rows[0])
            for r in range(1, self.world):
                acc += rows[r]
        with torch.no_grad():
            t.copy_(total.view_as(t))
        return t


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


# ----- running workers ---------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _run_worker(fn: Callable[..., Any], args: tuple, threads: int, backend: str, timeout_s: float,
                report: Callable[[tuple], None], reducer: SharedMemoryReducer | None = None) -> int:
    """Run ``fn(*args)`` inside the process group; returns the exit status, reports failures."""
    global _SHM
    rank = int(os.environ["RANK"])
    torch.set_num_threads(max(1, threads))
    try:
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        init(backend, timeout_s)
        if reducer is not None:
            reducer.timeout_s = timeout_s
        _SHM = reducer
        fn(*args)
        return 0
    except MBMPOError as exc:
        report((rank, "error", type(exc).__name__, str(exc)))
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - classify, report, exit non-zero
        if is_peer_failure(exc):
            print(f"dppo worker rank {rank}: lost contact with another worker: {_first_line(exc)}",
                  file=sys.stderr, flush=True)
            report((rank, "peer_lost", type(exc).__name__, _first_line(exc)))
            return PEER_LOST_EXIT
        traceback.print_exc()
        report((rank, "crash", type(exc).__name__, _first_line(exc)))
        return 1
    finally:
        shutdown()


def exit_with_launcher(launcher_pid: int, poll_s: float = 0.5) -> threading.Thread:
    """Start a daemon thread that ends this process once ``launcher_pid`` is no longer its parent.

    A launcher killed with SIGKILL cannot stop its workers; orphans would go on training and
    writing the run directory. ``os._exit`` skips the teardown on purpose: the peers see the
    connection drop, and checkpoints are written by rename, so the last one stays intact.
    """
    def watch() -> None:
        while os.getppid() == launcher_pid:
            time.sleep(poll_s)
        print(f"dppo worker pid {os.getpid()}: the launcher (pid {launcher_pid}) is gone; stopping",
              file=sys.stderr, flush=True)
        os._exit(LAUNCHER_LOST_EXIT)

    thread = threading.Thread(target=watch, name="launcher-watchdog", daemon=True)
    thread.start()
    return thread


def _spawned_entry(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple,
                   threads: int, backend: str, timeout_s: float, reports: Any, launcher_pid: int,
                   reducer: SharedMemoryReducer | None) -> None:
    exit_with_launcher(launcher_pid)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    if sys.platform.startswith("linux"):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # local runs stay on the loopback interface
    sys.exit(_run_worker(fn, args, threads, backend, timeout_s, reports.put, reducer))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close_all(reducers: list[SharedMemoryReducer | None]) -> None:
    for red in reducers:
        if red is not None:
            red.close()


def spawn(fn: Callable[..., Any], args: tuple, num_workers: int, threads: int = 1,
          backend: str = "gloo", timeout_s: float = 120.0, grace_s: float = 5.0,
          failure_hint: Callable[[], str] | None = None, shared_memory: bool = True) -> None:
    """Run ``fn(*args)`` in ``num_workers`` local processes joined in one process group.

    With ``shared_memory`` (and the gloo backend) :func:`all_reduce_sum_` of CPU tensors goes
    through a :class:`SharedMemoryReducer` instead of gloo (same sums, a tenth of the latency).

    ``fn`` must be importable (a module-level function) and is called after the process
    group is up. Returns when all workers finished; raises the workers' own
    :class:`~mbmpo.errors.MBMPOError` (e.g. a ConfigError every rank hit), or a
    :class:`WorkerError` naming the rank that died or crashed first, after stopping the rest.
    ``failure_hint()`` is appended to that message (e.g. where the last checkpoint is).
    """
    if num_workers < 1:
        raise errors.ConfigError(f"number of workers must be >= 1, got {num_workers}")
    ctx = torch.multiprocessing.get_context("spawn")
    port = free_port()
    reports = ctx.SimpleQueue()
    reducers: list[SharedMemoryReducer | None] = [None] * num_workers
    if shared_memory and backend == "gloo" and num_workers > 1:
        try:
            reducers = SharedMemoryReducer.create(num_workers, ctx)
        except (OSError, RuntimeError) as exc:  # e.g. a tiny /dev/shm in a container
            print(f"dppo: no shared memory for the all_reduce ({_first_line(exc)}); using gloo",
                  file=sys.stderr, flush=True)
    procs = []
    # SIGTERM (kill, a batch scheduler, a timeout) becomes SystemExit so that the handler
    # below stops the workers; the default action would end this process and leave them running
    on_main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, _raise_system_exit) if on_main_thread else None
    try:
        for rank in range(num_workers):
            p = ctx.Process(target=_spawned_entry, name=f"dppo-rank{rank}",
                            args=(rank, num_workers, port, fn, args, threads, backend, timeout_s, reports,
                                  os.getpid(), reducers[rank]))
            p.start()
            procs.append(p)
        print(f"dppo: {num_workers} worker(s) on 127.0.0.1:{port}; pids "
              + ", ".join(f"rank {r}={p.pid}" for r, p in enumerate(procs)), flush=True)
        _close_all(reducers)  # the workers hold their own ends now; a dead worker's must close
        stopped = _watch(procs, grace_s)
    except BaseException as exc:
        _close_all(reducers)  # the launcher's ends (closing twice is harmless)
        n = len(_terminate(procs))
        if isinstance(exc, SystemExit) and exc.code == 128 + signal.SIGTERM:
            print(f"dppo: SIGTERM: stopped {n} worker(s)", file=sys.stderr, flush=True)
        raise
    finally:
        if on_main_thread:  # None: the old handler was not set from Python
            signal.signal(signal.SIGTERM, signal.SIG_DFL if old_handler is None else old_handler)
    got: dict[int, tuple] = {}
    while not reports.empty():
        rep = reports.get()
        got.setdefault(rep[0], rep)
    _raise_failure(procs, got, stopped, failure_hint() if failure_hint else "")


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _watch(procs: list, grace_s: float) -> set[int]:
    """Wait for all workers; once one fails, give the others ``grace_s`` and then stop them.

    Returns the ranks this function had to terminate.
    """
    first_failure = None
    while True:
        codes = [p.exitcode for p in procs]
        if all(c is not None for c in codes):
            return set()
        if first_failure is None and any(c not in (None, 0) for c in codes):
            first_failure = time.monotonic()
        if first_failure is not None and time.monotonic() - first_failure > grace_s:
            return _terminate(procs)
        alive = [p.sentinel for p in procs if p.exitcode is None]
        multiprocessing.connection.wait(alive, timeout=0.2)


def _terminate(procs: list) -> set[int]:
    stopped = {r for r, p in enumerate(procs) if p.is_alive()}
    for r in stopped:
        procs[r].terminate()
    deadline = time.monotonic() + 3.0
    for r in stopped:
        procs[r].join(max(0.0, deadline - time.monotonic()))
        if procs[r].is_alive():
            procs[r].kill()
            procs[r].join()
    return stopped


def _raise_failure(procs: list, reports: dict[int, tuple], stopped: set[int], hint: str) -> None:
    codes = {r: p.exitcode for r, p in enumerate(procs)}
    if all(c == 0 for c in codes.values()):
        return
    # the root cause: a failed rank that neither lost a peer nor was stopped by the watchdog
    primary = [r for r, c in codes.items() if c != 0 and r not in stopped
               and reports.get(r, (r, ""))[1] != "peer_lost"]
    others = len(procs) - 1
    if not primary:
        lost = sorted(r for r, rep in reports.items() if rep[1] == "peer_lost")
        detail = reports[lost[0]][3] if lost else "no worker reported a cause"
        hung = sorted(r for r in stopped if r not in reports)
        if hung:  # the others timed out waiting for these, which were still running
            raise WorkerError(f"DPPO worker rank {hung[0]} (pid {procs[hung[0]].pid}) hung: the other "
                              f"workers timed out waiting for it ({detail}); stopped all "
                              f"{len(procs)}{hint}", rank=hung[0])
        raise WorkerError(f"DPPO workers lost contact with each other (rank(s) {lost}: {detail}); "
                          f"all {len(procs)} stopped{hint}")
    r = primary[0]
    rep, code, pid = reports.get(r), codes[r], procs[r].pid
    if rep is not None and rep[1] == "error":
        cls = getattr(errors, rep[2], None)
        cls = cls if isinstance(cls, type) and issubclass(cls, MBMPOError) else TrainingError
        raise cls(rep[3])
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        what = f"worker rank {r} (pid {pid}) was killed by signal {name}"
    elif rep is not None:
        what = f"worker rank {r} (pid {pid}) crashed with {rep[2]}: {rep[3]} (traceback above)"
    else:
        what = f"worker rank {r} (pid {pid}) exited with status {code}"
    raise WorkerError(f"DPPO {what}; stopped the other {others} worker(s){hint}", rank=r)


def run_under_torchrun(fn: Callable[..., Any], args: tuple, threads: int = 1, backend: str = "gloo",
                       timeout_s: float = 120.0, failure_hint: Callable[[], str] | None = None) -> int:
    """Run ``fn(*args)`` as this torchrun worker; returns the rank. torchrun stops the other
    workers when this one exits with an error."""
    got: list[tuple] = []
    code = _run_worker(fn, args, threads, backend, timeout_s, got.append)
    rank = int(os.environ["RANK"])
    if code == 0:
        return rank
    if code == 130:
        raise KeyboardInterrupt
    _, kind, etype, msg = got[0] if got else (rank, "crash", "error", f"exit status {code}")
    hint = failure_hint() if failure_hint else ""
    if kind == "error":
        cls = getattr(errors, etype, None)
        raise (cls if isinstance(cls, type) and issubclass(cls, MBMPOError) else TrainingError)(msg)
    if kind == "peer_lost":
        raise WorkerError(f"DPPO worker rank {rank} lost contact with another worker ({msg}){hint}",
                          rank=rank)
    raise WorkerError(f"DPPO worker rank {rank} crashed with {etype}: {msg}{hint}", rank=rank)
