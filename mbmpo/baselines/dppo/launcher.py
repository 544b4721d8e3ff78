"""Launching DPPO: W local worker processes (loopback), or this process as one worker under
``torchrun``. Rank 0 logs, evaluates and checkpoints; a resumed run may use a different W."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mbmpo import distributed
from mbmpo.baselines.dppo.config import DPPOConfig
from mbmpo.baselines.dppo.worker import DPPO
from mbmpo.checkpoint import load_checkpoint, resolve_checkpoint_path
from mbmpo.config import config_from_dict
from mbmpo.errors import CheckpointError, ConfigError


def _worker(config: dict[str, Any] | None, out_dir: str, resume: bool, overrides: dict[str, Any]) -> None:
    """Body of one worker process (called inside the process group)."""
    rank, _ = distributed.rank_and_world_size()
    if resume:
        path = resolve_checkpoint_path(out_dir)
        # rank 0 reads the file; the others get it over the group (no shared disk needed)
        state = distributed.broadcast_object(load_checkpoint(path) if rank == 0 else None)
        algo = DPPO.from_state(state, str(path), out_dir, rank == 0, overrides)
    else:
        algo = DPPO(config_from_dict(DPPOConfig, config, source="launcher"), out_dir=out_dir,
                    console=rank == 0)
    try:
        algo.learn(algo.config.total_steps)
    finally:
        algo.close()


def launch(out_dir: str | Path, config: DPPOConfig | None = None, *, resume: bool = False,
           overrides: dict[str, Any] | None = None, num_workers: int | None = None,
           threads: int = 1) -> bool:
    """Train DPPO with W workers: spawn W local processes, or run as this torchrun worker.

    Args:
        out_dir: run directory (rank 0 writes logs and checkpoints there).
        config: the run's config (fresh runs).
        resume: continue the run in ``out_dir`` from its last checkpoint; ``overrides``
            change config fields (e.g. ``total_steps``). W may differ from the earlier run.
        num_workers: W for local runs (default 1; on resume the earlier run's W). Ignored
            under torchrun, where W is torchrun's world size.
        threads: torch CPU threads per worker.

    Returns:
        True in the process that should post-process the run (the local launcher, or rank 0
        under torchrun).

    Raises:
        WorkerError: a worker died or crashed (the message names its rank); the last
            checkpoint is left intact.
    """
    out_dir = str(out_dir)
    if resume:
        state = load_checkpoint(out_dir)
        if state.get("algo") != DPPO.algo_name:
            raise CheckpointError(f"run {out_dir!r} holds algo {state.get('algo')!r}, not 'dppo'")
        cfg = config_from_dict(DPPOConfig, {**state["config"], **(overrides or {})},
                               source=f"checkpoint {out_dir}")
        if num_workers is None:
            num_workers = int(state.get("extra", {}).get("world_size", 1))
        job = (None, out_dir, True, dict(overrides or {}))
    else:
        if config is None:
            raise ConfigError("launch() needs a config for a fresh run (or resume=True)")
        cfg = config
        job = (config.to_dict(), out_dir, False, {})
    cfg.validate()  # a bad config fails here once, not in W processes
    ckpt = Path(out_dir) / "checkpoints" / "last.pt"

    def hint() -> str:  # built when a failure is reported: the checkpoint may be newer
        if not ckpt.exists():
            return "; no checkpoint was written yet"
        return (f"; the last checkpoint is intact: {ckpt} (continue with: "
                f"python scripts/train.py --resume {out_dir} [--workers W])")

    kwargs = dict(threads=threads, backend=distributed.default_backend(cfg.device),
                  timeout_s=cfg.collective_timeout_s, failure_hint=hint)
    if distributed.under_torchrun():
        return distributed.run_under_torchrun(_worker, job, **kwargs) == 0
    distributed.spawn(_worker, job, 1 if num_workers is None else num_workers,
                      shared_memory=cfg.shared_memory_allreduce, **kwargs)
    return True
