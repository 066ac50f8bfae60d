"""KL in reinforcement learning: sample estimators of the KL (k1, k2, k3), exact KL between policies, KL
coefficient controllers and KL-penalized rewards."""

from kldiv.rl.controllers import AdaptiveKLController, FixedKLController
from kldiv.rl.estimators import ESTIMATORS, estimate_kl, k1, k2, k3
from kldiv.rl.policies import categorical_policy_kl, gaussian_policy_kl, kl_penalized_rewards

__all__ = [
    "ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "categorical_policy_kl",
    "estimate_kl",
    "gaussian_policy_kl",
    "k1",
    "k2",
    "k3",
    "kl_penalized_rewards",
]
