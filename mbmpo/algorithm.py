"""The base every algorithm shares: run counters, the budget loop with a progress bar,
the evaluation and checkpoint schedules (both in real env steps), save/load/close.

A subclass provides ``_iterate(bar)`` (one iteration: collect, update, then
:meth:`Algorithm.end_iteration`), ``evaluate(...)`` and its ``state_dict``/``_load_state``.
"""

from __future__ import annotations

import datetime
import math
import platform
import subprocess
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import yaml

from mbmpo.checkpoint import load_checkpoint, save_checkpoint
from mbmpo.config import BaseConfig, config_from_dict, save_config
from mbmpo.errors import CheckpointError, ConfigError
from mbmpo.logger import Logger

EVAL_SEED_OFFSET = 1_000_003
"""Evaluation envs are seeded ``seed + EVAL_SEED_OFFSET``, apart from every training env."""


def resolve_device(device: str) -> torch.device:
    """``'auto'`` -> cuda when available, else cpu; a cuda device without CUDA raises ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return dev


class Algorithm:
    """Counters, budget loop, evaluation/checkpoint schedules and persistence.

    Args:
        config: the algorithm's config dataclass (validated here).
        out_dir: run directory for ``config.yaml``, ``environment.yaml``, ``progress.csv``,
            ``tb/`` and ``checkpoints/``; ``None`` writes nothing.
        console: print progress to the console.
    """

    algo_name: ClassVar[str] = ""
    config_cls: ClassVar[type[BaseConfig]] = BaseConfig
    console_keys: ClassVar[list[str]] = ["iteration", "real_steps", "train/episode_return", "eval_return_mean"]

    def __init__(self, config: BaseConfig, out_dir: str | Path | None = None, console: bool = True):
        if not isinstance(config, self.config_cls):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_cls.__name__}, "
                              f"got {type(config).__name__}")
        config.validate()
        self.config = config
        self.device = resolve_device(config.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.console = console
        self.num_timesteps = 0
        self.iteration = 0
        self.wall_time = 0.0
        self.total_steps = int(config.total_steps)
        self._last_eval_step = 0
        self._last_checkpoint_step = 0
        self._recent_returns: list[float] = []
        self._eval_env: Any = None
        self.logger: Logger | None = None

    # ----- the loop ---------------------------------------------------------------------
    def learn(self, total_steps: int | None = None):
        """Train until ``total_steps`` real env steps (the config's budget when None).

        Stops at the first iteration boundary at or after the budget. Calling again with a
        larger budget (or after :meth:`load`) continues the same run. The first call creates
        the logger, writes ``config.yaml``, adds this start to ``environment.yaml`` and drops
        ``progress.csv`` rows past the restored step (a resumed run repeats them).
        """
        total = int(total_steps if total_steps is not None else self.config.total_steps)
        if total <= 0:
            raise ConfigError(f"total_steps must be > 0, got {total}")
        self.total_steps = total
        if self.logger is None:
            self.logger = Logger(self.out_dir, console=self.console, console_keys=self.console_keys)
            if self.out_dir is not None:
                save_config(self.config, self.out_dir / "config.yaml", self.algo_name)
                record_environment(self.out_dir / "environment.yaml", self.num_timesteps)
                self.logger.truncate_after(self.num_timesteps)
        bar = self.logger.progress(total, self.num_timesteps, desc=f"{self.algo_name} {self.config.env_id}")
        try:
            while self.num_timesteps < total:
                self._iterate(bar)
        finally:
            bar.close()
        return self

    def _iterate(self, bar) -> None:
        """One iteration; must advance ``num_timesteps`` and end with :meth:`end_iteration`."""
        raise NotImplementedError

    def record_train_returns(self, episode_returns: list[float]) -> None:
        """Log ``train/episode_return``: the mean of the last 20 finished training episodes."""
        self._recent_returns = (self._recent_returns + list(episode_returns))[-20:]
        if self._recent_returns:
            self.logger.record("train/episode_return", float(np.mean(self._recent_returns)))

    def evaluation_due(self) -> bool:
        """The last iteration of the budget, or ``eval_every`` real steps since the last evaluation."""
        every = self.config.eval_every
        if self.num_timesteps >= self.total_steps or (every > 0 and self.num_timesteps - self._last_eval_step >= every):
            self._last_eval_step = self.num_timesteps
            return True
        return False

    def checkpoint_due(self) -> bool:
        """The last iteration of the budget, ``checkpoint_every_steps`` real steps since the
        last checkpoint, or (the older iteration-based key, when set) every
        ``checkpoint_every`` iterations."""
        c = self.config
        due = (self.num_timesteps >= self.total_steps
               or self.num_timesteps - self._last_checkpoint_step >= c.checkpoint_every_steps
               or (c.checkpoint_every is not None and self.iteration % c.checkpoint_every == 0))
        if due:
            self._last_checkpoint_step = self.num_timesteps
        return due

    def end_iteration(self, evaluate: Callable[[], None] | None = None) -> None:
        """The common tail of every iteration: ``evaluate()`` when due (it records its own
        columns; default :meth:`record_default_evaluation`), then wall time, one
        ``progress.csv`` row and the periodic checkpoint."""
        if self.evaluation_due():
            t0 = time.perf_counter()
            (evaluate or self.record_default_evaluation)()
            self.logger.record("time/eval_s", time.perf_counter() - t0)  # not part of wall_time_s
        self.logger.record("wall_time_s", self.wall_time)
        self.logger.dump(self.num_timesteps)
        if self.out_dir is not None and self.checkpoint_due():
            self.save(self.out_dir / "checkpoints" / "last.pt")

    def record_default_evaluation(self) -> None:
        c = self.config
        record_evaluation(self.logger, *self.evaluate(c.eval_episodes, c.eval_deterministic))

    def evaluate(self, num_episodes: int = 10, deterministic: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Returns and lengths of ``num_episodes`` full evaluation episodes."""
        raise NotImplementedError

    # ----- evaluation envs ----------------------------------------------------------------
    def eval_env(self, num_episodes: int, **env_kwargs: Any):
        """The evaluation env with ``num_episodes`` copies (made once, reused), seeded apart
        from the training env so evaluation never replays training episodes."""
        from mbmpo.envs import GymVecEnv

        env = self._eval_env
        if env is None or env.num_envs != num_episodes:
            if env is not None:
                env.close()
            env = self._eval_env = GymVecEnv(self.config.env_id, num_episodes,
                                             seed=self.config.seed + EVAL_SEED_OFFSET, **env_kwargs)
        return env

    def eval_seed(self) -> int:
        """Reset seed of an evaluation: fixed per iteration, different across iterations."""
        return self.config.seed + EVAL_SEED_OFFSET + 7919 * self.iteration

    # ----- persistence ----------------------------------------------------------------------
    def counters(self) -> dict[str, float | int]:
        """The run counters a checkpoint stores."""
        return {"num_timesteps": self.num_timesteps, "iteration": self.iteration, "wall_time": self.wall_time,
                "last_eval_step": self._last_eval_step, "last_checkpoint_step": self._last_checkpoint_step}

    def restore_counters(self, cnt: dict[str, Any]) -> None:
        self.num_timesteps = int(cnt["num_timesteps"])
        self.iteration = int(cnt["iteration"])
        self.wall_time = float(cnt["wall_time"])
        self._last_eval_step = int(cnt["last_eval_step"])
        self._last_checkpoint_step = int(cnt.get("last_checkpoint_step", self.num_timesteps))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (weights, optimizers, data, RNG, counters)."""
        raise NotImplementedError

    def _load_state(self, state: dict[str, Any]) -> None:
        """Restore the subclass's part of :meth:`state_dict` (may raise KeyError/RuntimeError/ValueError)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Restore a :meth:`state_dict`; a checkpoint of another setup raises one CheckpointError line."""
        try:
            self._load_state(state)
            cnt = state["counters"]
        except (KeyError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{source} does not match this {self.algo_name} setup: {first}") from None
        self.restore_counters(cnt)

    def save(self, path: str | Path) -> None:
        """Write :meth:`state_dict` atomically."""
        save_checkpoint(path, self.state_dict())

    @classmethod
    def load(cls, path: str | Path, out_dir: str | Path | None = None, console: bool = True, **overrides: Any):
        """Rebuild from a checkpoint (file or run directory) to resume training or act.

        Args:
            path: checkpoint file or run directory (uses ``checkpoints/last.pt``).
            out_dir: where a resumed run keeps logging (usually the original run directory).
            overrides: config fields to change (e.g. ``device``, ``total_steps``).
        """
        return cls.from_state(load_checkpoint(path), str(path), out_dir, console, overrides)

    @classmethod
    def from_state(cls, state: dict[str, Any], path: str, out_dir: str | Path | None = None,
                   console: bool = True, overrides: dict[str, Any] | None = None):
        """Rebuild from a loaded checkpoint dict (``path`` names it in errors)."""
        if state.get("algo") != cls.algo_name:
            raise CheckpointError(f"checkpoint {path!r} holds algo {state.get('algo')!r}, not {cls.algo_name!r}")
        config = config_from_dict(cls.config_cls, {**state["config"], **(overrides or {})},
                                  source=f"checkpoint {path}")
        algo = cls(config, out_dir=out_dir, console=console)
        algo.load_state_dict(state, source=f"checkpoint {path!r}")
        return algo

    def close(self) -> None:
        """Close the envs and the logger (flushes ``progress.csv`` and TensorBoard)."""
        env = getattr(self, "env", None)
        if env is not None:
            env.close()
        if self._eval_env is not None:
            self._eval_env.close()
            self._eval_env = None
        if self.logger is not None:
            self.logger.close()


def record_evaluation(logger: Logger, returns: np.ndarray, lengths: np.ndarray, prefix: str = "eval") -> None:
    """``{prefix}_return_mean``, ``{prefix}_return_std`` and ``{prefix}_length_mean``."""
    logger.record(f"{prefix}_return_mean", float(returns.mean()))
    logger.record(f"{prefix}_return_std", float(returns.std()))
    logger.record(f"{prefix}_length_mean", float(lengths.mean()))


def check_finite(stats: dict[str, float], params: Any, where: str) -> str | None:
    """The first non-finite logged scalar (explained variance aside) or parameter, or None."""
    bad = {k: v for k, v in stats.items() if isinstance(v, float) and not math.isfinite(v)
           and not k.startswith("train/explained")}
    if bad:
        return f"{next(iter(bad))}={next(iter(bad.values()))}"
    if not all(torch.isfinite(p).all() for p in params):
        return where
    return None


ENV_PACKAGES = ("torch", "numpy", "scipy", "gymnasium", "mujoco", "minigrid", "ray")


def environment_info() -> dict[str, Any]:
    """What a run's numbers depend on beyond its config: package versions, CPU, threads and
    the source commit. Floating-point results can differ across CPUs and library versions, so a
    seeded run need not repeat exactly where these differ."""
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
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_native": cpu_bf16_native(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "packages": packages, "git": git_describe()}


def cpu_bf16_native() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX) that oneDNN uses;
    without them bf16 products are emulated and the precision options are slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def warn_if_bf16_emulated(options: list[str], device: torch.device) -> None:
    """Warn (at construction) when the precision ``options`` (names of settings set to bfloat16; empty: no
    warning) will run on a CPU whose bf16 products are emulated, many times slower than float32."""
    if options and device.type == "cpu" and not cpu_bf16_native():
        warnings.warn(f"{' and '.join(options)} bfloat16 on a CPU without bf16 instructions "
                      f"({torch.backends.cpu.get_cpu_capability()}): its bf16 products are emulated, "
                      "many times slower than float32 (32x for an MB-MPO imagined step on an AVX2 EPYC: "
                      "benchmarks/ensemble_precision.py); use float32", stacklevel=3)


def git_describe() -> str | None:
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
