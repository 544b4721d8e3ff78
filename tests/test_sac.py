"""SAC: squashed log-prob and Polyak maths, one update against hand-written losses, replay data
at time limits and terminations, determinism, resume equality (replay buffer included), bad
input, the CLI, and a small learning problem."""

import copy
import csv

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mbmpo import ALGORITHMS, SAC, SACConfig
from mbmpo.baselines.sac import polyak_update
from mbmpo.errors import ConfigError
from policies.sac import SquashedGaussianActor, squashed_log_prob, squashed_sample

PM = dict(env_id="mbmpo_test/PointMass-v0", hidden_sizes=(32, 32), value_hidden_sizes=(32, 32),
          batch_size=64, learning_starts=100, num_steps=150, eval_every=0, eval_episodes=4,
          buffer_size=10_000)


class BoxChain(gym.Env):
    """x += 1 per step, terminated at x == 4 (reward 1); actions ignored."""

    observation_space = gym.spaces.Box(0.0, 10.0, (1,), np.float32)
    action_space = gym.spaces.Box(-3.0, 5.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = 0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x += 1
        term = self.x >= 4
        return np.array([self.x], np.float32), float(term), term, False, {}


if "mbmpo_test/BoxChain-v0" not in gym.registry:
    gym.register("mbmpo_test/BoxChain-v0", entry_point=BoxChain, max_episode_steps=6)
    gym.register("mbmpo_test/BoxChainShort-v0", entry_point=BoxChain, max_episode_steps=3)


def sac(**kw):
    return SAC(SACConfig(**{**PM, **kw}), console=False)


def all_params(algo):
    return torch.cat([p.detach().flatten() for p in
                      (*algo.actor.parameters(), *algo.critic.parameters(),
                       *algo.critic_target.parameters(), algo.log_alpha)])


def test_squashed_log_prob_matches_hand_computation():
    torch.manual_seed(0)
    mean, log_std = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64) * 0.5
    noise = torch.randn(64, 3, dtype=torch.float64)
    act, logp = squashed_sample(mean, log_std, noise)
    u = mean + log_std.exp() * noise
    # change of variables a = tanh(u): log pi(a) = log N(u) - sum log |da/du|, da/du = 1 - tanh(u)^2
    hand = (torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1)
            - torch.log(1 - torch.tanh(u) ** 2).sum(-1))
    assert torch.allclose(act, torch.tanh(u))
    assert torch.allclose(logp, hand, rtol=1e-10, atol=1e-10)
    assert torch.allclose(squashed_log_prob(u, mean, log_std), hand, rtol=1e-10, atol=1e-10)
    # saturated samples: 1 - tanh(u)^2 underflows to 0 (log = -inf); the stable form stays finite
    big = torch.tensor([[30.0, -30.0]])
    naive = torch.log(1 - torch.tanh(big) ** 2).sum(-1)
    stable = squashed_log_prob(big, torch.zeros(1, 2), torch.zeros(1, 2))
    assert torch.isinf(naive).all() and torch.isfinite(stable).all()
    # log N(+-30; 0, 1) = -log(2 pi)/2 - 450 each; log(1 - tanh(30)^2) = log 4 - 60 to float precision
    assert stable.item() == pytest.approx(-np.log(2 * np.pi) - 900.0 + 120.0 - 4 * np.log(2))
    # the actor draws its noise from the generator it is given
    actor = SquashedGaussianActor(4, 3, (16,))
    obs = torch.randn(5, 4)
    a1, lp1 = actor.sample(obs, torch.Generator().manual_seed(3))
    m, ls = actor(obs)
    a2, lp2 = squashed_sample(m, ls, torch.randn(5, 3, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(a1, a2) and torch.equal(lp1, lp2) and (a1.abs() <= 1).all()
    assert torch.allclose(actor.act(obs, torch.Generator().manual_seed(3)), a1)  # acting: no log-prob


def test_polyak_update_matches_hand_computation():
    torch.manual_seed(0)
    online = [torch.randn(3, 4), torch.randn(2, 1, 5)]
    target = [torch.randn(3, 4), torch.randn(2, 1, 5)]
    want = [0.95 * t + 0.05 * o for t, o in zip(target, online)]
    polyak_update(target, online, 0.05)
    assert all(torch.allclose(t, w, atol=1e-7) for t, w in zip(target, want))
    # inside SAC: one update moves each target tau of the way to the updated critic
    algo = sac(tau=0.1)
    algo.learn(150)
    before = [p.detach().clone() for p in algo.critic_target.parameters()]
    algo.train(1)
    for b, t, o in zip(before, algo.critic_target.parameters(), algo.critic.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-7)
    algo.close()


def hand_q(algo, module, obs, act):
    """Each critic as a plain MLP, written out layer by layer: ``[K, B]``."""
    out = []
    for k in range(algo.config.num_critics):
        h = torch.cat([obs, act], -1)
        for i, (w, b) in enumerate(zip(module.weights, module.biases)):
            h = h @ w[k] + b[k, 0]
            if i < len(module.weights) - 1:
                h = F.relu(h)
        out.append(h[:, 0])
    return torch.stack(out)


def hand_squashed(algo, obs, noise):
    mean, log_std = algo.actor.net(obs).chunk(2, -1)
    log_std = log_std.clamp(-20, 2)
    u = mean + log_std.exp() * noise
    logp = (torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1)
            - torch.log(1 - torch.tanh(u) ** 2).sum(-1))
    return torch.tanh(u), logp


def test_one_update_follows_the_paper_losses():
    """Losses and every gradient of one update against the SAC paper's objectives written out
    by hand (eqs. 5, 7 and 18 with clipped double-Q), on a batch with terminal rows."""
    algo = sac(init_alpha=0.3)
    algo.learn(150)
    torch.manual_seed(1)
    b = 32
    obs, next_obs = torch.randn(b, 1), torch.randn(b, 1)
    act, reward = torch.rand(b, 1) * 2 - 1, torch.randn(b)
    term = torch.arange(b) % 3 == 0
    with torch.no_grad():  # make the targets differ from the online critics
        for p in algo.critic_target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    target = copy.deepcopy(algo.critic_target)  # the update moves the targets afterwards
    gen_state = algo.generator.get_state()
    params = {"actor": list(algo.actor.parameters()), "critic": list(algo.critic.parameters())}
    before = {k: [p.detach().clone() for p in v] for k, v in params.items()}
    alpha_before = algo.log_alpha.detach().clone()
    grads = {}
    real_step = algo.optimizer.step

    def step(*a, **kw):
        grads.update({k: [p.grad.clone() for p in v] for k, v in params.items()})
        grads["log_alpha"] = algo.log_alpha.grad.clone()
        return real_step(*a, **kw)

    algo.optimizer.step = step
    stats = algo._update(obs, act, reward, next_obs, 0.99 * (~term).float())
    # the same draws, by hand, at the parameters before the update
    gen = torch.Generator().manual_seed(0)
    gen.set_state(gen_state)
    noise_next, noise = torch.randn(b, 1, generator=gen), torch.randn(b, 1, generator=gen)
    with torch.no_grad():
        for p, v in zip(params["actor"] + params["critic"], before["actor"] + before["critic"]):
            p.copy_(v)
        algo.log_alpha.copy_(alpha_before)
    alpha = alpha_before.exp()
    with torch.no_grad():
        a2, logp2 = hand_squashed(algo, next_obs, noise_next)
        q_next = hand_q(algo, target, next_obs, a2).min(0).values
        y = reward + 0.99 * (1 - term.float()) * (q_next - alpha * logp2)
    critic_loss = 0.5 * sum(((q - y) ** 2).mean() for q in hand_q(algo, algo.critic, obs, act))
    a_pi, logp = hand_squashed(algo, obs, noise)
    actor_loss = (alpha * logp - hand_q(algo, algo.critic, obs, a_pi).min(0).values).mean()
    log_alpha = alpha_before.clone().requires_grad_()
    alpha_loss = -(log_alpha * (logp.detach() - 1.0)).mean()  # target entropy -act_dim = -1
    got = stats.tolist()
    assert got[:3] == pytest.approx([critic_loss.item(), actor_loss.item(), alpha_loss.item()], rel=1e-5)
    assert got[3] == pytest.approx(alpha.item()) and got[4] == pytest.approx(-logp.mean().item(), rel=1e-5)
    # each loss differentiated only for its own parameters
    want_critic = torch.autograd.grad(critic_loss, params["critic"])
    want_actor = torch.autograd.grad(actor_loss, params["actor"])
    for g, w in zip(grads["critic"], want_critic):  # no actor-loss gradient reaches the critics
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)
    for g, w in zip(grads["actor"], want_actor):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)
    assert torch.allclose(grads["log_alpha"], torch.autograd.grad(alpha_loss, log_alpha)[0])
    algo.close()


