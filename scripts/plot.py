"""Plot evaluation return vs real env steps for one or more run directories.

    python scripts/plot.py runs/a runs/b --out curves.png [--title T]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mbmpo.errors import ConfigError  # noqa: E402
from mbmpo.plotting import plot_runs  # noqa: E402
from scripts._common import run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="learning_curves.png")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    for r in args.runs:
        if not (Path(r) / "progress.csv").is_file():
            raise ConfigError(f"run directory {r!r} has no progress.csv")
    print(plot_runs(args.runs, args.out, args.title))
    return 0


if __name__ == "__main__":
    run_main(main)
