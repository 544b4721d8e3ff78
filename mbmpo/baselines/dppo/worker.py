"""Distributed PPO (Heess et al. 2017, "Emergence of Locomotion Behaviours in Rich
Environments", appendix A) on ``torch.distributed``; docs/dppo.md has the details.

W workers (processes) each step their own env copies; every iteration each worker

1. collects T steps per env copy, normalizing observations and rewards with statistics it
   updates locally (with ``num_report`` D < W and ``straggler_mode`` 'preempt_collection' or
   'both', collection stops once D workers have finished; stragglers send whole K-step windows);
2. merges its normalization samples into the global statistics (one all_reduce);
3. computes K-step returns with value bootstrap (:func:`mbmpo.returns.k_step_returns`);
4. runs M policy sub-iterations on ``J(θ) = mean_t[ratio_t A_t] − λ KL[π_old‖π_θ] −
   ξ max(0, KL − 2 KL_target)²`` and B value sub-iterations on ``0.5 (V_φ(s_t) − R_t)²``; each
   gradient step averages the workers' gradients (weighted by sample counts) with one
   all_reduce and applies the same Adam step everywhere (parameters stay bit-identical). The
   KL stop (``kl_stop``) is tested per worker as in the appendix: a worker over the bound sends
   no more policy gradients this iteration (``mean``: everyone stops on the mean KL). With
   D < W and ``straggler_mode`` 'drop_gradients' or 'both', each step averages the first D
   gradients to arrive and drops the late ones (:meth:`DPPO._report_in_time`);
5. adapts the shared λ (``kl_coef_rule``): ``per_worker`` is the appendix's rule
   (:func:`mbmpo.kl_penalty.adapt_kl_coef_per_worker`), ``mean`` the single-learner rule on
   the mean KL.

With ``policy_type`` gru/lstm the networks are recurrent and trained with truncated BPTT over
the K-step windows, each window starting from the hidden state recorded while collecting.
:func:`mbmpo.baselines.dppo.launch` spawns W local processes (loopback) or runs under
``torchrun``; rank 0 logs, evaluates and checkpoints; a resumed run may use another W.
"""

from __future__ import annotations

import concurrent.futures
import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mbmpo import distributed
from mbmpo.baselines.dppo.batch import Batch, GradJob, LocalGrads, reduce_step, take_dist
from mbmpo.baselines.dppo.config import DPPOConfig
from mbmpo.buffers import Rollout, concat_rollouts, from_windows, to_windows
from mbmpo.envs import evaluate_episodes
from mbmpo.errors import ConfigError
from mbmpo.kl_penalty import adapt_kl_coef, adapt_kl_coef_per_worker
from mbmpo.normalization import merge_new_moments, pack_new_moments
from mbmpo.on_policy import OnPolicyAlgorithm
from mbmpo.returns import explained_variance, k_step_returns, normalize_advantages
from mbmpo.sampler import collect
from mbmpo.wrappers import VecNormalize
from policies import RecurrentGaussianPolicy, RecurrentValue


