"""Divergence losses for distillation and RLHF over large vocabularies, and regularizers of classifiers:
functional, chunked and nn.Module forms."""

from kldiv.losses.functional import (
    distillation_loss,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    symmetric_kl,
)
from kldiv.losses.linear import fused_linear_distillation_loss, fused_linear_jsd, fused_linear_kl
from kldiv.losses.modules import (
    ConfidencePenaltyLoss,
    DistillationLoss,
    ForwardKLLoss,
    FusedLinearDistillationLoss,
    FusedLinearJSDLoss,
    FusedLinearKLLoss,
    GeneralizedJSDLoss,
    KLToTargetLoss,
    LabelSmoothingLoss,
    MarginalKLToUniformLoss,
    ReverseKLLoss,
    SymmetricKLLoss,
)
from kldiv.losses.options import TopK
from kldiv.losses.parallel import vocab_parallel_distillation_loss, vocab_parallel_kl, vocab_parallel_linear_kl
from kldiv.losses.regularizers import (
    confidence_penalty,
    kl_model_to_target,
    kl_target_to_model,
    label_smoothing_loss,
    marginal_kl_to_uniform,
)

__all__ = [
    "ConfidencePenaltyLoss",
    "DistillationLoss",
    "ForwardKLLoss",
    "FusedLinearDistillationLoss",
    "FusedLinearJSDLoss",
    "FusedLinearKLLoss",
    "GeneralizedJSDLoss",
    "KLToTargetLoss",
    "LabelSmoothingLoss",
    "MarginalKLToUniformLoss",
    "ReverseKLLoss",
    "SymmetricKLLoss",
    "TopK",
    "confidence_penalty",
    "distillation_loss",
    "forward_kl",
    "fused_linear_distillation_loss",
    "fused_linear_jsd",
    "fused_linear_kl",
    "generalized_jsd",
    "kl_model_to_target",
    "kl_target_to_model",
    "label_smoothing_loss",
    "marginal_kl_to_uniform",
    "reverse_kl",
    "symmetric_kl",
    "vocab_parallel_distillation_loss",
    "vocab_parallel_kl",
    "vocab_parallel_linear_kl",
]