def test_replay_rows_at_time_limits_and_terminations():
    # PointMass never terminates: rows at the 30-step limit keep the final observation, unterminated
    algo = sac(learning_starts=300)
    algo.learn(300)
    rows = algo.replay.arrays()
    assert len(algo.replay) == 300 and not rows["terminated"].any()
    want = (rows["obs"] + 0.3 * rows["act"]).clamp(-10, 10)
    assert torch.allclose(rows["next_obs"], want, atol=1e-5)  # no row holds a reset observation
    algo.close()
    # BoxChain terminates at step 4 (before its 6-step limit): only those rows are terminal;
    # with a 3-step limit every episode is truncated and no row is terminal
    for env_id, terminal in (("mbmpo_test/BoxChain-v0", True), ("mbmpo_test/BoxChainShort-v0", False)):
        algo = sac(env_id=env_id, num_steps=12, learning_starts=12)
        algo.learn(12)
        rows = algo.replay.arrays()
        assert torch.equal(rows["terminated"], (rows["next_obs"][:, 0] == 4) & terminal)
        assert torch.equal(rows["next_obs"], rows["obs"] + 1)
        assert (rows["act"].abs() <= 1).all()  # stored in [-1, 1]; the env rescales to [-3, 5]
        algo.close()


def test_update_schedules_vector_envs_and_predict():
    # SB3 semantics: after learning_starts, gradient_steps updates every train_freq vector steps
    algo = sac(num_envs=2, num_steps=60, train_freq=4, gradient_steps=3, learning_starts=40)
    algo.learn(120)  # 60 vector steps x 2 envs; updates after the 5 calls past 40 steps
    assert algo.num_timesteps == 120 and len(algo.replay) == 120
    assert algo.num_updates == 3 * sum(1 for t in range(8, 121, 8) if t > 40)
    algo.close()
    algo = sac(num_envs=2, utd_ratio=2.5, learning_starts=100)
    algo.learn(300)
    assert algo.num_updates == int(2.5 * (300 - 100))
    algo.close()
    algo = sac(env_id="Pendulum-v1", num_steps=50, learning_starts=50)
    algo.learn(50)
    a = algo.predict(np.ones((7, 3), np.float32), deterministic=False)
    assert a.shape == (7, 1) and np.abs(a).max() <= 2.0 and np.abs(a).max() > 1.0  # bounds [-2, 2]
    assert algo.predict(np.ones(3, np.float32)).shape == (1,)
    algo.close()