class DPPO(OnPolicyAlgorithm):
    """Distributed PPO; one instance per worker, all inside one ``torch.distributed`` group.

    Without a process group it runs as a single worker (W = 1). Example::

        from mbmpo.baselines.dppo import launch
        launch("runs/dppo", DPPOConfig(env_id="HalfCheetah-v5"), num_workers=2)
    """

    algo_name = "dppo"
    config_cls = DPPOConfig
    config: DPPOConfig

    def __init__(self, config: DPPOConfig, out_dir: str | Path | None = None, console: bool = True):
        self.rank, self.world_size = distributed.rank_and_world_size()
        lead = self.rank == 0
        super().__init__(config, out_dir=out_dir if lead else None, console=console and lead)
        self.recurrent = self.config.policy_type != "mlp"
        # identical start everywhere (the seeded init already agrees; this guarantees it)
        distributed.broadcast_tensors_(self._module_tensors())
        self.kl_coef = float(self.config.kl_coef)
        self._states: tuple[Tensor, Tensor] | None = None  # recurrent (policy, value) states [N, S]
        self._comm_s = 0.0
        self._last_train_return = math.nan
        # D-of-W gradient dropping: one thread computes gradients on a copy of the networks
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._shadow: tuple[nn.Module, nn.Module] | None = None
        self._job: GradJob | None = None

    # ----- construction hooks ---------------------------------------------------------
    def _make_env(self, seed: int) -> VecNormalize:
        # env copy i of rank r gets seed + r * N + i: W workers see W * N distinct episodes
        return super()._make_env(seed + self.rank * self.config.num_envs)

    def _make_networks(self) -> tuple[nn.Module, nn.Module]:
        c = self.config
        if c.policy_type == "mlp":
            return super()._make_networks()
        space = self.action_space
        if not (hasattr(space, "low") and len(space.shape) == 1):
            raise ConfigError(f"policy_type {c.policy_type!r} needs a 1-D Box action space, got {space}")
        obs_dim = self.observation_space.shape[0]
        policy = RecurrentGaussianPolicy(obs_dim, space.shape[0], c.rnn_size, c.hidden_sizes,
                                         c.policy_type, c.activation, c.init_log_std, c.ortho_init)
        value = RecurrentValue(obs_dim, c.rnn_size, c.value_hidden_sizes, c.policy_type,
                               c.activation, c.ortho_init)
        return policy.to(self.device), value.to(self.device)

    def _build_optimizers(self) -> None:
        c = self.config
        self.policy_params = list(self.policy.parameters())
        self.value_params = list(self.value_fn.parameters())
        self.policy_optimizer = torch.optim.Adam(self.policy_params, lr=c.learning_rate,
                                                 eps=c.adam_eps, foreach=True)
        self.value_optimizer = torch.optim.Adam(self.value_params, lr=c.value_learning_rate,
                                                eps=c.adam_eps, foreach=True)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"policy_optimizer": self.policy_optimizer, "value_optimizer": self.value_optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {"kl_coef": self.kl_coef, "world_size": self.world_size}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.kl_coef = float(state.get("kl_coef", self.config.kl_coef))

    def _module_tensors(self) -> list[Tensor]:
        return [*self.policy.parameters(), *self.value_fn.parameters(),
                *self.policy.buffers(), *self.value_fn.buffers()]

    @property
    def batch_size(self) -> int:
        return self.world_size * self.config.num_envs * self.config.num_steps

    # ----- collectives (timed: the 'communicate' share of an iteration) -----------------
    def _all_reduce(self, t: Tensor) -> Tensor:
        t0 = time.perf_counter()
        distributed.all_reduce_sum_(t)
        self._comm_s += time.perf_counter() - t0
        return t

    def _store_add(self, key: str, amount: int) -> int:
        t0 = time.perf_counter()
        value = distributed.store().add(key, amount)
        self._comm_s += time.perf_counter() - t0
        return value

    # ----- acting ---------------------------------------------------------------------
    def _policy_fn(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.recurrent:
            return super()._policy_fn(obs)
        pi_state, v_state = self._states
        dist, pi_next = self.policy.step(obs, pi_state)
        value, v_next = self.value_fn.step(obs, v_state)
        self._states = (pi_next, v_next)
        act = dist.sample(self.generator)
        # the stored state is the one this step started from (already reset at episode starts)
        return act, {"log_prob": dist.log_prob(act), "value": value, "pi_state": pi_state,
                     "v_state": v_state}

    def _on_step(self, done: Tensor) -> None:
        if done.any():
            keep = (~done).unsqueeze(-1).to(self._states[0].dtype)
            self._states = (self._states[0] * keep, self._states[1] * keep)

    def _act_fn(self, deterministic: bool, num_envs: int) -> Callable[[Tensor], Tensor]:
        if not self.recurrent:
            def act(obs: Tensor) -> Tensor:
                dist = self.policy(obs)
                return dist.mode() if deterministic else dist.sample(self.generator)
            return act
        state = [self.policy.initial_state(num_envs)]

        def act_recurrent(obs: Tensor) -> Tensor:
            dist, state[0] = self.policy.step(obs, state[0])
            return dist.mode() if deterministic else dist.sample(self.generator)
        return act_recurrent

    @torch.no_grad()
    def predict(self, obs: np.ndarray | Tensor, deterministic: bool = True, state: Tensor | None = None,
                episode_start: np.ndarray | Tensor | None = None):
        """Actions for raw observations ``[B, obs_dim]`` (or one ``[obs_dim]``).

        Feed-forward policies return the actions. Recurrent policies return ``(actions,
        state)``: pass the returned state to the next call (None starts fresh episodes) and
        ``episode_start [B]`` (bool) to reset the rows whose episode just began.
        """
        if not self.recurrent:
            return super().predict(obs, deterministic)
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        single = x.dim() == 1
        x = self.env.normalize_obs(x.unsqueeze(0) if single else x)
        st = self.policy.initial_state(x.shape[0]) if state is None else torch.as_tensor(state)
        reset = None if episode_start is None else torch.as_tensor(np.asarray(episode_start), dtype=torch.bool)
        dist, st = self.policy.step(x, st, reset)
        act = (dist.mode() if deterministic else dist.sample(self.generator)).cpu().numpy()
        act = np.clip(act, self.action_space.low, self.action_space.high)
        return (act[0] if single else act), st

    def evaluate(self, num_episodes: int = 10, deterministic: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Returns and lengths of ``num_episodes`` full episodes (never counted as training).

        Inside a process group this is a collective: every worker must call it; worker r
        runs a contiguous block of the episodes (seeded as a single process would) and all
        workers get all results.
        """
        rank, world = distributed.rank_and_world_size()
        lo, hi = num_episodes * rank // world, num_episodes * (rank + 1) // world
        out = torch.zeros(2, num_episodes, dtype=torch.float64)
        if hi > lo:
            env = self.eval_env(hi - lo, env_kwargs=self.config.env_kwargs, device=self.device)
            rets, lens = evaluate_episodes(env, self._act_fn(deterministic, hi - lo),
                                           self.env.normalize_obs, seed=self.eval_seed() + lo)
            out[0, lo:hi] = torch.as_tensor(rets, dtype=torch.float64)
            out[1, lo:hi] = torch.as_tensor(lens, dtype=torch.float64)
        self._all_reduce(out)
        return out[0].numpy(), out[1].numpy().astype(np.int64)

    # ----- one iteration --------------------------------------------------------------
    def _num_report(self) -> int:
        d = self.config.num_report
        return self.world_size if d == 0 else min(d, self.world_size)

    def _preempts_collection(self) -> bool:
        return (self._num_report() < self.world_size
                and self.config.straggler_mode in ("preempt_collection", "both"))

    def _drops_late_gradients(self) -> bool:
        return (self._num_report() < self.world_size
                and self.config.straggler_mode in ("drop_gradients", "both"))

    def _collect(self) -> tuple[Rollout, bool]:
        """This worker's rollout and whether it finished all T steps (False: preempted)."""
        c = self.config
        if self.recurrent and self._obs is None:  # fresh episodes start from zero states
            n = self.env.num_envs
            self._states = (self.policy.initial_state(n), self.value_fn.initial_state(n))
        hook = self._on_step if self.recurrent else None
        need = self._num_report()
        if not self._preempts_collection():  # nobody is preempted
            chunk, key = c.num_steps, None
        else:
            chunk, key = c.window_length * c.straggler_check_windows, f"collected/{self.iteration}"
        parts, steps = [], 0
        while steps < c.num_steps:
            n = min(chunk, c.num_steps - steps)
            part = collect(self.env, self._policy_fn, n, self._obs, self._ts, on_step=hook)
            self._obs, self._ts = part.last_obs, part.last_timesteps
            parts.append(part)
            steps += n
            if key is not None and steps < c.num_steps and self._store_add(key, 0) >= need:
                return concat_rollouts(parts), False
        if key is not None:
            self._store_add(key, 1)
        return concat_rollouts(parts), True

    def _merge_after_collection(self, rollout: Rollout, bases: list[dict[str, Tensor]],
                                finished: bool) -> dict[str, float]:
        """One all_reduce: normalization moments (merged into identical global statistics)
        plus the iteration's counts; returns the global counts."""
        stats = list(zip((self.env.obs_rms, self.env.ret_rms), bases))
        rets, lens = rollout.episode_returns, rollout.episode_lengths
        moments = pack_new_moments(stats)
        tail = torch.tensor([rollout.num_steps * rollout.num_envs, float(not finished), sum(rets),
                             len(rets), sum(lens)], dtype=torch.float64, device=moments.device)
        vec = self._all_reduce(torch.cat([moments, tail]))
        merge_new_moments(stats, vec[: -len(tail)])
        steps, preempted, ret_sum, num_eps, len_sum = vec[-len(tail):].tolist()
        if self.rank == 0 and self._preempts_collection():
            # everyone is past the collection: this iteration's counter is read no more
            distributed.store().delete_key(f"collected/{self.iteration}")
        return {"steps": int(steps), "preempted": int(preempted), "ret_sum": ret_sum,
                "num_episodes": int(num_eps), "len_sum": len_sum}

    def compute_advantages(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        c = self.config
        with torch.no_grad():
            if self.recurrent:
                k, n = c.window_length, rollout.num_envs
                v, nv = self.value_fn.values_and_bootstrap(
                    to_windows(rollout.obs, k), to_windows(rollout.next_obs, k),
                    self._window_starts(rollout, "v_state"), to_windows(rollout.timesteps == 0, k))
                values, next_values = from_windows(v, n), from_windows(nv, n)
            else:
                values, next_values = rollout.extras["value"], self.value_fn(rollout.next_obs)
        return k_step_returns(rollout.rewards, values, next_values, rollout.terminated,
                              rollout.truncated, c.gamma, c.window_length, c.gae_lambda)

    def _window_starts(self, rollout: Rollout, name: str) -> Tensor:
        """The recorded state at each window's first step, ``[(T / K) * N, state]``."""
        x = rollout.extras[name][:: self.config.window_length]
        return x.reshape(-1, x.shape[-1])

    def _make_batch(self, rollout: Rollout, advantages: Tensor, returns: Tensor) -> Batch:
        adv = normalize_advantages(advantages)  # per-batch normalization ([H], "Normalization")
        if not self.recurrent:
            f = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
            return Batch(rollout.flat("obs"), rollout.flat("actions"), rollout.flat("log_prob"),
                          f(adv), f(returns), rollout.flat("value"), None, None, None)
        k = self.config.window_length
        w = lambda x: to_windows(x, k)  # noqa: E731
        return Batch(w(rollout.obs), w(rollout.actions), w(rollout.extras["log_prob"]), w(adv),
                      w(returns), w(rollout.extras["value"]), w(rollout.timesteps == 0),
                      self._window_starts(rollout, "pi_state"), self._window_starts(rollout, "v_state"))

    def _dist(self, b: Batch, idx: Tensor | None = None, policy: nn.Module | None = None) -> Any:
        """Policy distribution on units ``idx`` (all when None), unflattened."""
        policy = self.policy if policy is None else policy
        if not b.recurrent:
            return policy(b.obs if idx is None else b.obs[idx])
        if idx is None:
            return policy(b.obs, b.pi_h0, b.resets)
        return policy(b.obs[:, idx], b.pi_h0[idx], b.resets[:, idx])

    def _values(self, b: Batch, idx: Tensor, value_fn: nn.Module | None = None) -> Tensor:
        value_fn = self.value_fn if value_fn is None else value_fn
        if not b.recurrent:
            return value_fn(b.obs[idx])
        return value_fn(b.obs[:, idx], b.v_h0[idx], b.resets[:, idx]).reshape(-1)

    def _policy_loss(self, b: Batch, old: Any, idx: Tensor, policy: nn.Module | None = None
                     ) -> tuple[Tensor, Tensor]:
        """[H] appendix A: -ratio*A + lambda*KL + xi*max(0, KL - 2 KL_target)^2 on units ``idx``;
        returns (loss, [kl, surrogate, loss] detached)."""
        c = self.config
        dist = take_dist(self._dist(b, idx, policy), b)
        ratio = (dist.log_prob(b.take(b.act, idx)) - b.take(b.logp, idx)).exp()
        surrogate = (ratio * b.take(b.adv, idx)).mean()
        kl = take_dist(old, b, idx).kl(dist).mean()
        loss = -surrogate + self.kl_coef * kl + c.kl_hinge_coef * torch.relu(kl - 2.0 * c.kl_target) ** 2
        return loss, torch.stack([kl, surrogate, loss]).detach()

    def _step_grads(self, b: Batch, old: Any, pi_idx: Tensor, v_idx: Tensor, policy_on: bool,
                    value_on: bool, nets: tuple[nn.Module, nn.Module] | None = None) -> LocalGrads:
        """This worker's gradients for one lockstep step: the policy's on minibatch ``pi_idx``
        (when ``policy_on``) and the value function's on ``v_idx`` (when ``value_on``).

        ``nets`` are the (policy, value) modules to differentiate, the live ones when None;
        the D-of-W mode passes copies, so that this can run in a thread while the live
        parameters take the averaged step.
        """
        policy, value_fn = (self.policy, self.value_fn) if nets is None else nets
        g_pi, ex_pi, n_pi = None, torch.zeros(3), 0
        g_v, ex_v, n_v = None, torch.zeros(1), 0
        if policy_on:
            n_pi = pi_idx.numel() * b.steps_per_unit
            if n_pi:
                loss, ex_pi = self._policy_loss(b, old, pi_idx, policy)
                g_pi = torch.autograd.grad(loss, list(policy.parameters()))
        if value_on:
            n_v = v_idx.numel() * b.steps_per_unit  # the same split sizes as the policy's
            if n_v:
                v_loss = 0.5 * ((self._values(b, v_idx, value_fn) - b.take(b.ret, v_idx)) ** 2).mean()
                g_v = torch.autograd.grad(v_loss, list(value_fn.parameters()))
                ex_v = v_loss.detach().reshape(1)
        return LocalGrads(g_pi, ex_pi, n_pi, g_v, ex_v, n_v)

    # ----- D of W: the first D gradients of a step are averaged, late ones dropped ---------
    def _sync_shadow(self) -> None:
        """Copy the live networks into the update thread's copies."""
        if self._shadow is None:
            self._shadow = (copy.deepcopy(self.policy), copy.deepcopy(self.value_fn))
        with torch.no_grad():
            for live, shadow in zip((self.policy, self.value_fn), self._shadow):
                for a, z in zip((*live.parameters(), *live.buffers()),
                                (*shadow.parameters(), *shadow.buffers())):
                    z.copy_(a)

    def _report_in_time(self, step: int, args: tuple) -> LocalGrads | None:
        """This worker's part of lockstep step ``step`` when each step takes the first D
        gradients to arrive ([H], chief algorithm: "wait until D gradients are available,
        average them and update"); None when it was late (the step goes on without it).

        The gradient is computed in a thread on a copy of the networks, while this thread
        watches a counter in the process group's store. A worker whose gradient is ready
        adds itself to the counter, and the first D to do so are in time. A worker whose
        gradient is not ready once D others have reported gives up on it and joins the step
        at once with nothing (its computation finishes in the background and is dropped; it
        starts the next one on the parameters of that moment). So nobody waits for a slow
        worker's gradient: the all_reduce that follows only waits for every worker to notice
        (about ``report_poll_s``). Every worker adds exactly once per step, so the counter
        of step s starts at s * W (one key per iteration, deleted after the update).
        """
        c = self.config
        need, key, base = self._num_report(), f"reported/{self.iteration}", step * self.world_size
        this = (self.iteration, step)  # a dropped job of an earlier iteration may have the same step
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dppo-grad")
        deadline = time.monotonic() + c.collective_timeout_s
        while True:
            job = self._job
            if job is None or (job.step != this and job.future.done()):
                if job is not None:
                    job.future.result()  # a dropped computation: raise its error, if any
                self._sync_shadow()
                job = self._job = GradJob(this, self._pool.submit(self._step_grads, *args, nets=self._shadow))
            concurrent.futures.wait([job.future], timeout=c.report_poll_s)
            if job.step == this and job.future.done():
                break
            if self._store_add(key, 0) - base >= need:
                break  # D others have reported: late for this step
            if time.monotonic() > deadline:
                raise distributed.PeerLostError(
                    f"worker rank {self.rank}: fewer than D = {need} workers reported gradient "
                    f"step {step} within {c.collective_timeout_s:g} s (timed out)")
        order = self._store_add(key, 1) - base  # 1-based arrival order
        if job.step == this and job.future.done():
            self._job = None
            local = job.future.result()
            return local if order <= need else None
        return None

    def update(self, rollout: Rollout, advantages: Tensor, returns: Tensor) -> dict[str, float]:
        """M policy and B value sub-iterations with averaged gradients; returns local and
        global scalars (the lambda rule runs afterwards in :meth:`_iterate`).

        The value function is fitted to fixed returns and never reads the policy, so its
        minibatch steps run in lockstep with the policy's: the j-th policy step and the j-th
        value step share one all_reduce (half the synchronization points; each costs the
        collective's latency plus the wait for the slowest worker). Once the policy steps
        end (the KL stop, or the M policy sub-iterations are done), the remaining steps are
        value-only.

        KL stop, ``kl_stop: per_worker`` ([H], worker algorithm: "if KL > 4 KL_target:
        break"): before sending a policy gradient each worker tests the KL of its own
        minibatch at the current parameters; past the bound it sends no more policy
        gradients this iteration. The collectives stay in lockstep: a stopped worker still
        joins every step's all_reduce, with a zero policy gradient of weight 0, and applies
        the average of the workers still going, as the appendix's stopped worker takes the
        parameters the chief goes on updating; the policy steps end for everyone once every
        worker has stopped (a count carried in the same all_reduce). ``kl_stop: mean``:
        the sample-weighted mean minibatch KL of all workers is tested after the all_reduce,
        and past the bound that step is discarded and the policy steps end for everyone.
        """
        c = self.config
        if c.anneal_lr:
            frac = max(0.0, 1.0 - self.num_timesteps / self.total_steps)
            for opt, lr in ((self.policy_optimizer, c.learning_rate),
                            (self.value_optimizer, c.value_learning_rate)):
                for g in opt.param_groups:
                    g["lr"] = frac * lr
        b = self._make_batch(rollout, advantages, returns)
        with torch.no_grad():
            old = self._dist(b).detach()  # pi_old, frozen
        bound = c.kl_stop_factor * c.kl_target
        per_worker_stop = c.kl_stop == "per_worker" and c.kl_stop_factor > 0
        drop_late = self._drops_late_gradients()
        policy_rows, value_rows, policy_steps = [], [], 0
        policy_done = stopped_here = False  # the policy steps ended for all / for this worker
        step, late, step_s = 0, 0, 0.0
        for epoch in range(max(c.policy_iters, c.value_iters)):
            policy_on, value_on = epoch < c.policy_iters and not policy_done, epoch < c.value_iters
            if not (policy_on or value_on):
                break
            # both orders are drawn every epoch, so the value fit does not depend on when (or
            # whether) the KL stop ends the policy steps
            pi_perm, v_perm = (torch.randperm(b.num_units, generator=self.generator,
                                              device=self.generator.device) for _ in range(2))
            for pi_idx, v_idx in zip(torch.tensor_split(pi_perm, c.num_minibatches),
                                     torch.tensor_split(v_perm, c.num_minibatches)):
                policy_on = policy_on and not policy_done
                if not (policy_on or value_on):
                    break
                t0 = time.perf_counter()
                args = (b, old, pi_idx, v_idx, policy_on and not stopped_here, value_on)
                local = self._report_in_time(step, args) if drop_late else self._step_grads(*args)
                step += 1
                if local is None:  # late: this step goes on without this worker's gradients
                    late += 1
                    local = LocalGrads(None, torch.zeros(3), 0, None, torch.zeros(1), 0)
                pi_w = local.pi_n
                if per_worker_stop and pi_w and local.pi_extras[0].item() > bound:
                    stopped_here, pi_w = True, 0  # [H]: KL too far from pi_old, send no more
                groups = []
                if policy_on:
                    groups.append((self.policy_params, local.pi_grads, pi_w, local.pi_extras))
                if value_on:
                    groups.append((self.value_params, local.v_grads, local.v_n, local.v_extras))
                results, tail = reduce_step(self._all_reduce, groups, [float(policy_on and not stopped_here)])
                if policy_on:
                    (means, total), results = results[0], results[1:]
                    if c.kl_stop == "mean" and c.kl_stop_factor > 0 and total > 0 and means[0].item() > bound:
                        policy_done = stopped_here = True  # the mean KL is past the bound: all stop
                        for p in self.policy_params:
                            p.grad = None
                    elif total > 0:
                        if c.max_grad_norm > 0:
                            nn.utils.clip_grad_norm_(self.policy_params, c.max_grad_norm, foreach=True)
                        self.policy_optimizer.step()
                        policy_rows.append(means)
                        policy_steps += 1
                    if tail[0].item() == 0:
                        policy_done = True  # every worker has stopped
                if value_on:
                    means, total = results[0]
                    if total > 0:
                        if c.max_grad_norm > 0:
                            nn.utils.clip_grad_norm_(self.value_params, c.max_grad_norm, foreach=True)
                        self.value_optimizer.step()
                        value_rows.append(means)
                step_s += time.perf_counter() - t0
        with torch.no_grad():
            new = take_dist(self._dist(b), b)
            kl_local = take_dist(old, b).kl(new).mean().item()
            entropy_local = new.entropy().mean().item()
        ended_early = policy_done and policy_steps < c.policy_iters * c.num_minibatches
        stats = {"train/policy_steps": float(policy_steps), "train/policy_stopped_early": float(ended_early),
                 "train/learning_rate": self.policy_optimizer.param_groups[0]["lr"],
                 "train/explained_variance": explained_variance(b.take(b.old_val), b.take(b.ret)),
                 "_kl_local": kl_local, "_entropy_local": entropy_local,
                 "_num_samples": float(b.num_units * b.steps_per_unit),
                 "_kl_stopped_local": float(stopped_here), "_late_local": float(late),
                 "_step_s_local": step_s / max(step, 1)}
        if policy_rows:  # none when the KL stop fired before the first step
            kl_mb, surrogate, loss = torch.stack(policy_rows).mean(0).tolist()
            stats.update({"loss/policy": loss, "train/surrogate": surrogate,
                          "train/kl_during_update": kl_mb})
        if value_rows:
            stats["loss/value"] = torch.stack(value_rows).mean().item()
        return stats

    def _reduce_report(self, stats: dict[str, float], timings: Sequence[float]) -> dict[str, float]:
        """One all_reduce of every worker's KL, sample count, entropy, KL stop, late gradients,
        step time and time split; then the lambda rule (identical inputs, so identical lambda
        on every worker)."""
        w, r = self.world_size, self.rank
        names = ("_kl_local", "_num_samples", "_entropy_local", "_kl_stopped_local", "_late_local",
                 "_step_s_local")
        vec = torch.zeros(len(names) * w + len(timings), dtype=torch.float64)
        for i, name in enumerate(names):
            vec[i * w + r] = stats.pop(name)
        vec[len(names) * w :] = torch.tensor(timings, dtype=torch.float64)
        self._all_reduce(vec)
        if self.rank == 0 and self._drops_late_gradients():
            # everyone is past the update: this iteration's arrival counter is read no more
            distributed.store().delete_key(f"reported/{self.iteration}")
        kls, ns, ents, stopped, late, step_s = (vec[i * w : (i + 1) * w] for i in range(len(names)))
        kl_mean = float((kls * ns).sum() / ns.sum())
        c = self.config
        stats.update({"train/kl": kl_mean, "train/kl_max_worker": float(kls.max()),
                      "train/kl_coef": self.kl_coef, "train/kl_stopped_workers": float(stopped.sum()),
                      "loss/entropy": float((ents * ns).sum() / ns.sum()),
                      "dist/late_gradients": float(late.sum()), "time/step_ms": 1000 * float(step_s.mean())})
        if c.kl_coef_rule == "per_worker":
            self.kl_coef = adapt_kl_coef_per_worker(self.kl_coef, kls.tolist(), c.kl_target, c.kl_alpha,
                                                    c.kl_beta_high, c.kl_beta_low)
        else:
            self.kl_coef = adapt_kl_coef(self.kl_coef, kl_mean, c.kl_target, c.kl_alpha,
                                         c.kl_beta_high, c.kl_beta_low)
        for name, total in zip(("collect_s", "comm_s", "update_s"), vec[len(names) * w :].tolist()):
            stats[f"time/{name}"] = total / w  # mean over workers
        return stats

    def close(self) -> None:
        if self._pool is not None:  # a dropped gradient computation may still be running
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._job = None, None
        super().close()

    def _iteration_seed(self) -> int:
        # sampling noise and minibatch order: a function of (seed, rank, iteration), so a
        # resumed run (with any W) draws reproducibly without per-rank generator states
        return (self.config.seed * 1_000_003 + self.rank * 7919 + self.iteration * 104_729) % 2**62

    def _iterate(self, bar) -> None:
        self._comm_s = 0.0
        t0 = time.perf_counter()
        self.generator.manual_seed(self._iteration_seed())
        bases = [{k: v.clone() for k, v in rms.state_dict().items()}
                 for rms in (self.env.obs_rms, self.env.ret_rms)]
        rollout, finished = self._collect()
        t1 = time.perf_counter()
        comm_collect = self._comm_s
        counts = self._merge_after_collection(rollout, bases, finished)
        adv, ret = self.compute_advantages(rollout)
        stats = self.update(rollout, adv, ret)
        t2 = time.perf_counter()
        comm_update = self._comm_s - comm_collect
        stats = self._reduce_report(stats, [t1 - t0 - comm_collect, self._comm_s,
                                            t2 - t1 - comm_update])
        t3 = time.perf_counter()
        self._check_finite(stats)
        self.iteration += 1
        self.num_timesteps += counts["steps"]
        self.wall_time += t3 - t0
        bar.update(counts["steps"])
        if counts["num_episodes"]:
            self._last_train_return = counts["ret_sum"] / counts["num_episodes"]
        log = self.logger
        log.record("iteration", self.iteration)
        log.record("real_steps", self.num_timesteps)
        log.record_dict(stats)
        if not math.isnan(self._last_train_return):
            log.record("train/episode_return", self._last_train_return)
        if counts["num_episodes"]:
            log.record("train/episode_length", counts["len_sum"] / counts["num_episodes"])
        log.record("dist/workers", self.world_size)
        log.record("dist/workers_preempted", counts["preempted"])
        log.record("dist/steps_per_iteration", counts["steps"])
        log.record("time/iteration_s", t3 - t0)
        log.record("time/sps", counts["steps"] / (t3 - t0))
        self.end_iteration()

