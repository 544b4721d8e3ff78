import torch

from mbmpo.trpo import conjugate_gradient, line_search, trpo_step
from policies import DiagGaussian, GaussianMLPPolicy


def test_conjugate_gradient_solves_random_spd_system():
    torch.manual_seed(0)
    m = torch.randn(10, 10, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(10, dtype=torch.float64)
    b = torch.randn(10, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=50)
    assert torch.allclose(a @ x, b, atol=1e-6)


def test_line_search_never_accepts_kl_above_delta():
    p = torch.nn.Parameter(torch.zeros(2))
    # surrogate keeps improving along the step, KL grows quadratically: only small steps fit.
    surrogate = lambda: p.sum()  # noqa: E731
    kl = lambda: (p**2).sum() * 50  # noqa: E731
    info = line_search([p], surrogate, kl, torch.ones(2), 2.0, max_kl=0.01, surrogate_before=0.0,
                       backtrack_coeff=0.5, max_backtracks=20)
    assert info.accepted and info.kl <= 0.01
    assert torch.allclose(kl(), torch.tensor(info.kl))
    # no admissible step: parameters are restored
    q = torch.nn.Parameter(torch.zeros(2))
    info = line_search([q], lambda: -q.sum(), lambda: (q**2).sum(), torch.ones(2), 1.0, 0.01, 0.0,
                       max_backtracks=5)
    assert not info.accepted and torch.equal(q.detach(), torch.zeros(2))


def test_trpo_step_improves_surrogate_within_kl():
    torch.manual_seed(0)
    pol = GaussianMLPPolicy(3, 2, (16,))
    obs, act = torch.randn(256, 3), torch.randn(256, 2)
    adv = torch.randn(256)
    with torch.no_grad():
        old = pol(obs).detach()
        old_logp = old.log_prob(act)

    def surr():
        return ((pol(obs).log_prob(act) - old_logp).exp() * adv).mean()

    def kl():
        return old.kl(pol(obs)).mean()

    info = trpo_step(list(pol.parameters()), surr, kl, max_kl=0.01)
    assert info.accepted
    assert info.surrogate_after > info.surrogate_before
    with torch.no_grad():
        assert kl().item() <= 0.01 + 1e-7
    assert isinstance(old, DiagGaussian)
