"""Learned dynamics models, their training, imagined MDPs and exact reward functions."""

from dynamics.ensemble import DynamicsEnsemble
from dynamics.model_env import ImaginedEnv
from dynamics.reward_fns import REWARD_FNS, RewardFn, get_reward_fn
from dynamics.trainer import FitConfig, FitResult, fit_ensemble

__all__ = ["REWARD_FNS", "DynamicsEnsemble", "FitConfig", "FitResult", "ImaginedEnv", "RewardFn",
           "fit_ensemble", "get_reward_fn"]
