"""Sample-efficiency comparison: train every (label, env, seed) with scripts/train.py, then
report evaluation return vs real env steps over seeds (summary.csv, summary.md, plots).

    python scripts/compare.py --algos mbmpo ppo trpo --envs HalfCheetah-v5 --seeds 3 \\
        --total-steps 200k mbmpo=100k --out runs/compare_hc --jobs 2
    python scripts/compare.py --spec scripts/configs/compare/ppo_table1.yaml --out runs/ppo_table1
    python scripts/plot.py runs/compare_hc      # the report again, from what is on disk

Runs go to OUT/runs/<env>/<label>/s<seed>/. A run that reached its budget is skipped, an
interrupted one (checkpoints/last.pt) is resumed, others start fresh: running the same
command again finishes a comparison and never trains anything twice.

Labels (--algos), each  ALGO  or  LABEL=ALGO[,FIELD=VALUE...]:
    ppo                                      label 'ppo', algorithm ppo
    ppo_tuned=ppo                            a second PPO label (give it a preset, below)
    clip0.1=ppo,objective=clip,clip_coef=0.1 config fields on top of the preset (YAML values)
Presets: a label uses scripts/configs/<env>_<algo>.yaml (e.g. halfcheetah_ppo.yaml) when
that exists, unless --presets LABEL=PATH (every env) or LABEL:ENV=PATH (one env) says
otherwise; PATH may contain {env} (halfcheetah) and {algo}.
Budgets: --total-steps N [LABEL=N ...] (k/M suffixes allowed).
Existing runs: --include LABEL[:ENV]=GLOB copies run directories or progress.csv files
(e.g. benchmarks/results/ppo_200k/HalfCheetah-v5_tuned_s*.csv; quote the glob) in as seeds of
LABEL (seed from their config.yaml or an _s<N> name); they are never retrained.
--spec FILE.yaml holds the same settings (see scripts/configs/compare/*.yaml); flags given on
the command line win. OUT/compare.yaml records the resolved comparison in that format.

Backends: --backend local (default) runs train.py subprocesses here; --backend ray runs each
(label, env, seed) as a Ray task with its thread share, on a local Ray instance (127.0.0.1) or
on the cluster RAY_ADDRESS names (`ray start --head --port 6379` on one node, `ray start
--address=HEAD:6379` on the others, the checkout and --out on a shared disk). Skipping and
resuming work as with the local backend.

Protocol: seeds 100-104 are held out for headline figures. A comparison uses them only with
--headline (or 'headline: true' in its spec), and a headline comparison uses no other seeds,
imports no runs, evaluates every label the same way (HEADLINE_EVAL: 10 deterministic episodes,
evaluation every 4000 real steps, i.e. at the first iteration end past it) and starts only from
a clean git tree (--allow-dirty runs anyway and records it in compare.yaml).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from mbmpo.config import config_from_dict, load_yaml  # noqa: E402
from mbmpo.errors import ConfigError  # noqa: E402
from mbmpo.report import (  # noqa: E402
    ReportSettings,
    env_dirname,
    read_progress,
    write_report,
)
from scripts._common import run_main  # noqa: E402

TRAIN = ROOT / "scripts" / "train.py"
CONFIGS = ROOT / "scripts" / "configs"
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
SPEC_KEYS = {"title", "envs", "seeds", "total_steps", "jobs", "threads", "variants", "include",
             "report", "headline", "source_dirty"}  # source_dirty: a record in compare.yaml, not a setting
HELDOUT_SEEDS = range(100, 105)
"""Seeds of headline figures: no tuning or screening comparison may use them."""
HEADLINE_EVAL = {"eval_episodes": 10, "eval_every": 4000, "eval_deterministic": True}
"""The evaluation every label of a headline comparison gets."""
VARIANT_KEYS = {"algo", "preset", "set", "total_steps", "paper_score"}
RESERVED = {"env_id", "seed", "total_steps"}  # set by --envs/--seeds/--total-steps

# (train.py arguments, log file) -> (exit code, last error line)
Runner = Callable[[list[str], Path], tuple[int, str]]


@dataclass
class Variant:
    """One label of the comparison: an algorithm with a preset and config overrides."""

    label: str
    algo: str
    overrides: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, str] = field(default_factory=dict)
    """env id or '*' -> preset path template."""
    total_steps: int | None = None


@dataclass
class Plan:
    out: Path
    envs: list[str]
    seeds: list[int]
    total_steps: int
    variants: dict[str, Variant]
    includes: list[tuple[str, str | None, str]]
    """(label, env id or None, glob)"""
    report: ReportSettings
    jobs: int = 1
    threads: int = 0
    title: str = ""
    headline: bool = False
    source_dirty: bool = False

    def budget(self, label: str) -> int:
        v = self.variants.get(label)
        return v.total_steps if v is not None and v.total_steps else self.total_steps


@dataclass
class Job:
    label: str
    algo: str
    env_id: str
    seed: int
    total_steps: int
    run_dir: Path
    preset: Path
    action: str
    """start, resume, done or imported"""

    @property
    def name(self) -> str:
        return f"{self.env_id}/{self.label}/s{self.seed}"

    def argv(self, threads: int) -> list[str]:
        """Arguments of scripts/train.py for this job."""
        if self.action == "resume":
            return ["--resume", str(self.run_dir), "--total-steps", str(self.total_steps),
                    "--threads", str(threads)]
        return ["--preset", str(self.preset), "--algo", self.algo, "--env", self.env_id,
                "--seed", str(self.seed), "--total-steps", str(self.total_steps),
                "--out", str(self.run_dir), "--threads", str(threads)]


# ----- parsing ------------------------------------------------------------------------------
def parse_steps(text: Any, what: str = "steps") -> int:
    """``200000``, ``200k``, ``1M`` or ``1.5e5`` -> int; ConfigError otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmM]?)\s*", str(text))
        try:
            value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()] if m else None
        except ValueError:
            value = None
        if value is None or value != int(value):
            raise ConfigError(f"bad {what} {text!r}; expected an integer like 200000, 200k or 1M")
        value = int(value)
    if value <= 0:
        raise ConfigError(f"{what} must be > 0, got {text!r}")
    return value


