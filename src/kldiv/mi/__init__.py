"""Mutual information as a KL, ``I(X; Y) = KL(P_XY || P_X P_Y)``: variational bounds as pure functions of a
critic's score matrix (DV, MINE, NWJ, InfoNCE, SMILE), critics, samples with a known mutual information, and
:func:`estimate_mi`, which trains a critic on a bound."""

from kldiv.mi.bounds import BOUNDS, MineState, dv, infonce, js, mine, nwj, smile
from kldiv.mi.critics import ConcatCritic, SeparableCritic
from kldiv.mi.estimate import CRITICS, MIEstimate, estimate_mi
from kldiv.mi.gaussians import correlated_gaussians, gaussian_log_density_ratio, rho_for_mi

__all__ = [
    "BOUNDS",
    "CRITICS",
    "ConcatCritic",
    "MIEstimate",
    "MineState",
    "SeparableCritic",
    "correlated_gaussians",
    "dv",
    "estimate_mi",
    "gaussian_log_density_ratio",
    "infonce",
    "js",
    "mine",
    "nwj",
    "rho_for_mi",
    "smile",
]
