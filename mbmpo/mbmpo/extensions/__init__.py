"""Plug-ins of MB-MPO: research ideas behind one protocol (:class:`Plugin`), each with its own
config dataclass. The core calls whichever are enabled; a user adds their own with
``MBMPO(config, plugins=[MyPlugin()])``."""

from __future__ import annotations

from typing import Any

from mbmpo.mbmpo.extensions.base import ImaginedStep, Plugin
from mbmpo.mbmpo.extensions.fall_hazard import FallHazard, FallHazardConfig
from mbmpo.mbmpo.extensions.focus_starts import FocusStarts, FocusStartsConfig
from mbmpo.mbmpo.extensions.terminal_value import TerminalValue, TerminalValueConfig
from mbmpo.mbmpo.extensions.uncertainty_penalty import UncertaintyPenalty, UncertaintyPenaltyConfig

BUILTIN: dict[str, tuple[type, type]] = {
    "uncertainty_penalty": (UncertaintyPenaltyConfig, UncertaintyPenalty),
    "terminal_value": (TerminalValueConfig, TerminalValue),
    "fall_hazard": (FallHazardConfig, FallHazard),
    "focus_starts": (FocusStartsConfig, FocusStarts),
}
"""Config field of :class:`~mbmpo.mbmpo.config.MBMPOConfig` -> (its config class, its plug-in),
in the order the loop calls them."""


def build_plugins(config: Any) -> list[Plugin]:
    """The built-in plug-ins the config enables, in :data:`BUILTIN` order."""
    out = []
    for field_name, (_, plugin_cls) in BUILTIN.items():
        sub = getattr(config, field_name)
        if sub.enabled:
            out.append(plugin_cls(sub))
    return out


def saved_plugin_states(state: dict[str, Any]) -> dict[str, Any]:
    """``{plug-in name: state}`` of an MB-MPO checkpoint, also of checkpoints written before the
    plug-ins had their own entry (the terminal value and fall-hazard nets at the top level)."""
    if "plugins" in state:
        return state["plugins"]
    out: dict[str, Any] = {"uncertainty_penalty": {}, "focus_starts": {}}
    for name, old in (("terminal_value", "terminal_value"), ("fall_hazard", "hazard")):
        if state.get(old):
            out[name] = {"net": state[old], "optimizer": state[f"{old}_optimizer"]}
    return out


__all__ = ["BUILTIN", "FallHazard", "FallHazardConfig", "FocusStarts", "FocusStartsConfig", "ImaginedStep",
           "Plugin", "TerminalValue", "TerminalValueConfig", "UncertaintyPenalty", "UncertaintyPenaltyConfig",
           "build_plugins", "saved_plugin_states"]
