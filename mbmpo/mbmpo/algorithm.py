"""MB-MPO: model-based meta-policy optimization (Clavera, Rothfuss et al., CoRL 2018).

One iteration is Algorithm 1 of the paper::

    real env --collect(adapted policies theta'_k; random actions first)--> data set (FIFO)
    data set --> fit K dynamics models (per-model early stopping)
    repeat num_meta_steps:
        imagined MDPs (task t uses model t // tasks_per_model for its whole rollout)
        pre-update rollouts with theta -> advantages            (task_batch.py)
        theta'_t = theta + alpha * grad J_t(theta)               (meta.py, differentiable)
        post-update rollouts with theta'_t -> advantages
        outer step on the mean post-update surrogate             (outer.py: TRPO or PPO-style)
    evaluate theta (and the adapted policies) on separate real episodes

Research ideas hook in through plug-ins (:mod:`mbmpo.mbmpo.extensions`); this module calls
their protocol and names none of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from dynamics.ensemble import DynamicsEnsemble
from dynamics.model_env import ImaginedEnv, tasks_model_idx
from dynamics.reward_fns import RewardFn, get_reward_fn
from dynamics.trainer import FitConfig, fit_ensemble
from mbmpo.algorithm import Algorithm, record_evaluation, warn_if_bf16_emulated
from mbmpo.buffers import Rollout, TransitionDataset
from mbmpo.envs import GymVecEnv, check_spaces, evaluate_episodes
from mbmpo.errors import ConfigError
from mbmpo.mbmpo.checkpoint import load_run_state, run_state
from mbmpo.mbmpo.config import MBMPOConfig
from mbmpo.mbmpo.extensions import Plugin, build_plugins
from mbmpo.mbmpo.outer import outer_ppo, outer_trpo
from mbmpo.mbmpo.task_batch import MLPBaseline, TaskBatch, linear_values, make_task_batch
from mbmpo.meta import adapt_tasks, forward_per_row, forward_per_task, policy_params
from mbmpo.normalization import RunningMeanStd
from mbmpo.sampler import collect
from policies import GaussianMLPPolicy, MLPValue


class MBMPO(Algorithm):
    """Model-based meta-policy optimization.

    Args:
        config: an :class:`MBMPOConfig`; its plug-in fields enable the built-in plug-ins.
        out_dir: run directory (``None`` writes nothing).
        console: print progress.
        plugins: further :class:`~mbmpo.mbmpo.extensions.Plugin` instances, called after the
            built-in ones.

    Example::

        algo = MBMPO(MBMPOConfig(env_id="HalfCheetah-v5", total_steps=50_000), out_dir="runs/mbmpo")
        algo.learn()
        action = algo.predict(obs)      # pre-update policy, full observation in
    """

    algo_name: ClassVar[str] = "mbmpo"
    config_cls: ClassVar[type] = MBMPOConfig
    console_keys: ClassVar[list[str]] = ["iteration", "real_steps", "eval_return_mean", "imagined/pre_return",
                                         "imagined/post_return", "model/val_loss_mean", "time/iteration_s"]
    config: MBMPOConfig

    def __init__(self, config: MBMPOConfig, out_dir: str | Path | None = None, console: bool = True,
                 plugins: Sequence[Plugin] = ()):
        super().__init__(config, out_dir, console)
        c = config
        self.reward_fn: RewardFn | None = None if c.learned_reward else get_reward_fn(c.env_id)
        env_kwargs = dict(c.env_kwargs)
        if self.reward_fn is not None:
            env_kwargs = {**self.reward_fn.env_kwargs(), **env_kwargs}
        self.env_kwargs = env_kwargs
        self.env = GymVecEnv(c.env_id, c.num_envs, seed=c.seed, env_kwargs=env_kwargs,
                             vectorization=c.vectorization, dtype=torch.float64)
        check_spaces(self.env.single_observation_space, self.env.single_action_space, need_box_actions=True)
        self.action_space = self.env.single_action_space
        self._act_low = torch.as_tensor(self.action_space.low, dtype=torch.float32)
        self._act_high = torch.as_tensor(self.action_space.high, dtype=torch.float32)
        self.obs_dim = self.env.single_observation_space.shape[0]
        self.act_dim = self.action_space.shape[0]
        self.num_position_dims = self.reward_fn.num_position_dims if self.reward_fn else 0
        self.feat_dim = self.obs_dim - self.num_position_dims
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.policy = self.build_policy().to(self.device)
            self.ensemble = self.build_ensemble().to(self.device)
        self.inner_lr: float | dict[str, Tensor] = self.initial_inner_lr()
        self.obs_rms = RunningMeanStd(self.feat_dim).to(self.device)
        # real envs and data set on the host, the rest on self.device; draws there use
        # device_generator (on the CPU, the run's one generator)
        self.generator = torch.Generator().manual_seed(c.seed)
        self.device_generator = (self.generator if self.device.type == "cpu"
                                 else torch.Generator(self.device).manual_seed(c.seed))
        warn_if_bf16_emulated([n for n in ("imagined_precision", "model_fit_precision")
                               if getattr(c, n) == "bfloat16"], self.device)
        self.mlp_baseline: MLPBaseline | None = None
        if c.baseline == "mlp":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.seed + 1)
                net = MLPValue(self.feat_dim + 1, c.value_hidden_sizes, c.activation, c.ortho_init).to(self.device)
            self.mlp_baseline = MLPBaseline(net, c.imagined_horizon, c.baseline_epochs, self.generator)
        self.plugins: list[Plugin] = build_plugins(c) + list(plugins)
        names = [p.name for p in self.plugins]
        if len(set(names)) != len(names):
            raise ConfigError(f"plug-in names must be unique, got {names}")
        kinds = {p.uncertainty for p in self.plugins if p.uncertainty is not None}
        if len(kinds) > 1:
            raise ConfigError(f"plug-ins ask for different ensemble uncertainties {sorted(kinds)}; use one")
        self.uncertainty = kinds.pop() if kinds else None
        for p in self.plugins:
            p.setup(self)
        # which model's adapted policy collected each real row (-1: random warm-up, or theta)
        columns = {"collector_model": -1.0}
        columns.update({name: fill for p in self.plugins for name, fill in p.dataset_columns().items()})
        self.dataset = TransitionDataset(self.obs_dim, self.act_dim, c.dataset_capacity,
                                         num_keys=c.num_models if c.model_split == "persistent" else 0,
                                         columns=columns)
        self.init_states = torch.zeros(0, self.obs_dim, dtype=torch.float64, device=self.device)
        self.fit_config = FitConfig(
            learning_rate=c.model_learning_rate, batch_size=c.model_batch_size,
            max_epochs=c.model_max_epochs, epoch_rows=c.model_epoch_rows, val_fraction=c.model_val_fraction,
            bootstrap=c.model_bootstrap, early_stop_ema=c.model_early_stop_ema,
            early_stopping=c.model_early_stopping, precision=getattr(torch, c.model_fit_precision))
        self.inner_kl_coef = float(c.inner_kl_coef)
        self.outer_optimizer = (torch.optim.Adam(self.outer_params(), lr=c.outer_learning_rate)
                                if c.outer == "ppo" else None)
        self.collect_params: dict[str, Tensor] | None = None  # adapted params for real collection
        self._obs: Tensor | None = None
        self._ts: Tensor | None = None
        self._bar: Any = None
        self._data: dict[str, Tensor] | None = None  # the data set's arrays (on the device) while it does not change

    def plugin(self, name: str) -> Plugin:
        """The enabled plug-in called ``name`` (KeyError when none is)."""
        for p in self.plugins:
            if p.name == name:
                return p
        raise KeyError(f"no plug-in {name!r} enabled; enabled: {[p.name for p in self.plugins]}")

    def build_policy(self) -> GaussianMLPPolicy:
        """A freshly initialised policy of the config's shape (draws from torch's global RNG)."""
        c = self.config
        return GaussianMLPPolicy(self.feat_dim, self.act_dim, c.hidden_sizes, c.activation, c.init_log_std,
                                 c.ortho_init, math.log(c.min_std) if c.min_std > 0 else None)

    def build_ensemble(self, model_type: str | None = None) -> DynamicsEnsemble:
        """Freshly initialised dynamics models of the config's shape, of ``model_type``
        (default: the config's) (draws from torch's global RNG)."""
        c = self.config
        return DynamicsEnsemble(self.obs_dim, self.act_dim, c.num_models, c.model_hidden_sizes,
                                c.model_activation, self.num_position_dims, c.model_weight_norm,
                                reward_head=c.learned_reward,
                                probabilistic=(model_type or c.model_type) == "probabilistic")

    def initial_inner_lr(self) -> float | dict[str, Tensor]:
        """alpha for ``self.policy``: the configured float, or (``learn_inner_lr``, Meta-SGD) one
        learnable tensor per policy parameter, shaped like it and filled with ``inner_lr``."""
        c = self.config
        if not c.learn_inner_lr:
            return c.inner_lr
        return {n: torch.full_like(p, c.inner_lr, requires_grad=True) for n, p in self.policy.named_parameters()}

    def outer_params(self) -> list[Tensor]:
        """What the outer step optimizes: theta, and alpha when it is learned."""
        extra = list(self.inner_lr.values()) if isinstance(self.inner_lr, dict) else []
        return list(self.policy.parameters()) + extra

    # ----- acting -------------------------------------------------------------------------
    def features(self, obs: Tensor) -> Tensor:
        """Full observation ``[..., obs_dim]`` (any device) -> policy input ``[..., feat_dim]``
        (float32, on ``self.device``)."""
        f = obs[..., self.num_position_dims :].to(self.device)
        if self.config.normalize_obs and self.obs_rms.num_samples > 0:
            f = self.obs_rms.normalize(f, self.config.clip_obs)
        return f.float()

    @torch.no_grad()
    def predict(self, obs: np.ndarray | Tensor, deterministic: bool = True) -> np.ndarray:
        """Pre-update policy actions for full observations ``[B, obs_dim]`` (or one row): those
        of ``gymnasium.make(env_id, **algo.env_kwargs)``, which keep the positions the reward
        functions need (e.g. ``exclude_current_positions_from_observation=False``)."""
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float64)
        if x.shape[-1] != self.obs_dim:
            raise ValueError(f"observation has {x.shape[-1]} entries, this policy takes {self.obs_dim}: "
                             f"make the env with gymnasium.make({self.config.env_id!r}, **algo.env_kwargs) "
                             f"= {self.env_kwargs}")
        single = x.dim() == 1
        dist = self.policy(self.features(x.unsqueeze(0) if single else x))
        act = dist.mode() if deterministic else dist.sample(self.device_generator)
        a = np.clip(act.cpu().numpy(), self.action_space.low, self.action_space.high)
        return a[0] if single else a

    def pre_policy_fn(self, obs: Tensor):
        """Sampling policy function of theta (:func:`~mbmpo.sampler.collect`); answers on ``obs``'s device."""
        dist = self.policy(self.features(obs))
        act = dist.sample(self.device_generator)
        return act.to(obs.device), {"log_prob": dist.log_prob(act).to(obs.device)}

    def adapted_policy_fn(self, stacked: dict[str, Tensor], row_task: Tensor | None = None):
        """Row i acts with task ``row_task[i]``'s parameters; ``None`` means rows are split into
        equal contiguous blocks per task (imagined rollouts), which avoids a per-row gather."""
        num_tasks = next(iter(stacked.values())).shape[0]
        row_task = None if row_task is None else row_task.to(self.device)

        def fn(obs: Tensor):
            f = self.features(obs)
            if row_task is None:
                d = forward_per_task(self.policy, stacked, f.view(num_tasks, -1, f.shape[-1]))
                dist = type(d)(*(t.reshape(-1, t.shape[-1]) for t in d))
            else:
                dist = forward_per_row(self.policy, stacked, row_task, f)
            act = dist.sample(self.device_generator)
            return act.to(obs.device), {"log_prob": dist.log_prob(act).to(obs.device)}

        return fn

    def spread_tasks(self, num_rows: int, offset: int = 0) -> Tensor:
        """``[num_rows]`` tasks, one per row, cycling over the models first (row r uses model
        ``(offset + r) % K``) and over each model's tasks second: tailored exploration collects
        with the adapted policies of every model, not of one."""
        c = self.config
        slot = offset + torch.arange(num_rows)
        return (slot % c.num_models) * c.tasks_per_model + (slot // c.num_models) % c.tasks_per_model

    def collector_tasks(self) -> Tensor:
        """The task whose adapted policy each real env copy collects with this iteration. The
        assignment rotates by ``num_envs`` slots per iteration, so with fewer env copies than
        models every model's adapted policies collect an equal share over K iterations."""
        return self.spread_tasks(self.config.num_envs, offset=self.iteration * self.config.num_envs)

    def _random_policy_fn(self, obs: Tensor):
        u = torch.rand((obs.shape[0], self.act_dim), generator=self.generator)
        return self._act_low + u * (self._act_high - self._act_low), {}

    # ----- Algorithm 1: real data and models ----------------------------------------------------
    def applied_actions(self, actions: Tensor) -> Tensor:
        """The actions ``[..., act_dim]`` clipped to the bounds, as the env applied them: what the
        models learn from (imagined steps clip the same way)."""
        return torch.max(torch.min(actions, self._act_high), self._act_low)

    def collect_real(self) -> Rollout:
        """Real steps: random actions first, then the adapted policies (or theta); adds them to the data set."""
        c = self.config
        self._data = None
        collector = torch.full((c.num_envs,), -1.0)
        if self.num_timesteps == 0 and c.warmup_steps > 0:
            steps, fn = math.ceil(c.warmup_steps / c.num_envs), self._random_policy_fn
        elif c.collect_with == "adapted" and self.collect_params is not None:
            tasks = self.collector_tasks()
            collector = (tasks // c.tasks_per_model).double()
            steps, fn = c.num_steps, self.adapted_policy_fn(self.collect_params, tasks)
        else:
            steps, fn = c.num_steps, self.pre_policy_fn
        if self._obs is None:
            # seeded by iteration, so a run resumed at an episode boundary repeats exactly
            self._obs = self.env.reset(seed=c.seed + 7919 * self.iteration)
            self._ts = None
        roll = collect(self.env, fn, steps, self._obs, self._ts)
        self._obs, self._ts = roll.last_obs, roll.last_timesteps
        if bool(roll.dones[-1].all()):
            self._obs = None  # every copy just finished an episode: reset (seeded) next time
        applied = self.applied_actions(roll.actions)
        columns = {"collector_model": collector.expand(steps, -1)}
        columns.update({name: v for p in self.plugins for name, v in p.label_real(roll).items()})
        self.dataset.add(roll.obs, applied, roll.next_obs, roll.rewards, roll.terminated, self.generator,
                         columns=columns)
        starts = roll.obs[roll.timesteps == 0].to(self.device)
        self.init_states = torch.cat([self.init_states, starts])[-10_000:]
        return roll

    def fit_models(self) -> dict[str, float]:
        """Fit the K models on the real data set, refresh the input statistics, then the plug-ins."""
        data = self._data = self.dataset.arrays(self.device)  # one copy per fit, shared until new data
        val_mask = data["keys"] < self.config.model_val_fraction if "keys" in data else None
        res = fit_ensemble(self.ensemble, data["obs"], data["act"], data["next_obs"],
                           data["reward"] if self.config.learned_reward else None,
                           self.fit_config, self.generator, val_mask, on_epoch=self._show_epoch)
        if self.config.normalize_obs:
            self.obs_rms.reset()
            self.obs_rms.update(data["obs"][:, self.num_position_dims :])
        stats = res.log_dict()
        for p in self.plugins:
            stats.update(p.fit_real(data))
        return stats

    # ----- Algorithm 1: meta-steps in the imagined MDPs --------------------------------------
    def init_states_fn(self, n: int, gen: torch.Generator) -> Tensor:
        """``n`` imagined start states (on ``gen``'s device): real initial states, or real
        visited states (plug-ins may replace some of the drawn rows)."""
        if self.config.imagined_init == "reset" and len(self.init_states) > 0:
            idx = torch.randint(len(self.init_states), (n,), generator=gen, device=gen.device)
            return self.init_states[idx]
        data = self._data if self._data is not None else self.dataset.arrays(self.device)
        idx = torch.randint(len(data["obs"]), (n,), generator=gen, device=gen.device)
        for p in self.plugins:
            idx = p.start_rows(idx, data, gen)
        return data["obs"][idx]

    def imagined_env(self) -> ImaginedEnv:
        """The K x tasks_per_model imagined MDPs, ``rollouts_per_task`` rows each."""
        c = self.config
        idx = tasks_model_idx(c.num_models, c.tasks_per_model, c.rollouts_per_task)
        costs = [(p.cost_key or p.name, p.reward_cost) for p in self.plugins if p.has_reward_cost]
        return ImaginedEnv(self.ensemble, idx, self.init_states_fn, c.imagined_horizon, self.reward_fn,
                           self.action_space.low, self.action_space.high, c.imagined_clip_obs,
                           self.device_generator, sample=c.model_sample, costs=costs, cost_uncertainty=self.uncertainty,
                           compute_dtype=getattr(torch, c.imagined_precision))

    def task_batch(self, roll: Rollout) -> TaskBatch:
        """Per-task advantages of an imagined rollout (plug-in bootstraps at the horizon)."""
        c = self.config
        boots = [b for p in self.plugins if p.has_bootstrap
                 if (b := p.bootstrap(roll.next_obs[-1], roll.terminated[-1])) is not None]
        bootstrap = sum(boots[1:], boots[0]) if boots else None
        values = (self.mlp_baseline.values if self.mlp_baseline is not None
                  else linear_values(c.meta_batch_size, c.rollouts_per_task))
        return make_task_batch(roll, self.features, values, bootstrap, c.meta_batch_size, c.rollouts_per_task,
                               c.gamma, c.gae_lambda, c.normalize_adv)

    def adapt(self, pre: TaskBatch, create_graph: bool) -> dict[str, Tensor]:
        """theta'_t for every task: the inner step(s) on its pre-update samples (:mod:`mbmpo.meta`)."""
        c = self.config
        base = policy_params(self.policy)
        if not create_graph:
            base = {n: p.detach().requires_grad_() for n, p in base.items()}
        lr = self.inner_lr
        if isinstance(lr, dict) and not create_graph:
            lr = {n: v.detach() for n, v in lr.items()}
        stacked = adapt_tasks(self.policy, base, pre.obs, pre.act, pre.adv, pre.log_prob, lr,
                              first_order=c.first_order or not create_graph, num_steps=c.num_inner_steps)
        return stacked if create_graph else {n: v.detach() for n, v in stacked.items()}

    def meta_step(self) -> dict[str, float]:
        """One outer update on fresh imagined data; returns scalars to log."""
        c = self.config
        env = self.imagined_env()
        t0 = time.perf_counter()
        with torch.no_grad():
            pre_roll = collect(env, self.pre_policy_fn, c.imagined_horizon)
        plugin_stats: dict[str, float] = {}
        for p in self.plugins:
            plugin_stats.update(p.on_imagined(pre_roll))
        pre = self.task_batch(pre_roll)
        t1 = time.perf_counter()
        adapted = self.adapt(pre, create_graph=False)
        t2 = time.perf_counter()
        with torch.no_grad():
            post_roll = collect(env, self.adapted_policy_fn(adapted), c.imagined_horizon)
        post = self.task_batch(post_roll)
        with torch.no_grad():
            post.dist = forward_per_task(self.policy, adapted, post.obs).detach()
        t3 = time.perf_counter()

        def adapt_through(batch: TaskBatch) -> dict[str, Tensor]:
            return self.adapt(batch, create_graph=True)

        if c.outer == "trpo":
            stats = outer_trpo(self.policy, self.outer_params(), adapt_through, pre, post, c, self.device_generator)
        else:
            assert self.outer_optimizer is not None
            stats, self.inner_kl_coef = outer_ppo(self.policy, self.outer_optimizer, adapt_through, pre, post, c,
                                                  self.inner_kl_coef)
        self.policy.clamp_log_std_()
        t4 = time.perf_counter()
        stats.update({"imagined/pre_return": pre.mean_return, "imagined/post_return": post.mean_return,
                      "time/imagined_sampling_s": (t1 - t0) + (t3 - t2), "time/inner_step_s": t2 - t1,
                      "time/outer_step_s": t4 - t3})
        for key in env.cost_keys:  # the imagined returns above are net of these costs
            stats[key] = env.mean_cost(key)
        for p in self.plugins:  # not in the imagined returns above
            if p.has_bootstrap and p.bootstrap_key:
                stats[p.bootstrap_key] = post.bootstrap_mean
        stats.update(plugin_stats)
        return stats

    # ----- the loop ------------------------------------------------------------------------------
    def _show_epoch(self, epoch: int) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"model fit epoch {epoch}/{self.config.model_max_epochs}", refresh=True)

    def _iterate(self, bar) -> None:
        c = self.config
        log = self.logger
        self._bar = bar
        t0 = time.perf_counter()
        roll = self.collect_real()
        steps = roll.num_steps * roll.num_envs
        t1 = time.perf_counter()
        model_stats = self.fit_models()
        t2 = time.perf_counter()
        sums: dict[str, float] = {}
        for i in range(c.num_meta_steps):
            bar.set_postfix_str(f"meta-step {i + 1}/{c.num_meta_steps}", refresh=True)
            for k, v in self.meta_step().items():
                sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix_str("")
        meta_stats = {k: v / c.num_meta_steps for k, v in sums.items()}
        if c.collect_with == "adapted" or c.eval_adapted:
            with torch.no_grad():
                pre = self.task_batch(collect(self.imagined_env(), self.pre_policy_fn, c.imagined_horizon))
            self.collect_params = self.adapt(pre, create_graph=False)
        self._data = None
        t3 = time.perf_counter()
        self.iteration += 1
        self.num_timesteps += steps
        self.wall_time += t3 - t0
        bar.update(steps)
        log.record("iteration", self.iteration)
        log.record("real_steps", self.num_timesteps)
        self.record_train_returns(roll.episode_returns)
        log.record_dict(model_stats)
        log.record_dict(meta_stats)
        # the state-independent std of theta: a shrinking std is how exploration dies out
        log.record("policy/std_mean", self.policy.std().mean().item())
        log.record("time/real_sampling_s", t1 - t0)
        log.record("time/model_fit_s", t2 - t1)
        log.record("time/meta_s", t3 - t2)
        log.record("time/iteration_s", t3 - t0)
        self.end_iteration(self._record_evaluation)
        self._bar = None  # closed with the loop: later direct calls of fit_models show nothing

    def _record_evaluation(self) -> None:
        c = self.config
        record_evaluation(self.logger, *self.evaluate(c.eval_episodes))
        if c.eval_adapted and self.collect_params is not None:
            record_evaluation(self.logger, *self.evaluate(c.eval_episodes, adapted=True), prefix="eval_adapted")

    @torch.no_grad()
    def evaluate(self, num_episodes: int = 10, adapted: bool = False,
                 deterministic: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Full real episodes (not training samples) of the pre-update policy, or of the
        adapted policies (episode i uses a task of model i % K: every model is covered)."""
        env = self.eval_env(num_episodes, env_kwargs=self.env_kwargs, dtype=torch.float64)
        row_task = self.spread_tasks(num_episodes).to(self.device)

        def act(obs: Tensor) -> Tensor:
            f = self.features(obs)
            if adapted and self.collect_params is not None:
                d = forward_per_row(self.policy, self.collect_params, row_task, f)
            else:
                d = self.policy(f)
            return d.mode() if deterministic else d.sample(self.device_generator)

        return evaluate_episodes(env, act, seed=self.eval_seed())

    # ----- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return run_state(self)

    def _load_state(self, state: dict[str, Any]) -> None:
        load_run_state(self, state)
