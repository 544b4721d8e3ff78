"""DPPO: the maths as pure functions, recurrent windows, and real multi-process gloo runs on
loopback (a spawned pair of workers, the train.py launcher with a killed worker, torchrun)."""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mbmpo import distributed
from mbmpo.baselines.dppo import DPPO, DPPOConfig, adapt_kl_coef_per_worker
from mbmpo.baselines.dppo.batch import Batch
from mbmpo.buffers import from_windows, to_windows
from mbmpo.checkpoint import load_checkpoint
from mbmpo.config import load_config
from mbmpo.errors import ConfigError
from mbmpo.kl_penalty import adapt_kl_coef
from mbmpo.normalization import RunningMeanStd, merge_new_moments, pack_new_moments
from mbmpo.returns import k_step_returns
from policies.distributions import DiagGaussian
from policies.recurrent import RecurrentCore
from tests.procs import HAVE_PROC, running

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_sizes=(16,), value_hidden_sizes=(16,), eval_every=0, eval_episodes=3)


# ----- pure pieces --------------------------------------------------------------------------
def test_k_step_returns_hand_computation():
    # env 0: terminated at t=1, truncated at t=4 (bootstraps from V(final obs) = 9);
    # env 1: no episode end, V = 1 everywhere. Windows of K=3: [0, 1, 2], [3, 4, 5]; gamma = 0.5.
    g = 0.5
    r = torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [4.0, 1.0], [5.0, 1.0], [6.0, 1.0]])
    v = torch.tensor([[0.1, 1.0], [0.2, 1.0], [0.3, 1.0], [0.4, 1.0], [0.5, 1.0], [0.6, 1.0]])
    nv = torch.tensor([[0.2, 1.0], [99.0, 1.0], [0.4, 1.0], [0.5, 1.0], [9.0, 1.0], [0.7, 1.0]])
    term = torch.zeros(6, 2, dtype=torch.bool)
    term[1, 0] = True
    trunc = torch.zeros(6, 2, dtype=torch.bool)
    trunc[4, 0] = True
    adv, ret = k_step_returns(r, v, nv, term, trunc, g, window=3)
    r0 = [1 + g * 2, 2.0, 3 + g * 0.4, 4 + g * (5 + g * 9.0), 5 + g * 9.0, 6 + g * 0.7]
    r1 = [1 + g * (1 + g * (1 + g * 1.0)), 1 + g * (1 + g * 1.0), 1 + g * 1.0] * 2
    expected = torch.tensor([r0, r1]).T
    assert torch.allclose(ret, expected)
    assert torch.allclose(adv, expected - v)
    # lambda < 1 is GAE inside each window: window end and episode end still cut
    adv_l, _ = k_step_returns(r, v, nv, term, trunc, g, window=3, lam=0.5)
    d5 = 6 + g * 0.7 - 0.6
    assert torch.isclose(adv_l[5, 0], torch.tensor(d5))
    assert torch.isclose(adv_l[4, 0], torch.tensor(5 + g * 9.0 - 0.5))  # truncated: no carry
    with pytest.raises(ValueError):
        k_step_returns(r, v, nv, term, trunc, g, window=0)


def test_kl_coefficient_rule_on_synthetic_kls():
    t = 0.01
    assert adapt_kl_coef(1.0, 0.03, t) == 1.5  # > beta_high * target
    assert adapt_kl_coef(1.0, 0.004, t) == pytest.approx(1 / 1.5)  # < beta_low * target
    assert adapt_kl_coef(1.0, 0.01, t) == 1.0
    assert adapt_kl_coef(1.0, 0.02, t) == 1.0 and adapt_kl_coef(1.0, 0.005, t) == 1.0  # strict
    lam, trace = 1.0, []
    for kl in (0.05, 0.05, 0.001, 0.015):
        lam = adapt_kl_coef(lam, kl, t)
        trace.append(lam)
    assert trace == pytest.approx([1.5, 2.25, 1.5, 1.5])
    # per-worker rule: alpha_hat = 1 + 0.5 / 4; two votes up, one down, one neutral
    assert adapt_kl_coef_per_worker(1.0, [0.05, 0.05, 0.001, 0.01], t) == pytest.approx(1.125)
    assert adapt_kl_coef_per_worker(2.0, [0.03], t) == adapt_kl_coef(2.0, 0.03, t) == 3.0
    # W workers all above target multiply lambda by (1 + (alpha - 1) / W)^W ~ alpha
    assert adapt_kl_coef_per_worker(1.0, [1.0] * 8, t, alpha=1.5) == pytest.approx((1 + 0.5 / 8) ** 8)
    assert adapt_kl_coef(1.0, 0.3, t, alpha=2.0, beta_high=10.0) == 2.0


