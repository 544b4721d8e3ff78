import torch

from mbmpo.meta import (
    adapt,
    adapt_tasks,
    forward_per_row,
    forward_per_task,
    policy_params,
    stack_params,
    vpg_surrogate,
)
from policies import GaussianMLPPolicy


def tiny(seed=0):
    torch.manual_seed(seed)
    pol = GaussianMLPPolicy(3, 2, (8,)).double()
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(64, 3, generator=g, dtype=torch.float64)
    act = torch.randn(64, 2, generator=g, dtype=torch.float64)
    adv = torch.randn(64, generator=g, dtype=torch.float64)
    with torch.no_grad():
        old = pol(obs).log_prob(act)
    return pol, obs, act, adv, old


def test_likelihood_ratio_is_one_at_old_params():
    pol, obs, act, adv, old = tiny()
    j = vpg_surrogate(pol, policy_params(pol), obs, act, adv, old)
    assert torch.allclose(j, adv.mean())


def test_adapt_moves_params_by_exactly_alpha_times_gradient():
    pol, obs, act, adv, old = tiny()
    params = policy_params(pol)
    j = vpg_surrogate(pol, params, obs, act, adv, old)
    grads = torch.autograd.grad(j, list(params.values()))
    new = adapt(pol, params, obs, act, adv, old, inner_lr=0.1)
    for (n, p), g in zip(params.items(), grads):
        assert torch.allclose(new[n], p + 0.1 * g)
    per_param = {n: torch.full_like(p, 0.05) for n, p in params.items()}
    new2 = adapt(pol, params, obs, act, adv, old, inner_lr=per_param)
    for (n, p), g in zip(params.items(), grads):
        assert torch.allclose(new2[n], p + 0.05 * g)


def outer_objective(pol, params, data, post, alpha, first_order=False):
    obs, act, adv, old = data
    new = adapt(pol, params, obs, act, adv, old, alpha, first_order=first_order)
    p_obs, p_act, p_adv = post
    dist = torch.func.functional_call(pol, new, (p_obs,))
    return (dist.log_prob(p_act) * p_adv).mean()


def test_meta_gradient_matches_finite_differences():
    pol, obs, act, adv, old = tiny()
    g = torch.Generator().manual_seed(5)
    post = (torch.randn(32, 3, generator=g, dtype=torch.float64), torch.randn(32, 2, generator=g, dtype=torch.float64),
            torch.randn(32, generator=g, dtype=torch.float64))
    params = policy_params(pol)
    f = outer_objective(pol, params, (obs, act, adv, old), post, 0.5)
    grads = torch.autograd.grad(f, list(params.values()))
    eps = 1e-6
    name = "mean_net.0.weight"
    idx = list(params).index(name)
    for flat_i in (0, 7, 13):
        with torch.no_grad():
            base = {n: p.detach().clone() for n, p in params.items()}
            plus = {n: t.clone() for n, t in base.items()}
            minus = {n: t.clone() for n, t in base.items()}
            plus[name].view(-1)[flat_i] += eps
            minus[name].view(-1)[flat_i] -= eps
        fp = outer_objective(pol, {n: t.requires_grad_() for n, t in plus.items()}, (obs, act, adv, old), post, 0.5)
        fm = outer_objective(pol, {n: t.requires_grad_() for n, t in minus.items()}, (obs, act, adv, old), post, 0.5)
        fd = (fp - fm).item() / (2 * eps)
        assert abs(fd - grads[idx].view(-1)[flat_i].item()) < 1e-6 * max(1.0, abs(fd))


def test_first_order_gives_gradient_at_adapted_params():
    pol, obs, act, adv, old = tiny()
    g = torch.Generator().manual_seed(5)
    post = (torch.randn(32, 3, generator=g, dtype=torch.float64), torch.randn(32, 2, generator=g, dtype=torch.float64),
            torch.randn(32, generator=g, dtype=torch.float64))
    params = policy_params(pol)
    f = outer_objective(pol, params, (obs, act, adv, old), post, 0.5, first_order=True)
    fo = torch.autograd.grad(f, list(params.values()))
    adapted = {n: t.detach().requires_grad_() for n, t in adapt(pol, params, obs, act, adv, old, 0.5).items()}
    dist = torch.func.functional_call(pol, adapted, (post[0],))
    direct = torch.autograd.grad((dist.log_prob(post[1]) * post[2]).mean(), list(adapted.values()))
    for a, b in zip(fo, direct):
        assert torch.allclose(a, b)
    so = torch.autograd.grad(outer_objective(pol, params, (obs, act, adv, old), post, 0.5), list(params.values()))
    assert not all(torch.allclose(a, b) for a, b in zip(fo, so))  # second order differs


def test_per_row_and_per_task_forward_match_individual_calls():
    pol, obs, *_ = tiny()
    params = policy_params(pol)
    tasks = [{n: p + 0.1 * k for n, p in params.items()} for k in range(3)]
    stacked = stack_params(tasks)
    row_task = torch.tensor([0, 2, 1, 1, 0])
    d = forward_per_row(pol, stacked, row_task, obs[:5])
    for i, t in enumerate(row_task.tolist()):
        ref = torch.func.functional_call(pol, tasks[t], (obs[i : i + 1],))
        assert torch.allclose(d.mean[i], ref.mean[0]) and torch.allclose(d.log_std[i], ref.log_std[0])
    dt = forward_per_task(pol, stacked, obs[:6].reshape(3, 2, 3))
    assert dt.mean.shape == (3, 2, 2)
    assert torch.allclose(dt.mean[2, 1], torch.func.functional_call(pol, tasks[2], (obs[5:6],)).mean[0])


def test_batched_adapt_equals_per_task_adapt_including_meta_gradient():
    pol, obs, act, adv, old = tiny()
    params = policy_params(pol)
    per_lr = {n: torch.full_like(p, 0.3) for n, p in params.items()}
    split = [x.reshape(4, 16, *x.shape[1:]) for x in (obs, act, adv, old)]
    for lr, steps, fo in ((0.5, 1, False), (0.2, 2, False), (per_lr, 1, True)):
        ref = stack_params([adapt(pol, params, *(x[t] for x in split), lr, fo, steps) for t in range(4)])
        got = adapt_tasks(pol, params, *split, lr, fo, steps)
        for n in params:
            assert torch.allclose(got[n], ref[n], atol=1e-12)
        # the outer gradient through the batched inner step is the same
        w = torch.randn(4, 2, dtype=torch.float64)

        def outer(stacked, w=w):
            d = forward_per_task(pol, stacked, split[0])
            return (d.mean.sum(1) * w).sum() + (d.log_std.sum(1) * w).sum()

        g_ref = torch.autograd.grad(outer(ref), list(params.values()))
        g_got = torch.autograd.grad(outer(got), list(params.values()))
        for a, b in zip(g_ref, g_got):
            assert torch.allclose(a, b, atol=1e-10)
        assert not all(torch.allclose(a, torch.zeros_like(a)) for a in g_got)
