import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

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


def hand_policy_loss(algo, params, obs, act, old_logp, adv, old_dist, objective, beta):
    """Policy loss of one full-batch PPO step, written out from the PPO paper (eqs. 6-8)."""
    dist = functional_call(algo.policy, params, (obs,))
    ratio = torch.exp(dist.log_prob(act) - old_logp)
    eps = algo.config.clip_coef
    if objective == "clip":
        return -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv).mean()
    if objective == "none":
        return -(ratio * adv).mean()
    # KL[pi_old || pi] of two diagonal Gaussians, closed form
    var_old, var = (2 * old_dist.log_std).exp(), (2 * dist.log_std).exp()
    kl = 0.5 * ((var_old + (old_dist.mean - dist.mean) ** 2) / var - 1).sum(-1) \
        + (dist.log_std - old_dist.log_std).sum(-1)
    return -(ratio * adv).mean() + beta * kl.mean()


@pytest.mark.parametrize("objective", ["none", "clip", "adaptive_kl", "fixed_kl"])
def test_each_surrogate_objective_gives_its_own_gradient(objective):
    # Full-batch minibatches, raw advantages, no grad clipping and a large step size, so that
    # after the first Adam step the ratios leave [1 - eps, 1 + eps] and the objectives differ.
    # Every policy gradient PPO applies is checked against each objective computed by hand:
    # it must match its own and, at some step, differ from the other two.
    algo = PPO(pm_ppo(objective=objective, kl_coef=1.0, minibatch_size=480, update_epochs=4,
                      learning_rate=0.05, anneal_lr=False, norm_adv=False, max_grad_norm=0.0),
               console=False)
    names = [n for n, _ in algo.policy.named_parameters()]
    steps, batch = [], {}
    real_update, real_step = algo.update, algo.optimizer.step

    def update(rollout, advantages, returns):
        batch.update(obs=rollout.flat("obs"), act=rollout.flat("actions"),
                     old_logp=rollout.flat("log_prob"), adv=advantages.reshape(-1), beta=algo.kl_coef)
        return real_update(rollout, advantages, returns)

    def step(*args, **kwargs):
        steps.append({n: (p.detach().clone(), p.grad.detach().clone())
                      for n, p in algo.policy.named_parameters()})
        return real_step(*args, **kwargs)

    algo.update, algo.optimizer.step = update, step
    algo.learn(480)
    assert torch.isfinite(params_of(algo)).all() and len(steps) == 4
    with torch.no_grad():
        old_dist = functional_call(algo.policy, {n: steps[0][n][0] for n in names}, (batch["obs"],))
    own = "kl" if objective.endswith("_kl") else objective
    differs = {o: False for o in ("none", "clip", "kl") if o != own}
    for rec in steps:
        params = {n: rec[n][0].requires_grad_() for n in names}
        got = torch.cat([rec[n][1].flatten() for n in names])
        for o in (own, *differs):
            loss = hand_policy_loss(algo, params, batch["obs"], batch["act"], batch["old_logp"],
                                    batch["adv"], old_dist, o, batch["beta"])
            want = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(params.values()))])
            err = (got - want).norm() / want.norm()
            if o == own:
                assert err < 1e-4, f"PPO's gradient is not the {o} objective's: relative error {err:.2e}"
            elif err > 1e-2:
                differs[o] = True
    assert all(differs.values()), f"the {objective} update never differed from {differs}"
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
    algo = PPO(pm_ppo(checkpoint_every_steps=1, eval_every=480), out_dir=run, console=False)
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
    algo = PPO(pm_ppo(checkpoint_every_steps=1), out_dir=run, console=False)
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
