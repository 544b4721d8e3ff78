import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from mbmpo import PPO, TRPO, PPOConfig, TRPOConfig
from mbmpo.errors import CheckpointError, TrainingError

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(hidden_sizes=(32,), value_hidden_sizes=(32,), eval_every=0, eval_episodes=8)


def pm_ppo(**kw):
    base = dict(env_id="mbmpo_test/PointMass-v0", num_envs=4, num_steps=120, minibatch_size=120,
                update_epochs=5, learning_rate=3e-3, gamma=0.95, **SMALL)
    base.update(kw)
    return PPOConfig(**base)


def params_of(algo):
    return torch.cat([p.detach().flatten() for p in algo.policy.parameters()])


@pytest.mark.parametrize("algo_cls,cfg,steps,threshold", [
    (PPO, pm_ppo(), 6000, -8.0),
    (TRPO, TRPOConfig(env_id="mbmpo_test/PointMass-v0", num_envs=4, num_steps=120, gamma=0.95,
                      max_kl=0.02, **SMALL), 6000, -8.0),
    (PPO, PPOConfig(env_id="CartPole-v1", num_envs=4, num_steps=128, minibatch_size=128,
                    update_epochs=4, learning_rate=2.5e-3, normalize_obs=False,
                    normalize_reward=False, **SMALL), 20480, 195.0),
    (TRPO, TRPOConfig(env_id="CartPole-v1", num_envs=4, num_steps=256, normalize_obs=False,
                      max_kl=0.02, **SMALL), 20480, 150.0),
], ids=["ppo-pointmass", "trpo-pointmass", "ppo-cartpole", "trpo-cartpole"])
def test_small_learning_problems(algo_cls, cfg, steps, threshold):
    algo = algo_cls(cfg, console=False)
    before = algo.evaluate(8)[0].mean()
    algo.learn(steps)
    after = algo.evaluate(8)[0].mean()
    algo.close()
    assert after > threshold > before, (before, after)


def test_seeded_runs_are_identical_and_seeds_differ():
    a, b, c = PPO(pm_ppo(), console=False), PPO(pm_ppo(), console=False), PPO(pm_ppo(seed=1), console=False)
    for x in (a, b, c):
        x.learn(960)
    assert torch.equal(params_of(a), params_of(b))
    assert not torch.equal(params_of(a), params_of(c))


@pytest.mark.parametrize("objective", ["none", "clip", "adaptive_kl", "fixed_kl"])
def test_every_surrogate_objective_runs(objective):
    algo = PPO(pm_ppo(objective=objective, kl_coef=1.0), console=False)
    algo.learn(480)
    assert torch.isfinite(params_of(algo)).all()
    if objective == "fixed_kl":
        assert algo.kl_coef == 1.0


def test_adaptive_kl_coefficient_follows_the_rule():
    # tiny learning rate -> KL far below target/1.5 -> beta halves every iteration
    algo = PPO(pm_ppo(objective="adaptive_kl", kl_coef=1.0, kl_target=0.5, learning_rate=1e-6,
                      anneal_lr=False), console=False)
    algo.learn(960)  # 2 iterations
    assert algo.kl_coef == pytest.approx(0.25)
    # huge learning rate and tiny target -> KL above 1.5 * target -> beta doubles
    algo = PPO(pm_ppo(objective="adaptive_kl", kl_coef=1.0, kl_target=1e-6, learning_rate=1e-2,
                      anneal_lr=False), console=False)
    algo.learn(480)
    assert algo.kl_coef == pytest.approx(2.0)


def test_discrete_policy_samples_and_uses_true_entropy():
    cfg = PPOConfig(env_id="CartPole-v1", num_envs=2, num_steps=64, minibatch_size=64, **SMALL)
    algo = PPO(cfg, console=False)
    obs = torch.zeros(500, 4)
    dist = algo.policy(obs)
    acts = dist.sample(algo.generator)
    assert set(acts.unique().tolist()) == {0, 1}  # sampled, not argmax
    p = torch.softmax(dist.logits, -1)
    assert torch.allclose(dist.entropy(), -(p * p.log()).sum(-1))
    assert algo.predict(np.zeros(4)).shape == ()


def test_save_load_roundtrip_and_predict(tmp_path):
    algo = PPO(pm_ppo(), console=False)
    algo.learn(480)
    algo.save(tmp_path / "a.pt")
    loaded = PPO.load(tmp_path / "a.pt", console=False)
    assert torch.equal(params_of(algo), params_of(loaded))
    obs = np.random.default_rng(0).normal(size=(5, 1)).astype(np.float32)
    assert np.array_equal(algo.predict(obs), loaded.predict(obs))
    assert loaded.num_timesteps == 480 and loaded.iteration == 1
    assert torch.equal(loaded.env.obs_rms.mean, algo.env.obs_rms.mean)
    with pytest.raises(CheckpointError, match="holds algo 'ppo', not 'trpo'"):
        TRPO.load(tmp_path / "a.pt")


def test_mismatched_checkpoint_is_rejected(tmp_path):
    algo = PPO(pm_ppo(), console=False)
    algo.save(tmp_path / "a.pt")
    state = torch.load(tmp_path / "a.pt", weights_only=True)
    state["config"]["hidden_sizes"] = [8]
    torch.save(state, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        PPO.load(tmp_path / "b.pt", console=False)


def test_resume_continues_counters_optimizer_and_log(tmp_path):
    run = tmp_path / "run"
    algo = PPO(pm_ppo(checkpoint_every=1, eval_every=480), out_dir=run, console=False)
    algo.learn(960)
    algo.close()
    resumed = PPO.load(run, out_dir=run, console=False)
    assert resumed.num_timesteps == 960
    opt_state = resumed.optimizer.state_dict()["state"]
    assert opt_state and int(opt_state[0]["step"]) == 2 * 5 * 4  # iterations x epochs x minibatches
    resumed.learn(1440)
    resumed.close()
    rows = list(csv.DictReader((run / "progress.csv").open()))
    assert [int(r["real_steps"]) for r in rows] == [480, 960, 1440]
    assert all(r["eval_return_mean"] for r in rows)


def test_nan_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    run = tmp_path / "run"
    algo = PPO(pm_ppo(checkpoint_every=1), out_dir=run, console=False)
    algo.learn(480)
    ckpt = run / "checkpoints" / "last.pt"
    good = ckpt.read_bytes()
    with torch.no_grad():
        algo.value_fn.net[0].weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="non-finite .* at iteration 2.*last good checkpoint"):
        algo.learn(960)
    assert ckpt.read_bytes() == good
    algo.close()


def test_ppo_solves_minigrid_empty_5x5():
    from mbmpo.config import load_config

    cfg = load_config(PPOConfig, ROOT / "scripts/configs/minigrid_ppo.yaml", eval_every=0, seed=0)
    algo = PPO(cfg, console=False)
    algo.learn(26_624)  # 13 iterations of 16 envs x 128 steps
    rets, _ = algo.evaluate(16, deterministic=False)
    algo.close()
    assert rets.mean() > 0.85, rets
