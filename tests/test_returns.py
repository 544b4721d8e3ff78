import pytest
import torch

from mbmpo.mbmpo.extensions.falls import fall_ahead, reward_drop
from mbmpo.returns import discount_cumsum, explained_variance, gae, normalize_advantages


def test_discount_cumsum_matches_hand_computation():
    x = torch.tensor([1.0, 2.0, 3.0])
    out = discount_cumsum(x, 0.5)
    assert torch.allclose(out, torch.tensor([1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]))


def test_discount_cumsum_stops_at_done():
    x = torch.tensor([1.0, 1.0, 1.0, 1.0])
    dones = torch.tensor([False, True, False, False])
    out = discount_cumsum(x, 0.9, dones)
    assert torch.allclose(out, torch.tensor([1.9, 1.0, 1.9, 1.0]))


def test_gae_hand_computation_with_truncation_and_termination():
    # one env, 4 steps: step 1 truncated (bootstraps from V(final)=10), step 3 terminated.
    g, lam = 0.9, 0.8
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])
    v = torch.tensor([0.5, 1.0, 1.5, 2.0])
    nv = torch.tensor([1.0, 10.0, 2.0, 99.0])  # V(s_{t+1}); at ends V(final obs)
    term = torch.tensor([False, False, False, True])
    trunc = torch.tensor([False, True, False, False])
    adv, ret = gae(r, v, nv, term, trunc, g, lam)
    d = [1 + g * 1.0 - 0.5, 2 + g * 10.0 - 1.0, 3 + g * 2.0 - 1.5, 4 - 2.0]
    a3 = d[3]
    a2 = d[2] + g * lam * a3
    a1 = d[1]  # truncated: no carry from step 2
    a0 = d[0] + g * lam * a1
    expected = torch.tensor([a0, a1, a2, a3])
    assert torch.allclose(adv, expected)
    assert torch.allclose(ret, expected + v)


def test_gae_lambda_one_equals_discounted_return_minus_value():
    r = torch.rand(6, 3)
    v = torch.rand(6, 3)
    nv = torch.cat([v[1:], torch.zeros(1, 3)])
    term = torch.zeros(6, 3, dtype=torch.bool)
    term[-1] = True
    adv, _ = gae(r, v, nv, term, torch.zeros_like(term), 0.97, 1.0)
    assert torch.allclose(adv, discount_cumsum(r, 0.97) - v, atol=1e-6)


def test_normalize_advantages_and_explained_variance():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    n = normalize_advantages(a)
    assert abs(n.mean().item()) < 1e-6 and abs(n.std(unbiased=False).item() - 1) < 1e-4
    assert explained_variance(a, a) == 1.0
    assert abs(explained_variance(torch.zeros(4), a)) < 1e-6  # predicting zeros explains nothing
    assert explained_variance(-a, a) < -1  # anti-correlated predictions are worse than nothing


def test_reward_drop_hand_computation_within_episodes():
    # env 0: a fall from 4 to 0 at step 4 inside one episode; env 1: the same rewards, but a new
    # episode starts at step 4 (done at step 3), so no step of it has an earlier step to compare.
    r = torch.tensor([4.0, 4.0, 4.0, 4.0, 0.0, 0.0, 0.0, 0.0]).unsqueeze(1).repeat(1, 2)
    dones = torch.zeros(8, 2, dtype=torch.bool)
    dones[3, 1] = True
    ts = torch.stack([torch.arange(8), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])], 1)
    d = reward_drop(r, dones, ts, window=2)
    # t=3: mean(r1, r2) - mean(r3, r4) = 4 - 2; t=4: 4 - 0; t=5: mean(r3, r4) - 0 = 2
    assert d[:, 0].tolist() == [0, 0, 0, 2, 4, 2, 0, 0]
    assert d[:, 1].tolist() == [0] * 8
    # a rise is not a drop; an episode that began before these steps (timesteps > t) uses the steps given
    assert reward_drop(r.flip(0), dones, ts, 2)[:, 0].tolist() == [0] * 8
    late = reward_drop(r[3:6, :1], dones[3:6, :1], ts[3:6, :1] + 100, 3)
    assert late[:, 0].tolist() == [0, 4, 2]  # t=1: 4 - mean(0, 0); t=2: mean(4, 0) - 0


def test_fall_ahead_labels_by_hand_within_episodes():
    # rewards 4, 4, 4, 4, 0, ...: with W = 2 the drops with both windows full are 2, 4, 2 at
    # t = 3, 4, 5, so with min_drop 2 falls start there. Env 1's episode ends after step 5.
    r = torch.tensor([4.0] * 4 + [0.0] * 6).unsqueeze(1).repeat(1, 2)
    dones = torch.zeros(10, 2, dtype=torch.bool)
    dones[5, 1] = True
    ts = torch.stack([torch.arange(10), torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3])], 1)
    y = fall_ahead(r, dones, ts, window=2, min_drop=2.0, horizon=3)
    # env 0: a start in (t, t + 3] for t <= 4; t = 5 checked every u up to 8 (u + W <= 10): 0;
    # later steps cannot be told
    assert y[:, 0].tolist()[:6] == [1, 1, 1, 1, 1, 0] and bool(y[6:, 0].isnan().all())
    # env 1: t = 5's future window is cut by the episode's end, so it is no start; the episode
    # ends within the rollout, so its steps are known; the next episode is too short to tell
    assert y[:, 1].tolist()[:6] == [1, 1, 1, 1, 0, 0] and bool(y[6:, 1].isnan().all())
    assert fall_ahead(r, dones, ts, 2, min_drop=4.5, horizon=3)[:6, 0].tolist() == [0] * 6
    # an episode that began before these steps: u = 1's past window is cut by the first step, so
    # t = 0 cannot be told; a steady reward has no fall
    flat = fall_ahead(torch.full((10, 1), 4.0), dones[:, :1], ts[:, :1] + 100, 2, 2.0, 3)[:, 0]
    assert flat.isnan().tolist() == [True] + [False] * 5 + [True] * 4 and flat[1:6].tolist() == [0] * 5
    with pytest.raises(ValueError, match="horizon must be >= 1 and min_drop > 0"):
        fall_ahead(r, dones, ts, 2, min_drop=0.0, horizon=3)