def parse_seeds(value: Any) -> list[int]:
    """``3`` -> [0, 1, 2]; ``"0,2,5"`` or ``[0, 2, 5]`` -> that list; ``"2,"`` -> [2] (a comma marks a list)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"seeds must be a count > 0 or a list of seeds, got {value}")
        return list(range(value))
    is_list = isinstance(value, list) or "," in str(value)
    items = value if isinstance(value, list) else str(value).removesuffix(",").split(",")
    try:
        seeds = [int(s) for s in items]
    except (TypeError, ValueError):
        raise ConfigError(f"bad seeds {value!r}; expected a count (3) or a list (0,2,5; one seed: 2,)") from None
    if len(seeds) == 1 and not is_list:
        return parse_seeds(seeds[0])
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"bad seeds {value!r}; expected distinct non-negative seeds")
    return seeds


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside brackets (so ``hidden_sizes=[64,64]`` stays one item)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{(" and 1 or (-1 if ch in "]})" else 0)
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def check_label(label: str) -> str:
    if not LABEL_RE.fullmatch(label):
        raise ConfigError(f"bad label {label!r}; use letters, digits and _ . + - "
                          "(it names a directory)")
    return label


def check_algo(algo: Any, where: str) -> str:
    from mbmpo import ALGORITHMS

    if algo not in ALGORITHMS:
        raise ConfigError(f"unknown algo {algo!r} in {where}; allowed: {', '.join(sorted(ALGORITHMS))}")
    return str(algo)


def parse_label_spec(text: str) -> Variant:
    """``ALGO`` or ``LABEL=ALGO[,FIELD=VALUE...]`` (values parsed as YAML) -> Variant."""
    label, eq, rest = text.partition("=")
    if not eq:
        return Variant(check_label(text), check_algo(text, f"--algos {text!r}"))
    algo, *items = split_top(rest)
    overrides = {}
    for item in items:
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"bad config override {item!r} in --algos {text!r}; expected FIELD=VALUE")
        overrides[key.strip().replace("-", "_")] = _yaml_value(val)
    return Variant(check_label(label), check_algo(algo, f"--algos {text!r}"), overrides)


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_assignments(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, eq, val = item.partition("=")
        if not eq or not key or not val:
            raise ConfigError(f"bad {flag} item {item!r}; expected KEY=VALUE")
        out.append((key, val))
    return out


def load_spec(path: str | Path) -> dict[str, Any]:
    """A comparison spec YAML (keys: :data:`SPEC_KEYS`); a relative path may also be
    relative to the repository (like preset paths)."""
    if not Path(path).is_file() and (ROOT / path).is_file():
        path = ROOT / path
    spec = load_yaml(path)
    bad = sorted(set(spec) - SPEC_KEYS)
    if bad:
        raise ConfigError(f"unknown key {bad[0]!r} in spec {str(path)!r}; allowed: {', '.join(sorted(SPEC_KEYS))}")
    return spec


def spec_variants(spec: dict[str, Any], source: str) -> tuple[dict[str, Variant], dict[str, float]]:
    """``variants`` mapping of a spec -> Variants and their published scores."""
    variants, paper = {}, {}
    raw = spec.get("variants") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"'variants' in {source} must map labels to settings")
    for label, v in raw.items():
        label = check_label(str(label))
        v = {"algo": label} if v is None else v
        if not isinstance(v, dict):
            raise ConfigError(f"variant {label!r} in {source} must be a mapping")
        bad = sorted(set(v) - VARIANT_KEYS)
        if bad:
            raise ConfigError(f"unknown key {bad[0]!r} in variant {label!r} of {source}; "
                              f"allowed: {', '.join(sorted(VARIANT_KEYS))}")
        preset = v.get("preset")
        presets = dict(preset) if isinstance(preset, dict) else ({"*": preset} if preset else {})
        sets = v.get("set") or {}
        if not isinstance(sets, dict):
            raise ConfigError(f"'set' of variant {label!r} in {source} must be a mapping")
        variants[label] = Variant(
            label, check_algo(v.get("algo", label), f"variant {label!r} of {source}"),
            {str(k).replace("-", "_"): val for k, val in sets.items()},
            {str(k): str(p) for k, p in presets.items()},
            parse_steps(v["total_steps"], f"total_steps of {label!r}") if v.get("total_steps") else None)
        if v.get("paper_score") is not None:
            paper[label] = float(v["paper_score"])
    return variants, paper


def build_plan(args: argparse.Namespace) -> Plan:
    """Merge the spec file and the command line into a validated Plan."""
    spec = load_spec(args.spec) if args.spec else {}
    source = f"spec {args.spec!r}" if args.spec else "command line"
    variants, paper = spec_variants(spec, source)
    for text in args.algos or []:
        v = parse_label_spec(text)
        variants[v.label] = v
    for key, path in parse_assignments(args.presets or [], "--presets"):
        label, _, env = key.partition(":")
        if label not in variants:
            raise ConfigError(f"--presets {key}=...: no label {label!r}; labels: {', '.join(variants) or 'none'}")
        variants[label].presets[env or "*"] = path
    total = spec.get("total_steps", 1_000_000)
    per_label = dict(total) if isinstance(total, dict) else {"default": total}
    for tok in args.total_steps or []:
        key, eq, val = tok.partition("=")
        per_label[key if eq else "default"] = val if eq else key
    default_steps = parse_steps(per_label.pop("default", 1_000_000), "--total-steps")
    for label, val in per_label.items():
        if label not in variants:
            raise ConfigError(f"--total-steps {label}=...: no label {label!r}; labels: {', '.join(variants) or 'none'}")
        variants[label].total_steps = parse_steps(val, f"--total-steps of {label!r}")
    if args.only:
        unknown = [label for label in args.only if label not in variants]
        if unknown:
            raise ConfigError(f"--only {' '.join(unknown)}: no such label; labels: {', '.join(variants) or 'none'}")
        variants = {label: variants[label] for label in args.only}
    envs = args.envs or spec.get("envs") or []
    envs = [envs] if isinstance(envs, str) else [str(e) for e in envs]
    seeds = parse_seeds(args.seeds if args.seeds is not None else spec.get("seeds", 1))
    includes = []
    inc = spec.get("include") or {}
    inc_items = [(k, p) for k, ps in inc.items() for p in (ps if isinstance(ps, list) else [ps])]
    for key, pattern in [*inc_items, *parse_assignments(args.include or [], "--include")]:
        label, _, env = str(key).partition(":")
        if not args.only or label in args.only:
            includes.append((check_label(label), env or None, str(pattern)))
    if not variants and not includes:
        raise ConfigError("nothing to compare: give --algos (or --spec with variants) or --include")
    if variants and not envs:
        raise ConfigError("no env: give --envs (e.g. --envs HalfCheetah-v5)")
    from mbmpo.envs import check_env_id

    for env in envs:
        check_env_id(env)
    report = dict(spec.get("report") or {})
    report.setdefault("paper_scores", {}).update(paper)
    for key, val in (("budgets", [parse_steps(b, "--budgets") for b in args.budgets or []] or None),
                     ("reference", args.reference), ("title", args.title or spec.get("title")),
                     ("normalized_score", args.normalized_score or None)):
        if val is not None:
            report[key] = val
    if "budgets" in report:
        report["budgets"] = [parse_steps(b, "budgets") for b in report["budgets"]]
    thresholds = report.get("thresholds") or {}
    thresholds = dict(thresholds) if isinstance(thresholds, dict) else {"*": list(thresholds)}
    for tok in args.thresholds or []:
        env, eq, vals = tok.rpartition("=")
        thresholds[env if eq else "*"] = [float(_num(v, "--thresholds")) for v in vals.split(",")]
    report["thresholds"] = thresholds
    rnd = dict(report.get("random_returns") or {})
    for env, val in parse_assignments(args.random_returns or [], "--random-returns"):
        rnd[env] = _num(val, "--random-returns")
    report["random_returns"] = rnd
    labels = list(dict.fromkeys([*variants, *(lbl for lbl, _, _ in includes)]))
    report["labels"] = labels
    if args.only and args.reference is None and report.get("reference") not in labels:
        report.pop("reference", None)  # the spec's reference is not among the --only labels
    if "reference" not in report:
        report["reference"] = "ppo" if "ppo" in labels else labels[0]
    elif report["reference"] not in labels:
        raise ConfigError(f"reference {report['reference']!r} is not a label; labels: {', '.join(labels)}")
    settings = ReportSettings.from_dict(report, source=f"{source} (report)")
    jobs = int(args.jobs if args.jobs is not None else spec.get("jobs", 1))
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    threads = int(args.threads if args.threads is not None else spec.get("threads", 0))
    headline = bool(args.headline or spec.get("headline", False))
    check_protocol(seeds, includes, headline)
    dirty = headline and source_tree_dirty()
    if dirty and not args.allow_dirty and not args.dry_run and not args.no_train:
        raise ConfigError("the source tree has uncommitted changes: headline runs start from a clean commit "
                          "(commit them, or --allow-dirty to run anyway and record it)")
    plan = Plan(Path(args.out).resolve(), envs, seeds, default_steps, variants, includes, settings,
                jobs, threads, settings.title, headline, dirty)
    for v in variants.values():
        for env in envs:
            run_config(v, env, plan)  # every bad value is reported before anything trains
    return plan


def check_protocol(seeds: list[int], includes: list[Any], headline: bool) -> None:
    """Held-out seeds only in headline comparisons, and nothing else there."""
    held = [s for s in seeds if s in HELDOUT_SEEDS]
    if headline:
        other = [s for s in seeds if s not in HELDOUT_SEEDS]
        if other:
            raise ConfigError(f"a headline comparison runs the held-out seeds {HELDOUT_SEEDS.start}-"
                              f"{HELDOUT_SEEDS.stop - 1} only, got seed {other[0]}")
        if includes:
            raise ConfigError("a headline comparison trains every run itself: --include is not allowed")
    elif held:
        raise ConfigError(f"seed {held[0]} is held out for headline figures (seeds {HELDOUT_SEEDS.start}-"
                          f"{HELDOUT_SEEDS.stop - 1}); use --headline, or other seeds for tuning and screening")


def source_tree_dirty() -> bool:
    """Whether the repository has uncommitted changes to tracked files (False outside git)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def _num(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"bad number {text!r} in {flag}") from None


