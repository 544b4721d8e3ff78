"""Plot evaluation return vs real env steps.

    python scripts/plot.py runs/compare_hc                  # comparison dir (scripts/compare.py):
                                                            # summary.csv/.md + per-env PNG/SVG plots
    python scripts/plot.py runs/compare_hc --export benchmarks/results/compare_hc
                                                            # + a lean copy (no checkpoints) with its report
    python scripts/plot.py runs/a runs/b --out curves.png [--title T]   # run dirs, one line each

Unreadable or incomplete runs get a ``warning:`` line naming them and are left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mbmpo.errors import ConfigError  # noqa: E402
from mbmpo.report import export_comparison, load_run, write_report  # noqa: E402
from mbmpo.report.plots import plot_runs  # noqa: E402
from scripts._common import run_main  # noqa: E402


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def is_comparison_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "compare.yaml").is_file() or ((p / "runs").is_dir() and not (p / "progress.csv").exists())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="a comparison directory, or run directories")
    p.add_argument("--out", default="learning_curves.png", help="PNG for run directories")
    p.add_argument("--title", default="")
    p.add_argument("--export", metavar="DEST", help="comparison dir: also write a lean copy with its report")
    args = p.parse_args(argv)
    if len(args.runs) == 1 and is_comparison_dir(args.runs[0]):
        d = Path(args.runs[0])
        summary = write_report(d, warn=warn)
        print(f"{d / 'summary.md'} ({len(summary.groups)} env/label groups)")
        if args.export:
            export_comparison(d, args.export, warn=warn)
            print(f"exported to {args.export}")
        return 0
    if args.export:
        raise ConfigError(f"--export needs one comparison directory, got {args.runs}")
    good = []
    for r in args.runs:
        try:
            load_run(r, env_id="?")
            good.append(r)
        except ConfigError as exc:
            warn(f"skipping {exc}")
    if not good:
        raise ConfigError(f"no readable run among {args.runs}")
    print(plot_runs(good, args.out, args.title))
    return 0


if __name__ == "__main__":
    run_main(main)
