import csv
import dataclasses
import math

import pytest
import torch

from dynamics.model_env import ImaginedStep
from mbmpo import MBMPO, MBMPOConfig
from mbmpo.config import config_from_dict
from mbmpo.errors import CheckpointError, ConfigError, TrainingError
from mbmpo.mbmpo.extensions.fall_hazard import fit_hazard, hazard_cost
from mbmpo.mbmpo.extensions.focus_starts import focus_rows
from mbmpo.mbmpo.extensions.uncertainty_penalty import relative_penalty
from mbmpo.mbmpo.outer import outer_trpo, surrogate_and_kl
from mbmpo.meta import forward_per_task
from mbmpo.sampler import collect
from policies.value import MLPValue


def pm_config(**kw):
    base = dict(env_id="mbmpo_test/PointMass-v0", num_envs=2, num_steps=30, warmup_steps=120,
                num_models=2, model_hidden_sizes=(32, 32), model_max_epochs=30, model_batch_size=64,
                model_early_stop_ema=0.5, meta_batch_size=4, rollouts_per_task=8, imagined_horizon=30,
                num_meta_steps=3, hidden_sizes=(16,), inner_lr=0.05, max_kl=0.05, gamma=0.95,
                eval_every=0, eval_episodes=4, eval_adapted=False, imagined_init="dataset",
                normalize_obs=False, init_log_std=0.0)
    base.update(kw)
    return config_from_dict(MBMPOConfig, base)  # older flat plug-in keys are read as well


def flat(algo):
    return torch.cat([p.detach().flatten() for p in algo.policy.parameters()])


def test_trpo_outer_step_respects_the_kl_bound():
    """The KL between the post-update policies that sampled and those theta'_k(theta_new) gives,
    recomputed here after each step, stays within the bound; steps are taken (not all rejected)."""
    algo = MBMPO(pm_config(max_kl=0.002), console=False)
    algo.collect_real()
    algo.fit_models()
    accepted = 0
    for _ in range(4):
        with torch.no_grad():
            pre = algo.task_batch(collect(algo.imagined_env(), algo.pre_policy_fn, algo.config.imagined_horizon))
        adapted = algo.adapt(pre, create_graph=False)
        with torch.no_grad():
            post = algo.task_batch(collect(algo.imagined_env(), algo.adapted_policy_fn(adapted),
                                           algo.config.imagined_horizon))
            post.dist = forward_per_task(algo.policy, adapted, post.obs).detach()
        before = flat(algo).clone()
        stats = outer_trpo(algo.policy, algo.outer_params(), lambda b: algo.adapt(b, create_graph=True), pre, post,
                           algo.config, algo.generator)
        _, kl, _ = surrogate_and_kl(algo.policy, lambda b: algo.adapt(b, create_graph=True), pre, post)
        measured = kl().item()
        assert measured <= 0.002 * (1 + 1e-4)
        if stats["meta/step_accepted"]:
            accepted += 1
            assert not torch.equal(before, flat(algo)) and measured > 1e-5
            assert measured == pytest.approx(stats["meta/kl"], rel=1e-3)
        else:
            assert torch.equal(before, flat(algo))
    assert accepted >= 2, "the bound must be met by taking steps, not by rejecting them"


def test_seeded_runs_are_identical():
    a, b = MBMPO(pm_config(), console=False), MBMPO(pm_config(), console=False)
    a.learn(180)
    b.learn(180)
    assert torch.equal(flat(a), flat(b))
    assert torch.equal(a.dataset.arrays()["obs"], b.dataset.arrays()["obs"])


@pytest.mark.parametrize("split,model_type,extra", [("resample", "deterministic", {}), ("persistent", "deterministic", {}),
                                                    ("resample", "probabilistic", {}),
                                                    ("resample", "deterministic", {"terminal_value": "real"}),
                                                    ("resample", "deterministic", {"terminal_value": "imagined"}),
                                                    ("resample", "deterministic", {"fall_penalty": 1.0})])
