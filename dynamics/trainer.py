"""Fitting the dynamics ensemble: per-model splits, minibatch Adam, per-model early stopping."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dynamics.ensemble import DynamicsEnsemble
from mbmpo.errors import TrainingError


@dataclass
class FitConfig:
    """Model-fitting settings (defaults: the original MB-MPO scripts)."""

    learning_rate: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 500
    """Minibatch size."""
    max_epochs: int = 500
    """Upper bound on epochs per fit."""
    epoch_rows: int = 0
    """Training rows each model sees per epoch, drawn afresh (without replacement) from its
    training split every epoch; 0 = the whole split. Bounds the cost of an epoch (early
    stopping may then run more of them); validation always uses the whole validation split."""
    val_fraction: float = 0.2
    """Fraction of the data each model holds out (its own random split)."""
    bootstrap: bool = False
    """Resample each model's training split with replacement."""
    early_stop_ema: float = 0.99
    """Persistence of the smoothed validation loss; a model stops the first epoch it rises."""
    early_stopping: bool = True
    """False: every model trains ``max_epochs`` epochs and keeps its last weights."""
    precision: torch.dtype = torch.float32
    """dtype of the models' layers in training steps (``torch.bfloat16``: mixed precision under
    ``torch.autocast``, float32 weights and optimizer state); validation always runs in float32."""
    logvar_bound_coef: float = 0.01
    """Probabilistic models: weight of ``sum(max_logvar) - sum(min_logvar)`` in the loss
    (PETS's value), which keeps the learned log-variance bounds tight."""


def gaussian_nll(mean: Tensor, logvar: Tensor, target: Tensor) -> Tensor:
    """Mean Gaussian negative log-likelihood without its constant, all ``[B, D]``:
    ``mean((mean - target)^2 * exp(-logvar) + logvar)`` (PETS, eq. 2, per dimension)."""
    return ((mean - target).pow(2) * torch.exp(-logvar) + logvar).mean()


def model_loss(ensemble: DynamicsEnsemble, k: int, x: Tensor, y: Tensor, cfg: FitConfig) -> Tensor:
    """Model k's training objective on normalized ``x [B, in_dim], y [B, out_dim]``: mean
    squared error (deterministic) or Gaussian NLL plus the bound penalty (probabilistic)."""
    if not ensemble.probabilistic:
        return (ensemble.forward_model(k, x) - y).pow(2).mean()
    mean, logvar = ensemble.forward_dist(k, x)
    m = ensemble.models[k]
    return gaussian_nll(mean, logvar, y) + cfg.logvar_bound_coef * (m.max_logvar.sum() - m.min_logvar.sum())


@dataclass
class FitResult:
    """Per-model outcome of one fit (lists indexed by model)."""

    epochs: list[int]
    best_val_loss: list[float]
    train_loss: list[float]
    fit_time_s: float
    val_history: list[list[float]] = field(default_factory=list)  # [epoch][model], NaN once stopped
    val_idx: list[Tensor] = field(default_factory=list)  # each model's validation rows

    def log_dict(self, prefix: str = "model/") -> dict[str, float]:
        d: dict[str, float] = {f"{prefix}fit_time_s": self.fit_time_s}
        for k, (e, v, t) in enumerate(zip(self.epochs, self.best_val_loss, self.train_loss)):
            d[f"{prefix}epochs_{k}"] = e
            d[f"{prefix}val_loss_{k}"] = v
            d[f"{prefix}train_loss_{k}"] = t
        d[f"{prefix}val_loss_mean"] = sum(self.best_val_loss) / len(self.best_val_loss)
        return d


