import math

import pytest
import torch
from torch import Tensor

from dynamics.ensemble import DynamicsEnsemble
from dynamics.model_env import ImaginedEnv, tasks_model_idx
from dynamics.reward_fns import RewardFn, get_reward_fn
from dynamics.trainer import FitConfig, fit_ensemble, gaussian_nll, model_loss
from mbmpo.buffers import TransitionDataset
from mbmpo.errors import TrainingError
from mbmpo.sampler import collect


def linear_data(n=3000, seed=0):
    g = torch.Generator().manual_seed(123)  # the system is fixed; seed draws the samples
    a_mat = torch.randn(4, 4, generator=g) * 0.1
    b_mat = torch.randn(2, 4, generator=g) * 0.5
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 4, generator=g) * 2 + 1
    act = torch.rand(n, 2, generator=g) * 2 - 1
    return obs, act, obs + obs @ a_mat + act @ b_mat


def test_shapes():
    ens = DynamicsEnsemble(5, 2, num_models=3, hidden_sizes=(16,), num_position_dims=1)
    assert ens.in_dim == 6 and ens.out_dim == 5
    assert ens(torch.zeros(3, 7, 6)).shape == (3, 7, 5)
    obs, act = torch.randn(10, 5), torch.randn(10, 2)
    nxt, rew = ens.predict(obs, act, torch.arange(10) % 3)
    assert nxt.shape == (10, 5) and rew is None
    assert DynamicsEnsemble(5, 2, 2, (8,), reward_head=True).predict(obs, act, torch.zeros(10, dtype=torch.long))[1].shape == (10,)


def test_fits_known_linear_system():
    torch.manual_seed(0)
    obs, act, nxt = linear_data()
    ens = DynamicsEnsemble(4, 2, num_models=2, hidden_sizes=(64, 64))
    res = fit_ensemble(ens, obs, act, nxt, config=FitConfig(batch_size=100, max_epochs=60, early_stop_ema=0.9),
                       generator=torch.Generator().manual_seed(0))
    assert max(res.best_val_loss) < 0.01, res.best_val_loss  # normalized MSE (1.0 = predict the mean)
    t_obs, t_act, t_nxt = linear_data(500, seed=1)
    for k in range(2):
        pred, _ = ens.predict(t_obs, t_act, torch.full((500,), k))
        rel = (pred - t_nxt).pow(2).mean() / (t_nxt - t_obs).var()
        assert rel < 0.02


def test_per_model_early_stopping_and_best_weights_restored():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    obs, act = torch.randn(80, 3, generator=g), torch.randn(80, 1, generator=g)
    nxt = obs + torch.randn(80, 3, generator=g)  # pure noise: the models overfit quickly
    ens = DynamicsEnsemble(3, 1, num_models=4, hidden_sizes=(128, 128))
    res = fit_ensemble(ens, obs, act, nxt, config=FitConfig(learning_rate=3e-3, batch_size=16, max_epochs=200,
                                                           early_stop_ema=0.5), generator=g)
    assert len(set(res.epochs)) > 1, res.epochs  # each model stopped on its own epoch
    assert max(res.epochs) < 200
    x = ens.in_rms.normalize(ens.inputs(obs, act).float())
    y = ens.out_rms.normalize(ens.targets(obs, nxt).float())
    for k in range(4):
        hist = [row[k] for row in res.val_history if not math.isnan(row[k])]
        assert len(hist) == res.epochs[k]
        assert res.best_val_loss[k] == pytest.approx(min(hist))
        vi = res.val_idx[k]
        with torch.no_grad():
            now = (ens.forward_model(k, x[vi]) - y[vi]).pow(2).mean().item()
        assert now == pytest.approx(res.best_val_loss[k], rel=1e-5)  # best weights restored