def test_resume_gives_the_same_next_iteration(tmp_path, split, model_type, extra):
    full = MBMPO(pm_config(model_split=split, model_type=model_type, **extra), console=False)
    full.learn(180)  # warm-up (120) + 1 iteration (60): episodes of 30 end with the iteration
    run = tmp_path / "run"
    part = MBMPO(pm_config(model_split=split, model_type=model_type, **extra), out_dir=run, console=False)
    part.learn(120)
    part.close()
    resumed = MBMPO.load(run, out_dir=run, console=False)
    assert len(resumed.dataset) == 120 and resumed.num_timesteps == 120
    resumed.learn(180)
    assert torch.equal(flat(full), flat(resumed))
    assert torch.equal(full.dataset.arrays()["obs"], resumed.dataset.arrays()["obs"])
    for plugin in full.plugins:  # fitted nets are in the checkpoint
        if hasattr(plugin, "net"):
            assert torch.equal(torch.cat([p.flatten() for p in plugin.net.parameters()]),
                               torch.cat([p.flatten() for p in resumed.plugin(plugin.name).net.parameters()]))
    if "fall_penalty" in extra:
        assert torch.equal(full.dataset.arrays()["fall_ahead"].nan_to_num(-1),
                           resumed.dataset.arrays()["fall_ahead"].nan_to_num(-1))
    if split == "persistent":  # every row keeps the train/validation assignment it got when collected
        assert torch.equal(full.dataset.arrays()["keys"][:120], part.dataset.arrays()["keys"])
        assert full.dataset.arrays()["keys"].shape == (180, 2)
    else:
        assert "keys" not in full.dataset.arrays()


def test_progress_logs_the_policy_std(tmp_path):
    algo = MBMPO(pm_config(), out_dir=tmp_path, console=False)
    algo.learn(180)
    algo.close()
    rows = list(csv.DictReader((tmp_path / "progress.csv").read_text().splitlines()))
    assert len(rows) == 2
    assert float(rows[-1]["policy/std_mean"]) == pytest.approx(algo.policy.log_std.exp().mean().item())


def test_min_std_floors_the_std_of_theta(tmp_path):
    # the floor sits at the initial std, so every outer step that lowers the std is undone
    algo = MBMPO(pm_config(init_log_std=-0.5, min_std=0.6), out_dir=tmp_path, console=False)
    algo.learn(180)
    algo.close()
    # the floor is log(0.6) rounded once to float32 (torch.log of float32 0.6 may differ by an ulp)
    assert (algo.policy.log_std.detach() >= torch.tensor(math.log(0.6))).all()
    rows = list(csv.DictReader((tmp_path / "progress.csv").read_text().splitlines()))
    assert all(float(r["policy/std_mean"]) >= 0.6 - 1e-6 for r in rows)
    free = MBMPO(pm_config(init_log_std=-0.5), console=False)
    free.learn(180)
    assert free.policy.log_std.detach().exp().min() < 0.6, "the same run without a floor must lower the std"


@pytest.mark.parametrize("model_type", ["deterministic", "probabilistic"])
def test_learns_point_mass_end_to_end(model_type):
    algo = MBMPO(pm_config(num_meta_steps=8, model_type=model_type), console=False)
    before = algo.evaluate(8)[0].mean()
    algo.learn(480)
    after = algo.evaluate(8)[0].mean()
    assert after > -8.0 > before, (before, after)


def test_first_order_ppo_outer_learned_inner_lr_and_mlp_baseline_change_the_update():
    """Each option changes the first outer step against the same seeded default run."""
    def first_step(**kw):
        algo = MBMPO(pm_config(num_meta_steps=1, **kw), console=False)
        algo.learn(150)  # warm-up (120) + one iteration with one meta-step
        assert torch.isfinite(flat(algo)).all()
        return algo

    default = first_step()
    for kw in (dict(first_order=True), dict(outer="ppo", outer_epochs=2), dict(baseline="mlp", baseline_epochs=1)):
        assert not torch.allclose(flat(first_step(**kw)), flat(default), atol=1e-7), kw
    learned = first_step(learn_inner_lr=True)
    # Meta-SGD: the outer step moves the per-parameter step sizes away from their common start
    lrs = torch.cat([v.detach().flatten() for v in learned.inner_lr.values()])
    assert (lrs != learned.config.inner_lr).any() and lrs.std() > 0


def _ppo_meta_step(**kw):
    algo = MBMPO(pm_config(outer="ppo", outer_epochs=4, outer_learning_rate=0.01, **kw), console=False)
    algo.collect_real()
    algo.fit_models()
    return algo, algo.meta_step()


