import numpy as np
import torch

from mbmpo.normalization import RunningMeanStd


def test_streaming_updates_equal_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(1000, 4))
    rms = RunningMeanStd(4)
    for chunk in np.array_split(data, 37):
        rms.update(torch.as_tensor(chunk))
    assert np.allclose(rms.mean.numpy(), data.mean(0))
    assert np.allclose(rms.var.numpy(), data.var(0))
    assert rms.count.item() == 1000


def test_merge_of_two_workers_equals_concatenated_data():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, (300, 3)), rng.normal(5, 3, (50, 3))
    w1, w2 = RunningMeanStd(3), RunningMeanStd(3)
    w1.update(torch.as_tensor(a))
    w2.update(torch.as_tensor(b))
    w1.merge(w2)
    both = np.concatenate([a, b])
    assert np.allclose(w1.mean.numpy(), both.mean(0))
    assert np.allclose(w1.var.numpy(), both.var(0))
    empty = RunningMeanStd(3)
    empty.merge(w1)
    assert np.allclose(empty.var.numpy(), both.var(0))


def test_constant_features_give_no_nan_and_clip_and_roundtrip():
    rms = RunningMeanStd(2)
    x = torch.tensor([[1.0, 5.0]] * 10)
    rms.update(x)
    y = rms.normalize(x)
    assert torch.isfinite(y).all()
    z = torch.tensor([[1e6, -1e6]])
    assert rms.normalize(z, clip=5.0).abs().max().item() == 5.0
    w = torch.randn(7, 2)
    rms.update(torch.randn(100, 2) * 3)
    assert torch.allclose(rms.denormalize(rms.normalize(w)), w, atol=1e-5)


def test_state_dict_roundtrip():
    rms = RunningMeanStd(3)
    rms.update(torch.randn(20, 3))
    other = RunningMeanStd(3)
    other.load_state_dict(rms.state_dict())
    assert torch.equal(other.mean, rms.mean) and torch.equal(other.count, rms.count)
