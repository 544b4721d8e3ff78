"""What an MB-MPO checkpoint holds, and restoring it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from mbmpo.mbmpo.extensions import Plugin, saved_plugin_states


class RunParts(Protocol):
    """What a checkpoint reads from and restores into an MB-MPO instance (the attributes of
    :class:`mbmpo.mbmpo.algorithm.MBMPO`; a protocol, so this module need not import it)."""

    algo_name: str
    config: Any
    policy: nn.Module
    inner_lr: Any  # dict of learned per-parameter rates (Meta-SGD), or a float
    ensemble: nn.Module
    obs_rms: Any
    dataset: Any
    init_states: Tensor
    collect_params: dict[str, Tensor] | None
    outer_optimizer: torch.optim.Optimizer | None
    inner_kl_coef: float
    mlp_baseline: Any
    plugins: Sequence[Plugin]
    generator: torch.Generator
    device_generator: torch.Generator
    device: torch.device

    def counters(self) -> dict[str, Any]: ...


def run_state(algo: RunParts) -> dict[str, Any]:
    """Everything an MB-MPO run needs to resume: weights, optimizers, real data, plug-ins, RNG, counters."""
    mlp = algo.mlp_baseline
    return {
        "algo": algo.algo_name,
        "config": algo.config.to_dict(),
        "policy": algo.policy.state_dict(),
        "inner_lr": ({n: v.detach() for n, v in algo.inner_lr.items()}
                     if isinstance(algo.inner_lr, dict) else {}),
        "ensemble": algo.ensemble.state_dict(),
        "obs_rms": algo.obs_rms.state_dict(),
        "dataset": algo.dataset.state_dict(),
        "init_states": algo.init_states,
        "collect_params": algo.collect_params or {},
        "outer_optimizer": algo.outer_optimizer.state_dict() if algo.outer_optimizer else {},
        "inner_kl_coef": algo.inner_kl_coef,
        "value_fn": mlp.net.state_dict() if mlp is not None else {},
        "value_optimizer": mlp.optimizer.state_dict() if mlp is not None else {},
        "plugins": {p.name: p.state_dict() for p in algo.plugins},
        "generator": algo.generator.get_state(),
        # a generator of its own only off the CPU (on the CPU it is ``generator``)
        "device_generator": (algo.device_generator.get_state()
                             if algo.device_generator is not algo.generator else None),
        "counters": algo.counters(),
    }


def load_run_state(algo: RunParts, state: dict[str, Any]) -> None:
    """Restore :func:`run_state` (KeyError/RuntimeError/ValueError on a mismatch)."""
    algo.policy.load_state_dict(state["policy"])
    algo.ensemble.load_state_dict(state["ensemble"])
    algo.obs_rms.load_state_dict(state["obs_rms"])
    algo.dataset.load_state_dict(state["dataset"])
    if isinstance(algo.inner_lr, dict):
        with torch.no_grad():
            for n, v in algo.inner_lr.items():
                v.copy_(state["inner_lr"][n])
    if algo.outer_optimizer is not None:
        algo.outer_optimizer.load_state_dict(state["outer_optimizer"])
    if algo.mlp_baseline is not None:
        algo.mlp_baseline.net.load_state_dict(state["value_fn"])
        algo.mlp_baseline.optimizer.load_state_dict(state["value_optimizer"])
    saved = saved_plugin_states(state)
    for p in algo.plugins:
        if p.name not in saved:
            raise KeyError(f"plug-in {p.name!r} has no state in the checkpoint")
        p.load_state_dict(saved[p.name])
    algo.generator.set_state(state["generator"])
    dev_state = state.get("device_generator")
    if algo.device_generator is not algo.generator and dev_state is not None:
        algo.device_generator.set_state(dev_state)  # else (a checkpoint of a CPU run): stays freshly seeded
    algo.inner_kl_coef = float(state.get("inner_kl_coef", algo.config.inner_kl_coef))
    algo.init_states = state["init_states"].to(algo.device)
    algo.collect_params = {n: v.to(algo.device) for n, v in state["collect_params"].items()} or None
