"""Process-state helpers for the tests that kill launchers (Linux: they read /proc)."""

from __future__ import annotations

from pathlib import Path

HAVE_PROC = Path("/proc/self/stat").exists()


def _stat(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (an orphan's zombie counts as gone: in a container
    nothing may ever reap it)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def child_pids(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            fields = _stat(d.name)
            if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
                out.append(int(d.name))
    return out
