"""Tailored exploration: real data is collected by the adapted policies of every model, with
a rotating assignment when there are fewer env copies than models; the data set records the
collecting model per row, through checkpoints; the adapted-policy evaluation covers every model."""

from __future__ import annotations

import torch
from test_mbmpo import pm_config

from mbmpo import MBMPO


def three_models(**kw):
    return pm_config(num_models=3, meta_batch_size=6, num_envs=2, num_meta_steps=1, **kw)


def test_every_model_collects_an_equal_share_and_rows_record_it(tmp_path):
    algo = MBMPO(three_models(), out_dir=tmp_path, console=False)
    algo.learn(120 + 3 * 60)  # warm-up, then 3 iterations of 2 copies x 30 steps
    col = algo.dataset.arrays()["collector_model"]
    assert col.shape == (300,)
    assert bool((col[:120] == -1).all())  # random warm-up rows
    counts = torch.bincount(col[120:].long(), minlength=3)
    assert counts.tolist() == [60, 60, 60]  # 2 copies < 3 models: the assignment rotates
    for it in range(1, 4):  # within an iteration the two copies use different models
        rows = col[120 + (it - 1) * 60 : 120 + it * 60].reshape(30, 2)
        assert rows[0, 0] != rows[0, 1] and bool((rows == rows[0]).all())
    algo.close()
    resumed = MBMPO.load(tmp_path, console=False)
    assert torch.equal(resumed.dataset.arrays()["collector_model"], col)


def test_each_copy_acts_with_its_assigned_tasks_adapted_policy():
    algo = MBMPO(three_models(), console=False)
    algo.learn(180)
    # give each task's adapted policy a recognizable constant action 0.1 * (task + 1)
    params = {n: v.clone() for n, v in algo.collect_params.items()}
    num_tasks = params["log_std"].shape[0]
    for name, v in params.items():
        if name.startswith("mean_net"):
            v.zero_()
    last_bias = [n for n in params if n.startswith("mean_net") and n.endswith("bias")][-1]
    params[last_bias] += 0.1 * (torch.arange(num_tasks, dtype=torch.float32) + 1).unsqueeze(-1)
    params["log_std"].fill_(-20.0)
    algo.collect_params = params
    tasks = algo.collector_tasks()
    roll = algo.collect_real()
    assert torch.allclose(roll.actions[:, :, 0], 0.1 * (tasks.float() + 1).expand(30, -1), atol=1e-4)
    col = algo.dataset.arrays()["collector_model"][-60:].reshape(30, 2)
    assert torch.equal(col[0], (tasks // algo.config.tasks_per_model).double())


def test_pre_update_collection_is_marked_and_evaluation_covers_every_model():
    algo = MBMPO(three_models(collect_with="pre_update", eval_adapted=True), console=False)
    algo.learn(180)
    assert bool((algo.dataset.arrays()["collector_model"] == -1).all())
    tasks = algo.spread_tasks(5)
    assert sorted((tasks // algo.config.tasks_per_model).tolist()) == [0, 0, 1, 1, 2]
    returns, lengths = algo.evaluate(5, adapted=True)
    assert returns.shape == (5,) and (lengths > 0).all()
