import torch

from mbmpo.mbmpo.extensions.terminal_value import fit_td_value, td_targets, terminal_values
from policies import MLPValue


def test_td_targets_and_terminal_values_by_hand():
    net = lambda x: x[:, 0]  # noqa: E731  (scaled value = first feature)
    y = td_targets(net, torch.tensor([1.0, 2.0]), torch.tensor([[4.0], [4.0]]), torch.tensor([False, True]), 0.5)
    assert y.tolist() == [0.5 * 1 + 0.5 * 4, 0.5 * 2]
    boot = terminal_values(net, torch.tensor([[3.0], [3.0]]), torch.tensor([False, True]), 0.9)
    assert torch.allclose(boot, torch.tensor([0.9 * 3.0 / 0.1, 0.0], dtype=torch.float64))


def test_fit_td_value_learns_a_self_loop_and_a_terminal_state():
    """State A loops on itself with reward 1 (V = 1 / (1 - 0.5) = 2); state B ends with reward 3
    (V = 3). Fitted value iteration needs about a dozen backups to get A within 0.1."""
    torch.manual_seed(0)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    feats = torch.stack([a, b]).repeat(128, 1)
    rewards = torch.tensor([1.0, 3.0]).repeat(128)
    terminated = torch.tensor([False, True]).repeat(128)
    net = MLPValue(2, (16,), "tanh", True)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    stats = fit_td_value(net, opt, feats, rewards, feats, terminated, gamma=0.5, epochs=40,
                         batch_size=32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = net(torch.stack([a, b])) / (1 - 0.5)
    assert abs(float(v[0]) - 2.0) < 0.1 and abs(float(v[1]) - 3.0) < 0.1
    assert stats["value/td_loss"] < 1e-3 and abs(stats["value/mean"] - 2.5) < 0.1