def _merged_workers(base_data, chunks_per_worker):
    base = RunningMeanStd(base_data.shape[1])
    base.update(torch.as_tensor(base_data))
    snap = {k: v.clone() for k, v in base.state_dict().items()}
    workers = []
    for chunks in chunks_per_worker:
        w = RunningMeanStd(base_data.shape[1])
        w.load_state_dict(snap)
        for c in chunks:  # streaming local updates, as during collection
            w.update(torch.as_tensor(c))
        workers.append(w)
    summed = sum(pack_new_moments([(w, snap)]) for w in workers)  # what one all_reduce gives
    for w in workers:
        merge_new_moments([(w, snap)], summed)
    return workers


def test_merged_worker_statistics_equal_statistics_of_concatenated_data():
    rng = np.random.default_rng(0)
    base = rng.normal(1e4, 1.0, (500, 3))  # large mean: the shifted sums must not cancel
    chunks = [[rng.normal(1e4 + 2, 3.0, (n, 3)) for n in (7, 40, 1)],
              [rng.normal(1e4 - 1, 0.5, (n, 3)) for n in (100,)],
              [rng.normal(1e4, 2.0, (n, 3)) for n in (13, 13)]]
    workers = _merged_workers(base, chunks)
    every = np.concatenate([base] + [c for cs in chunks for c in cs])
    for w in workers:
        assert torch.equal(w.mean, workers[0].mean) and torch.equal(w.var, workers[0].var)
        assert w.count.item() == len(every)
    assert np.allclose(workers[0].mean.numpy(), every.mean(0), rtol=0, atol=1e-9)
    assert np.allclose(workers[0].var.numpy(), every.var(0), rtol=1e-9)
    # a worker without new samples (e.g. reward stats off) contributes nothing
    idle = _merged_workers(base, [[], chunks[1]])
    both = np.concatenate([base, chunks[1][0]])
    assert np.allclose(idle[0].var.numpy(), both.var(0), rtol=1e-9)