def test_fixed_split_fixed_epochs_and_epoch_callback():
    obs, act, nxt = linear_data(200)
    mask = torch.zeros(200, 2, dtype=torch.bool)
    mask[:40, 0] = True
    mask[150:, 1] = True
    ens = DynamicsEnsemble(4, 2, num_models=2, hidden_sizes=(16,))
    seen = []
    res = fit_ensemble(ens, obs, act, nxt, config=FitConfig(batch_size=50, max_epochs=7, early_stopping=False),
                       val_mask=mask, on_epoch=seen.append)
    assert res.val_idx[0].tolist() == list(range(40)) and res.val_idx[1].tolist() == list(range(150, 200))
    assert res.epochs == [7, 7] and seen == list(range(1, 8))
    x = ens.in_rms.normalize(ens.inputs(obs, act).float())
    y = ens.out_rms.normalize(ens.targets(obs, nxt).float())
    for k in range(2):  # the last epoch's weights are kept, and reported
        vi = res.val_idx[k]
        with torch.no_grad():
            assert (ens.forward_model(k, x[vi]) - y[vi]).pow(2).mean().item() == pytest.approx(res.val_history[-1][k])
        assert res.best_val_loss[k] == res.val_history[-1][k]
    with pytest.raises(ValueError, match=r"val_mask must have shape \[200, 2\], got \[200, 3\]"):
        fit_ensemble(ens, obs, act, nxt, val_mask=torch.zeros(200, 3, dtype=torch.bool))


def test_gaussian_nll_against_a_hand_computation():
    mean, target = torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)
    logvar = torch.tensor([[0.0, math.log(4.0)]])
    # dim 0: 1^2 * 1 + 0; dim 1: 2^2 / 4 + log 4
    assert gaussian_nll(mean, logvar, target).item() == pytest.approx((1.0 + 1.0 + math.log(4.0)) / 2)


def test_probabilistic_models_learn_the_noise_and_sample_it():
    """Heteroscedastic data: s' = s + 0.5 a + noise, noise std 0.05 for a < 0 and 0.4 for a > 0.
    The Gaussian models recover both scales; draws spread by them, means do not."""
    g = torch.Generator().manual_seed(0)
    n = 4000
    obs, act = torch.randn(n, 1, generator=g), torch.rand(n, 1, generator=g) * 2 - 1
    std = torch.where(act > 0, 0.4, 0.05)
    nxt = obs + 0.5 * act + std * torch.randn(n, 1, generator=g)
    torch.manual_seed(0)
    ens = DynamicsEnsemble(1, 1, num_models=2, hidden_sizes=(32, 32), probabilistic=True)
    cfg = FitConfig(batch_size=200, max_epochs=150, early_stopping=False, learning_rate=3e-3)
    fit_ensemble(ens, obs, act, nxt, config=cfg, generator=g)
    probe_obs = torch.zeros(2000, 1)
    for a, want in ((-0.5, 0.05), (0.5, 0.4)):
        probe_act = torch.full((2000, 1), a)
        mean, _ = ens.predict(probe_obs, probe_act, torch.zeros(2000, dtype=torch.long))
        assert mean.std() < 1e-6 and mean.mean().item() == pytest.approx(0.5 * a, abs=0.1)
        draw, _ = ens.predict(probe_obs, probe_act, torch.zeros(2000, dtype=torch.long),
                              generator=torch.Generator().manual_seed(1))
        assert draw.std().item() == pytest.approx(want, rel=0.25), (a, draw.std().item())
        again, _ = ens.predict(probe_obs, probe_act, torch.zeros(2000, dtype=torch.long),
                               generator=torch.Generator().manual_seed(1))
        assert torch.equal(draw, again)
    x = ens.in_rms.normalize(ens.inputs(obs, act))
    y = ens.out_rms.normalize(ens.targets(obs, nxt))
    for k in range(2):
        _, logvar = ens.forward_dist(k, x)
        m = ens.models[k]
        # soft bounds: the lower softplus lifts values near the top by log(1 + e^-(max - min))
        assert (logvar <= m.max_logvar + 0.05).all() and (logvar >= m.min_logvar).all()
        # the training loss is the NLL plus the bound penalty
        want = gaussian_nll(*ens.forward_dist(k, x), y) + 0.01 * (m.max_logvar.sum() - m.min_logvar.sum())
        assert model_loss(ens, k, x, y, cfg).item() == pytest.approx(want.item())
    # the deterministic ensemble has no spread to draw from
    det = DynamicsEnsemble(1, 1, num_models=1, hidden_sizes=(8,))
    assert torch.equal(det.predict(obs[:5], act[:5], torch.zeros(5, dtype=torch.long))[0],
                       det.predict(obs[:5], act[:5], torch.zeros(5, dtype=torch.long), generator=g)[0])


