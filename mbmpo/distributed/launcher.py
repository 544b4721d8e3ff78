"""Running DPPO workers: the local launcher and its watchdog, and one worker under torchrun.

Local runs spawn W processes (``torch.multiprocessing``, start method ``spawn``) that meet
on 127.0.0.1 (``GLOO_SOCKET_IFNAME=lo``) at a free port, each with a
:class:`~mbmpo.distributed.reducer.SharedMemoryReducer` for its sums unless disabled. Under
``torchrun`` this process is one of the workers, so nothing is spawned
(:func:`run_under_torchrun`).

Failure handling: a worker that loses a peer gets an error at its next collective
(immediately when the peer's process died; after ``timeout_s`` when it hangs) and exits with
:data:`PEER_LOST_EXIT`; the launcher's watchdog notices the first non-zero exit,
gives the others ``grace_s`` to stop on their own (the interpreter teardown of a process
holding torch, MuJoCo and TensorBoard takes 1-3 s on a loaded 2-core machine), terminates
the rest and raises one :class:`WorkerError` naming the rank that failed first. The workers
never outlive the launcher: a SIGTERM to the launcher stops them before it exits, and each
worker exits on its own within a second of the launcher vanishing (SIGKILL, OOM killer),
so a resumed run never shares its directory with orphans of the old one.
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
from collections.abc import Callable
from typing import Any

import torch

from mbmpo import errors
from mbmpo.distributed.process_group import (
    init,
    is_peer_failure,
    set_shared_memory_reducer,
    shutdown,
)
from mbmpo.distributed.reducer import SharedMemoryReducer
from mbmpo.errors import MBMPOError, TrainingError

PEER_LOST_EXIT = 75
"""Exit status of a worker that stopped because another worker failed."""

LAUNCHER_LOST_EXIT = 76
"""Exit status of a worker that stopped because the process that spawned it is gone."""


class WorkerError(TrainingError):
    """A distributed worker died or failed; ``rank`` names the first one (or -1 if unknown)."""

    def __init__(self, message: str, rank: int = -1):
        super().__init__(message)
        self.rank = rank


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _run_worker(fn: Callable[..., Any], args: tuple, threads: int, backend: str, timeout_s: float,
                report: Callable[[tuple], None], reducer: SharedMemoryReducer | None = None) -> int:
    """Run ``fn(*args)`` inside the process group; returns the exit status, reports failures."""
    rank = int(os.environ["RANK"])
    torch.set_num_threads(max(1, threads))
    try:
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        init(backend, timeout_s)
        if reducer is not None:
            reducer.timeout_s = timeout_s
        set_shared_memory_reducer(reducer)
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