def test_inner_kl_penalty_holds_the_pre_update_policy_and_adapts(tmp_path):
    _, free = _ppo_meta_step()
    held, stats = _ppo_meta_step(inner_kl_coef=50.0, adaptive_inner_kl=False)
    assert free["meta/inner_kl"] > 0 and free["meta/inner_kl_coef"] == 0.0
    assert stats["meta/inner_kl"] < 0.5 * free["meta/inner_kl"], (stats, free)
    assert held.inner_kl_coef == 50.0
    # adaptive: the same KL against a target far below / far above it doubles / halves eta
    up, s_up = _ppo_meta_step(inner_kl_coef=0.1, inner_kl_target=1e-9)
    assert s_up["meta/inner_kl"] > 1.5e-9 and up.inner_kl_coef == pytest.approx(0.2)
    down, _ = _ppo_meta_step(inner_kl_coef=0.1, inner_kl_target=1e3)
    assert down.inner_kl_coef == pytest.approx(0.05)
    down.save(tmp_path / "ck.pt")
    assert MBMPO.load(tmp_path / "ck.pt", console=False).inner_kl_coef == pytest.approx(0.05)


def test_model_penalty_lowers_the_imagined_returns_by_the_logged_penalty():
    """Same seed, same models: the penalized imagined pre-update return is the plain one less
    horizon * mean penalty (every imagined episode runs the full horizon on the point mass)."""
    plain, s0 = _ppo_meta_step()
    _, s1 = _ppo_meta_step(model_penalty=2.0, model_type="probabilistic", model_uncertainty="aleatoric")
    _, s2 = _ppo_meta_step(model_penalty=2.0, model_type="probabilistic", model_sample=False)
    assert "imagined/penalty" not in s0 and s1["imagined/penalty"] > 0 and s2["imagined/penalty"] > 0
    _, s3 = _ppo_meta_step(model_type="probabilistic", model_sample=False)
    # the penalty does not change the (mean) trajectories of the first, pre-update collection
    assert s2["imagined/pre_return"] < s3["imagined/pre_return"]
    H = plain.config.imagined_horizon
    assert s3["imagined/pre_return"] - s2["imagined/pre_return"] == pytest.approx(
        H * s2["imagined/penalty"], rel=0.1)


def test_relative_penalty_by_hand():
    u = torch.tensor([0.0, 0.1, 0.2, 0.5])
    # coef 2, reward std 3, u_ref 0.2: 2 * 3 * max(0, u / 0.2 - 1) = 0, 0, 0, 9
    assert torch.allclose(relative_penalty(u, 0.2, 3.0, 2.0), torch.tensor([0.0, 0.0, 0.0, 9.0]))


@pytest.mark.parametrize("ref_on", ["fresh", "fitted"])
def test_relative_penalty_measures_its_reference_on_real_data_and_survives_a_checkpoint(tmp_path, ref_on):
    """u_ref is the chosen quantile of the models' disagreement on real rows: a new batch under
    the models that have not seen it ('fresh') or the newest rows after the fit ('fitted');
    sigma_r is the std of the newest rewards. Imagined steps below u_ref cost nothing, and a
    resumed run restores both."""
    pen_cfg = {"coef": 1.0, "relative": True, "ref_quantile": 0.5, "ref_rows": 100, "ref_on": ref_on}
    algo = MBMPO(pm_config(uncertainty_penalty=pen_cfg), out_dir=tmp_path, console=False)
    pen = algo.plugin("uncertainty_penalty")
    assert pen.reward_cost(ImaginedStep(*[torch.zeros(3, 2)] * 3, torch.zeros(3), torch.ones(3))).eq(0).all()

    def u_of_newest(rows):
        data = algo.dataset.arrays()
        with torch.no_grad():
            return algo.ensemble.predict_with_uncertainty(
                data["obs"][-rows:].float(), data["act"][-rows:].float(), torch.zeros(rows, dtype=torch.long),
                "disagreement")[2].double()

    algo.collect_real()  # the random warm-up: no models to measure with yet
    stats = algo.fit_models()
    if ref_on == "fresh":
        assert pen.u_ref == math.inf
        before = len(algo.dataset)
        algo.collect_real()  # a batch the fitted models have not trained on
        u = u_of_newest(min(100, len(algo.dataset) - before))  # its newest ref_rows rows
        assert pen.u_ref == pytest.approx(float(torch.quantile(u, 0.5)), rel=1e-4)
        before = pen.u_ref
        stats = algo.fit_models()
        assert pen.u_ref == before  # the fit does not move a fresh reference
    else:
        u = u_of_newest(100)
        assert pen.u_ref == pytest.approx(float(torch.quantile(u, 0.5)), rel=1e-4)
    data = algo.dataset.arrays()
    assert pen.reward_std == pytest.approx(float(data["reward"][-100:].double().std(unbiased=False)), rel=1e-6)
    assert stats["imagined/penalty_u_ref"] == pen.u_ref
    cost = pen.reward_cost(ImaginedStep(*[torch.zeros(len(u), 2)] * 3, torch.zeros(len(u)), u))
    assert ((cost == 0) == (u <= pen.u_ref)).all() and cost.max() > 0
    algo.save(tmp_path / "c.pt")
    again = MBMPO.load(tmp_path / "c.pt", console=False)
    assert (again.plugin("uncertainty_penalty").u_ref, again.plugin("uncertainty_penalty").reward_std) == (
        pen.u_ref, pen.reward_std)