def test_normalization_roundtrip_and_nan_data():
    obs, act, nxt = linear_data(200)
    ens = DynamicsEnsemble(4, 2, 1, (8,))
    ens.set_normalization(obs, act, nxt)
    x = ens.inputs(obs, act)
    assert torch.allclose(ens.in_rms.denormalize(ens.in_rms.normalize(x)), x, atol=1e-5)
    y = ens.out_rms.normalize(ens.targets(obs, nxt))
    assert abs(y.mean().item()) < 1e-5 and abs(y.std(unbiased=False).item() - 1) < 1e-3
    bad = nxt.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(TrainingError, match="non-finite values in the dynamics training data"):
        fit_ensemble(ens, obs, act, bad)


def constant_shift_ensemble(shifts, obs_dim=2):
    """Model k predicts next = obs + shifts[k] (zero hidden weights, bias = shift)."""
    ens = DynamicsEnsemble(obs_dim, 1, num_models=len(shifts), hidden_sizes=(4,))
    with torch.no_grad():
        for k, s in enumerate(shifts):
            last = ens.models[k][-1]
            last.weight.zero_()
            last.bias.fill_(s)
    return ens


def test_imagined_env_uses_the_right_model_per_row_and_horizon():
    ens = constant_shift_ensemble([0.0, 1.0, 2.0])
    idx = tasks_model_idx(3, tasks_per_model=1, rows_per_task=2)  # [0,0,1,1,2,2]
    fn = RewardFn("test", dt=1.0, num_position_dims=1, ctrl_cost_weight=0.0)
    env = ImaginedEnv(ens, idx, lambda n, g: torch.zeros(n, 2, dtype=torch.float64), horizon=4, reward_fn=fn)
    roll = collect(env, lambda o: (torch.zeros(o.shape[0], 1), {}), 6)
    # reward = forward velocity = shift of the row's model
    assert torch.allclose(roll.rewards[0], torch.tensor([0.0, 0, 1, 1, 2, 2]))
    assert torch.allclose(roll.next_obs[2, :, 0].float(), torch.tensor([0.0, 0, 3, 3, 6, 6]))
    assert roll.truncated[3].all() and not roll.truncated[:3].any() and not roll.terminated.any()
    assert torch.allclose(roll.obs[4].float(), torch.zeros(6, 2))  # reset after the horizon
    assert roll.episode_lengths == [4] * 6
    assert roll.episode_returns[4] == pytest.approx(8.0)


def test_imagined_env_termination_and_nan_error():
    hopper = get_reward_fn("Hopper-v5")
    ens = constant_shift_ensemble([0.0, -0.3], obs_dim=12)
    start = torch.zeros(12, dtype=torch.float64)
    start[1] = 1.0  # healthy height
    env = ImaginedEnv(ens, torch.tensor([0, 1]), lambda n, g: start.repeat(n, 1), horizon=100,
                      reward_fn=hopper, action_low=-torch.ones(1), action_high=torch.ones(1))
    env.reset()
    terms = []
    for _ in range(3):
        _, _, term, _, _ = env.step(torch.zeros(2, 1))
        terms.append(term.tolist())
    # model 1 shifts every entry by -0.3: height 0.7 after one step is unhealthy (> 0.7 needed)
    assert terms[0] == [False, True]
    with torch.no_grad():
        ens.models[1][-1].bias.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"dynamics model\(s\) \[1\] predicted NaN"):
        env.step(torch.zeros(2, 1))