def test_window_layout_round_trip_and_window_starts():
    x = torch.arange(12 * 2).reshape(12, 2)  # [T=12, N=2]
    w = to_windows(x, 4)  # [K=4, S=3*2]
    assert w.shape == (4, 6)
    assert w[:, 0].tolist() == [0, 2, 4, 6]  # window 0, env 0
    assert w[:, 3].tolist() == [9, 11, 13, 15]  # window 1, env 1
    assert torch.equal(x[::4].reshape(-1), w[0])  # recorded state at each window start
    assert torch.equal(from_windows(w, 2), x)
    with pytest.raises(ValueError):
        to_windows(x, 5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recurrent_core_resets_at_episode_starts_and_carries_state_otherwise(cell):
    torch.manual_seed(0)
    core = RecurrentCore(3, 8, cell)
    x = torch.randn(6, 2, 3)
    resets = torch.zeros(6, 2, dtype=torch.bool)
    resets[3, 0] = True  # env 0 starts a new episode at step 3
    h0 = torch.randn(2, core.state_size)
    out, states = core.unroll(x, h0, resets)
    assert out.shape == (6, 2, 8) and states.shape == (6, 2, core.state_size)
    fresh, _ = core.unroll(x[3:, :1], core.initial_state(1))
    assert torch.allclose(out[3:, 0], fresh[:, 0], atol=1e-6)  # nothing leaks over the reset
    out2, _ = core.unroll(x, h0 + 1.0, resets)
    assert torch.allclose(out2[3:, 0], out[3:, 0], atol=1e-6)
    assert not torch.allclose(out2[5, 1], out[5, 1])  # no reset: the state is carried
    # one step at a time equals the unroll
    h, steps = h0, []
    for k in range(6):
        o, h = core.step(x[k], h, resets[k])
        steps.append(o)
    assert torch.allclose(torch.stack(steps), out)


def test_gru_window_backward_matches_autograd_through_the_cell():
    # the hand-written BPTT of GRUWindow against autograd through nn.GRUCell stepped one
    # step at a time, with resets inside the window and at its first step
    torch.manual_seed(0)
    core = RecurrentCore(3, 5, "gru").double()
    x = torch.randn(7, 4, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    resets = torch.zeros(7, 4, dtype=torch.bool)
    resets[0, 1] = resets[3, 0] = resets[4, 0] = resets[6, 2] = True
    out, states = core.unroll(x, h0, resets)
    assert torch.equal(out, states)
    ref, h = [], h0
    for k in range(7):  # the cell stepped under autograd, through RecurrentCore.step
        o, h = core.step(x[k], h, resets[k])
        ref.append(o)
    ref = torch.stack(ref)
    assert torch.allclose(out, ref, atol=1e-12)
    g = torch.randn_like(out)
    inputs = [x, h0, *core.parameters()]
    for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        assert torch.allclose(a, b, atol=1e-10)
    assert torch.autograd.gradcheck(lambda x, h0: core.unroll(x, h0, resets)[0], (x, h0))


def small_cfg(**kw):
    base = dict(env_id="mbmpo_test/PointMass-v0", num_envs=4, num_steps=120, window_length=10,
                gamma=0.95, gae_lambda=0.95, num_minibatches=4, learning_rate=3e-3, **TINY)
    base.update(kw)
    return DPPOConfig(**base)


def test_recurrent_windows_reproduce_collection_and_truncate_bptt():
    # 30-step episodes, windows of 8 over 40 steps: resets fall inside windows
    algo = DPPO(small_cfg(policy_type="gru", rnn_size=8, num_envs=2, num_steps=40, window_length=8),
                console=False)
    first, _ = algo._collect()
    second, _ = algo._collect()
    for ro in (first, second):
        st, starts = ro.extras["pi_state"], ro.timesteps == 0
        assert starts.any() and (~starts).any()
        assert torch.all(st[starts] == 0)  # reset at episode starts
        assert torch.all(st[~starts].abs().sum(-1) > 0)
        # carried: unrolling from the first recorded state with the resets reproduces every
        # later recorded state, across window boundaries
        _, after = algo.policy.core.unroll(ro.obs, st[0], starts)
        carry = ~starts[1:]
        assert torch.allclose(after[:-1][carry], st[1:][carry], atol=1e-6)
    # across iterations too: the second rollout starts from the first one's final state
    _, after = algo.policy.core.unroll(first.obs, first.extras["pi_state"][0], first.timesteps == 0)
    keep = second.timesteps[0] != 0
    assert keep.any() and torch.allclose(second.extras["pi_state"][0][keep], after[-1][keep], atol=1e-6)
    # training windows start from the recorded states: log-probs at theta_old match the
    # collection (ratio 1), and no gradient reaches earlier windows (truncated BPTT)
    adv, ret = algo.compute_advantages(first)
    b = algo._make_batch(first, adv, ret)
    dist = algo._dist(b)
    assert torch.allclose(dist.log_prob(b.act), b.logp, atol=1e-5)
    obs = b.obs.clone().requires_grad_(True)
    algo.policy(obs, b.pi_h0, b.resets).mean[:, 2].sum().backward()  # sequence 2: window 1, env 0
    assert obs.grad[:, 2].abs().sum() > 0 and obs.grad[:, 0].abs().sum() == 0  # window 0, env 0
    algo.close()


@pytest.mark.parametrize("policy_type", ["mlp", "gru"])
def test_dppo_learns_point_mass(policy_type):
    algo = DPPO(small_cfg(policy_type=policy_type, rnn_size=16, policy_iters=5, value_iters=5),
                console=False)
    before = algo.evaluate(8)[0].mean()
    algo.learn(3600)
    after = algo.evaluate(8)[0].mean()
    algo.close()
    assert after > -8.0 > before, (before, after)


def test_seeded_single_worker_runs_are_identical_and_save_load_round_trip(tmp_path):
    a, b = DPPO(small_cfg(), console=False), DPPO(small_cfg(), console=False)
    for x in (a, b):
        x.learn(960)
    assert all(torch.equal(p, q) for p, q in zip(a.policy.parameters(), b.policy.parameters()))
    a.save(tmp_path / "a.pt")
    c = DPPO.load(tmp_path / "a.pt", console=False)
    assert c.kl_coef == a.kl_coef and c.num_timesteps == 960
    obs = np.zeros((3, 1), np.float32)
    assert np.array_equal(c.predict(obs), a.predict(obs))
    for x in (a, b, c):
        x.close()
    r = DPPO(small_cfg(policy_type="lstm", rnn_size=4), console=False)
    act, state = r.predict(np.zeros(1, np.float32))
    act2, _ = r.predict(np.zeros(1, np.float32), state=state)
    assert act.shape == (1,) and state.shape == (1, 8) and not np.array_equal(act, act2)
    r.close()


def test_kl_stop_ends_the_policy_steps_and_lambda_follows_the_kl():
    # KL_target so small that the first step's KL is far above 4 KL_target: one step only
    algo = DPPO(small_cfg(kl_target=1e-7, learning_rate=0.05), console=False)
    algo.total_steps = 10**6
    ro, _ = algo._collect()
    algo.generator.manual_seed(1)  # the same minibatch orders as `free` below
    stats = algo.update(ro, *algo.compute_advantages(ro))
    assert stats["train/policy_steps"] == 1 and stats["train/policy_stopped_early"] == 1
    assert stats["_kl_local"] > 4e-7
    free = DPPO(small_cfg(kl_target=1e-7, learning_rate=0.05, kl_stop_factor=0.0), console=False)
    free.total_steps = 10**6
    calls = []
    reduce = free._all_reduce
    free._all_reduce = lambda t: calls.append(t.numel()) or reduce(t)
    free.generator.manual_seed(1)
    stats = free.update(ro, *free.compute_advantages(ro))
    assert stats["train/policy_steps"] == 10 * 4  # M sub-iterations x minibatches
    # the j-th policy and value steps share one all_reduce: 40, not 80, collectives (gradients,
    # 3 + 1 extras, the policy and value weights, the count of workers still sending policy steps)
    n_params = sum(p.numel() for p in [*free.policy_params, *free.value_params])
    assert calls == [n_params + 3 + 1 + 2 + 1] * 40
    # the value fit does not depend on the policy steps: the same after 1 or 40 of them
    assert all(torch.equal(p, q) for p, q in zip(algo.value_params, free.value_params))
    assert not all(torch.equal(p, q) for p, q in zip(algo.policy_params, free.policy_params))
    # a tiny learning rate keeps KL < beta_low KL_target: lambda / alpha per iteration (W = 1)
    slow = DPPO(small_cfg(learning_rate=1e-7), console=False)
    slow.learn(960)
    assert slow.kl_coef == pytest.approx(1 / 1.5**2)
    for x in (algo, free, slow):
        x.close()


def test_loss_hinge_term_on_a_hand_made_batch():
    # 5 states, 1-D actions; pi_theta is the policy as built (std 1, init_log_std 0), pi_old a
    # Gaussian with hand-picked means and std 0.9, so KL[pi_old || pi_theta] is known in closed form
    xi, lam, target = 1000.0, 0.7, 0.01
    algo = DPPO(small_cfg(kl_hinge_coef=xi, kl_coef=lam, kl_target=target), console=False)
    obs = torch.tensor([[0.0], [1.0], [2.0], [-1.0], [3.0]])
    act = torch.tensor([[0.5], [-0.2], [1.0], [0.0], [0.3]])
    adv = torch.tensor([1.0, -0.5, 2.0, 0.25, -1.0])
    with torch.no_grad():
        mu = algo.policy(obs).mean  # [5, 1]
    sigma_old = 0.9
    idx = torch.arange(5)

    def loss_for(shift: float) -> tuple[float, float, float]:
        mu_old = mu + shift * torch.tensor([[1.0], [-1.0], [0.5], [2.0], [-0.5]])
        old = DiagGaussian(mu_old, torch.full_like(mu_old, math.log(sigma_old)))
        logp_old = old.log_prob(act)
        b = Batch(obs, act, logp_old, adv, torch.zeros(5), torch.zeros(5), None, None, None)
        loss, ex = algo._policy_loss(b, old, idx)
        # by hand: Gaussian log-densities and KL[N(mu_old, 0.9) || N(mu, 1)] per state
        m, m0, a = mu[:, 0].double(), mu_old[:, 0].double(), act[:, 0].double()
        logp_new = -0.5 * (a - m) ** 2 - 0.5 * math.log(2 * math.pi)
        logp_o = -0.5 * ((a - m0) / sigma_old) ** 2 - math.log(sigma_old) - 0.5 * math.log(2 * math.pi)
        surrogate = ((logp_new - logp_o).exp() * adv.double()).mean().item()
        kl = (math.log(1 / sigma_old) + (sigma_old**2 + (m0 - m) ** 2) / 2 - 0.5).mean().item()
        assert ex[0].item() == pytest.approx(kl, rel=1e-5) and ex[1].item() == pytest.approx(surrogate, rel=1e-5)
        return loss.item(), kl, surrogate

    for shift, hinge_on in ((0.4, True), (0.0, False)):
        loss, kl, surrogate = loss_for(shift)
        hinge = xi * max(0.0, kl - 2 * target) ** 2
        assert (hinge > 1.0) == hinge_on and (kl > 2 * target) == hinge_on  # KL 0.11 or 0.010
        assert loss == pytest.approx(-surrogate + lam * kl + hinge, rel=1e-5)
        algo.config.kl_hinge_coef = 0.0  # the hinge term alone: loss(xi) - loss(0)
        without, _, _ = loss_for(shift)
        algo.config.kl_hinge_coef = xi
        assert loss - without == pytest.approx(hinge, rel=1e-4, abs=1e-6)
    algo.close()


def test_bad_config_is_rejected_with_one_line():
    with pytest.raises(ConfigError, match="num_steps 100 must be a multiple of window_length 30"):
        DPPOConfig(env_id="Pendulum-v1", num_steps=100, window_length=30).validate()
    with pytest.raises(ConfigError, match="policy_type 'rnn'"):
        DPPOConfig(env_id="Pendulum-v1", policy_type="rnn").validate()
    with pytest.raises(ConfigError, match="kl_coef_rule"):
        DPPOConfig(env_id="Pendulum-v1", kl_coef_rule="max").validate()
    with pytest.raises(ConfigError, match="kl_stop 'any'"):
        DPPOConfig(env_id="Pendulum-v1", kl_stop="any").validate()
    with pytest.raises(ConfigError, match="straggler_mode 'async'"):
        DPPOConfig(env_id="Pendulum-v1", straggler_mode="async").validate()
    # the defaults follow the appendix; the preset pins the rules it was measured with
    assert (DPPOConfig().kl_stop, DPPOConfig().straggler_mode) == ("per_worker", "drop_gradients")
    preset = load_config(DPPOConfig, ROOT / "scripts" / "configs" / "halfcheetah_dppo.yaml")
    assert (preset.kl_stop, preset.straggler_mode, preset.num_report) == ("mean", "preempt_collection", 0)
    with pytest.raises(ConfigError, match="needs a 1-D Box action space"):
        DPPO(DPPOConfig(env_id="CartPole-v1", policy_type="gru", num_steps=20, **TINY), console=False)


# ----- two real workers (spawned processes, gloo on loopback) --------------------------------
def _flat(module_or_params):
    params = module_or_params.parameters() if hasattr(module_or_params, "parameters") else module_or_params
    return torch.cat([p.detach().reshape(-1) for p in params])


def _opt_flat(opt):
    return torch.cat([v.reshape(-1).float() for s in opt.state_dict()["state"].values()
                      for v in s.values()])


def _two_worker_job(out_dir: str) -> None:
    """Runs in each of the 2 spawned workers; writes what the tests compare."""
    torch.set_num_threads(1)
    rank, world = distributed.rank_and_world_size()
    res: dict = {"world": world}
    # 1. merging statistics through a real all_reduce
    rng = np.random.default_rng(rank)
    base = RunningMeanStd(2)
    base.update(torch.arange(10.0).reshape(5, 2))
    snap = {k: v.clone() for k, v in base.state_dict().items()}
    local = rng.normal(rank * 3.0, 1.0 + rank, (20 + 10 * rank, 2))
    base.update(torch.as_tensor(local))
    merge_new_moments([(base, snap)], distributed.all_reduce_sum_(pack_new_moments([(base, snap)])))
    res["merged"] = (base.mean.clone(), base.var.clone(), base.count.clone())
    # 2. feed-forward and recurrent runs: several averaged-gradient updates
    cfg = dict(env_id="Pendulum-v1", num_envs=2, num_steps=50, window_length=10, num_minibatches=2,
               policy_iters=3, value_iters=2, learning_rate=1e-2, max_grad_norm=1.0,
               anneal_lr=True, total_steps=600, **TINY)
    for name, extra in (("mlp", {}), ("gru", {"policy_type": "gru", "rnn_size": 8})):
        algo = DPPO(DPPOConfig(**cfg, **extra), console=False)
        init = _flat(algo.policy).clone()
        algo.learn(600 if name == "mlp" else 400)
        rets, _ = algo.evaluate(3)
        res[name] = {"policy": _flat(algo.policy), "value": _flat(algo.value_fn), "init": init,
                     "opt": _opt_flat(algo.policy_optimizer), "vopt": _opt_flat(algo.value_optimizer),
                     "kl_coef": algo.kl_coef, "steps": algo.num_timesteps, "eval": rets,
                     "obs_rms": (algo.env.obs_rms.mean.clone(), algo.env.obs_rms.count.clone()),
                     "ret_rms": algo.env.ret_rms.var.clone()}
        algo.close()
    # 3. straggler preemption: D = 1 of 2, rank 1 is slow
    algo = DPPO(DPPOConfig(**{**cfg, "num_steps": 100}, num_report=1, straggler_check_windows=1,
                           straggler_mode="preempt_collection"), console=False)
    if rank == 1:
        step = algo.env.venv.step

        def slow_step(act):
            time.sleep(0.02)
            return step(act)

        algo.env.venv.step = slow_step
    local_steps = []
    collect_fn = algo._collect

    def recording_collect():
        ro, finished = collect_fn()
        local_steps.append((ro.num_steps, finished))
        return ro, finished

    algo._collect = recording_collect
    algo.learn(2 * 2 * 100)  # stops after the iteration that reaches it
    res["straggler"] = {"local": local_steps, "steps": algo.num_timesteps,
                        "policy": _flat(algo.policy), "iterations": algo.iteration}
    algo.close()
    torch.save(res, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_workers")
    distributed.spawn(_two_worker_job, (str(out),), 2, threads=1, timeout_s=60)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.timeout(180)
def test_two_workers_stay_bit_identical_after_updates(two_workers):
    a, b = two_workers
    assert a["world"] == b["world"] == 2
    for name in ("mlp", "gru"):
        x, y = a[name], b[name]
        assert not torch.equal(x["policy"], x["init"])  # the updates did something
        for key in ("policy", "value", "opt", "vopt"):
            assert torch.equal(x[key], y[key]), (name, key)
        assert x["kl_coef"] == y["kl_coef"] and x["steps"] == y["steps"]
        assert torch.equal(x["obs_rms"][0], y["obs_rms"][0]) and torch.equal(x["ret_rms"], y["ret_rms"])
        assert np.array_equal(x["eval"], y["eval"])  # evaluation episodes shared out and gathered
    assert a["mlp"]["steps"] == 600 and a["mlp"]["obs_rms"][1].item() == 600 + 2 * 2  # + resets


@pytest.mark.timeout(180)
def test_two_workers_merge_statistics_of_their_concatenated_data(two_workers):
    data = [np.arange(10.0).reshape(5, 2)]
    data += [np.random.default_rng(r).normal(r * 3.0, 1.0 + r, (20 + 10 * r, 2)) for r in range(2)]
    every = np.concatenate(data)
    for res in two_workers:
        mean, var, count = res["merged"]
        assert count.item() == len(every)
        assert np.allclose(mean.numpy(), every.mean(0)) and np.allclose(var.numpy(), every.var(0))
    assert torch.equal(two_workers[0]["merged"][1], two_workers[1]["merged"][1])


@pytest.mark.timeout(180)
def test_straggler_is_preempted_once_d_workers_reported(two_workers):
    fast, slow = two_workers[0]["straggler"], two_workers[1]["straggler"]
    assert all(steps == 100 and done for steps, done in fast["local"])
    assert any(steps < 100 and not done for steps, done in slow["local"])  # stopped early...
    assert all(steps % 10 == 0 and steps > 0 for steps, _ in slow["local"])  # ...on whole windows
    total = sum(2 * (s1 + s2) for (s1, _), (s2, _) in zip(fast["local"], slow["local"]))
    assert fast["steps"] == slow["steps"] == total  # global count of what was really collected
    assert torch.equal(fast["policy"], slow["policy"])


SLOW_STEP_S = 0.3  # the slowed worker's extra time per gradient step


def _record_updates(algo: DPPO) -> list[dict]:
    """Wrap ``algo.update`` to keep each iteration's local statistics (before the report
    reduces the ``_``-prefixed ones)."""
    rows: list[dict] = []
    update = algo.update

    def recording(*args):
        stats = update(*args)
        rows.append(dict(stats))
        return stats

    algo.update = recording
    return rows


def _straggler_job(out_dir: str) -> None:
    """Runs in each of 2 spawned workers: the per-worker KL stop and D-of-W gradient dropping."""
    torch.set_num_threads(1)
    rank, _ = distributed.rank_and_world_size()
    # 3 sub-iterations x 2 minibatches = 6 lockstep steps per iteration; 2 iterations
    cfg = dict(env_id="Pendulum-v1", num_envs=2, num_steps=50, window_length=10, num_minibatches=2,
               policy_iters=3, value_iters=3, learning_rate=1e-2, total_steps=400, **TINY)
    res: dict = {}
    # 1. KL stop: the KL a worker sees is inflated 1e6x (rank 1, or both), so it is past the
    # bound from the second step on (the first step is at pi_old: KL 0)
    for name, rule, inflated in (("per_worker", "per_worker", (1,)), ("mean", "mean", (1,)),
                                 ("both_stop", "per_worker", (0, 1))):
        algo = DPPO(DPPOConfig(**cfg, kl_stop=rule), console=False)
        if rank in inflated:
            loss_fn = algo._policy_loss

            def inflate(*args, loss_fn=loss_fn):
                loss, ex = loss_fn(*args)
                return loss, ex * torch.tensor([1e6, 1.0, 1.0])

            algo._policy_loss = inflate
        rows = _record_updates(algo)
        algo.learn(400)
        res[name] = {"rows": rows, "policy": _flat(algo.policy), "value": _flat(algo.value_fn)}
        algo.close()
    # 2. D of W: rank 1 takes SLOW_STEP_S longer for every gradient; D = 2 waits for it, D = 1 not
    for d in (2, 1):
        algo = DPPO(DPPOConfig(**cfg, num_report=d), console=False)
        if rank == 1:
            grads = algo._step_grads

            def slow(*args, grads=grads, **kw):
                time.sleep(SLOW_STEP_S)
                return grads(*args, **kw)

            algo._step_grads = slow
        rows = _record_updates(algo)
        algo.learn(400)
        res[f"d{d}"] = {"rows": rows, "policy": _flat(algo.policy), "value": _flat(algo.value_fn),
                        "steps": algo.num_timesteps}
        algo.close()
    torch.save(res, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def straggler_workers(tmp_path_factory):
    out = tmp_path_factory.mktemp("stragglers")
    distributed.spawn(_straggler_job, (str(out),), 2, threads=1, timeout_s=60)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.timeout(120)
def test_kl_stop_per_worker_lets_the_others_go_on_and_keeps_collectives_in_step(straggler_workers):
    a, b = straggler_workers
    for name in ("per_worker", "mean", "both_stop"):  # no deadlock, parameters still identical
        assert torch.equal(a[name]["policy"], b[name]["policy"]) and torch.equal(a[name]["value"], b[name]["value"])
    # per worker: rank 1 stops sending policy gradients; rank 0's steps go on to the end (6)
    for r0, r1 in zip(a["per_worker"]["rows"], b["per_worker"]["rows"]):
        assert (r0["_kl_stopped_local"], r1["_kl_stopped_local"]) == (0.0, 1.0)
        assert r0["train/policy_steps"] == r1["train/policy_steps"] == 6
        assert r0["train/policy_stopped_early"] == 0.0
    # mean: rank 1's KL drags the mean past the bound, the second step is discarded for everyone
    # per worker, both past the bound: the steps end once both have stopped
    for name in ("mean", "both_stop"):
        for row in a[name]["rows"] + b[name]["rows"]:
            assert row["train/policy_steps"] == 1 and row["train/policy_stopped_early"] == 1.0, name
    assert not torch.equal(a["per_worker"]["policy"], a["mean"]["policy"])


@pytest.mark.timeout(120)
def test_d_of_w_update_never_waits_for_a_slow_worker_and_drops_its_late_gradients(straggler_workers):
    fast, slow = straggler_workers
    for d in ("d2", "d1"):  # the late worker still gets the new parameters
        assert torch.equal(fast[d]["policy"], slow[d]["policy"]) and torch.equal(fast[d]["value"], slow[d]["value"])
        assert len(fast[d]["rows"]) == 2 and fast[d]["steps"] == 400
    # D = W: every step waits for the slow gradient
    for row in fast["d2"]["rows"] + slow["d2"]["rows"]:
        assert row["_late_local"] == 0 and row["_step_s_local"] >= SLOW_STEP_S
    # D = W - 1: the steps go on with the fast worker's gradient alone
    for row_fast, row_slow in zip(fast["d1"]["rows"], slow["d1"]["rows"]):
        assert row_fast["_late_local"] == 0
        assert row_slow["_late_local"] >= 5  # of 6 steps (the fast worker is 0.3 s faster each)
        assert row_fast["_step_s_local"] < SLOW_STEP_S / 3, row_fast["_step_s_local"]
        assert row_fast["train/policy_steps"] == 6
    assert not torch.equal(fast["d1"]["policy"], fast["d2"]["policy"])


def _reduce_inputs(rank: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(rank)
    return {"randn": torch.randn(1000), "big": torch.arange(300_000, dtype=torch.float32) * (rank + 1),
            "f64": torch.randn(7, 5, dtype=torch.float64), "i64": torch.arange(10) * (rank + 1),
            "strided": torch.randn(40, 6)[:, ::2]}


def _reduce_job(out_dir: str) -> None:
    """Sums through the shared-memory reducer next to gloo's, on the same inputs."""
    import torch.distributed as dist

    rank, world = distributed.rank_and_world_size()
    reducer = distributed.shared_memory_reducer()
    assert reducer is not None and reducer.world == world
    assert reducer.buf.shape[-1] == 1 << 20
    res = _reduce_inputs(rank)
    gloo = res["randn"].clone()
    for t in res.values():  # 'big' is 1.2 MB: two chunks through the 1 MB slots
        distributed.all_reduce_sum_(t)
    dist.all_reduce(gloo)
    res["gloo"] = gloo
    torch.save(res, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.timeout(120)
def test_shared_memory_all_reduce_sums_every_dtype_and_size_like_gloo(tmp_path):
    distributed.spawn(_reduce_job, (str(tmp_path),), 2, threads=1, timeout_s=30)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    a, b = _reduce_inputs(0), _reduce_inputs(1)
    for k in r0:  # every worker holds the same bytes
        assert r0[k].dtype == r1[k].dtype and torch.equal(r0[k], r1[k]), k
    for k in a:  # the sum in rank order (exact for these two-term sums)
        assert r0[k].dtype == a[k].dtype and torch.equal(r0[k], a[k] + b[k]), k
    assert torch.equal(r0["randn"], r0["gloo"])


def _rank1_fails_job(how: str) -> None:
    """Rank 1 crashes or hangs outside any collective; rank 0 waits in an all_reduce."""
    rank, _ = distributed.rank_and_world_size()
    if rank == 1 and how == "crash":
        raise ValueError("rank 1 fails on purpose")
    if rank == 1:
        time.sleep(120)
    distributed.all_reduce_sum_(torch.ones(3))


@pytest.mark.timeout(90)
def test_worker_at_the_shared_memory_barrier_stops_at_once_when_its_peer_dies():
    # rank 0 must see rank 1's pipe close, not wait for the 60 s timeout or the 40 s grace
    t0 = time.monotonic()
    with pytest.raises(distributed.WorkerError, match="worker rank 1 .* crashed with ValueError") as info:
        distributed.spawn(_rank1_fails_job, ("crash",), 2, timeout_s=60.0, grace_s=40.0)
    assert info.value.rank == 1 and time.monotonic() - t0 < 20


@pytest.mark.timeout(90)
def test_hung_worker_ends_the_run_after_the_collective_timeout_naming_its_rank():
    t0 = time.monotonic()
    with pytest.raises(distributed.WorkerError, match="worker rank 1 .* hung") as info:
        distributed.spawn(_rank1_fails_job, ("hang",), 2, timeout_s=2.0, grace_s=1.0)
    assert info.value.rank == 1 and time.monotonic() - t0 < 60


# ----- the launcher: a killed worker, resume with another W, torchrun ------------------------
SCRIPT_TINY = ["--env", "Pendulum-v1", "--num-steps", "100", "--window-length", "10",
               "--hidden-sizes", "16", "--value-hidden-sizes", "16", "--eval-every", "0",
               "--eval-episodes", "1", "--policy-iters", "2", "--value-iters", "2"]


@pytest.mark.timeout(150)
def test_killed_worker_stops_run_naming_its_rank_and_checkpoint_resumes_with_other_w(tmp_path):
    out = tmp_path / "run"
    err_path = tmp_path / "stderr.txt"
    cmd = [sys.executable, "scripts/train.py", "--algo", "dppo", "--workers", "2", "--total-steps",
           "100000000", "--checkpoint-every", "1", "--out", str(out), *SCRIPT_TINY]
    with err_path.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            line = proc.stdout.readline()
            pids = dict(re.findall(r"rank (\d+)=(\d+)", line))
            assert "1" in pids, line
            ckpt = out / "checkpoints" / "last.pt"
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not (
                    ckpt.exists() and load_checkpoint(ckpt)["counters"]["iteration"] >= 1):
                time.sleep(0.2)
            assert ckpt.exists(), err_path.read_text()[-2000:]
            os.kill(int(pids["1"]), signal.SIGKILL)
            t_kill = time.monotonic()
            proc.wait(timeout=30)
            stopped_after = time.monotonic() - t_kill
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = err_path.read_text()
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, stderr[-3000:]
    assert "worker rank 1" in errors[0] and "killed by signal SIGKILL" in errors[0], errors[0]
    assert "checkpoint is intact" in errors[0] and "--resume" in errors[0]
    assert stopped_after < 10, stopped_after
    state = load_checkpoint(out)  # intact and loadable
    done = state["counters"]["num_timesteps"]
    assert done >= 200 and done % 200 == 0 and state["extra"]["world_size"] == 2
    assert not list((out / "checkpoints").glob("*.tmp"))
    # resume with one worker instead of two
    res = subprocess.run([sys.executable, "scripts/train.py", "--resume", str(out), "--workers", "1",
                          "--total-steps", str(done + 100)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader((out / "progress.csv").open()))
    assert [int(r["real_steps"]) for r in rows][-2:] == [done, done + 100]
    assert [r["dist/workers"] for r in rows][-2:] == ["2", "1"]
    assert load_checkpoint(out)["counters"]["num_timesteps"] == done + 100


@pytest.mark.skipif(not HAVE_PROC, reason="reads process states from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.timeout(150)
def test_workers_do_not_outlive_a_killed_launcher(tmp_path, sig):
    out = tmp_path / "run"
    err_path = tmp_path / "stderr.txt"
    cmd = [sys.executable, "scripts/train.py", "--algo", "dppo", "--workers", "2", "--total-steps",
           "100000000", "--out", str(out), *SCRIPT_TINY]
    pids: list[int] = []
    with err_path.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            line = proc.stdout.readline()
            pids = [int(p) for _, p in re.findall(r"rank (\d+)=(\d+)", line)]
            assert len(pids) == 2, line
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not (out / "progress.csv").exists():
                time.sleep(0.2)  # both workers are past start-up and training
            assert (out / "progress.csv").exists(), err_path.read_text()[-2000:]
            os.kill(proc.pid, sig)
            proc.wait(timeout=30)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(map(running, pids)):
                time.sleep(0.1)
            assert not any(map(running, pids)), err_path.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
            for pid in filter(running, pids):
                os.kill(pid, signal.SIGKILL)
    if sig == signal.SIGTERM:  # the launcher stopped them itself and exits like a terminated process
        assert proc.returncode == 128 + signal.SIGTERM
        assert "dppo: SIGTERM: stopped 2 worker(s)" in err_path.read_text()
    else:  # each worker noticed on its own that its launcher was gone
        assert "the launcher (pid" in err_path.read_text()


@pytest.mark.timeout(150)
def test_under_torchrun_the_script_runs_as_a_worker_without_spawning(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                          "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
                          str(distributed.free_port()), "scripts/train.py", "--algo", "dppo",
                          "--total-steps", "400", "--out", str(out), *SCRIPT_TINY],
                         cwd=ROOT, capture_output=True, text=True, timeout=140, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "worker(s) on 127.0.0.1" not in res.stdout  # torchrun started the workers
    assert res.stdout.count("done:") == 1  # only rank 0 post-processes
    rows = list(csv.DictReader((out / "progress.csv").open()))
    assert [int(r["real_steps"]) for r in rows] == [200, 400]
    assert all(r["dist/workers"] == "2" for r in rows)


def test_ppo_paper_kl_rule():
    from mbmpo.kl_penalty import ppo_adapt_kl_coef
    t = 0.01
    assert ppo_adapt_kl_coef(1.0, 0.016, t) == 2.0  # > 1.5 * target
    assert ppo_adapt_kl_coef(1.0, 0.006, t) == 0.5  # < target / 1.5
    assert ppo_adapt_kl_coef(1.0, 0.014, t) == ppo_adapt_kl_coef(1.0, 0.007, t) == 1.0
