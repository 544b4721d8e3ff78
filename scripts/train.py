"""Train an algorithm on a gymnasium env.

    python scripts/train.py --algo mbmpo --env HalfCheetah-v5 --total-steps 20000   # preset picked by env
    python scripts/train.py --algo ppo --env HalfCheetah-v5 --total-steps 200000 --seed 0 \
        --out runs/ppo_hc [--preset scripts/configs/halfcheetah_ppo.yaml] [--learning-rate 1e-4 ...]
    python scripts/train.py --resume runs/ppo_hc [--total-steps 400000]
    python scripts/train.py --algo dppo --workers 2 --out runs/dppo_hc     # W local processes
    torchrun --nproc-per-node 2 scripts/train.py --algo dppo --out runs/dppo_hc  # a torchrun job
    python scripts/train.py --algo gorila --env CartPole-v1 --actors 2 --learners 1 --out runs/gorila_cp

Without ``--preset``, ``scripts/configs/<env>_<algo>.yaml`` is used when it exists (``--no-preset``:
the config class's defaults). Any config field can be overridden after the fixed flags
(``--help-config`` lists them); nested fields are spelled ``--terminal-value.fit-on imagined``.
Writes ``config.yaml``, ``progress.csv``, ``tb/``, ``checkpoints/last.pt`` and
``learning_curve.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mbmpo import ALGORITHMS  # noqa: E402
from mbmpo.config import config_from_dict, load_yaml  # noqa: E402
from mbmpo.errors import ConfigError  # noqa: E402
from scripts._common import run_main, set_threads  # noqa: E402

# tyro and matplotlib are imported where they are used: DPPO's spawned workers re-import this
# module and need neither.


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=sorted(ALGORITHMS), help="algorithm (default: from preset, else ppo)")
    p.add_argument("--env", help="gymnasium env id (overrides the preset)")
    p.add_argument("--total-steps", type=int, help="budget of real training steps")
    p.add_argument("--seed", type=int, help="run seed")
    p.add_argument("--out", help="run directory (default: runs/<algo>_<env>_s<seed>)")
    p.add_argument("--preset", help="YAML preset (default: scripts/configs/<env>_<algo>.yaml if it exists)")
    p.add_argument("--no-preset", action="store_true", help="use the config defaults, not the env's preset")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--device", help="cpu, cuda[:N] or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default; "
                   "DPPO workers: 1)")
    p.add_argument("--workers", type=int, help="DPPO: local worker processes W (default 1; on "
                   "--resume the run's earlier W); ignored under torchrun")
    p.add_argument("--actors", type=int, help="gorila: acting processes (num_actors)")
    p.add_argument("--learners", type=int, help="gorila: learner processes (num_learners)")
    p.add_argument("--help-config", action="store_true", help="list every config field and exit")
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    import tyro

    args, rest = parse(sys.argv[1:] if argv is None else argv)
    set_threads(args.threads)
    if args.resume:
        return resume(args, rest)
    preset_path = args.preset
    if preset_path and args.no_preset:
        raise ConfigError("--preset and --no-preset exclude each other")
    preset = load_yaml(preset_path) if preset_path else {}
    algo_name = args.algo or preset.pop("algo", None) or "ppo"
    preset.pop("algo", None)
    if algo_name not in ALGORITHMS:
        raise ConfigError(f"unknown algo {algo_name!r}; allowed: {sorted(ALGORITHMS)}")
    if not preset_path and not args.no_preset and args.env:
        default = default_preset(args.env, algo_name)
        if default is not None:
            preset_path, preset = str(default), load_yaml(default)
            preset.pop("algo", None)
            print(f"preset: {preset_path} (--no-preset for the {algo_name} defaults)")
    algo_cls, cfg_cls = ALGORITHMS[algo_name]
    for key, val in (("env_id", args.env), ("total_steps", args.total_steps), ("seed", args.seed),
                     ("device", args.device), ("num_actors", args.actors),
                     ("num_learners", args.learners)):
        if val is not None:
            preset[key] = val
    base = config_from_dict(cfg_cls, preset, source=preset_path or "command line")
    if args.help_config:
        tyro.cli(cfg_cls, default=base, args=["--help"], prog="train.py [fixed flags]")
    rest = upgrade_flags(cfg_cls, rest)
    unknown = [a for a in rest if a.startswith("--")]
    try:
        config = tyro.cli(cfg_cls, default=base, args=rest, prog="train.py")
    except SystemExit as exc:
        if exc.code:
            raise ConfigError(f"bad config override(s) {' '.join(unknown) or rest}; "
                              "see --help-config for the allowed fields") from None
        raise
    out = Path(args.out or f"runs/{algo_name}_{config.env_id}_s{config.seed}")
    if (out / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"run directory {str(out)!r} already holds a run; use --resume {out} "
                          "or another --out")
    if algo_name == "dppo":
        from mbmpo.baselines.dppo import launch

        if launch(out, config, num_workers=args.workers, threads=args.threads or 1):
            finish(out, f"{algo_name} {config.env_id} seed {config.seed}")
        return 0
    _no_workers(args, algo_name)
    algo = algo_cls(config, out_dir=out)
    try:
        algo.learn(config.total_steps)
    finally:
        algo.close()
    finish(out, f"{algo_name} {config.env_id} seed {config.seed}")
    return 0


def default_preset(env_id: str, algo_name: str) -> Path | None:
    """``scripts/configs/<env>_<algo>.yaml`` (``HalfCheetah-v5`` -> ``halfcheetah``) if it exists."""
    name = env_id.split("/")[-1].split("-v")[0].lower()
    path = Path(__file__).resolve().parent / "configs" / f"{name}_{algo_name}.yaml"
    return path if path.is_file() else None


def upgrade_flags(cfg_cls: type, argv: list[str]) -> list[str]:
    """Older flat flags of a config class (``--model-penalty 5``) spelled as today's nested ones
    (``--uncertainty-penalty.coef 5``), through the class's ``upgrade`` hook."""
    upgrade = getattr(cfg_cls, "upgrade", None)
    if upgrade is None:
        return argv
    out = []
    for arg in argv:
        if not arg.startswith("--") or "." in arg.split("=", 1)[0]:
            out.append(arg)
            continue
        flag, eq, value = arg[2:].partition("=")
        key = flag.replace("-", "_")
        probe = upgrade({key: value if eq else "x"})
        if probe == {key: value if eq else "x"}:
            out.append(arg)
            continue
        (group, sub), = probe.items()
        (sub_key,) = sub
        new = f"--{group}.{sub_key}".replace("_", "-")
        out.append(f"{new}={value}" if eq else new)
    return out


