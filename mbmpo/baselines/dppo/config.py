"""Settings of DPPO (:class:`DPPOConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from mbmpo.config import BaseConfig, _positive
from mbmpo.errors import ConfigError

POLICY_TYPES = ("mlp", "gru", "lstm")
KL_COEF_RULES = ("per_worker", "mean")
KL_STOP_RULES = ("per_worker", "mean")
STRAGGLER_MODES = ("drop_gradients", "preempt_collection", "both")


@dataclass
class DPPOConfig(BaseConfig):
    """DPPO settings. Sources of the defaults: [H] Heess et al. 2017, appendix A (the constants
    of its worker algorithm); [S] Schulman et al. 2017, PPO's adaptive KL penalty; [L] this
    library's choice where [H] gives no value."""

    num_steps: int = 1000
    """T: steps per env copy per worker per iteration [L]."""
    gae_lambda: float = 1.0
    """Lambda inside each K-step window; 1.0 is the plain K-step return of [H]."""
    window_length: int = 10
    """K: window of the K-step returns and of truncated BPTT [L]; num_steps must be a multiple."""
    policy_iters: int = 10
    """M: policy sub-iterations (passes over the batch) per iteration [L]."""
    value_iters: int = 10
    """B: value-function sub-iterations per iteration [L]."""
    num_minibatches: int = 1
    """Gradient steps per sub-iteration (1 = one full-batch step, as in [H]). Every worker
    takes the same number, so the gradient all_reduce calls line up."""
    learning_rate: float = 3e-4
    """Adam learning rate of the policy [L]."""
    value_learning_rate: float = 1e-3
    """Adam learning rate of the value function [L]."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    anneal_lr: bool = False
    """Anneal both learning rates linearly to 0 over the training budget."""
    max_grad_norm: float = 0.0
    """Clip the averaged gradient to this global norm (0 disables; [H] does not clip)."""
    kl_target: float = 0.01
    """KL_target of the penalty and of the lambda rule (PPO's d_targ [S])."""
    kl_coef: float = 1.0
    """Initial KL penalty coefficient lambda [S]."""
    kl_alpha: float = 1.5
    """alpha: lambda is multiplied/divided by it [H]."""
    kl_beta_high: float = 2.0
    """beta_high: raise lambda when KL > beta_high * KL_target [H]."""
    kl_beta_low: float = 0.5
    """beta_low: lower lambda when KL < beta_low * KL_target [H]."""
    kl_hinge_coef: float = 1000.0
    """xi: weight of the max(0, KL - 2 KL_target)^2 hinge [H]."""
    kl_stop_factor: float = 4.0
    """Stop the policy sub-iterations once KL > this * KL_target ([H], worker algorithm); 0 disables."""
    kl_stop: str = "per_worker"
    """Who the KL stop applies to. 'per_worker' ([H], worker algorithm: each worker tests
    its own KL before sending a gradient): a worker whose local minibatch KL exceeds the bound
    stops sending policy gradients for the rest of the iteration, while the others' averaged
    steps go on (and reach its parameters); the policy steps end once every worker stopped.
    'mean': everyone stops, and the step is discarded, once the sample-weighted mean KL of
    the workers exceeds the bound (this library's rule before issue 41)."""
    kl_coef_rule: str = "per_worker"
    """Lambda update: 'per_worker' ([H]: each worker's KL moves the shared lambda by
    alpha_hat = 1 + (alpha - 1) / W; [H] writes the divisor as K, see
    :func:`~mbmpo.kl_penalty.adapt_kl_coef_per_worker`) or 'mean' (one
    x alpha / : alpha step on the mean KL)."""
    num_report: int = 0
    """D of [H]: with D < W stragglers are not waited for (how: ``straggler_mode``). 0 means
    D = W (fully synchronous, every gradient step averages all W workers)."""
    straggler_mode: str = "drop_gradients"
    """With D < W: 'drop_gradients' ([H], chief algorithm): every gradient step averages the
    gradients of the first D workers to report and drops the late ones for that step (the
    late workers still apply the step); 'preempt_collection': once D workers have finished
    collecting, the others stop collecting early and contribute what they have, and every
    gradient step waits for all W; 'both'."""
    straggler_check_windows: int = 5
    """Collection preemption: a worker checks the finished-worker counter every this many
    K-step windows."""
    report_poll_s: float = 0.001
    """Gradient dropping: a worker whose gradient is not ready checks this often (seconds)
    whether D others have reported."""
    policy_type: str = "mlp"
    """'mlp' (feed-forward) or a recurrent 'gru' / 'lstm' policy and value function."""
    rnn_size: int = 64
    """Hidden units of the recurrent cell (hidden_sizes / value_hidden_sizes are the MLP heads)."""
    collective_timeout_s: float = 120.0
    """Seconds a collective may wait for a hung worker before the run stops with an error
    (a worker that dies is noticed at once by the launcher, which stops the others)."""
    shared_memory_allreduce: bool = True
    """Local runs (``--workers W``): sum gradients and statistics through shared memory
    instead of gloo (same sums; about 0.2 ms instead of 2 ms per call on this machine). Runs
    under torchrun always use the process group's backend."""

    def validate(self) -> None:
        super().validate()
        _positive(self, "window_length", "policy_iters", "value_iters", "num_minibatches",
                  "learning_rate", "value_learning_rate", "adam_eps", "kl_target", "rnn_size",
                  "straggler_check_windows", "report_poll_s", "collective_timeout_s")
        if self.num_steps % self.window_length:
            raise ConfigError(f"num_steps {self.num_steps} must be a multiple of window_length "
                              f"{self.window_length}")
        if not self.kl_alpha > 1:
            raise ConfigError(f"kl_alpha must be > 1, got {self.kl_alpha}")
        if not 0 < self.kl_beta_low < self.kl_beta_high:
            raise ConfigError(f"need 0 < kl_beta_low < kl_beta_high, got {self.kl_beta_low}, "
                              f"{self.kl_beta_high}")
        for name in ("kl_coef", "kl_hinge_coef", "kl_stop_factor", "max_grad_norm", "num_report"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.kl_coef_rule not in KL_COEF_RULES:
            raise ConfigError(f"kl_coef_rule {self.kl_coef_rule!r} is not allowed; use one of "
                              f"{list(KL_COEF_RULES)}")
        if self.kl_stop not in KL_STOP_RULES:
            raise ConfigError(f"kl_stop {self.kl_stop!r} is not allowed; use one of "
                              f"{list(KL_STOP_RULES)}")
        if self.straggler_mode not in STRAGGLER_MODES:
            raise ConfigError(f"straggler_mode {self.straggler_mode!r} is not allowed; use one of "
                              f"{list(STRAGGLER_MODES)}")
        if self.policy_type not in POLICY_TYPES:
            raise ConfigError(f"policy_type {self.policy_type!r} is not allowed; use one of "
                              f"{list(POLICY_TYPES)}")

