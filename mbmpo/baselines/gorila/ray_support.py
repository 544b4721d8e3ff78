"""Ray glue for Gorila: importing and starting Ray, finding actors by name, large arguments
by reference, and whether this process is an actor Ray restarted.

Ray is an optional dependency; nothing here imports it at import time.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import Any

from mbmpo.distributed import ray_setup
from mbmpo.distributed.ray_setup import RAY_INSTALL_HINT  # noqa: F401


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
    return ray_setup.require_ray("gorila")


def init_ray(num_cpus: int = 0) -> bool:
    """Start a local Ray instance on 127.0.0.1, or join ``RAY_ADDRESS`` (see
    :func:`mbmpo.distributed.ray_setup.init_ray`); True when this call started Ray."""
    return ray_setup.init_ray(num_cpus, user="gorila")