# ----- presets and configs ------------------------------------------------------------------
def env_slug(env_id: str) -> str:
    """``HalfCheetah-v5 -> halfcheetah`` (the preset file naming)."""
    return re.sub(r"-v\d+$", "", env_id.split("/")[-1]).lower()


def preset_path(v: Variant, env: str) -> Path | None:
    """The preset of label ``v`` on ``env``: --presets LABEL:ENV, then LABEL, then
    scripts/configs/<env>_<algo>.yaml if it exists; None for the algorithm's defaults."""
    tmpl = v.presets.get(env, v.presets.get("*"))
    if tmpl is None:
        default = CONFIGS / f"{env_slug(env)}_{v.algo}.yaml"
        return default if default.is_file() else None
    try:
        text = tmpl.format(env=env_slug(env), algo=v.algo)
    except (KeyError, IndexError, ValueError):
        raise ConfigError(f"bad preset path {tmpl!r} for label {v.label!r}; only {{env}} and "
                          "{algo} may appear in braces") from None
    p = Path(text)
    for cand in (p, ROOT / p):
        if cand.is_file():
            return cand.resolve()
    raise ConfigError(f"preset {text!r} of label {v.label!r} on {env} does not exist")


def run_config(v: Variant, env: str, plan: Plan) -> dict[str, Any]:
    """The config mapping written to the label's preset.yaml (validated against the algo's
    config class); run-specific fields (env, seed, budget) stay on the train.py command line."""
    from mbmpo import ALGORITHMS

    path = preset_path(v, env)
    data = load_yaml(path) if path else {}
    if data.get("algo", v.algo) != v.algo:
        raise ConfigError(f"preset {str(path)!r} is for algo {data['algo']!r}, but label "
                          f"{v.label!r} runs {v.algo!r}")
    bad = sorted(RESERVED & set(v.overrides))
    if bad:
        raise ConfigError(f"label {v.label!r}: {bad[0]!r} cannot be overridden per label; "
                          "use --envs, --seeds or --total-steps")
    cfg = {k: val for k, val in data.items() if k not in RESERVED | {"algo"}}
    cfg.update(v.overrides)
    if plan.headline:
        pinned = sorted(set(HEADLINE_EVAL) & set(v.overrides))
        if pinned:
            raise ConfigError(f"label {v.label!r}: {pinned[0]!r} is set by the headline protocol for every label")
        cfg.update(HEADLINE_EVAL)
    where = f"label {v.label!r} on {env}" + (f" (preset {path.name})" if path else "")
    cls = ALGORITHMS[v.algo][1]
    config = config_from_dict(cls, {**cfg, "env_id": env, "seed": 0, "total_steps": plan.budget(v.label)},
                              source=where)
    try:
        config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return {"algo": v.algo, **cfg}


