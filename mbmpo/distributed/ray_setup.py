"""Starting Ray the project's way: loopback only on one machine (127.0.0.1, no dashboard, no
usage stats, no metadata probes leaving the machine), or joining the cluster named by
``RAY_ADDRESS``. Used by Gorila and by ``scripts/compare.py --backend ray``. Ray is an
optional dependency; nothing here imports it at import time.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from mbmpo.errors import ConfigError

RAY_INSTALL_HINT = "pip install -e '.[ray]' (or: pip install 'ray>=2.9')"


def require_ray(user: str = "this") -> Any:
    """Import Ray with loopback-safe settings; a missing install is a one-line ConfigError
    (``user`` names what needs it)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError(f"{user} needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


def init_ray(num_cpus: int = 0, user: str = "this") -> bool:
    """Start a local Ray instance bound to 127.0.0.1 without a dashboard, or join the cluster
    named by ``RAY_ADDRESS``. Returns True when this call started Ray (the caller shuts it
    down), False when Ray was already initialized."""
    ray = require_ray(user)
    if ray.is_initialized():
        return False
    root = str(Path(__file__).resolve().parents[2])
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
