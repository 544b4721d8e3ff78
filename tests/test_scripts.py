"""Each script end-to-end with a tiny budget, plus one-line errors for bad input."""

import subprocess
import sys
from pathlib import Path

import gymnasium
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num-steps", "64", "--minibatch-size", "32", "--update-epochs", "1", "--hidden-sizes", "16",
        "--value-hidden-sizes", "16", "--eval-episodes", "2", "--eval-every", "64"]


def run(*args, check=True):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def error_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_train_resume_evaluate_plot(tmp_path):
    out = tmp_path / "run"
    run("scripts/train.py", "--algo", "ppo", "--env", "Pendulum-v1", "--total-steps", "128",
        "--seed", "1", "--out", str(out), *TINY)
    for name in ("config.yaml", "progress.csv", "learning_curve.png", "checkpoints/last.pt"):
        assert (out / name).exists(), name
    assert any((out / "tb").iterdir())
    header = (out / "progress.csv").read_text().splitlines()[0].split(",")
    for col in ("real_steps", "wall_time_s", "eval_return_mean", "eval_return_std"):
        assert col in header
    run("scripts/train.py", "--resume", str(out), "--total-steps", "256")
    rows = (out / "progress.csv").read_text().splitlines()
    assert [r.split(",")[header.index("real_steps")] for r in rows[1:]] == ["64", "128", "192", "256"]
    # one environment record per start, the resumed one at the restored step
    starts = yaml.safe_load((out / "environment.yaml").read_text())
    assert [e["start_step"] for e in starts] == [0, 128]
    assert starts[1]["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert starts[1]["packages"]["gymnasium"] == gymnasium.__version__ and starts[1]["torch_threads"] >= 1
    proc = run("scripts/evaluate.py", str(out / "checkpoints" / "last.pt"), "--episodes", "2")
    assert "return" in proc.stdout and "±" in proc.stdout
    png = tmp_path / "c.png"
    run("scripts/plot.py", str(out), "--out", str(png))
    assert png.stat().st_size > 1000
    # a second train into the same directory is refused instead of overwriting
    assert "already holds a run" in error_line(run("scripts/train.py", "--env", "Pendulum-v1", "--out", str(out), check=False))


def test_trpo_from_preset(tmp_path):
    out = tmp_path / "trpo"
    run("scripts/train.py", "--preset", "scripts/configs/halfcheetah_trpo.yaml", "--env", "Pendulum-v1",
        "--total-steps", "200", "--num-steps", "200", "--vf-epochs", "1", "--eval-episodes", "1",
        "--out", str(out))
    assert "algo: trpo" in (out / "config.yaml").read_text()


def test_bad_input_gives_one_clear_line(tmp_path):
    assert "unknown env id 'Nope-v0'" in error_line(run("scripts/train.py", "--env", "Nope-v0", check=False))
    assert "total_steps must be > 0, got 0" in error_line(
        run("scripts/train.py", "--env", "Pendulum-v1", "--total-steps", "0", "--out", str(tmp_path / "z"), check=False))
    assert "bad config override" in error_line(run("scripts/train.py", "--learning-rat", "1", check=False))
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: ppo\nlearning_rat: 0.1\n")
    assert "unknown config key 'learning_rat'" in error_line(run("scripts/train.py", "--preset", str(bad), check=False))
    corrupt = tmp_path / "c.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert "corrupt" in error_line(run("scripts/evaluate.py", str(corrupt), check=False))
    assert "does not exist" in error_line(run("scripts/evaluate.py", str(tmp_path / "none.pt"), check=False))
