"""Dev-only cross-check: MB-MPO's meta-gradient against the one ``higher`` computes.

``mbmpo.meta.adapt`` takes the differentiable inner step with ``torch.func.functional_call``
and ``autograd.grad(create_graph=True)``. ``higher`` (named in the original design, now
unmaintained) gets the same second-order gradient by monkey-patching the module into a
functional one and stepping a differentiable SGD. On a tiny Gaussian policy in float64 the
two must agree to rounding.
"""

import pytest
import torch

from mbmpo.meta import adapt, policy_params, vpg_surrogate
from policies.gaussian_mlp import GaussianMLPPolicy

higher = pytest.importorskip(
    "higher",
    reason="needs the optional dev package 'higher' (pip install higher): it only cross-checks "
           "mbmpo.meta's torch.func meta-gradient against an independent implementation; "
           "the library does not use it (higher is unmaintained)",
)

OBS_DIM, ACT_DIM, BATCH, INNER_LR = 3, 2, 16, 0.5


def surrogate(dist, act, adv, old_logp):
    """``mean(pi(a|s) / pi_old(a|s) * A)``, the inner and outer objective, written out here."""
    return (torch.exp(dist.log_prob(act) - old_logp) * adv).mean()


def make_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(OBS_DIM, ACT_DIM, hidden_sizes=(8, 8), init_log_std=-0.5).double()
    with torch.no_grad():  # move the output layer off its near-zero init so every term counts
        policy.mean_net[-1].weight.normal_(0.0, 0.5, generator=gen)
        policy.log_std.add_(0.3 * torch.randn(ACT_DIM, generator=gen, dtype=torch.float64))

    def batch():
        obs = torch.randn(BATCH, OBS_DIM, generator=gen, dtype=torch.float64)
        act = torch.randn(BATCH, ACT_DIM, generator=gen, dtype=torch.float64)
        adv = torch.randn(BATCH, generator=gen, dtype=torch.float64)
        with torch.no_grad():  # a sampling policy near, not at, theta: ratios are not all 1
            old_logp = policy(obs).log_prob(act) + 0.1 * torch.randn(BATCH, generator=gen, dtype=torch.float64)
        return obs, act, adv, old_logp

    return policy, batch(), batch()


def meta_gradient_mbmpo(policy, inner, outer, num_steps=1, first_order=False):
    params = policy_params(policy)
    adapted = adapt(policy, params, *inner, inner_lr=INNER_LR, first_order=first_order, num_steps=num_steps)
    loss = vpg_surrogate(policy, adapted, *outer)
    return loss, adapted, torch.autograd.grad(loss, list(params.values()))


def meta_gradient_higher(policy, inner, outer, num_steps=1):
    obs_in, *rest_in = inner
    obs_out, *rest_out = outer
    # plain SGD descends, so stepping on -J ascends J: theta' = theta + alpha * grad J(theta)
    opt = torch.optim.SGD(policy.parameters(), lr=INNER_LR)
    with higher.innerloop_ctx(policy, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(num_steps):
            diffopt.step(-surrogate(fmodel(obs_in), *rest_in))
        loss = surrogate(fmodel(obs_out), *rest_out)
        adapted = dict(zip([n for n, _ in policy.named_parameters()], fmodel.parameters()))
        grads = torch.autograd.grad(loss, list(policy.parameters()))
    return loss, adapted, grads


@pytest.mark.parametrize("num_steps", [1, 2])
def test_meta_gradient_matches_higher(num_steps):
    policy, inner, outer = make_problem()
    loss, adapted, grads = meta_gradient_mbmpo(policy, inner, outer, num_steps)
    loss_h, adapted_h, grads_h = meta_gradient_higher(policy, inner, outer, num_steps)

    assert set(adapted) == set(adapted_h)
    for name in adapted:
        torch.testing.assert_close(adapted[name], adapted_h[name], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, loss_h, rtol=1e-10, atol=1e-12)
    for name, g, g_h in zip(adapted, grads, grads_h):
        torch.testing.assert_close(g, g_h, rtol=1e-6, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")

    # the comparison sees the second-order terms: the first-order gradient is far from higher's
    _, _, grads_fo = meta_gradient_mbmpo(policy, inner, outer, num_steps, first_order=True)
    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    assert (flat(grads_fo) - flat(grads_h)).norm() > 1e-2 * flat(grads_h).norm()
