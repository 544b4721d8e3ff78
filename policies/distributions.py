"""Light-weight action distributions as tuples of tensors.

They are returned by policy ``forward`` so that ``torch.func.functional_call(policy, params,
(obs,))`` yields a distribution evaluated at an arbitrary parameter dict (the adapted policy
of MB-MPO). The formulas match ``torch.distributions`` (tested) without its per-call
validation overhead.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

_LOG_2PI = math.log(2.0 * math.pi)


class DiagGaussian(NamedTuple):
    """Diagonal Gaussian; ``mean`` and ``log_std`` are ``[B, act_dim]``."""

    mean: Tensor
    log_std: Tensor

    def log_prob(self, act: Tensor) -> Tensor:
        """``[B, act_dim] -> [B]``."""
        z = (act - self.mean) * torch.exp(-self.log_std)
        return -(0.5 * z.pow(2) + self.log_std).sum(-1) - 0.5 * _LOG_2PI * self.mean.shape[-1]

    def entropy(self) -> Tensor:
        """``[B]``."""
        return (self.log_std + 0.5 * (1.0 + _LOG_2PI)).sum(-1)

    def kl(self, other: DiagGaussian) -> Tensor:
        """``KL[self || other]``, ``[B]``."""
        var_ratio = torch.exp(2.0 * (self.log_std - other.log_std))
        t = ((self.mean - other.mean) * torch.exp(-other.log_std)).pow(2)
        return 0.5 * (var_ratio + t - 1.0).sum(-1) + (other.log_std - self.log_std).sum(-1)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        return self.mean + noise.to(self.mean.dtype) * torch.exp(self.log_std)

    def mode(self) -> Tensor:
        return self.mean

    def detach(self) -> DiagGaussian:
        # clone: a state-independent log_std is an expanded view of the policy parameter, and
        # a detached view would follow later in-place optimizer steps (a frozen pi_old must not)
        return DiagGaussian(self.mean.detach(), self.log_std.detach().clone())

    def index(self, idx: Tensor | slice) -> DiagGaussian:
        return DiagGaussian(self.mean[idx], self.log_std[idx])


class Categorical(NamedTuple):
    """Categorical over ``num_actions``; ``logits`` are ``[B, num_actions]``, actions ``[B]``."""

    logits: Tensor

    @property
    def log_probs(self) -> Tensor:
        return torch.log_softmax(self.logits, dim=-1)

    def log_prob(self, act: Tensor) -> Tensor:
        return self.log_probs.gather(-1, act.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> Tensor:
        """Exact entropy ``-sum_a p(a) log p(a)`` (not the sampled ``-log pi(a)``)."""
        logp = self.log_probs
        return -(logp.exp() * logp).sum(-1)

    def kl(self, other: Categorical) -> Tensor:
        logp, logq = self.log_probs, other.log_probs
        return (logp.exp() * (logp - logq)).sum(-1)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        probs = torch.softmax(self.logits, dim=-1).reshape(-1, self.logits.shape[-1])
        out = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return out.reshape(self.logits.shape[:-1])

    def mode(self) -> Tensor:
        return self.logits.argmax(-1)

    def detach(self) -> Categorical:
        return Categorical(self.logits.detach())

    def index(self, idx: Tensor | slice) -> Categorical:
        return Categorical(self.logits[idx])


Distribution = DiagGaussian | Categorical
