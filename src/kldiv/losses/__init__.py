"""Divergence losses for distillation and RLHF over large vocabularies: functional, chunked and nn.Module forms."""

from kldiv.losses.functional import (
    distillation_loss,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    symmetric_kl,
)
from kldiv.losses.linear import fused_linear_distillation_loss, fused_linear_jsd, fused_linear_kl
from kldiv.losses.modules import (
    DistillationLoss,
    ForwardKLLoss,
    FusedLinearDistillationLoss,
    FusedLinearJSDLoss,
    FusedLinearKLLoss,
    GeneralizedJSDLoss,
    ReverseKLLoss,
    SymmetricKLLoss,
)
from kldiv.losses.options import TopK
from kldiv.losses.parallel import vocab_parallel_distillation_loss, vocab_parallel_kl, vocab_parallel_linear_kl

__all__ = [
    "DistillationLoss",
    "ForwardKLLoss",
    "FusedLinearDistillationLoss",
    "FusedLinearJSDLoss",
    "FusedLinearKLLoss",
    "GeneralizedJSDLoss",
    "ReverseKLLoss",
    "SymmetricKLLoss",
    "TopK",
    "distillation_loss",
    "forward_kl",
    "fused_linear_distillation_loss",
    "fused_linear_jsd",
    "fused_linear_kl",
    "generalized_jsd",
    "reverse_kl",
    "symmetric_kl",
    "vocab_parallel_distillation_loss",
    "vocab_parallel_kl",
    "vocab_parallel_linear_kl",
]
