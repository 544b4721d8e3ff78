"""Behaviour check for refactors: seeded short runs of today's code against a reference.

Runs the HalfCheetah MB-MPO preset to 12k real steps and the HalfCheetah PPO preset to 20k
(seed 0, one torch thread) and compares every ``progress.csv`` value, except the time
columns, with the reference files in ``benchmarks/results/behaviour_identity/``. Log keys
renamed since the reference are mapped by ``RENAMED``. Exit status 1 on any difference.

    python benchmarks/behaviour_identity.py                      # check today's code
    python benchmarks/behaviour_identity.py --src /tmp/old --write-reference   # record a reference
        (``--src``: a checkout of another commit, e.g. ``git worktree add /tmp/old <commit>``)

A reference is exact only on the kind of CPU it was recorded on: matrix products round
differently with other instruction sets (the committed reference, from an AMD EPYC, differs
from every commit's runs on an Intel Xeon with AMX in the same cells). On another machine,
record the parent commit's reference there first and check against it::

    python benchmarks/behaviour_identity.py --src /tmp/parent --write-reference --results DIR
    python benchmarks/behaviour_identity.py --src /tmp/change --results DIR
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "behaviour_identity"
RUNS = {
    "mbmpo_halfcheetah": ["--preset", "scripts/configs/halfcheetah_mbmpo.yaml", "--total-steps", "12000"],
    "ppo_halfcheetah": ["--preset", "scripts/configs/halfcheetah_ppo.yaml", "--total-steps", "20000"],
}
# old column name -> new column name (log keys renamed by a refactor)
RENAMED: dict[str, str] = {
    "real/episode_return": "train/episode_return",
}
IGNORED_PREFIXES = ("time/", "wall_time")
IGNORED_SUFFIXES = ("_time_s",)  # e.g. model/fit_time_s


def run(src: Path, name: str, out: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, str(src / "scripts" / "train.py"), *RUNS[name], "--seed", "0", "--threads", "1",
           "--out", str(out), "--eval-every", "4000"]
    proc = subprocess.run(cmd, cwd=src, env=env, stdout=subprocess.DEVNULL)
    if proc.returncode != 0 and not (out / "progress.csv").is_file():
        raise SystemExit(f"{name}: train.py failed (exit {proc.returncode}) before writing progress.csv")
    return out / "progress.csv"


def read(path: Path, rename: bool) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rename:
        rows = [{RENAMED.get(k, k): v for k, v in r.items()} for r in rows]
    return [{k: v for k, v in r.items() if not k.startswith(IGNORED_PREFIXES) and not k.endswith(IGNORED_SUFFIXES)}
            for r in rows]


def same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return (math.isnan(x) and math.isnan(y)) or x == y


def compare(ref: list[dict[str, str]], new: list[dict[str, str]]) -> list[str]:
    problems = []
    if len(ref) != len(new):
        problems.append(f"{len(ref)} reference rows, {len(new)} new rows")
    for i, (r, n) in enumerate(zip(ref, new)):
        for k in sorted(set(r) | set(n)):
            a, b = r.get(k, ""), n.get(k, "")
            if not same(a, b):
                problems.append(f"row {i} {k}: reference {a!r}, new {b!r}")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=str(ROOT), help="source tree to run (default: this checkout)")
    p.add_argument("--write-reference", action="store_true", help="store the runs as the reference")
    p.add_argument("--only", choices=sorted(RUNS), help="run one of the two checks")
    p.add_argument("--no-run", action="store_true", help="compare the runs already in runs/behaviour_identity")
    p.add_argument("--results", default=str(RESULTS), help="directory of the reference files (default: %(default)s)")
    args = p.parse_args()
    src = Path(args.src).resolve()
    results = Path(args.results)
    names = [args.only] if args.only else list(RUNS)
    report = {}
    runs = ROOT / "runs" / results.name
    for name in names:
        csv_path = runs / name / "progress.csv"
        if not args.no_run:
            shutil.rmtree(runs / name, ignore_errors=True)
            csv_path = run(src, name, runs / name)
        if args.write_reference:
            results.mkdir(parents=True, exist_ok=True)
            (results / f"{name}_progress.csv").write_text(csv_path.read_text())
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True,
                                    text=True).stdout.strip()
            report[name] = {"reference_commit": commit}
            print(f"{name}: reference written from {commit}")
            continue
        problems = compare(read(results / f"{name}_progress.csv", rename=True), read(csv_path, rename=False))
        report[name] = {"identical": not problems, "differences": problems[:20]}
        print(f"{name}: {'identical' if not problems else f'{len(problems)} differences'}")
        for line in problems[:20]:
            print("   ", line)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=src, capture_output=True,
                            text=True).stdout.strip()
    out = results / ("reference.json" if args.write_reference else "check.json")
    # one entry per check, each with the source it was made from; checks not run keep theirs
    saved = json.loads(out.read_text()) if out.is_file() else {}
    saved.pop("source", None)  # older files: one source for every entry
    saved.update({name: {"source": commit, **entry} for name, entry in report.items()})
    out.write_text(json.dumps(saved, indent=2) + "\n")
    return 0 if all(r.get("identical", True) for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
