"""MB-MPO off the CPU: the imagined loop without host round trips, host/device placement, CUDA runs.

A CUDA device is not needed for most checks: the steps an accelerator takes (``host_sync =
False``) also run on the CPU, where their results and their data-dependent reads can be
compared with the CPU path. The tests marked ``cuda`` run only where CUDA is available.
"""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dynamics.model_env import ImaginedEnv
from dynamics.reward_fns import get_reward_fn
from mbmpo import MBMPO
from mbmpo.errors import TrainingError
from mbmpo.normalization import RunningMeanStd
from mbmpo.sampler import collect, finished_episodes
from tests.test_dynamics import constant_shift_ensemble
from tests.test_mbmpo import flat, pm_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

aten = torch.ops.aten
# ops whose result the host must wait for on an accelerator (a value read, or a data-dependent shape)
HOST_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
              aten.equal.default, aten.is_nonzero.default}


class HostReads(TorchDispatchMode):
    """Counts the ops that would make the host wait for the device."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bool_index = func is aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1])
        if func in HOST_READS or bool_index:
            self.count += 1
        return func(*args, **kwargs)


def host_reads(fn) -> int:
    with HostReads() as mode:
        fn()
    return mode.count


def test_host_read_counter_sees_item_nonzero_and_masks():
    x = torch.arange(5.0)
    assert host_reads(lambda: x.sum().item()) == 1
    assert host_reads(lambda: bool((x > 2).any())) == 1
    assert host_reads(lambda: x[x > 2]) == 1
    assert host_reads(lambda: torch.where(x > 2, x, 0.0).sum()) == 0


def hopper_env(host_sync: bool, horizon: int = 4) -> ImaginedEnv:
    """Two rows: model 0 keeps the hopper standing, model 1 drops it 0.3 per step (it falls
    after one step); deterministic starts, so both step paths must agree exactly."""
    ens = constant_shift_ensemble([0.0, -0.3], obs_dim=12)
    start = torch.zeros(12, dtype=torch.float64)
    start[1] = 1.0  # healthy height
    env = ImaginedEnv(ens, torch.tensor([0, 1]), lambda n, g: start.repeat(n, 1), horizon=horizon,
                      reward_fn=get_reward_fn("Hopper-v5"), action_low=-torch.ones(1), action_high=torch.ones(1))
    env.host_sync = host_sync
    return env


def zero_policy(obs):
    return torch.zeros(obs.shape[0], 1), {}


def test_accelerator_steps_give_the_cpu_steps_rollout():
    cpu, acc = collect(hopper_env(True), zero_policy, 9), collect(hopper_env(False), zero_policy, 9)
    for name in ("obs", "actions", "rewards", "terminated", "truncated", "next_obs", "timesteps"):
        assert torch.equal(getattr(cpu, name), getattr(acc, name)), name
    assert cpu.terminated[:, 1].all() and not cpu.terminated[:, 0].any()  # row 1 falls every step, then restarts
    assert cpu.truncated[3, 0] and cpu.truncated[7, 0]  # row 0 runs to the horizon (4) twice
    assert acc.episode_returns == cpu.episode_returns and acc.episode_lengths == cpu.episode_lengths
    assert acc.episode_lengths == [1, 1, 1, 4, 1, 1, 1, 1, 4, 1, 1]  # step order, then row order


def test_accelerator_steps_defer_the_nan_error_to_the_end_of_the_rollout():
    env = hopper_env(False, horizon=100)
    with torch.no_grad():
        env.ensemble.models[1][-1].bias.fill_(float("nan"))
    env.reset()
    env.step(torch.zeros(2, 1))  # no host read: no error yet
    with pytest.raises(TrainingError, match=r"dynamics model\(s\) \[1\] predicted NaN/inf \(rows \[1\]\)"):
        collect(env, zero_policy, 3)


def trained_pm(tmp_path=None, **kw) -> MBMPO:
    """A point-mass MB-MPO run with every per-step cost of the presets (disagreement penalty,
    fall hazard, terminal value) and observation normalization, after one real iteration."""
    cfg = pm_config(model_type="probabilistic", model_penalty=0.5, fall_penalty=1.0, fall_window=3,
                    fall_horizon=5, terminal_value="imagined", normalize_obs=True, num_meta_steps=1,
                    model_max_epochs=3, **kw)
    algo = MBMPO(cfg, out_dir=tmp_path, console=False)
    algo.learn(120)
    return algo


def test_imagined_rollouts_read_the_device_a_fixed_number_of_times_not_once_per_step():
    algo = trained_pm()
    assert algo.obs_rms.num_samples > 0 and algo.plugins  # normalization and per-step costs are on

    def reads(horizon: int, host_sync: bool) -> int:
        env = algo.imagined_env()
        env.host_sync = host_sync
        env.horizon = horizon
        return host_reads(lambda: collect(env, algo.pre_policy_fn, horizon))

    short, long = reads(3, False), reads(12, False)
    assert short == long  # the end-of-rollout reads (episode returns, the NaN check) only
    assert reads(12, True) > reads(3, True)  # the CPU path reads every step: the counter sees it


def test_running_mean_std_counts_on_the_host():
    rms = RunningMeanStd(3)
    rms.update(torch.randn(10, 3, dtype=torch.float64))
    rms.update(torch.randn(5, 3, dtype=torch.float64))
    assert rms.num_samples == 15.0 == float(rms.count)
    back = RunningMeanStd(3)
    back.load_state_dict(rms.state_dict())
    assert back.num_samples == 15.0
    back.merge(rms)
    assert back.num_samples == 30.0 == float(back.count)
    back.reset()
    assert back.num_samples == 0.0 == float(back.count)


def test_finished_episodes_in_step_then_env_order_from_numpy_and_tensors():
    infos = [{"mask": np.array([False, True]), "r": np.array([1.0, 2.0]), "l": np.array([1, 2])},
             {"mask": np.array([True, True]), "r": np.array([3.5, 4.0]), "l": np.array([3, 1])}]
    assert finished_episodes(infos) == ([2.0, 3.5, 4.0], [2, 3, 1])
    as_tensors = [{k: torch.as_tensor(v) for k, v in i.items()} for i in infos]
    assert finished_episodes(as_tensors) == ([2.0, 3.5, 4.0], [2, 3, 1])
    assert finished_episodes([]) == ([], [])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_run_places_the_loop_on_its_device_and_resumes(tmp_path, device):
    algo = trained_pm(tmp_path / "run", device=device)
    dev = algo.device
    assert dev.type == device and (algo.device_generator is algo.generator) == (device == "cpu")
    nets = [algo.policy, algo.ensemble, algo.obs_rms] + [p.net for p in algo.plugins if hasattr(p, "net")]
    for module in nets:
        assert {t.device.type for t in list(module.parameters()) + list(module.buffers())} == {device}
    assert algo.init_states.device.type == device
    assert algo.dataset.arrays()["obs"].device.type == "cpu"  # real data stay on the host
    assert algo.collect_params is not None and next(iter(algo.collect_params.values())).device.type == device
    algo.learn(60)
    assert np.isfinite(algo.evaluate(2)[0]).all()
    back = MBMPO.load(tmp_path / "run", console=False)
    assert back.device.type == device
    assert torch.equal(flat(back).cpu(), flat(algo).cpu())
    assert torch.equal(back.device_generator.get_state(), algo.device_generator.get_state())
    assert torch.equal(back.init_states.cpu(), algo.init_states.cpu())


@cuda
def test_cuda_imagined_rollout_never_waits_for_the_gpu_mid_rollout():
    algo = trained_pm(device="cuda")
    algo._data = algo.dataset.arrays(algo.device)  # as during the meta-steps: one copy per model fit
    env = algo.imagined_env()
    obs = env.reset()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            for _ in range(2 * algo.config.imagined_horizon):  # through an episode end and its restarts
                act, _ = algo.pre_policy_fn(obs)
                obs = env.step(act)[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