def test_uncertainty_against_a_hand_computation():
    """Disagreement: the norm of the across-model (population) std of the normalized means.
    Constant-shift models 0, 1, 2 (in normalized units: unit target std) differ by std(0, 1, 2)
    = sqrt(2/3) in each of 2 dims. Aleatoric (MOPO): the largest per-model norm of the std."""
    ens = constant_shift_ensemble([0.0, 1.0, 2.0])
    obs, act = torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 1)
    idx = torch.tensor([2, 0, 1])
    nxt, _, u = ens.predict_with_uncertainty(obs, act, idx, "disagreement")
    assert torch.allclose(nxt, ens.predict(obs, act, idx)[0])  # each row still steps with its model
    assert torch.allclose(u, torch.full((3,), math.sqrt(2 * 2 / 3), dtype=torch.float64))
    assert u.dtype == obs.dtype
    same = constant_shift_ensemble([1.5, 1.5])
    assert same.predict_with_uncertainty(obs, act, torch.tensor([0, 1, 0]), "disagreement")[2].abs().max() < 1e-7
    torch.manual_seed(0)
    prob = DynamicsEnsemble(2, 1, num_models=3, hidden_sizes=(8,), probabilistic=True)
    o, a = torch.randn(5, 2), torch.randn(5, 1)
    x = prob.in_rms.normalize(prob.inputs(o, a))
    stds = torch.stack([(0.5 * prob.forward_dist(k, x)[1]).exp() for k in range(3)])  # [K, B, 2]
    want = torch.stack([stds[:, i].norm(dim=-1).max() for i in range(5)])
    _, _, u = prob.predict_with_uncertainty(o, a, torch.zeros(5, dtype=torch.long), "aleatoric")
    assert torch.allclose(u, want)
    # a draw of row i uses row i's model and the generator, exactly as predict does
    rows_model0 = torch.zeros(5, dtype=torch.long)
    d1 = prob.predict_with_uncertainty(o, a, rows_model0, "aleatoric", torch.Generator().manual_seed(3))[0]
    d2 = prob.predict(o, a, rows_model0, torch.Generator().manual_seed(3))[0]
    assert torch.allclose(d1, d2)
    with pytest.raises(ValueError, match="'aleatoric' uncertainty needs probabilistic models"):
        ens.predict_with_uncertainty(obs, act, idx, "aleatoric")
    with pytest.raises(ValueError, match=r"uncertainty 'max' is not allowed; use one of \['disagreement', 'aleatoric'\]"):
        ens.predict_with_uncertainty(obs, act, idx, "max")


def test_imagined_env_penalizes_the_reward_by_the_uncertainty():
    """r - lambda * u per step; the penalty is logged and the trajectories do not change."""
    ens = constant_shift_ensemble([0.0, 1.0, 2.0])
    idx = tasks_model_idx(3, tasks_per_model=1, rows_per_task=2)
    fn = RewardFn("test", dt=1.0, num_position_dims=1, ctrl_cost_weight=0.0)
    zeros = lambda n, g: torch.zeros(n, 2, dtype=torch.float64)  # noqa: E731
    policy = lambda o: (torch.zeros(o.shape[0], 1), {})  # noqa: E731
    plain = collect(ImaginedEnv(ens, idx, zeros, horizon=4, reward_fn=fn), policy, 6)
    env = ImaginedEnv(ens, idx, zeros, horizon=4, reward_fn=fn, penalty_coef=0.5)
    pen = collect(env, policy, 6)
    u = math.sqrt(2 * 2 / 3)
    assert torch.allclose(pen.rewards, plain.rewards - 0.5 * u)
    assert torch.equal(pen.next_obs, plain.next_obs)
    assert env.mean_penalty == pytest.approx(0.5 * u)
    assert pen.episode_returns[4] == pytest.approx(8.0 - 4 * 0.5 * u)
    costly = ImaginedEnv(ens, idx, zeros, horizon=4, reward_fn=fn, penalty_coef=0.5,
                         state_cost=lambda o: 0.1 * o[:, 0].abs().float())  # both, summed
    both = collect(costly, policy, 6)
    assert torch.allclose(both.rewards, pen.rewards - 0.1 * both.next_obs[..., 0].abs().float())
    assert torch.equal(both.next_obs, plain.next_obs)
    assert costly.mean_state_cost == pytest.approx(float((0.1 * both.next_obs[..., 0].abs()).mean()))
    with pytest.raises(ValueError, match="penalty_coef must be a finite number >= 0, got -1.0"):
        ImaginedEnv(ens, idx, zeros, horizon=4, reward_fn=fn, penalty_coef=-1.0)
    with pytest.raises(ValueError, match="'aleatoric' uncertainty needs probabilistic models"):
        ImaginedEnv(ens, idx, zeros, horizon=4, reward_fn=fn, penalty_coef=1.0, uncertainty="aleatoric")