def test_seeded_runs_are_identical_and_seeds_differ():
    runs = [sac(seed=s) for s in (0, 0, 1)]
    for r in runs:
        r.learn(450)
    assert torch.equal(all_params(runs[0]), all_params(runs[1]))
    assert not torch.equal(all_params(runs[0]), all_params(runs[2]))
    assert torch.equal(runs[0].replay.arrays()["act"], runs[1].replay.arrays()["act"])
    for r in runs:
        r.close()


def test_resume_continues_exactly_with_the_replay_buffer(tmp_path):
    # the buffer (250 rows) wraps before the checkpoint at 300 steps and again after it
    kw = dict(buffer_size=250, eval_every=300, checkpoint_every_steps=300)
    whole = sac(**kw)
    whole.learn(600)
    run = tmp_path / "run"
    half = SAC(SACConfig(**{**PM, **kw}), out_dir=run, console=False)
    half.learn(300)
    half.close()
    resumed = SAC.load(run, out_dir=run, console=False)
    assert resumed.num_timesteps == 300 and len(resumed.replay) == 250
    resumed.learn(600)
    assert torch.equal(all_params(whole), all_params(resumed))
    assert resumed.num_updates == whole.num_updates == 500
    for k, v in whole.replay.arrays().items():
        assert torch.equal(v, resumed.replay.arrays()[k]), k
    opt_w, opt_r = whole.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_w[i]["exp_avg_sq"], opt_r[i]["exp_avg_sq"]) for i in opt_w)
    resumed.close()
    whole.close()
    rows = list(csv.DictReader((run / "progress.csv").open()))
    assert [int(r["real_steps"]) for r in rows] == [150, 300, 450, 600]
    for key in ("train/episode_return", "eval_return_mean", "loss/actor", "loss/critic", "train/alpha",
                "train/entropy", "time/sps", "time/updates_per_s"):
        assert rows[-1][key], key