@pytest.mark.parametrize("data", ["real", "imagined"])
def test_terminal_value_is_fitted_logged_and_bootstraps_the_last_imagined_reward(tmp_path, data):
    algo = MBMPO(pm_config(terminal_value=data, terminal_value_epochs=3), out_dir=tmp_path, console=False)
    algo.learn(180)
    algo.close()
    row = list(csv.DictReader((tmp_path / "progress.csv").read_text().splitlines()))[-1]
    assert float(row["value/td_loss"]) >= 0 and float(row["time/value_fit_s"]) > 0
    # the point mass's reward is a negative distance: so is the mean value of the states fitted on
    assert float(row["value/mean"]) < 0 and float(row["imagined/terminal_value"]) != 0
    roll = collect(algo.imagined_env(), algo.pre_policy_fn, algo.config.imagined_horizon)
    fitted = algo.task_batch(roll)
    # V = 2 everywhere: the batch is that of the same rollouts ending (terminated) with gamma * 2 more reward
    gamma = algo.config.gamma
    tv = algo.plugin("terminal_value")
    with torch.no_grad():
        for p in tv.net.parameters():
            p.zero_()
        tv.net.net[-1].bias.fill_(2.0 * (1 - gamma))
    const = algo.task_batch(roll)
    algo.plugins.remove(tv)
    rewards, terminated = roll.rewards.clone(), roll.terminated.clone()
    rewards[-1] += gamma * 2.0 * ~roll.terminated[-1]
    terminated[-1] = True
    by_hand = algo.task_batch(dataclasses.replace(roll, rewards=rewards, terminated=terminated))
    assert torch.allclose(const.adv, by_hand.adv, atol=1e-5)
    assert not torch.allclose(fitted.adv, algo.task_batch(roll).adv, atol=1e-3)


def test_fall_hazard_is_labelled_fitted_and_costs_imagined_rewards(tmp_path):
    algo = MBMPO(pm_config(fall_penalty=2.0, fall_window=3, fall_horizon=5, fall_min_drop=0.05), out_dir=tmp_path,
                 console=False)
    algo.learn(180)
    labels = algo.dataset.arrays()["fall_ahead"]
    known = labels[labels.isfinite()]
    assert labels.shape == (180,) and len(known) > 0 and set(known.tolist()) <= {0.0, 1.0}
    row = list(csv.DictReader((tmp_path / "progress.csv").read_text().splitlines()))[-1]
    assert int(float(row["fall/known_rows"])) == len(known)
    assert float(row["fall/rate"]) == pytest.approx(float(known.mean()))
    assert 0 < float(row["imagined/fall_cost"]) < 2.0  # c * p, with 0 < p < 1
    obs = algo.dataset.arrays()["next_obs"][:7]
    with torch.no_grad():
        p = torch.sigmoid(algo.plugin("fall_hazard").net(algo.features(obs).float()))
    assert torch.allclose(algo.plugin("fall_hazard").cost_of(obs), 2.0 * p)
    env = algo.imagined_env()  # the imagined reward is net of the cost
    assert env.cost_keys == ["imagined/fall_cost"]