def test_transition_dataset_fifo_and_roundtrip():
    ds = TransitionDataset(2, 1, capacity=5)
    for i in range(3):
        ds.add(torch.full((2, 2), float(i)), torch.zeros(2, 1), torch.ones(2, 2), torch.full((2,), float(i)),
               torch.zeros(2, dtype=torch.bool))
    assert len(ds) == 5
    assert ds.arrays()["reward"].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0]
    other = TransitionDataset(2, 1, capacity=5)
    other.load_state_dict(ds.state_dict())
    assert torch.equal(other.arrays()["obs"], ds.arrays()["obs"])
    with pytest.raises(ValueError, match="mismatch"):
        TransitionDataset(3, 1, capacity=5).load_state_dict(ds.state_dict())


def test_dataset_keys_stay_with_their_rows():
    ds = TransitionDataset(2, 1, capacity=5, num_keys=3)
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        ds.add(torch.full((2, 2), float(i)), torch.zeros(2, 1), torch.ones(2, 2), torch.full((2,), float(i)),
               torch.zeros(2, dtype=torch.bool), g)
    keys = ds.arrays()["keys"]
    assert keys.shape == (4, 3) and bool(((keys >= 0) & (keys < 1)).all())
    ds.add(torch.full((2, 2), 2.0), torch.zeros(2, 1), torch.ones(2, 2), torch.full((2,), 2.0),
           torch.zeros(2, dtype=torch.bool), g)  # wraps: the oldest row and its keys go
    after = ds.arrays()
    assert after["reward"].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0]
    assert torch.equal(after["keys"][:3], keys[1:])
    other = TransitionDataset(2, 1, capacity=5, num_keys=3)
    other.load_state_dict(ds.state_dict())
    assert torch.equal(other.arrays()["keys"], after["keys"])
    with pytest.raises(ValueError, match="no per-row keys"):
        other.load_state_dict(TransitionDataset(2, 1, capacity=5).state_dict())


