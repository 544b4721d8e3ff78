"""Every committed preset gives the config it gave before the MB-MPO defaults became
CPU-sized and its plug-in keys moved into nested configs (fixture: each preset's config at
commit 8ccd224, written by that commit's ``load_config``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mbmpo import ALGORITHMS
from mbmpo.config import load_config
from mbmpo.mbmpo.config import LEGACY_KEYS

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((ROOT / "tests" / "data" / "preset_configs_8ccd224.json").read_text())
# the checkpoint schedule moved from iterations to real steps: not a training setting
SCHEDULE_KEYS = {"checkpoint_every", "checkpoint_every_steps"}
# fields added since, with the value that keeps the earlier behaviour
ADDED = {"mbmpo": {"imagined_precision": "float32", "model_epoch_rows": 0, "model_fit_precision": "float32",
                   "uncertainty_penalty.relative": False, "uncertainty_penalty.ref_quantile": 0.9,
                   "uncertainty_penalty.ref_rows": 5000, "uncertainty_penalty.ref_on": "fresh"},
         "dppo": {"kl_stop": "mean", "straggler_mode": "preempt_collection", "report_poll_s": 0.001}}


def flat(d: dict) -> dict:
    """Today's nested plug-in configs spelled with the older flat keys."""
    out = dict(d)
    back = {(group, key): old for old, (group, key) in LEGACY_KEYS.items()}
    for group in {g for g, _ in LEGACY_KEYS.values()}:
        if isinstance(out.get(group), dict):
            for key, value in out.pop(group).items():
                if (group, key) == ("terminal_value", "fit_on"):
                    out["terminal_value"] = value
                else:  # a plug-in field added after the flat keys has no flat name: group.key
                    out[back.get((group, key), f"{group}.{key}")] = value
    return {k: v for k, v in out.items() if k not in SCHEDULE_KEYS}


@pytest.mark.parametrize("path", sorted(k for k in FIXTURE if k.endswith(".yaml")))
def test_preset_gives_the_same_config(path):
    entry = FIXTURE[path]
    now = flat(load_config(ALGORITHMS[entry["algo"]][1], ROOT / path).to_dict())
    for key, value in ADDED.get(entry["algo"], {}).items():
        assert now.pop(key) == value
    assert now == flat(entry["config"])


def test_paper_preset_holds_the_former_defaults():
    now = flat(load_config(ALGORITHMS["mbmpo"][1], ROOT / "scripts" / "configs" / "paper_mbmpo.yaml").to_dict())
    for key, value in ADDED["mbmpo"].items():
        assert now.pop(key) == value
    assert now == flat(FIXTURE["defaults:mbmpo"]["config"])


def test_the_paper_preset_is_not_the_default():
    assert flat(ALGORITHMS["mbmpo"][1]().to_dict()) != flat(FIXTURE["defaults:mbmpo"]["config"])