def same_config(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Whether two label configs (preset.yaml mappings) train the same way: compared as
    config objects, so a field written out at its default value (a pin added to a spec when
    the preset changed) equals the same field left out. Fields left out are read at today's
    config defaults on both sides."""
    from mbmpo import ALGORITHMS

    a = dict(a or {})
    if a.get("algo") != b.get("algo"):
        return False
    cls = ALGORITHMS[b["algo"]][1]
    try:
        made = [config_from_dict(cls, {k: v for k, v in c.items() if k != "algo"}, source="preset.yaml")
                for c in (a, b)]
    except ConfigError:
        return False
    return made[0] == made[1]


# ----- run states ---------------------------------------------------------------------------
def run_status(run_dir: str | Path, total_steps: int) -> str:
    """What to do with a run directory for a budget of ``total_steps`` real steps.

    ``imported`` (copied in by --include: never trained), ``done`` (progress.csv reached the
    budget), ``resume`` (an unfinished run with checkpoints/last.pt) or ``start``.
    """
    d = Path(run_dir)
    if (d / "imported.yaml").is_file():
        return "imported"
    if (d / "progress.csv").is_file():
        try:
            steps = [s for s in read_progress(d / "progress.csv").get("real_steps", []) if s == s]
        except ConfigError:
            steps = []
        if steps and max(steps) >= total_steps:
            return "done"
    return "resume" if (d / "checkpoints" / "last.pt").is_file() else "start"


def run_dir(plan: Plan, env: str, label: str, seed: int) -> Path:
    return plan.out / "runs" / env_dirname(env) / label / f"s{seed}"


def make_jobs(plan: Plan, write: bool = True, imported: set[Path] | None = None) -> list[Job]:
    """One job per (seed, env, label), seeds outermost so early results cover every label.

    Writes each label's preset.yaml (unless ``write`` is False; ``imported`` then names the
    run dirs an import would fill); refuses to mix runs of a changed label config or to
    reuse a directory that holds another algo/env/seed.
    """
    jobs = []
    for env in plan.envs:
        for label, v in plan.variants.items():
            cfg = run_config(v, env, plan)
            preset = plan.out / "runs" / env_dirname(env) / label / "preset.yaml"
            dirs = [run_dir(plan, env, label, s) for s in plan.seeds]
            if preset.is_file() and not same_config(yaml.safe_load(preset.read_text()), cfg) and any(
                    (d / "progress.csv").is_file() and not (d / "imported.yaml").is_file()
                    for d in preset.parent.iterdir() if d.is_dir()):
                raise ConfigError(f"label {label!r} on {env} already has runs made with another "
                                  f"config ({preset}); use a new label or another --out")
            if write:
                preset.parent.mkdir(parents=True, exist_ok=True)
                preset.write_text(f"# written by scripts/compare.py for label {label!r} on {env}\n"
                                  + yaml.safe_dump(cfg, sort_keys=False))
            for seed, d in zip(plan.seeds, dirs):
                _check_run_identity(d, v.algo, env, seed)
                status = "imported" if d in (imported or set()) else run_status(d, plan.budget(label))
                jobs.append(Job(label, v.algo, env, seed, plan.budget(label), d, preset, status))
    return sorted(jobs, key=lambda j: plan.seeds.index(j.seed))


def _check_run_identity(d: Path, algo: str, env: str, seed: int) -> None:
    cfg_path = d / "config.yaml"
    if not cfg_path.is_file() or (d / "imported.yaml").is_file():
        return
    try:
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError:
        cfg = {}
    have = (cfg.get("algo"), cfg.get("env_id"), cfg.get("seed"))
    if have != (algo, env, seed):
        raise ConfigError(f"run directory {str(d)!r} holds algo/env/seed {have}, expected "
                          f"{(algo, env, seed)}; use another --out")


def plan_imports(plan: Plan) -> list[tuple[Path, Path, dict[str, Any]]]:
    """The --include matches as ``(source progress.csv, destination run dir, imported.yaml
    content)``, checked (env known, one file per seed, no trained run overwritten)."""
    out = []
    for label, env, pattern in plan.includes:
        matches = sorted(glob.glob(pattern)) or sorted(glob.glob(str(ROOT / pattern)))
        if not matches:
            raise ConfigError(f"--include {label}={pattern!r} matched nothing")
        seen: set[tuple[str, int]] = set()
        for i, m in enumerate(matches):
            p = Path(m)
            csv_path = p / "progress.csv" if p.is_dir() else p
            if not csv_path.is_file():
                raise ConfigError(f"--include {label}: {m!r} is neither a run directory nor a file")
            meta = load_yaml(csv_path.parent / "config.yaml") if (csv_path.parent / "config.yaml").is_file() else {}
            run_env = env or meta.get("env_id")
            if not run_env:
                raise ConfigError(f"--include {label}: env of {m!r} unknown (no config.yaml beside it); "
                                  f"write --include {label}:ENV={pattern}")
            if env and meta.get("env_id") not in (None, env):
                raise ConfigError(f"--include {label}:{env}: {m!r} is a run on {meta['env_id']}")
            seed = meta.get("seed")
            if seed is None:
                found = re.search(r"(?:^|_)s(\d+)$", csv_path.stem if csv_path.stem != "progress"
                                  else csv_path.parent.name)
                seed = int(found.group(1)) if found else i
            if (run_env, int(seed)) in seen:
                raise ConfigError(f"--include {label}={pattern!r}: two matches are seed {seed} on {run_env}")
            seen.add((run_env, int(seed)))
            dest = run_dir(plan, run_env, label, int(seed))
            if dest.exists() and not (dest / "imported.yaml").is_file() and any(dest.iterdir()):
                raise ConfigError(f"--include {label}: {str(dest)!r} already holds a trained run")
            out.append((csv_path, dest, {"source": str(csv_path.resolve()), "label": label,
                                         "env_id": run_env, "seed": int(seed),
                                         "algo": meta.get("algo") or (plan.variants[label].algo
                                                                      if label in plan.variants else "")}))
    return out


def copy_imports(imports: list[tuple[Path, Path, dict[str, Any]]]) -> None:
    """Copy progress.csv (and config.yaml) of each import; imported.yaml marks the copy."""
    for src, dest, meta in imports:
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / "progress.csv")
        if (src.parent / "config.yaml").is_file():
            shutil.copyfile(src.parent / "config.yaml", dest / "config.yaml")
        (dest / "imported.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def write_compare_yaml(plan: Plan) -> None:
    """OUT/compare.yaml: the resolved comparison, itself a valid --spec file."""
    includes: dict[str, list[str]] = {}
    for lbl, env, pat in plan.includes:
        includes.setdefault(f"{lbl}:{env}" if env else lbl, []).append(pat)
    data = {
        "title": plan.title,
        "envs": plan.envs,
        "seeds": plan.seeds,
        "total_steps": {"default": plan.total_steps,
                        **{lbl: v.total_steps for lbl, v in plan.variants.items() if v.total_steps}},
        "jobs": plan.jobs,
        "threads": plan.threads,
        "variants": {lbl: {"algo": v.algo, **({"preset": v.presets} if v.presets else {}),
                           **({"set": v.overrides} if v.overrides else {})}
                     for lbl, v in plan.variants.items()},
        "include": includes,
        "report": plan.report.to_dict(),
    }
    if plan.headline:
        data["headline"] = True
    if plan.source_dirty:
        data["source_dirty"] = True  # not a spec key: a record that the runs started from a dirty tree
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "compare.yaml").write_text(
        "# written by scripts/compare.py; usable as --spec\n" + yaml.safe_dump(data, sort_keys=False))


# ----- running ------------------------------------------------------------------------------
def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def last_error_line(text: str) -> str:
    """The line that best explains a failed run: its ``error:`` line, else the exception
    line of a traceback, else the last non-empty line."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    for pat in (r"^error:", r"^[\w.]*(Error|Exception|Interrupt|Exit)\b"):
        hits = [ln for ln in lines if re.match(pat, ln)]
        if hits:
            return hits[-1][:300]
    return lines[-1][:300] if lines else "no output"