def test_dataset_priorities_stay_with_their_rows_and_default_to_zero():
    ds = TransitionDataset(2, 1, capacity=3, columns={"priority": 0.0})
    for i in range(2):
        ds.add(torch.full((2, 2), float(i)), torch.zeros(2, 1), torch.ones(2, 2), torch.full((2,), float(i)),
               torch.zeros(2, dtype=torch.bool), columns={"priority": torch.tensor([10.0 * i, 10.0 * i + 1])})
    assert ds.arrays()["priority"].tolist() == [1.0, 10.0, 11.0]  # the oldest row went
    ds.add(torch.zeros(1, 2), torch.zeros(1, 1), torch.ones(1, 2), torch.zeros(1), torch.zeros(1, dtype=torch.bool))
    assert ds.arrays()["priority"].tolist() == [10.0, 11.0, 0.0]
    other = TransitionDataset(2, 1, capacity=3, columns={"priority": 0.0})
    other.load_state_dict(ds.state_dict())
    assert torch.equal(other.arrays()["priority"], ds.arrays()["priority"])
    old = TransitionDataset(2, 1, capacity=3)  # saved without priorities (an older run): zeros
    old.add(torch.ones(2, 2), torch.zeros(2, 1), torch.ones(2, 2), torch.ones(2), torch.zeros(2, dtype=torch.bool))
    other.load_state_dict(old.state_dict())
    assert other.arrays()["priority"].tolist() == [0.0, 0.0]
    plain = TransitionDataset(2, 1, capacity=3)
    plain.load_state_dict(ds.state_dict())
    assert "priority" not in plain.arrays()
    labels = TransitionDataset(2, 1, capacity=3, columns={"priority": 0.0, "fall_ahead": float("nan")})
    labels.load_state_dict(ds.state_dict())  # a column the checkpoint lacks: its fill value
    assert labels.arrays()["priority"].tolist() == [10.0, 11.0, 0.0]
    assert bool(labels.arrays()["fall_ahead"].isnan().all())
    with pytest.raises(ValueError, match=r"dataset has no column\(s\) \['typo'\]; its columns are \['priority'\]"):
        ds.add(torch.zeros(1, 2), torch.zeros(1, 1), torch.ones(1, 2), torch.zeros(1), torch.zeros(1, dtype=torch.bool),
               columns={"typo": torch.zeros(1)})


@torch.no_grad()
def test_bfloat16_compute_dtype_is_close_to_float32_and_scoped():
    torch.manual_seed(0)
    ens = DynamicsEnsemble(6, 2, num_models=3, hidden_sizes=(64, 64), probabilistic=True)
    obs, act = torch.randn(50, 6, dtype=torch.float64), torch.rand(50, 2) * 2 - 1
    idx = torch.arange(50) % 3
    full, _ = ens.predict(obs, act, idx)
    with ens.compute_dtype(torch.bfloat16):
        low, _ = ens.predict(obs, act, idx)
        low_u = ens.predict_with_uncertainty(obs, act, idx, "disagreement")[2]
    again, _ = ens.predict(obs, act, idx)  # float32 again outside the block
    assert torch.equal(again, full) and low.dtype == full.dtype
    rel = float((low - full).norm() / (full - obs).norm())
    assert 0 < rel < 0.05, rel
    assert torch.allclose(low_u, ens.predict_with_uncertainty(obs, act, idx, "disagreement")[2], rtol=0.1)


@torch.no_grad()
def test_bfloat16_steps_use_cast_weights_that_follow_every_parameter_change():
    torch.manual_seed(0)
    ens = DynamicsEnsemble(6, 2, num_models=3, hidden_sizes=(32, 32), probabilistic=True)
    obs, act = torch.randn(30, 6), torch.rand(30, 2) * 2 - 1
    idx = torch.arange(30) % 3
    x = ens.in_rms.normalize(ens.inputs(obs, act))

    def by_hand(k):  # model k's layers in bf16, written out
        h = x.bfloat16()
        for layer in ens.models[k].net:
            h = torch.addmm(layer.bias.bfloat16(), h, layer.weight.T.bfloat16()) if isinstance(
                layer, torch.nn.Linear) else layer(h)
        return h.float()

    with ens.compute_dtype(torch.bfloat16):
        means, _ = ens._all_dists(x)
        for k in range(3):
            assert torch.allclose(means[k], by_hand(k)[:, :6], atol=1e-2)
            assert torch.allclose(ens.forward_model(k, x), by_hand(k)[:, :6], atol=1e-2)
        before = ens.predict_with_uncertainty(obs, act, idx, "disagreement")
        ens.models[1].net[2].weight.mul_(3.0)  # an in-place change, as an optimizer step makes
        after = ens.predict_with_uncertainty(obs, act, idx, "disagreement")
        assert torch.equal(after[0][idx == 0], before[0][idx == 0])  # model 0 untouched
        assert not torch.allclose(after[0][idx == 1], before[0][idx == 1])
        assert torch.allclose(ens._all_dists(x)[0][1], by_hand(1)[:, :6], atol=1e-2)
        state = {k: v.clone() for k, v in ens.state_dict().items()}
        state["models.2.net.0.bias"] += 1.0
        ens.load_state_dict(state)  # a load replaces the values in place too
        assert torch.allclose(ens._all_dists(x)[0][2], by_hand(2)[:, :6], atol=1e-2)
    spread = torch.stack([ens.forward_model(k, x) for k in range(3)])
    u_hand = spread.std(0, unbiased=False).norm(dim=-1)  # float32, the definition
    with ens.compute_dtype(torch.bfloat16):
        u_low = ens.predict_with_uncertainty(obs, act, idx, "disagreement")[2]
    assert torch.allclose(u_low, u_hand, rtol=0.05)


