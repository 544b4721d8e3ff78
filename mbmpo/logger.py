"""Run logging: console summaries beside a progress bar, ``progress.csv`` and TensorBoard."""

from __future__ import annotations

import csv
import math
import numbers
import os
import warnings
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from mbmpo.errors import ConfigError

_HELD_LOCKS: dict[Path, list[Any]] = {}  # run directory -> [open lock file, users in this process]


def lock_run_dir(path: str | Path) -> None:
    """Claim ``path`` for this process with an exclusive lock on ``path/.lock``.

    Two processes writing one run directory (a run resumed while the old one still runs, or
    its orphaned workers) would interleave ``progress.csv`` rows and checkpoints without any
    error. The lock is an ``flock``: the kernel drops it when the process ends, however it
    ends. Re-entrant within a process; a no-op where ``fcntl`` does not exist (Windows).
    """
    try:
        import fcntl
    except ImportError:
        return
    key = Path(path).resolve()
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key][1] += 1
        return
    f: IO[str] = open(key / ".lock", "a+")  # noqa: SIM115 - held open until unlock_run_dir
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "unknown"
        f.close()
        raise ConfigError(f"run directory {path} is in use by another process (pid {owner}); "
                          "stop that process or choose another output directory") from None
    except OSError as exc:  # a file system without locks (some network mounts): run unguarded
        f.close()
        warnings.warn(f"cannot lock run directory {path} ({exc}); nothing stops a second process "
                      "from writing to it", stacklevel=2)
        return
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _HELD_LOCKS[key] = [f, 1]


def unlock_run_dir(path: str | Path) -> None:
    """Release one :func:`lock_run_dir` claim of this process (the lock goes with the last)."""
    key = Path(path).resolve()
    held = _HELD_LOCKS.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD_LOCKS[key]
        held[0].close()


class Logger:
    """Collects scalars with :meth:`record` and writes one row per :meth:`dump`.

    Args:
        out_dir: where ``progress.csv`` and ``tb/`` go; ``None`` logs to the console only.
            The directory is locked for this process until :meth:`close` (see
            :func:`lock_run_dir`).
        tensorboard: write TensorBoard event files under ``out_dir/tb``.
        console: print a compact summary line per dump (through tqdm, so it does not
            break the progress bar).
        console_keys: keys shown on the console (all when None).
    """

    def __init__(
        self,
        out_dir: str | Path | None = None,
        tensorboard: bool = True,
        console: bool = True,
        console_keys: list[str] | None = None,
    ):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.console = console
        self.console_keys = console_keys
        self._values: dict[str, Any] = {}
        self._fieldnames: list[str] = []
        self._tb = None
        self._bar: tqdm | None = None
        self._locked = False
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            lock_run_dir(self.out_dir)
            self._locked = True
            self.csv_path = self.out_dir / "progress.csv"
            if self.csv_path.exists():
                with self.csv_path.open(newline="") as f:
                    self._fieldnames = list(csv.DictReader(f).fieldnames or [])
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tb"))

    def record(self, key: str, value: Any) -> None:
        if isinstance(value, bool) or not hasattr(value, "__float__"):
            self._values[key] = value
        elif isinstance(value, numbers.Integral):
            self._values[key] = int(value)
        else:
            self._values[key] = float(value)

    def record_dict(self, values: dict[str, Any], prefix: str = "") -> None:
        for k, v in values.items():
            self.record(prefix + k, v)

    def progress(self, total: int, initial: int = 0, desc: str = "") -> tqdm:
        """A progress bar over real env steps; :meth:`dump` updates its postfix."""
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                         disable=not self.console)
        return self._bar

    def dump(self, step: int) -> dict[str, Any]:
        """Write the recorded values as one row at ``step``; returns and clears them."""
        row = dict(self._values)
        self._values.clear()
        if self.out_dir is not None:
            self._write_csv(row)
            if self._tb is not None:
                for k, v in row.items():
                    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                        self._tb.add_scalar(k, v, step)
                self._tb.flush()
        if self.console:
            keys = self.console_keys or list(row)
            shown = {k: row[k] for k in keys if k in row}
            text = " | ".join(f"{k} {_fmt(v)}" for k, v in shown.items())
            if self._bar is not None:
                self._bar.write(text)
            else:
                print(text, flush=True)
        return row

    def _write_csv(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in self._fieldnames]
        if new:
            old_rows: list[dict[str, Any]] = []
            if self.csv_path.exists():
                with self.csv_path.open(newline="") as f:
                    old_rows = list(csv.DictReader(f))
            self._fieldnames += new
            with self.csv_path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self._fieldnames)
                w.writeheader()
                w.writerows(old_rows)
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._fieldnames).writerow(row)

    def truncate_after(self, step: int, step_key: str = "real_steps") -> None:
        """Drop CSV rows logged after ``step`` (a resumed run repeats those iterations)."""
        if self.out_dir is None or not self.csv_path.exists():
            return
        with self.csv_path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if _as_float(r.get(step_key)) <= step]
        with self.csv_path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._fieldnames)
            w.writeheader()
            w.writerows(rows)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._locked:
            unlock_run_dir(self.out_dir)
            self._locked = False


def _as_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.inf


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == int(v) and abs(v) < 1e12:
            return str(int(v))
        return f"{v:.4g}"
    return str(v)
