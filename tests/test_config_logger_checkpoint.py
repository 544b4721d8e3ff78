import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mbmpo import DPPOConfig, GorilaConfig, MBMPOConfig, PPOConfig, SACConfig, TRPOConfig
from mbmpo.algorithm import record_environment
from mbmpo.checkpoint import load_checkpoint, save_checkpoint
from mbmpo.config import config_from_dict, load_config
from mbmpo.errors import CheckpointError, ConfigError
from mbmpo.logger import Logger

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "scripts" / "configs").glob("*.yaml"))


def test_unknown_key_and_bad_types_are_named():
    with pytest.raises(ConfigError, match="unknown config key 'lrr'"):
        config_from_dict(PPOConfig, {"lrr": 1})
    with pytest.raises(ConfigError, match="'num_envs'.*'four'"):
        config_from_dict(PPOConfig, {"num_envs": "four"})
    cfg = config_from_dict(PPOConfig, {"hidden_sizes": [8, 8], "learning_rate": "1e-3"})
    assert cfg.hidden_sizes == (8, 8) and cfg.learning_rate == 1e-3


@pytest.mark.parametrize("field,value,msg", [
    ("total_steps", 0, "total_steps must be > 0, got 0"),
    ("num_steps", -5, "num_steps must be > 0"),
    ("gamma", 1.5, "gamma must be in"),
    ("objective", "magic", "objective 'magic' is not allowed"),
    ("env_id", "NoSuchEnv-v0", "unknown env id 'NoSuchEnv-v0'"),
    ("minibatch_size", 10**6, "minibatch_size 1000000 exceeds"),
])
def test_validation_errors(field, value, msg):
    with pytest.raises(ConfigError, match=msg):
        PPOConfig(**{field: value}).validate()


def test_there_are_presets():
    assert len(PRESETS) >= 10, PRESETS  # the glob itself found the committed presets


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_presets_load_and_validate(preset):
    config_classes = {"ppo": PPOConfig, "trpo": TRPOConfig, "mbmpo": MBMPOConfig, "dppo": DPPOConfig,
                      "gorila": GorilaConfig, "sac": SACConfig}
    algo = yaml.safe_load(preset.read_text()).get("algo")
    assert algo in config_classes, f"{preset.name}: algo {algo!r} is not one of {sorted(config_classes)}"
    cls = config_classes[algo]
    cfg = load_config(cls, preset)
    assert isinstance(cfg, cls)
    cfg.validate()


def test_logger_grows_csv_columns_and_writes_tensorboard(tmp_path):
    log = Logger(tmp_path, console=False)
    log.record("real_steps", 10)
    log.record("a", 1.5)
    log.dump(10)
    log.record("real_steps", 20)
    log.record("eval_return_mean", 3.0)
    log.dump(20)
    log.close()
    rows = list(csv.DictReader((tmp_path / "progress.csv").open()))
    assert rows[0] == {"real_steps": "10", "a": "1.5", "eval_return_mean": ""}
    assert rows[1]["eval_return_mean"] == "3.0" and rows[1]["a"] == ""
    assert any((tmp_path / "tb").iterdir())
    log2 = Logger(tmp_path, console=False, tensorboard=False)
    log2.truncate_after(10)
    assert len(list(csv.DictReader((tmp_path / "progress.csv").open()))) == 1


@pytest.mark.timeout(60)
def test_a_run_directory_is_written_by_one_process_at_a_time(tmp_path):
    hold = ("import sys, time\nfrom mbmpo.logger import Logger\n"
            "Logger(sys.argv[1], tensorboard=False)\nprint('locked', flush=True)\ntime.sleep(50)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"run directory .* is in use by another process \(pid {holder.pid}\)"):
            Logger(tmp_path, tensorboard=False)
    finally:
        holder.kill()
        holder.wait()
    a = Logger(tmp_path, tensorboard=False)  # the kernel dropped the killed holder's lock
    b = Logger(tmp_path, tensorboard=False)  # re-entrant within one process
    a.close()
    b.record("x", 1)
    b.dump(1)
    b.close()
    assert (tmp_path / "progress.csv").read_text().splitlines() == ["x", "1"]


def test_a_file_system_without_locks_runs_unguarded_with_a_warning(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")

    def no_locks(*args):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot lock run directory .*No locks available"):
        logger = Logger(tmp_path, tensorboard=False)
    logger.record("x", 1)
    logger.dump(1)
    logger.close()
    assert (tmp_path / "progress.csv").read_text().splitlines() == ["x", "1"]


def test_checkpoint_roundtrip_and_corruption(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.arange(3), "cfg": {"a": [1, 2]}})
    data = load_checkpoint(path)
    assert torch.equal(data["w"], torch.arange(3)) and data["cfg"] == {"a": [1, 2]}
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an mbmpo checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_environment_record_appends_starts_and_warns_on_a_damaged_file(tmp_path):
    f = tmp_path / "environment.yaml"
    record_environment(f, 0)
    record_environment(f, 300)
    starts = yaml.safe_load(f.read_text())
    assert [e["start_step"] for e in starts] == [0, 300]
    assert starts[0]["packages"]["numpy"] == np.__version__ and starts[0]["python"].count(".") == 2
    # the precision options' speed depends on the CPU's instruction set: the record says which it had
    assert starts[0]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(starts[0]["cpu_bf16_native"], bool)
    f.write_text("a: [")
    with pytest.warns(UserWarning, match="not a list of starts"):
        record_environment(f, 600)
    assert [e["start_step"] for e in yaml.safe_load(f.read_text())] == [600]