def test_fit_hazard_learns_a_separable_rate_and_skips_unknown_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 2, generator=g)
    y = (x[:, 0] > 0).double()
    y[x[:, 1] > 1.0] = float("nan")  # unknown rows: left out
    net = MLPValue(2, (16,), "tanh", True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = fit_hazard(net, opt, x, y, epochs=1, generator=g)
    stats = fit_hazard(net, opt, x, y, epochs=20, generator=g)
    assert stats["fall/known_rows"] == int(y.isfinite().sum()) < 2000
    assert stats["fall/rate"] == pytest.approx(float(y[y.isfinite()].mean()))
    assert stats["fall/bce"] < 0.2 < first["fall/bce"]
    p = hazard_cost(net, torch.tensor([[2.0, 0.0], [-2.0, 0.0]]), 1.0)
    assert p[0] > 0.9 and p[1] < 0.1
    none = fit_hazard(net, opt, x[:3], torch.full((3,), float("nan")), epochs=1)
    assert none["fall/known_rows"] == 0 and math.isnan(none["fall/bce"])


def test_focused_starts_come_from_the_largest_reward_drops(tmp_path):
    algo = MBMPO(pm_config(focus_fraction=0.5, focus_quantile=0.01), out_dir=tmp_path, console=False)
    algo.learn(180)  # warm-up + 1 iteration: 180 rows, each with the drop of its real rollout
    data = algo.dataset.arrays()
    assert data["priority"].shape == (180,) and bool((data["priority"] >= 0).all())
    rows = list(csv.DictReader((tmp_path / "progress.csv").read_text().splitlines()))
    assert int(rows[-1]["imagined/focus_rows"]) == len(focus_rows(data["priority"], 0.01)) <= 1
    with torch.no_grad():  # one row stands out: half the starts, spread over the batch, are it
        algo.dataset.columns["priority"].zero_()
        algo.dataset.columns["priority"][7] = 3.0
        algo.dataset.obs[7] = 123.0
    starts = algo.init_states_fn(40, torch.Generator().manual_seed(0))
    hits = (starts == 123.0).all(1)
    assert int(hits.sum()) == 20 and 0 < int(hits[:20].sum()) < 20
    algo.save(tmp_path / "ck.pt")
    algo.close()
    back = MBMPO.load(tmp_path / "ck.pt", console=False)
    assert torch.equal(back.dataset.arrays()["priority"], algo.dataset.arrays()["priority"])
    with torch.no_grad():
        back.dataset.columns["priority"].zero_()  # no drop anywhere: no focus rows, every start uniform
    assert len(focus_rows(back.dataset.arrays()["priority"], 0.01)) == 0
    assert int((back.init_states_fn(400, torch.Generator().manual_seed(0)) == 123.0).all(1).sum()) < 20


@pytest.mark.parametrize("kw,msg", [
    (dict(env_id="Pendulum-v1"), "no reward function registered for env id 'Pendulum-v1'"),
    (dict(env_id="CartPole-v1", learned_reward=True), "a 1-D Box is needed"),
    (dict(num_models=0), "num_models must be > 0"),
    (dict(meta_batch_size=5), "meta_batch_size 5 is not divisible by num_models 2"),
    (dict(outer="adam"), "outer 'adam' is not allowed"),
    (dict(inner_kl_coef=-1.0), "inner_kl_coef must be >= 0 and inner_kl_target > 0, got -1.0"),
    (dict(min_std=-0.1), r"min_std must be a finite number >= 0 \(0 = no floor\), got -0.1"),
    (dict(device="tpu"), r"device 'tpu' is not allowed; use cpu, cuda\[:N\] or auto"),
    (dict(model_epoch_rows=-5), r"model_epoch_rows must be >= 0 \(0 = every training row\), got -5"),
    (dict(model_split="bootstrap"), r"model_split 'bootstrap' is not allowed; use one of \['resample', 'persistent'\]"),
    (dict(model_penalty=-0.5), r"uncertainty_penalty.coef must be a finite number >= 0 \(0 = off\), got -0.5"),
    (dict(model_uncertainty="max"), r"uncertainty_penalty.uncertainty 'max' is not allowed; use one of \['disagreement', 'aleatoric'\]"),
    (dict(model_penalty=1.0, model_uncertainty="aleatoric"), "uncertainty_penalty.uncertainty 'aleatoric' needs model_type 'probabilistic'"),
    (dict(uncertainty_penalty={"relative": True, "ref_quantile": 0.0}), r"uncertainty_penalty.ref_quantile must be in \(0, 1\], got 0.0"),
    (dict(uncertainty_penalty={"relative": True, "ref_rows": 0}), "uncertainty_penalty.ref_rows must be >= 1, got 0"),
    (dict(uncertainty_penalty={"ref_on": "val"}), r"uncertainty_penalty.ref_on 'val' is not allowed; use one of \['fresh', 'fitted'\]"),
    (dict(model_type="gaussian"), r"model_type 'gaussian' is not allowed; use one of \['deterministic', 'probabilistic'\]"),
    (dict(focus_fraction=1.5), r"focus_starts.fraction must be in \[0, 1\], focus_starts.quantile in \(0, 1\] and focus_starts.window >= 1, got 1.5"),
    (dict(focus_fraction=0.2, imagined_init="reset"), "focus_starts.fraction 0.2 needs imagined_init 'dataset', got 'reset'"),
    (dict(fall_penalty=float("nan")), r"fall_hazard.cost must be a finite number >= 0 \(0 = off\) and fall_hazard.min_drop > 0, got nan, 2.0"),
    (dict(fall_penalty=1.0, fall_min_drop=0.0), r"fall_hazard.cost must be .* and fall_hazard.min_drop > 0, got 1.0, 0.0"),
    (dict(fall_window=0), "fall_hazard.window must be > 0"),
    (dict(terminal_value="yes"), r"terminal_value.fit_on 'yes' is not allowed; use one of \['off', 'real', 'imagined'\]"),
    (dict(terminal_value={"fit_on": "real", "epoch": 2}), "unknown config key 'epoch'"),
])
def test_bad_input_is_named(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        MBMPO(pm_config(**kw), console=False)


def test_nan_model_and_mismatched_checkpoint(tmp_path):
    algo = MBMPO(pm_config(), out_dir=tmp_path / "run", console=False)
    algo.learn(120)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    good = ckpt.read_bytes()
    with torch.no_grad():
        algo.ensemble.models[1][0].bias.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"dynamics model\(s\) \[1\] predicted NaN"):
        algo.meta_step()
    assert ckpt.read_bytes() == good
    with pytest.raises(CheckpointError, match="does not match"):
        MBMPO.load(ckpt, console=False, model_hidden_sizes=[8])
    with pytest.raises(CheckpointError, match="does not match"):
        MBMPO.load(ckpt, console=False, model_type="probabilistic")
    assert ckpt.read_bytes() == good


def test_predict_names_a_wrong_observation_size():
    algo = MBMPO(pm_config(), console=False)
    full = torch.zeros(algo.obs_dim)
    assert algo.predict(full).shape == algo.action_space.shape
    with pytest.raises(ValueError, match=f"observation has {algo.obs_dim - 1} entries, this policy takes {algo.obs_dim}"):
        algo.predict(full[1:])


@pytest.mark.parametrize("native", [False, True])
def test_bf16_options_warn_on_a_cpu_that_emulates_bf16(monkeypatch, native):
    import warnings

    import mbmpo.algorithm as mod

    monkeypatch.setattr(mod, "cpu_bf16_native", lambda: native)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        MBMPO(pm_config(imagined_precision="bfloat16"), console=False)
        MBMPO(pm_config(), console=False)
    slow = [w for w in seen if "without bf16 instructions" in str(w.message)]
    assert len(slow) == (0 if native else 1)
    assert native or "imagined_precision bfloat16" in str(slow[0].message)


def test_evaluation_never_changes_training():
    """The protocol evaluates every label alike (compare.py may set eval_every and
    eval_episodes); the training run must not depend on either, adapted evaluations included."""
    runs = [MBMPO(pm_config(**kw), console=False) for kw in
            (dict(), dict(eval_every=60, eval_episodes=3), dict(eval_every=90, eval_episodes=6, eval_adapted=True))]
    for r in runs:
        r.learn(240)
    assert all(r.num_timesteps == 240 for r in runs)
    assert torch.equal(flat(runs[0]), flat(runs[1])) and torch.equal(flat(runs[0]), flat(runs[2]))
    assert all(torch.equal(a, b) for a, b in zip(runs[0].ensemble.state_dict().values(),
                                                 runs[2].ensemble.state_dict().values()))