_CHILDREN: set[subprocess.Popen] = set()  # training runs started by subprocess_runner, still going
_CHILDREN_LOCK = threading.Lock()


def subprocess_runner(argv: list[str], log: Path) -> tuple[int, str]:
    """Run scripts/train.py in a child process, appending its output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TQDM_MININTERVAL": "30", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    with log.open("a") as f:
        start = f.tell()
        f.write(f"$ {sys.executable} {TRAIN} {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, str(TRAIN), *argv], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
        with _CHILDREN_LOCK:
            _CHILDREN.add(proc)
        try:
            rc = proc.wait()
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(proc)
    if rc == 0:
        return 0, ""
    with log.open() as f:
        f.seek(start)
        return rc, last_error_line(f.read())


@dataclass
class Result:
    job: Job
    returncode: int
    error: str
    seconds: float


def ray_runner(threads: int) -> Runner:
    """Each training run as a Ray task holding ``threads`` CPUs, on a local Ray instance
    (127.0.0.1) or the cluster named by ``RAY_ADDRESS``. The task runs ``scripts/train.py`` in a
    subprocess on whichever node Ray picks, so every node needs this checkout and the output
    directory at the same path (a shared disk)."""
    from mbmpo.distributed.ray_setup import init_ray, require_ray

    ray = require_ray("compare.py --backend ray")
    init_ray(available_cores(), user="compare.py --backend ray")

    train, python = str(TRAIN), sys.executable

    @ray.remote(num_cpus=threads)
    def train_task(argv: list[str], log: str) -> tuple[int, str]:  # self-contained: runs on any node
        import os
        import subprocess
        from pathlib import Path

        path = Path(log)
        path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TQDM_MININTERVAL": "30", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
        with path.open("a") as f:
            start = f.tell()
            f.write(f"$ {python} {train} {' '.join(argv)}\n")
            f.flush()
            rc = subprocess.run([python, train, *argv], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env).returncode
        with path.open() as f:
            f.seek(start)
            return rc, f.read()[-20_000:]

    def run(argv: list[str], log: Path) -> tuple[int, str]:
        rc, text = ray.get(train_task.remote(argv, str(log)))
        return rc, "" if rc == 0 else last_error_line(text)

    return run


def stop_children(timeout_s: float = 10.0) -> int:
    """Terminate the training runs still going; returns how many. Their checkpoints stay, so
    the same compare command resumes them."""
    with _CHILDREN_LOCK:
        procs = list(_CHILDREN)
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return len(procs)


def run_jobs(jobs: list[Job], parallel: int, threads: int, logs: Path,
             runner: Runner = subprocess_runner) -> list[Result]:
    """Run the start/resume jobs, ``parallel`` at a time; a failure is recorded, not raised."""
    todo = [j for j in jobs if j.action in ("start", "resume")]
    results = []

    def one(job: Job) -> Result:
        t0 = time.perf_counter()
        log = logs / f"{env_dirname(job.env_id)}__{job.label}__s{job.seed}.log"
        try:
            rc, err = runner(job.argv(threads), log)
        except Exception as exc:  # an in-process runner's crash is this job's failure only
            rc, err = 1, f"{type(exc).__name__}: {exc}"
        return Result(job, rc, err, time.perf_counter() - t0)

    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        futures = [pool.submit(one, j) for j in todo]
        for k, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            results.append(r)
            status = "done" if r.returncode == 0 else f"FAILED (exit {r.returncode}): {r.error}"
            print(f"[{k}/{len(todo)}] {r.job.name} {status} ({r.seconds:.0f} s)", flush=True)
    except BaseException:
        # Ctrl-C, SIGTERM: no run may go on training unsupervised; queued jobs must not start
        pool.shutdown(wait=False, cancel_futures=True)
        if n := stop_children():
            print(f"stopped {n} training run(s); the same command resumes them", file=sys.stderr, flush=True)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


# ----- command line -------------------------------------------------------------------------
def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", nargs="+", metavar="SPEC", help="labels: ALGO or LABEL=ALGO[,FIELD=VALUE...]")
    p.add_argument("--envs", nargs="+", metavar="ENV", help="gymnasium env ids")
    p.add_argument("--seeds", help="number of seeds (3 -> 0,1,2) or a list (0,2,5; one seed: 2,); default 1")
    p.add_argument("--total-steps", nargs="+", metavar="N|LABEL=N",
                   help="budget of real steps, per label with LABEL=N (default 1M)")
    p.add_argument("--out", required=True, help="comparison directory")
    p.add_argument("--presets", nargs="+", metavar="LABEL[:ENV]=PATH", help="preset YAML per label (and env)")
    p.add_argument("--include", nargs="+", metavar="LABEL[:ENV]=GLOB",
                   help="existing run dirs / progress.csv files to use as seeds of LABEL")
    p.add_argument("--spec", help="comparison spec YAML (command-line flags win)")
    p.add_argument("--only", nargs="+", metavar="LABEL", help="train and report only these labels "
                   "(e.g. the cheap ones of a spec first)")
    p.add_argument("--jobs", type=int, help="training runs at once (default 1)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores // jobs)")
    p.add_argument("--reference", help="label of the sample-efficiency ratios (default: ppo, "
                   "else the first label)")
    p.add_argument("--budgets", nargs="+", metavar="N", help="budgets of the return table "
                   "(default 50k 100k 200k 1M)")
    p.add_argument("--thresholds", nargs="+", metavar="[ENV=]R1,R2",
                   help="return thresholds for steps-to-threshold (default: automatic per env)")
    p.add_argument("--normalized-score", action="store_true",
                   help="add the PPO paper's Table-1 normalized score table")
    p.add_argument("--random-returns", nargs="+", metavar="ENV=R",
                   help="random-policy returns for the normalized score (default: measured)")
    p.add_argument("--title", help="heading of summary.md")
    p.add_argument("--dry-run", action="store_true", help="print what would run and exit")
    p.add_argument("--no-train", action="store_true", help="only import --include runs and report")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local subprocesses (default) or Ray tasks (a local instance on 127.0.0.1, "
                   "or the cluster of RAY_ADDRESS; needs a shared disk)")
    p.add_argument("--headline", action="store_true", help="a headline comparison: held-out seeds 100-104, "
                   "the same evaluation for every label, a clean source tree")
    p.add_argument("--allow-dirty", action="store_true", help="run a headline comparison from a tree with "
                   "uncommitted changes (recorded in compare.yaml)")
    return p.parse_args(argv)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None, runner: Runner | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    plan = build_plan(args)
    threads = plan.threads or max(1, available_cores() // plan.jobs)
    imports = plan_imports(plan)
    if not args.dry_run:
        write_compare_yaml(plan)
        copy_imports(imports)
    for src, dest, _ in imports:
        print(f"{'would import' if args.dry_run else 'imported'} {dest.relative_to(plan.out)} from {src}")
    jobs = make_jobs(plan, write=not args.dry_run, imported={d for _, d, _ in imports})
    counts = {a: sum(j.action == a for j in jobs) for a in ("done", "imported", "resume", "start")}
    todo = counts["start"] + counts["resume"]
    print(f"{plan.out}: {len(jobs)} runs" + "".join(f", {n} {a}" for a, n in counts.items() if n)
          + (f"; {plan.jobs} at a time, {threads} thread(s) each" if todo and not args.no_train else ""))
    for j in jobs:
        cmd = " ".join(["train.py", *j.argv(threads)]) if j.action in ("start", "resume") else ""
        print(f"  {j.action:8s} {j.name}  {cmd}" if args.dry_run else f"  {j.action:8s} {j.name}")
    if args.dry_run:
        return 0
    if runner is None:
        runner = ray_runner(threads) if args.backend == "ray" and todo and not args.no_train else subprocess_runner
    results = [] if args.no_train else run_jobs(jobs, plan.jobs, threads, plan.out / "logs", runner)
    failed = [r for r in results if r.returncode != 0]
    try:
        summary = write_report(plan.out, warn=warn)
        print(f"report: {plan.out / 'summary.md'} ({len(summary.groups)} env/label groups)")
    finally:
        for r in failed:
            print(f"failed: {r.job.name}: {r.error} (log: {plan.out / 'logs'})", file=sys.stderr)
    return 1 if failed else 0


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_jobs, which stops the training runs


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    run_main(main)