def test_bfloat16_fit_learns_like_float32_and_validates_in_float32():
    obs, act, nxt = linear_data(2000)
    res = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        ens = DynamicsEnsemble(4, 2, num_models=2, hidden_sizes=(64, 64))
        seen = []
        ens.models[0][0].register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out.dtype))
        res[dtype] = fit_ensemble(ens, obs, act, nxt, config=FitConfig(batch_size=100, max_epochs=20, precision=dtype),
                                  generator=torch.Generator().manual_seed(0))
        assert seen[0] == dtype and seen[-1] == torch.float32  # training steps in dtype, validation float32
    low, full = max(res[torch.bfloat16].best_val_loss), max(res[torch.float32].best_val_loss)
    assert low < 0.02 and low < 3 * full, (low, full)
    with torch.no_grad():
        assert ens._compute_dtype is None  # the fit leaves the ensemble in float32


def test_epoch_rows_draws_a_fresh_subset_of_the_training_split_each_epoch():
    obs, act, nxt = linear_data(1000)
    mask = torch.zeros(1000, 1, dtype=torch.bool)
    mask[:200, 0] = True  # rows 0-199 validate, 200-999 train
    ens = DynamicsEnsemble(4, 2, num_models=1, hidden_sizes=(16,))
    x_all = torch.cat([obs, act], -1)
    seen: list[Tensor] = []

    def record(_module, inputs, _out):
        if torch.is_grad_enabled():  # training forwards; validation runs under no_grad
            seen.append(inputs[0].detach().clone())

    ens.models[0].register_forward_hook(record)
    fit_ensemble(ens, obs, act, nxt, config=FitConfig(batch_size=100, max_epochs=3, early_stopping=False,
                                                      epoch_rows=300), val_mask=mask)
    assert [len(s) for s in seen] == [100] * 9  # 3 minibatches per epoch, 3 epochs
    x_norm = ens.in_rms.normalize(x_all)
    epochs = []
    for e in range(3):
        rows = torch.cat(seen[3 * e: 3 * e + 3])
        idx = torch.cdist(rows, x_norm).argmin(1)  # which data row each training input was
        assert len(set(idx.tolist())) == 300 and int(idx.min()) >= 200  # distinct, training split only
        epochs.append(set(idx.tolist()))
    assert len({frozenset(e) for e in epochs}) == 3  # a different subset every epoch


def test_epoch_rows_above_the_split_size_changes_nothing():
    obs, act, nxt = linear_data(300)
    fits = []
    for rows in (0, 10_000):
        torch.manual_seed(0)
        ens = DynamicsEnsemble(4, 2, num_models=2, hidden_sizes=(16,))
        res = fit_ensemble(ens, obs, act, nxt, config=FitConfig(batch_size=50, max_epochs=4, epoch_rows=rows),
                           generator=torch.Generator().manual_seed(3))
        fits.append((res.val_history, [p.clone() for p in ens.parameters()]))
    assert fits[0][0] == fits[1][0]
    assert all(torch.equal(a, b) for a, b in zip(fits[0][1], fits[1][1]))