def _no_workers(args: argparse.Namespace, algo_name: str) -> None:
    if args.workers is not None:
        raise ConfigError(f"--workers applies to --algo dppo only, not {algo_name!r}")


def resume(args: argparse.Namespace, rest: list[str]) -> int:
    run_dir = Path(args.resume)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"--resume {str(run_dir)!r}: no config.yaml there, not a run directory")
    algo_name = load_yaml(cfg_path).get("algo", "ppo")
    if algo_name not in ALGORITHMS:
        raise ConfigError(f"run {str(run_dir)!r} has unknown algo {algo_name!r}")
    if rest:
        raise ConfigError(f"config overrides {rest} cannot be combined with --resume")
    algo_cls, _ = ALGORITHMS[algo_name]
    overrides = {"device": args.device} if args.device else {}
    if args.total_steps is not None:
        overrides["total_steps"] = args.total_steps
    if algo_name == "dppo":
        from mbmpo.baselines.dppo import launch

        if launch(run_dir, resume=True, overrides=overrides, num_workers=args.workers,
                  threads=args.threads or 1):
            cfg = load_yaml(cfg_path)
            finish(run_dir, f"{algo_name} {cfg.get('env_id')} seed {cfg.get('seed')}")
        return 0
    _no_workers(args, algo_name)
    algo = algo_cls.load(run_dir, out_dir=run_dir, **overrides)
    try:
        algo.learn(algo.config.total_steps)
    finally:
        algo.close()
    finish(run_dir, f"{algo_name} {algo.config.env_id} seed {algo.config.seed}")
    return 0


def finish(out: Path, title: str) -> None:
    from mbmpo.report.plots import plot_runs

    png = plot_runs([out], out / "learning_curve.png", title=title)
    print(f"done: {out} (curve: {png})")


if __name__ == "__main__":
    run_main(main)
