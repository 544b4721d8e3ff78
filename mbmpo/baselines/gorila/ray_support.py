"""Ray glue for Gorila: importing and starting Ray, finding actors by name, large arguments
by reference, and whether this process is an actor Ray restarted.

Ray is an optional dependency; nothing here imports it at import time.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mbmpo.errors import ConfigError

RAY_INSTALL_HINT = "pip install -e '.[ray]' (or: pip install 'ray>=2.9')"


def was_restarted() -> bool:
    """True inside a Ray actor that Ray has restarted after a crash; False outside Ray."""
    ray = sys.modules.get("ray")  # a Ray worker has imported ray before it builds an actor
    if ray is None:
        return False
    try:
        with warnings.catch_warnings():  # Ray deprecates an API this property uses internally
            warnings.simplefilter("ignore")
            return bool(ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed)
    except (RuntimeError, AttributeError, AssertionError):  # e.g. the driver process
        return False


@dataclass
class ByRef:
    """A large constructor argument (shard state, replay contents) held in Ray's object store
    by the driver and fetched by the process. Nested in this wrapper, Ray does not count it
    as an object-store argument of a restartable actor; the driver keeps ``ref`` alive for
    restarts."""

    ref: Any

    def get(self) -> Any:
        import ray

        return ray.get(self.ref)


def resolve_ref(arg: Any) -> Any:
    """``arg``'s value when it is a :class:`ByRef`, else ``arg`` itself."""
    return arg.get() if isinstance(arg, ByRef) else arg


def named_actor(name_or_handle: Any) -> Any:
    """A Ray actor handle from its name (handles pass through).

    Processes get each other's names, not handles, as constructor arguments: Ray keeps
    handle arguments of restartable actors in the object store and warns about it.
    """
    if not isinstance(name_or_handle, str):
        return name_or_handle
    import ray

    return ray.get_actor(name_or_handle)


def require_ray() -> Any:
    """Import Ray with loopback-safe settings; a missing install is a one-line ConfigError."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError(f"gorila needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


def init_ray(num_cpus: int = 0) -> bool:
    """Start a local Ray instance bound to 127.0.0.1 without a dashboard, or join the cluster
    named by ``RAY_ADDRESS``. Returns True when this call started Ray (the caller shuts it
    down), False when Ray was already initialized."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    root = str(Path(__file__).resolve().parents[3])
    # the worker processes must import this checkout of mbmpo, installed or not
    path = os.environ.get("PYTHONPATH", "")
    if root not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join([root, path]) if path else root
    if os.environ.get("RAY_ADDRESS"):
        ray.init(include_dashboard=False, logging_level="warning")
        return True
    # Ray starts its workers at niceness 15; next to other jobs (e.g. a second training run
    # on the same cores) the actors and learners then get a few percent of a core and a run
    # crawls (measured: 24 env steps/s instead of 420). Workers run at normal priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    with _local_http_only():
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 _node_ip_address="127.0.0.1", logging_level="warning")
    return True


@contextlib.contextmanager
def _local_http_only():
    """Environment for the Ray daemons started inside: HTTP(S) through a closed loopback port.

    Even with usage stats disabled and no dashboard, Ray 2.x starts a dashboard process whose
    usage-stats module probes cloud metadata endpoints (169.254.169.254,
    metadata.google.internal) at startup (measured here with strace). With this proxy those
    requests fail on 127.0.0.1 and no packet leaves the machine; loopback traffic between
    Ray's own processes is exempt (NO_PROXY). The caller's environment is restored afterwards.
    """
    proxy = "http://127.0.0.1:9"  # discard port: nothing listens, requests fail at once
    local = "127.0.0.1,localhost,::1"
    keys = {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
            "NO_PROXY": local, "no_proxy": local}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
