"""The variational information bottleneck (Alemi et al. 2017): a stochastic encoder whose rate
``KL(q(z|x) || N(0, I))``, an upper bound on ``I(Z; X)``, is traded against the classification loss by ``beta``."""

from kldiv.vib.model import VIBClassifier, VIBTerms, vib_terms

__all__ = ["VIBClassifier", "VIBTerms", "vib_terms"]
