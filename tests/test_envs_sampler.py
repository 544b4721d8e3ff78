import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

from mbmpo.envs import (
    GymVecEnv,
    check_env_id,
    check_spaces,
    evaluate_episodes,
    make_env_fn,
)
from mbmpo.errors import ConfigError
from mbmpo.sampler import collect
from mbmpo.wrappers import MiniGridFlatObs, VecNormalize


def zero_policy(obs):
    return torch.zeros(obs.shape[0], 1), {"value": torch.zeros(obs.shape[0])}


def test_unknown_env_id_names_it_and_suggests():
    with pytest.raises(ConfigError, match="unknown env id 'HalfCheetah-v55'.*HalfCheetah-v5"):
        check_env_id("HalfCheetah-v55")


def test_dict_observation_space_is_rejected_with_clear_error():
    box = gym.spaces.Box(-1, 1, (2,))
    with pytest.raises(ConfigError, match="observation space Dict"):
        check_spaces(gym.spaces.Dict({"x": box}), box)
    with pytest.raises(ConfigError, match="a 1-D Box is needed"):
        check_spaces(box, gym.spaces.Discrete(3), need_box_actions=True)


def test_truncation_keeps_final_obs_and_episode_stats():
    env = GymVecEnv("mbmpo_test/PointMass-v0", 2, seed=3)
    roll = collect(env, zero_policy, 65)
    # 30-step time limit: steps 29 and 59 truncate
    assert roll.truncated[29].all() and roll.truncated[59].all() and roll.truncated.sum() == 4
    assert not roll.terminated.any()
    # zero action: x stays constant within an episode, so final obs equals the episode's obs
    assert torch.allclose(roll.next_obs[29], roll.obs[29])
    assert not torch.allclose(roll.obs[30], roll.obs[29])  # new episode after autoreset
    assert torch.allclose(roll.next_obs[:29], roll.obs[1:30])
    assert roll.timesteps[29].eq(29).all() and roll.timesteps[30].eq(0).all()
    assert len(roll.episode_returns) == 4 and roll.episode_lengths == [30, 30, 30, 30]
    expected = roll.rewards[:30, 0].sum().item()
    assert abs(roll.episode_returns[0] - expected) < 1e-4
    # continuation
    roll2 = collect(env, zero_policy, 5, roll.last_obs, roll.last_timesteps)
    assert roll2.timesteps[0].eq(5).all()
    env.close()


def test_termination_flag_in_discrete_env():
    env = GymVecEnv("mbmpo_test/Chain-v0", 1)
    roll = collect(env, lambda o: (torch.zeros(o.shape[0], dtype=torch.long), {}), 7)
    # time limit 3 truncates before the chain terminates
    assert roll.truncated[:, 0].tolist() == [False, False, True, False, False, True, False]
    env.close()


def test_vec_normalize_updates_only_while_training_and_roundtrips():
    env = VecNormalize(GymVecEnv("mbmpo_test/PointMass-v0", 2, seed=0), gamma=0.9)
    collect(env, zero_policy, 10)
    count = env.obs_rms.count.item()
    assert count == 2 * 11  # reset + 10 steps
    env.training = False
    collect(env, zero_policy, 10)
    assert env.obs_rms.count.item() == count
    other = VecNormalize(GymVecEnv("mbmpo_test/PointMass-v0", 2, seed=0))
    other.load_state_dict(env.state_dict())
    x = torch.randn(4, 1)
    assert torch.equal(other.normalize_obs(x), env.normalize_obs(x))
    env.close()
    other.close()


def test_evaluate_episodes_runs_each_copy_once():
    env = GymVecEnv("mbmpo_test/PointMass-v0", 3, seed=0)
    rets, lens = evaluate_episodes(env, lambda o: torch.zeros(o.shape[0], 1), seed=5)
    assert lens.tolist() == [30, 30, 30]
    rets2, _ = evaluate_episodes(env, lambda o: torch.zeros(o.shape[0], 1), seed=5)
    assert np.allclose(rets, rets2)
    env.close()


def test_minigrid_flat_observation():
    check_env_id("MiniGrid-Empty-5x5-v0")
    env = MiniGridFlatObs(gym.make("MiniGrid-Empty-5x5-v0"))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (7 * 7 * 3 + 4,) and env.observation_space.contains(obs)
    venv = GymVecEnv("MiniGrid-Empty-5x5-v0", 2)
    assert isinstance(venv.single_action_space, gym.spaces.Discrete)
    assert venv.reset().shape == (2, 151)
    venv.close()


# ----- a quiet console: MuJoCo's 'settotalmass' deprecation warning -----------------------------
SETTOTALMASS = "compiler attribute 'settotalmass' is deprecated"


def _unfiltered_make_warns(capfd) -> bool:
    """Whether this MuJoCo prints the deprecation when gymnasium makes HalfCheetah directly."""
    gym.make("HalfCheetah-v5").close()
    out, err = capfd.readouterr()
    return SETTOTALMASS in out + err


def test_making_halfcheetah_through_the_library_prints_no_settotalmass_warning(capfd, monkeypatch,
                                                                                tmp_path):
    monkeypatch.chdir(tmp_path)  # MuJoCo's own handler also appends its warnings to MUJOCO_LOG.TXT
    if not _unfiltered_make_warns(capfd):
        pytest.skip("this MuJoCo version does not warn about 'settotalmass'")
    (tmp_path / "MUJOCO_LOG.TXT").unlink(missing_ok=True)
    import mujoco

    before = mujoco.get_mju_user_warning()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_env_fn("HalfCheetah-v5")().close()
        make_env_fn("mbmpo/HalfCheetahNoVel-v5")().close()
        venv = GymVecEnv("HalfCheetah-v5", 2, seed=0)
        venv.reset()
        venv.close()
    out, err = capfd.readouterr()
    assert SETTOTALMASS not in out + err  # MuJoCo prints it from C, on fd 2
    assert not [w for w in caught if "settotalmass" in str(w.message)]
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert mujoco.get_mju_user_warning() is before  # the warning callback is restored
    # outside the library's env creation MuJoCo keeps warning as before
    assert _unfiltered_make_warns(capfd)


class _MujocoWarnsOnMake(gym.Env):
    """A test env whose construction makes MuJoCo warn about something else (a NaN position)."""

    def __init__(self):
        import mujoco

        model = mujoco.MjModel.from_xml_string(
            "<mujoco><worldbody><body><freejoint/><geom size='0.1'/></body></worldbody></mujoco>")
        data = mujoco.MjData(model)
        data.qpos[0] = float("nan")
        mujoco.mj_checkPos(model, data)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def test_other_mujoco_warnings_still_reach_the_console_and_the_log(capfd, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    if "mbmpo_test/MujocoWarns-v0" not in gym.registry:
        gym.register("mbmpo_test/MujocoWarns-v0", entry_point=_MujocoWarnsOnMake)
    make_env_fn("mbmpo_test/MujocoWarns-v0")().close()
    _, err = capfd.readouterr()
    assert "WARNING: " in err and "QPOS" in err
    assert "QPOS" in (tmp_path / "MUJOCO_LOG.TXT").read_text()
