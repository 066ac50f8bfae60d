"""KL in reinforcement learning: sample estimators of the KL (k1, k2, k3), exact KL between policies, KL
coefficient controllers, KL-penalized rewards, the trust-region check and SAC's temperature loss."""

from kldiv.rl.constraints import KLCheck, policy_update_with_kl_constraint, sac_temperature_loss
from kldiv.rl.controllers import AdaptiveKLController, FixedKLController
from kldiv.rl.estimators import ESTIMATORS, estimate_kl, k1, k2, k3
from kldiv.rl.policies import categorical_policy_kl, gaussian_policy_kl, kl_penalized_rewards

__all__ = [
    "ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "KLCheck",
    "categorical_policy_kl",
    "estimate_kl",
    "gaussian_policy_kl",
    "k1",
    "k2",
    "k3",
    "kl_penalized_rewards",
    "policy_update_with_kl_constraint",
    "sac_temperature_loss",
]
