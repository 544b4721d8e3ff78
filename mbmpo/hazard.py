"""A fall-hazard classifier fitted on real data, for a cost on imagined states.

On HalfCheetah the learned gait carries a fall hazard at every step: restarted from the
states 30-70 steps before a real fall with small action noise, the real env falls within 120
steps in 5-50% of cases, while no imagined draw of the models falls from the same starts
(BENCHMARKS.md 7.19, 7.21). The models miss the *rate* of falls, so a policy optimized in them
cannot trade speed for safety. This classifier learns the rate from the real episodes instead:
``p(s) = P(a fall of the real reward starts within the next N steps | s)``, with labels from
:func:`mbmpo.returns.fall_ahead`, and MB-MPO subtracts ``c p(s')`` from each imagined reward
(``MBMPOConfig.fall_penalty``). With ``c`` about the value lost in a fall divided by N, the cost
is the expected loss per step of the gait's hazard.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.value import minibatch_pass


def fit_hazard(net: nn.Module, optimizer: torch.optim.Optimizer, feats: Tensor, labels: Tensor, epochs: int,
               batch_size: int = 512, generator: torch.Generator | None = None) -> dict[str, float]:
    """``epochs`` passes of minibatch binary cross-entropy on the rows with a known label.

    Args:
        net: maps ``[B, D]`` features to ``[B]`` logits.
        feats: ``[B, D]``; labels ``[B]`` in {0, 1, NaN} (NaN rows are left out).

    Returns:
        ``fall/bce`` (mean loss of the last pass; NaN without known rows), ``fall/rate`` (share
        of known rows labelled 1), ``fall/known_rows`` and ``fall/mean_p`` (mean predicted
        probability over the known rows).
    """
    known = torch.isfinite(labels)
    x, y = feats[known].float(), labels[known].float()
    n_rows = len(y)
    if n_rows == 0:
        return {"fall/bce": float("nan"), "fall/rate": float("nan"), "fall/known_rows": 0, "fall/mean_p": float("nan")}
    loss = float("nan")
    for _ in range(epochs):
        loss = minibatch_pass(net, optimizer, x, y, F.binary_cross_entropy_with_logits, batch_size, generator)
    with torch.no_grad():
        mean_p = float(torch.sigmoid(net(x)).mean())
    return {"fall/bce": loss, "fall/rate": float(y.mean()), "fall/known_rows": n_rows, "fall/mean_p": mean_p}


def hazard_cost(net: nn.Module, feats: Tensor, coef: float) -> Tensor:
    """``coef * sigmoid(net(feats))``: the cost of reaching each state, ``[N, D]`` -> ``[N]``."""
    with torch.no_grad():
        return coef * torch.sigmoid(net(feats.float()))