def test_bfloat16_updates_run_the_hidden_layers_in_bf16_and_the_rest_in_float32():
    algos = [sac(seed=3, update_precision=p) for p in ("float32", "bfloat16", "bfloat16")]
    for a in algos:
        a.learn(150)  # 50 updates each, from the same start
    fp32, bf16, again = algos
    assert torch.equal(all_params(bf16), all_params(again))  # seeded bf16 runs repeat exactly
    assert not torch.equal(all_params(fp32), all_params(bf16))
    obs, act = torch.randn(64, 1), torch.rand(64, 1) * 2 - 1
    with bf16._precision():
        assert torch.is_autocast_enabled("cpu")
        q, (mean, log_std) = bf16.critic(obs, act), bf16.actor(obs)
    assert q.dtype == mean.dtype == log_std.dtype == torch.float32
    q32 = bf16.critic(obs, act)
    # bf16 hidden layers: close to the float32 forward (~0.4% per product), but not equal to it
    assert not torch.equal(q, q32) and torch.allclose(q, q32, rtol=0.03, atol=0.03)
    with fp32._precision():
        assert not torch.is_autocast_enabled("cpu")
    for a in algos:
        a.close()


@pytest.mark.parametrize("native", [False, True])
def test_bfloat16_warns_on_a_cpu_that_emulates_it(monkeypatch, native):
    import warnings

    import mbmpo.algorithm as mod

    monkeypatch.setattr(mod, "cpu_bf16_native", lambda: native)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sac(update_precision="bfloat16").close()
        sac().close()
    slow = [str(w.message) for w in seen if "without bf16 instructions" in str(w.message)]
    assert len(slow) == (0 if native else 1)
    assert native or "update_precision bfloat16" in slow[0]


def test_bad_input_gives_one_clear_error():
    with pytest.raises(ConfigError, match=r"Discrete\(2\) is not supported here: a 1-D Box is needed") as err:
        SAC(SACConfig(env_id="CartPole-v1"), console=False)
    assert "\n" not in str(err.value)
    for field, value, msg in [("tau", 1.5, "tau must be in"), ("utd_ratio", 0.0, "utd_ratio must be > 0"),
                              ("normalize_obs", True, "not supported by sac"),
                              ("num_critics", 1, "num_critics must be >= 2"),
                              ("train_freq", 7, "must be a multiple of train_freq"),
                              ("update_precision", "float16", r"update_precision 'float16' is not allowed; "
                                                              r"use one of \['float32', 'bfloat16'\]")]:
        with pytest.raises(ConfigError, match=msg):
            SACConfig(**{field: value}).validate()


def test_cli_trains_sac_from_the_algorithm_map(tmp_path):
    from scripts.train import main

    assert ALGORITHMS["sac"] == (SAC, SACConfig)
    out = tmp_path / "cli"
    main(["--algo", "sac", "--env", "mbmpo_test/PointMass-v0", "--total-steps", "150", "--out", str(out),
          "--num-steps", "150", "--learning-starts", "100", "--hidden-sizes", "16",
          "--value-hidden-sizes", "16", "--eval-episodes", "2"])
    assert (out / "checkpoints" / "last.pt").is_file()
    with pytest.raises(ConfigError, match="a 1-D Box is needed"):
        main(["--algo", "sac", "--env", "CartPole-v1", "--out", str(tmp_path / "cp")])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    algo = sac(device="cuda")
    algo.learn(150)
    assert algo.actor.net[0].weight.is_cuda and np.isfinite(algo.evaluate(2)[0]).all()
    algo.close()


def test_pendulum_is_learned():
    # about 15 s on one thread; random actions score about -1200, a learned swing-up above -200
    algo = SAC(SACConfig(env_id="Pendulum-v1", hidden_sizes=(64, 64), value_hidden_sizes=(64, 64),
                         batch_size=128, learning_rate=1e-3, learning_starts=1000, num_steps=1000,
                         eval_every=0, buffer_size=10_000, seed=0), console=False)
    before = algo.evaluate(10)[0].mean()
    algo.learn(5000)
    after = algo.evaluate(10)[0].mean()
    algo.close()
    assert after > -400 > before, (before, after)
