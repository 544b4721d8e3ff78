import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical as TorchCat
from torch.distributions import Independent, Normal, kl_divergence
from torch.func import functional_call

from policies import (
    Categorical,
    CategoricalMLPPolicy,
    DiagGaussian,
    GaussianMLPPolicy,
    LinearFeatureBaseline,
    MLPValue,
    make_policy,
)
from policies.value import spd_solve


def test_gaussian_matches_torch_distributions():
    torch.manual_seed(0)
    m1, s1, m2, s2 = torch.randn(5, 3), torch.randn(5, 3) * 0.3, torch.randn(5, 3), torch.randn(5, 3) * 0.3
    a = torch.randn(5, 3)
    d1, d2 = DiagGaussian(m1, s1), DiagGaussian(m2, s2)
    t1 = Independent(Normal(m1, s1.exp()), 1)
    t2 = Independent(Normal(m2, s2.exp()), 1)
    assert torch.allclose(d1.log_prob(a), t1.log_prob(a), atol=1e-5)
    assert torch.allclose(d1.entropy(), t1.entropy(), atol=1e-5)
    assert torch.allclose(d1.kl(d2), kl_divergence(t1, t2), atol=1e-5)


def test_categorical_matches_torch_distributions():
    torch.manual_seed(0)
    l1, l2 = torch.randn(6, 4), torch.randn(6, 4)
    a = torch.randint(0, 4, (6,))
    c1, c2 = Categorical(l1), Categorical(l2)
    assert torch.allclose(c1.log_prob(a), TorchCat(logits=l1).log_prob(a), atol=1e-6)
    assert torch.allclose(c1.entropy(), TorchCat(logits=l1).entropy(), atol=1e-6)
    assert torch.allclose(c1.kl(c2), kl_divergence(TorchCat(logits=l1), TorchCat(logits=l2)), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    samples = c1.sample(g)
    assert samples.shape == (6,) and samples.dtype == torch.long
    assert torch.equal(c1.mode(), l1.argmax(-1))


def test_functional_call_with_own_params_equals_module_call_and_ratio_is_one():
    torch.manual_seed(0)
    pol = GaussianMLPPolicy(4, 2, (16, 16))
    obs = torch.randn(8, 4)
    params = dict(pol.named_parameters())
    d_mod, d_fun = pol(obs), functional_call(pol, params, (obs,))
    assert torch.equal(d_mod.mean, d_fun.mean) and torch.equal(d_mod.log_std, d_fun.log_std)
    act = d_mod.sample(torch.Generator().manual_seed(1))
    ratio = (d_fun.log_prob(act) - d_mod.log_prob(act).detach()).exp()
    assert torch.allclose(ratio, torch.ones(8))
    shifted = {k: v + 0.1 for k, v in params.items()}
    assert not torch.allclose(functional_call(pol, shifted, (obs,)).mean, d_mod.mean)


def test_shapes_and_factory():
    box = gym.spaces.Box(-1, 1, (3,), np.float32)
    pol = make_policy(box, gym.spaces.Box(-1, 1, (2,), np.float32), (8,))
    assert isinstance(pol, GaussianMLPPolicy)
    assert pol(torch.zeros(5, 3)).mean.shape == (5, 2)
    cat = make_policy(box, gym.spaces.Discrete(4), (8,))
    assert isinstance(cat, CategoricalMLPPolicy)
    assert cat(torch.zeros(5, 3)).logits.shape == (5, 4)
    assert MLPValue(3, (8,))(torch.zeros(5, 3)).shape == (5,)
    with pytest.raises(ValueError, match="action space"):
        make_policy(box, gym.spaces.MultiBinary(3))
    with pytest.raises(ValueError, match="observation space"):
        make_policy(gym.spaces.Dict({"a": box}), gym.spaces.Discrete(2))


def test_init_log_std_and_ortho_output_scale():
    pol = GaussianMLPPolicy(4, 2, (64, 64), init_log_std=-2.0)
    assert torch.allclose(pol.log_std, torch.full((2,), -2.0))
    assert pol(torch.randn(100, 4)).mean.abs().max() < 0.2  # output gain 0.01


def test_std_floor_clamps_the_forward_pass_and_the_parameter():
    pol = GaussianMLPPolicy(4, 2, (8,), init_log_std=-1.0, min_log_std=-1.5)
    with torch.no_grad():
        pol.log_std.copy_(torch.tensor([-3.0, -1.0]))
    d = pol(torch.randn(5, 4))
    assert torch.equal(d.log_std, torch.tensor([-1.5, -1.0]).expand(5, 2))
    assert torch.allclose(pol.std(), torch.tensor([-1.5, -1.0]).exp())
    # below the floor the std has no gradient; the projection puts it back on the floor,
    # where the gradient flows again (the outer step can raise the std)
    d.entropy().sum().backward()
    assert pol.log_std.grad[0] == 0 and pol.log_std.grad[1] > 0
    pol.clamp_log_std_()
    assert torch.equal(pol.log_std.detach(), torch.tensor([-1.5, -1.0]))
    pol.zero_grad()
    pol(torch.randn(5, 4)).entropy().sum().backward()
    assert (pol.log_std.grad > 0).all()
    free = GaussianMLPPolicy(4, 2, (8,), init_log_std=-3.0)
    free.clamp_log_std_()
    assert torch.equal(free(torch.zeros(1, 4)).log_std, torch.full((1, 2), -3.0))


def test_linear_feature_baseline_fits_linear_function_of_features():
    torch.manual_seed(0)
    obs = torch.randn(500, 3)
    t = torch.randint(0, 100, (500,))
    target = 2.0 * obs[:, 0] - obs[:, 1] ** 2 + 0.5 * (t / 100.0) + 3.0
    b = LinearFeatureBaseline(3)
    b.fit(obs, t, target)
    assert torch.allclose(b(obs, t), target, atol=1e-3)


def test_baseline_solve_does_not_depend_on_memory_alignment():
    # MKL's least-squares driver (gelsy, torch.linalg.lstsq) rounds differently for inputs at
    # different addresses, which made seeded Hopper runs differ between processes; the baseline's solve must give bit-identical results wherever its inputs lie
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(100, 12, generator=gen, dtype=torch.float64)
    x = LinearFeatureBaseline.features(obs, torch.arange(100))
    a = x.T @ x + 1e-5 * torch.eye(x.shape[1], dtype=x.dtype)
    b = x.T @ torch.randn(100, generator=gen, dtype=torch.float64).cumsum(0)

    def at_offset(t: torch.Tensor, off: int) -> torch.Tensor:
        moved = torch.empty(t.numel() + 8, dtype=t.dtype)[off:off + t.numel()].view(t.shape)
        return moved.copy_(t)

    sols = {spd_solve(at_offset(a, off), at_offset(b, off)).numpy().tobytes() for off in range(8)}
    assert len(sols) == 1
    assert torch.allclose(spd_solve(a, b), torch.linalg.solve(a, b), rtol=1e-6, atol=1e-8)
    assert spd_solve(-a, b) is None  # not positive definite: fit raises the ridge instead


def test_detached_distribution_is_frozen_against_in_place_parameter_steps():
    # pi_old for KL penalties / TRPO's KL check must not follow later optimizer steps; the
    # state-independent log-std is an expanded view of the parameter
    pol = GaussianMLPPolicy(2, 1, (8,))
    old = pol(torch.zeros(3, 2)).detach()
    with torch.no_grad():
        pol.log_std.add_(1.0)
    assert torch.equal(old.log_std, torch.zeros(3, 1))
    assert old.kl(pol(torch.zeros(3, 2))).min() > 0.1
