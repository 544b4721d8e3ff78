"""Each script end-to-end with a tiny budget, plus one-line errors for bad input."""

import csv
import subprocess
import sys
from pathlib import Path

import gymnasium
import torch
import yaml

from mbmpo import TRPO, TRPOConfig

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
    # the committed preset, with three values moved off TRPOConfig's defaults (the preset's own
    # values equal the defaults today, so a preset that failed to load would go unseen)
    preset = yaml.safe_load((ROOT / "scripts" / "configs" / "halfcheetah_trpo.yaml").read_text())
    preset.update(max_kl=0.002, gae_lambda=0.9, cg_damping=0.05)
    defaults = TRPOConfig()
    assert all(getattr(defaults, k) != preset[k] for k in ("max_kl", "gae_lambda", "cg_damping"))
    preset_path = tmp_path / "trpo.yaml"
    preset_path.write_text(yaml.safe_dump(preset))
    out = tmp_path / "trpo"
    overrides = {"env_id": "Pendulum-v1", "total_steps": 200, "num_steps": 200, "vf_epochs": 1,
                 "eval_episodes": 1}
    run("scripts/train.py", "--preset", str(preset_path), "--env", "Pendulum-v1",
        "--total-steps", "200", "--num-steps", "200", "--vf-epochs", "1", "--eval-episodes", "1",
        "--out", str(out))
    # the preset's values, under the command line's overrides, are the run's config
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["algo"] == "trpo"
    for key, value in {**preset, **overrides}.items():
        assert config[key] == value, (key, config[key], value)
    # one TRPO iteration ran: its trust-region step was accepted, improved the surrogate and
    # kept the mean KL within the preset's max_kl
    rows = list(csv.DictReader((out / "progress.csv").open()))
    assert len(rows) == 1 and int(rows[0]["real_steps"]) == 200
    row = {k: float(v) for k, v in rows[0].items() if v}
    assert row["train/step_accepted"] == 1.0
    assert 0.0 < row["train/kl"] <= preset["max_kl"]
    assert row["loss/surrogate_after"] > row["loss/surrogate_before"]
    assert row["train/expected_improve"] > 0.0
    # and the saved policy is no longer the seeded initial one
    trained = TRPO.load(out / "checkpoints" / "last.pt", console=False)
    initial = TRPO(trained.config, console=False)
    assert trained.num_timesteps == 200 and trained.config.max_kl == preset["max_kl"]
    again = TRPO(trained.config, console=False)
    assert all(torch.equal(a, b) for a, b in zip(initial.policy.parameters(), again.policy.parameters()))
    moved = [n for (n, a), b in zip(trained.policy.named_parameters(), initial.policy.parameters())
             if not torch.equal(a, b)]
    assert moved, "TRPO's accepted step did not change the policy"
    for algo in (trained, initial, again):
        algo.close()


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
