"""The training-run plumbing every algorithm shares: budget loop with a progress bar,
logging setup, evaluation schedule and loading from checkpoints."""

from __future__ import annotations

import datetime
import platform
import subprocess
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mbmpo.checkpoint import load_checkpoint
from mbmpo.config import config_from_dict, save_config
from mbmpo.errors import CheckpointError, ConfigError
from mbmpo.logger import Logger


def run_training(algo: Any, total_steps: int | None, console_keys: list[str]) -> None:
    """Call ``algo._iterate(bar)`` until ``algo.num_timesteps >= total_steps``.

    ``algo`` provides ``config``, ``out_dir``, ``console``, ``logger``, ``num_timesteps``,
    ``algo_name`` and ``_iterate``. The first call creates the logger, writes
    ``config.yaml``, adds this start to ``environment.yaml`` and drops ``progress.csv`` rows
    past the restored step (a resumed run repeats them).
    """
    total = int(total_steps if total_steps is not None else algo.config.total_steps)
    if total <= 0:
        raise ConfigError(f"total_steps must be > 0, got {total}")
    algo.total_steps = total
    if algo.logger is None:
        algo.logger = Logger(algo.out_dir, console=algo.console, console_keys=console_keys)
        if algo.out_dir is not None:
            save_config(algo.config, Path(algo.out_dir) / "config.yaml", algo.algo_name)
            record_environment(Path(algo.out_dir) / "environment.yaml", algo.num_timesteps)
            algo.logger.truncate_after(algo.num_timesteps)
    bar = algo.logger.progress(total, algo.num_timesteps, desc=f"{algo.algo_name} {algo.config.env_id}")
    try:
        while algo.num_timesteps < total:
            algo._iterate(bar)
    finally:
        bar.close()


ENV_PACKAGES = ("torch", "numpy", "scipy", "gymnasium", "mujoco", "minigrid", "ray")


def environment_info() -> dict[str, Any]:
    """What a run's numbers depend on beyond its config: package versions, CPU, threads and
    the source commit. Floating-point results can differ across CPUs and library versions, so a
    seeded run need not repeat exactly where these differ."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    packages = {}
    for name in ENV_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "packages": packages, "git": _git_describe()}


def _git_describe() -> str | None:
    """``<commit>`` of the source tree, ``+dirty`` when it has uncommitted changes; None
    outside this project's own checkout (an installed package, even one that lies inside some
    other repository, e.g. a virtualenv in a user's project)."""
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=src, capture_output=True,
                              text=True, timeout=10)
        lines = head.stdout.split()
        if head.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != src.parent:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return lines[1] + ("+dirty" if dirty else "")


def record_environment(path: Path, start_step: int) -> None:
    """Append this start (fresh or resumed at ``start_step``) and :func:`environment_info`
    to the list in ``path``; a resumed run keeps the entries of its earlier starts."""
    entries: list[Any] = []
    if path.is_file():
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            loaded = None
        if isinstance(loaded, list):
            entries = loaded
        else:  # a damaged record must not stop the run, but its loss should not pass unseen
            warnings.warn(f"{path} is not a list of starts; it is rewritten with this start only", stacklevel=2)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    entries.append({"start_step": int(start_step), "started_utc": now, **environment_info()})
    path.write_text(yaml.safe_dump(entries, sort_keys=False))


def evaluation_due(algo: Any) -> bool:
    """The last iteration of the budget, or ``eval_every`` real steps since the last evaluation."""
    every = algo.config.eval_every
    if algo.num_timesteps >= algo.total_steps or (every > 0 and algo.num_timesteps - algo._last_eval_step >= every):
        algo._last_eval_step = algo.num_timesteps
        return True
    return False


def end_iteration(algo: Any, evaluate: Callable[[], None]) -> None:
    """The common tail of every algorithm's iteration: ``evaluate()`` when due (it records
    its own columns), then wall time, one ``progress.csv`` row and the periodic checkpoint
    (always after the last iteration of the budget)."""
    last = algo.num_timesteps >= algo.total_steps
    if evaluation_due(algo):
        evaluate()
    algo.logger.record("wall_time_s", algo.wall_time)
    algo.logger.dump(algo.num_timesteps)
    if algo.out_dir is not None and (last or algo.iteration % algo.config.checkpoint_every == 0):
        algo.save(Path(algo.out_dir) / "checkpoints" / "last.pt")


def record_evaluation(logger: Logger, returns: np.ndarray, lengths: np.ndarray, prefix: str = "eval") -> None:
    logger.record(f"{prefix}_return_mean", float(returns.mean()))
    logger.record(f"{prefix}_return_std", float(returns.std()))
    logger.record(f"{prefix}_length_mean", float(lengths.mean()))


def load_algorithm(cls: Any, path: str | Path, out_dir: str | Path | None, console: bool,
                   overrides: dict[str, Any]) -> Any:
    """Rebuild ``cls`` from a checkpoint (file or run directory) with config ``overrides``."""
    return algorithm_from_state(cls, load_checkpoint(path), str(path), out_dir, console, overrides)


def algorithm_from_state(cls: Any, state: dict[str, Any], path: str, out_dir: str | Path | None,
                         console: bool, overrides: dict[str, Any]) -> Any:
    """Rebuild ``cls`` from a loaded checkpoint dict (``path`` names it in errors)."""
    if state.get("algo") != cls.algo_name:
        raise CheckpointError(f"checkpoint {path!r} holds algo {state.get('algo')!r}, "
                              f"not {cls.algo_name!r}")
    config = config_from_dict(cls.config_cls, {**state["config"], **overrides}, source=f"checkpoint {path}")
    algo = cls(config, out_dir=out_dir, console=console)
    algo.load_state_dict(state, source=f"checkpoint {path!r}")
    return algo


def eval_env(algo: Any, num_episodes: int, **env_kwargs: Any) -> Any:
    """``algo``'s evaluation env with ``num_episodes`` copies (made once, reused), seeded
    apart from the training env so evaluation never replays training episodes."""
    from mbmpo.envs import GymVecEnv

    env = algo._eval_env
    if env is None or env.num_envs != num_episodes:
        if env is not None:
            env.close()
        env = algo._eval_env = GymVecEnv(algo.config.env_id, num_episodes,
                                         seed=algo.config.seed + 1_000_003, **env_kwargs)
    return env


def eval_seed(algo: Any) -> int:
    """Reset seed of an evaluation: fixed per iteration, different across iterations."""
    return algo.config.seed + 1_000_003 + 7919 * algo.iteration


def counters(algo: Any) -> dict[str, float | int]:
    """The run counters a checkpoint stores."""
    return {"num_timesteps": algo.num_timesteps, "iteration": algo.iteration,
            "wall_time": algo.wall_time, "last_eval_step": algo._last_eval_step}


def restore_counters(algo: Any, cnt: dict[str, Any]) -> None:
    algo.num_timesteps = int(cnt["num_timesteps"])
    algo.iteration = int(cnt["iteration"])
    algo.wall_time = float(cnt["wall_time"])
    algo._last_eval_step = int(cnt["last_eval_step"])
