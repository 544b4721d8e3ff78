"""Evaluate a checkpoint on fresh episodes.

    python scripts/evaluate.py runs/ppo_hc/checkpoints/last.pt --episodes 10 [--stochastic]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mbmpo import ALGORITHMS  # noqa: E402
from mbmpo.checkpoint import load_checkpoint, resolve_checkpoint_path  # noqa: E402
from mbmpo.errors import CheckpointError, ConfigError  # noqa: E402
from scripts._common import run_main, set_threads  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file or run directory")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.episodes <= 0:
        raise ConfigError(f"--episodes must be > 0, got {args.episodes}")
    set_threads(args.threads)
    path = resolve_checkpoint_path(args.checkpoint)
    algo_name = load_checkpoint(path).get("algo")
    if algo_name not in ALGORITHMS:
        raise CheckpointError(f"checkpoint {str(path)!r} holds unknown algo {algo_name!r}")
    algo = ALGORITHMS[algo_name][0].load(path, console=False, device=args.device)
    rets, lens = algo.evaluate(args.episodes, deterministic=not args.stochastic)
    algo.close()
    print(f"{algo_name} {algo.config.env_id}: return {rets.mean():.2f} ± {rets.std():.2f} "
          f"over {args.episodes} episodes (mean length {lens.mean():.1f})")
    return 0


if __name__ == "__main__":
    run_main(main)