def fit_ensemble(
    ensemble: DynamicsEnsemble,
    obs: Tensor,
    act: Tensor,
    next_obs: Tensor,
    reward: Tensor | None = None,
    config: FitConfig | None = None,
    generator: torch.Generator | None = None,
    val_mask: Tensor | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> FitResult:
    """Fit every model of ``ensemble`` on the same transitions ``[B, ...]``.

    Each model draws its own train/validation split (and bootstrap sample), its own
    minibatch order, and stops on its own epoch when its smoothed validation loss rises;
    the weights of its best validation epoch are restored. Weights are warm-started from
    the previous fit; normalization statistics are recomputed on the whole data set.

    ``val_mask`` ``[B, K]`` (bool) fixes the split instead: row b is validation data of
    model k. A caller that keeps it across fits (as the original MB-MPO code keeps its
    train/validation sets) validates warm-started models only on rows they never trained
    on; a fresh random split each fit validates on rows earlier fits trained on.
    ``on_epoch(epoch)`` is called after every epoch (1-based), e.g. to measure the models.

    The training loss is :func:`model_loss` (Gaussian NLL for probabilistic models); the
    validation loss, which early stopping and the logs use, is always the mean squared
    error of the (mean) prediction, so it compares across model types.

    Raises:
        TrainingError: the data or a loss contains NaN/inf.
    """
    cfg = config or FitConfig()
    gen = generator or torch.Generator().manual_seed(0)
    for name, t in (("obs", obs), ("act", act), ("next_obs", next_obs), ("reward", reward)):
        if t is not None and not torch.isfinite(t).all():
            raise TrainingError(f"non-finite values in the dynamics training data ({name})")
    t0 = time.perf_counter()
    ensemble.set_normalization(obs, act, next_obs, reward)
    x = ensemble.in_rms.normalize(ensemble.inputs(obs, act).float())
    y = ensemble.out_rms.normalize(ensemble.targets(obs, next_obs, reward).float())
    n = x.shape[0]
    num_val = max(1, int(round(cfg.val_fraction * n))) if n > 1 else 0
    num_models = ensemble.num_models
    if val_mask is not None and tuple(val_mask.shape) != (n, num_models):
        raise ValueError(f"val_mask must have shape [{n}, {num_models}], got {list(val_mask.shape)}")
    train_idx, val_idx = [], []
    for k in range(num_models):
        if val_mask is not None:
            val, train = val_mask[:, k].nonzero().flatten(), (~val_mask[:, k]).nonzero().flatten()
        else:
            perm = torch.randperm(n, generator=gen)
            val, train = perm[:num_val], perm[num_val:]
        if cfg.bootstrap:
            train = train[torch.randint(len(train), (len(train),), generator=gen)]
        train_idx.append(train)
        val_idx.append(val)
    # one Adam over every model: the models' parameters are disjoint, so one backward of the summed
    # losses and one (foreach) step give each model exactly its own update, with K times fewer calls
    opt = torch.optim.Adam(ensemble.models.parameters(), lr=cfg.learning_rate, foreach=True)
    active = [True] * num_models
    epochs = [0] * num_models
    best = [math.inf] * num_models
    best_state = [copy.deepcopy(m.state_dict()) for m in ensemble.models] if cfg.early_stopping else []
    ema = [math.nan] * num_models
    ema_prev = [math.nan] * num_models
    last_train = [math.nan] * num_models
    history: list[list[float]] = []
    for _epoch in range(cfg.max_epochs):
        if not any(active):
            break
        order = [train_idx[k][torch.randperm(len(train_idx[k]), generator=gen)] for k in range(num_models)]
        if cfg.epoch_rows > 0:
            order = [o[: cfg.epoch_rows] for o in order]
        num_batches = math.ceil(max(len(o) for o in order) / cfg.batch_size)
        sums = torch.zeros(num_models, dtype=torch.float64, device=x.device)  # read once per epoch
        for b in range(num_batches):
            losses, weights, ks = [], [], []
            with ensemble.compute_dtype(cfg.precision):
                for k in range(num_models):
                    idx = order[k][b * cfg.batch_size : (b + 1) * cfg.batch_size]
                    if not active[k] or len(idx) == 0:
                        continue
                    losses.append(model_loss(ensemble, k, x[idx], y[idx], cfg))
                    weights.append(len(idx))
                    ks.append(k)
            if not losses:
                continue
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(losses)
            opt.step()
            with torch.no_grad():
                sums[ks] += torch.stack(losses).double() * torch.tensor(weights, dtype=torch.float64, device=x.device)
        row = [math.nan] * num_models
        with torch.no_grad():
            for k in range(num_models):
                if not active[k]:
                    continue
                epochs[k] += 1
                last_train[k] = float(sums[k]) / max(1, len(order[k]))
                vi = val_idx[k] if len(val_idx[k]) else train_idx[k]
                v = (ensemble.forward_model(k, x[vi]) - y[vi]).pow(2).mean().item()
                if not math.isfinite(v):
                    raise TrainingError(f"dynamics model {k} produced a non-finite validation loss")
                row[k] = v
                if not cfg.early_stopping:
                    best[k] = v  # the last epoch's weights are kept
                elif v < best[k]:
                    best[k] = v
                    best_state[k] = copy.deepcopy(ensemble.models[k].state_dict())
                if math.isnan(ema[k]):
                    ema[k], ema_prev[k] = v, 2.0 * v
                else:
                    ema_prev[k] = ema[k]
                    ema[k] = cfg.early_stop_ema * ema[k] + (1 - cfg.early_stop_ema) * v
                if ema[k] > ema_prev[k] and cfg.early_stopping:
                    active[k] = False
        history.append(row)
        if on_epoch is not None:
            on_epoch(len(history))
    if cfg.early_stopping:
        for k, m in enumerate(ensemble.models):
            m.load_state_dict(best_state[k])
    return FitResult(epochs, best, last_train, time.perf_counter() - t0, history, val_idx)
