"""Helpers shared by the entry-point scripts (CLI error handling, torch threads)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch

from mbmpo.errors import MBMPOError


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def run_main(main: Callable[[], int | None]) -> None:
    """Run ``main``; library errors become one ``error: ...`` line and exit status 2."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    try:
        code = main()
    except MBMPOError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
