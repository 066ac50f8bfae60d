"""The networks of the RL algorithms: stochastic policies with their exact KL, value and Q networks.

A policy maps observations to the parameters of its action distribution (``params``); its methods give the
log-probability of actions, the entropy, and the exact per-state ``KL(pi_old(.|s) || pi_new(.|s))`` between two
parameter sets, which PPO's penalty and TRPO's constraint use:

- :class:`CategoricalPolicy` (discrete actions): ``params`` are logits; the KL is
  :func:`kldiv.rl.categorical_policy_kl` and the entropy :func:`kldiv.entropy_from_logits`.
- :class:`GaussianPolicy` (continuous actions): a state-dependent mean and a learned state-independent log std
  (Schulman et al. 2015, 2017); ``params`` stacks ``(mean, std)`` on a new first dimension; the KL is
  :func:`kldiv.rl.gaussian_policy_kl` (summed over action dimensions).

Hidden layers are ``tanh`` with orthogonal initialization (gain sqrt 2; 0.01 on the policy's output and 1 on a
value's), the choices of the PPO implementation study of Engstrom et al. (2020) and CleanRL.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from kldiv.discrete import entropy_from_logits
from kldiv.rl.policies import categorical_policy_kl, gaussian_policy_kl

__all__ = ["CategoricalPolicy", "GaussianPolicy", "Policy", "mlp", "value_network"]


def mlp(sizes: tuple[int, ...], *, activation: type[nn.Module] = nn.Tanh, out_gain: float = 1.0) -> nn.Sequential:
    """``Linear, activation, ..., Linear`` through ``sizes``, orthogonally initialized (gain sqrt 2 on hidden layers,
    ``out_gain`` on the last), biases 0."""
    layers: list[nn.Module] = []
    pairs = list(itertools.pairwise(sizes))
    for i, (a, b) in enumerate(pairs):
        linear = nn.Linear(a, b)
        last = i == len(pairs) - 1
        nn.init.orthogonal_(linear.weight, gain=out_gain if last else math.sqrt(2.0))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(activation())
    return nn.Sequential(*layers)


def value_network(obs_dim: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """A state-value network ``obs -> (B, 1)``."""
    return mlp((obs_dim, *hidden, 1))


class Policy(nn.Module):
    """A stochastic policy: :meth:`forward` gives the distribution's parameters, the other methods act on them."""

    def sample(self, params: Tensor) -> Tensor:
        """Actions drawn from the distributions (torch's global generator)."""
        raise NotImplementedError

    def mode(self, params: Tensor) -> Tensor:
        """The most likely action of each state (greedy evaluation)."""
        raise NotImplementedError

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        """``log pi(a|s)`` per state ``(B,)``."""
        raise NotImplementedError

    def entropy(self, params: Tensor) -> Tensor:
        """The entropy of each state's action distribution ``(B,)`` (nats)."""
        raise NotImplementedError

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        """The exact ``KL(pi_old(.|s) || pi_new(.|s))`` per state ``(B,)``."""
        raise NotImplementedError


class CategoricalPolicy(Policy):
    """A softmax policy over ``n_actions`` discrete actions; ``params`` are the logits ``(B, n_actions)``."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...] = (64, 64)) -> None:
        super().__init__()
        self.net = mlp((obs_dim, *hidden, n_actions), out_gain=0.01)

    def forward(self, obs: Tensor) -> Tensor:
        """The logits ``(B, n_actions)``."""
        out: Tensor = self.net(obs)
        return out

    def sample(self, params: Tensor) -> Tensor:
        return torch.multinomial(torch.softmax(params, -1), 1).squeeze(-1)

    def mode(self, params: Tensor) -> Tensor:
        return params.argmax(-1)

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        return torch.log_softmax(params, -1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, params: Tensor) -> Tensor:
        return entropy_from_logits(params, dim=-1)

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        return categorical_policy_kl(old, new, reduction="none")


class GaussianPolicy(Policy):
    """A diagonal Gaussian policy over ``action_dim`` real actions: mean from an MLP, log std a learned vector
    (initially ``log_std``); ``params`` are ``(2, B, action_dim)``: the means, then the stds."""

    def __init__(
        self, obs_dim: int, action_dim: int, hidden: tuple[int, ...] = (64, 64), *, log_std: float = 0.0
    ) -> None:
        super().__init__()
        self.net = mlp((obs_dim, *hidden, action_dim), out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std)))

    def forward(self, obs: Tensor) -> Tensor:
        """The means and stds, stacked ``(2, B, action_dim)``."""
        mean = self.net(obs)
        return torch.stack((mean, self.log_std.exp().expand_as(mean)))

    def _normal(self, params: Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(params[0], params[1], validate_args=False)

    def sample(self, params: Tensor) -> Tensor:
        return torch.normal(params[0], params[1])

    def mode(self, params: Tensor) -> Tensor:
        return params[0]

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        out: Tensor = self._normal(params).log_prob(actions)  # type: ignore[no-untyped-call]
        return out.sum(-1)

    def entropy(self, params: Tensor) -> Tensor:
        out: Tensor = self._normal(params).entropy()  # type: ignore[no-untyped-call]
        return out.sum(-1)

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        return gaussian_policy_kl(old[0], old[1], new[0], new[1], reduction="none")


def make_policy(
    obs_dim: int, n_actions: int | None, action_dim: int, hidden: tuple[int, ...], *, log_std: float = 0.0
) -> Policy:
    """A :class:`CategoricalPolicy` when ``n_actions`` is given (discrete actions), else a :class:`GaussianPolicy`."""
    if n_actions is not None:
        return CategoricalPolicy(obs_dim, n_actions, hidden)
    return GaussianPolicy(obs_dim, action_dim, hidden, log_std=log_std)
