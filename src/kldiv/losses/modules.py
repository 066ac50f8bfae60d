"""``nn.Module`` wrappers of :mod:`kldiv.losses.functional` and :mod:`kldiv.losses.linear`: they hold the options
and call the function.

Each ``forward(student_logits, teacher, labels=None, mask=None)`` returns the loss of the functional form with
the options given at construction (see :mod:`kldiv.losses.functional` for the semantics); the fused linear
losses take ``forward(hidden, weight, teacher, labels=None, mask=None, *, bias=None)`` (the student's head is
the caller's, e.g. ``lm_head.weight``; see :mod:`kldiv.losses.linear`). The classification regularizers of
:mod:`kldiv.losses.regularizers` take ``forward(logits)`` (``forward(logits, labels)`` for label smoothing).
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor, nn

from kldiv._validate import check_scalar
from kldiv.discrete import _check_beta
from kldiv.losses import functional as LF
from kldiv.losses import linear as LL
from kldiv.losses import regularizers as LR
from kldiv.losses.linear import Direction, TeacherHead
from kldiv.losses.options import Implementation, Reduction, TeacherKind, TopK, check_choice, check_options
from kldiv.losses.regularizers import RegularizerReduction
from kldiv.losses.rows import rows_per_chunk


class _DivergenceLoss(nn.Module):
    def __init__(
        self,
        *,
        temperature: float = 1.0,
        teacher_kind: TeacherKind = "logits",
        ignore_index: int = -100,
        reduction: Reduction = "batchmean",
        implementation: Implementation = "auto",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        check_options(reduction, temperature, implementation)
        self.temperature = temperature
        self.teacher_kind: TeacherKind = teacher_kind
        self.ignore_index = ignore_index
        self.reduction: Reduction = reduction
        self.implementation: Implementation = implementation
        self.chunk_size = chunk_size

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}, implementation={self.implementation!r}"


class ForwardKLLoss(_DivergenceLoss):
    """``KL(teacher || student)`` per token, reduced: :func:`kldiv.losses.forward_kl` as a module."""

    def forward(
        self, student_logits: Tensor, teacher: Tensor | TopK, labels: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        return LF.forward_kl(
            student_logits,
            teacher,
            teacher_kind=self.teacher_kind,
            temperature=self.temperature,
            labels=labels,
            ignore_index=self.ignore_index,
            mask=mask,
            reduction=self.reduction,
            implementation=self.implementation,
            chunk_size=self.chunk_size,
        )


class ReverseKLLoss(_DivergenceLoss):
    """``KL(student || teacher)`` per token, reduced: :func:`kldiv.losses.reverse_kl` as a module."""

    def forward(
        self, student_logits: Tensor, teacher: Tensor | TopK, labels: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        return LF.reverse_kl(
            student_logits,
            teacher,
            teacher_kind=self.teacher_kind,
            temperature=self.temperature,
            labels=labels,
            ignore_index=self.ignore_index,
            mask=mask,
            reduction=self.reduction,
            implementation=self.implementation,
            chunk_size=self.chunk_size,
        )


class SymmetricKLLoss(_DivergenceLoss):
    """``w KL(P||Q) + (1 - w) KL(Q||P)``: :func:`kldiv.losses.symmetric_kl` as a module."""

    def __init__(self, *, weight: float = 0.5, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.weight = check_scalar("weight", weight, low=0.0, high=1.0)

    def forward(
        self, student_logits: Tensor, teacher: Tensor | TopK, labels: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        return LF.symmetric_kl(
            student_logits,
            teacher,
            weight=self.weight,
            teacher_kind=self.teacher_kind,
            temperature=self.temperature,
            labels=labels,
            ignore_index=self.ignore_index,
            mask=mask,
            reduction=self.reduction,
            implementation=self.implementation,
            chunk_size=self.chunk_size,
        )


class GeneralizedJSDLoss(_DivergenceLoss):
    """Generalized JSD (GKD) with ``beta``: :func:`kldiv.losses.generalized_jsd` as a module."""

    def __init__(self, *, beta: float = 0.5, normalized: bool = False, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.beta = _check_beta(beta, normalized)
        self.normalized = normalized

    def forward(
        self, student_logits: Tensor, teacher: Tensor | TopK, labels: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        return LF.generalized_jsd(
            student_logits,
            teacher,
            beta=self.beta,
            normalized=self.normalized,
            teacher_kind=self.teacher_kind,
            temperature=self.temperature,
            labels=labels,
            ignore_index=self.ignore_index,
            mask=mask,
            reduction=self.reduction,
            implementation=self.implementation,
            chunk_size=self.chunk_size,
        )


class DistillationLoss(_DivergenceLoss):
    """Hinton's ``alpha T^2 KL + (1 - alpha) CE``: :func:`kldiv.losses.distillation_loss` as a module."""

    def __init__(self, *, alpha: float = 0.5, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.alpha = check_scalar("alpha", alpha, low=0.0, high=1.0)

    def forward(
        self, student_logits: Tensor, teacher: Tensor | TopK, labels: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        return LF.distillation_loss(
            student_logits,
            teacher,
            labels,
            alpha=self.alpha,
            temperature=self.temperature,
            teacher_kind=self.teacher_kind,
            ignore_index=self.ignore_index,
            mask=mask,
            reduction=self.reduction,
            implementation=self.implementation,
            chunk_size=self.chunk_size,
        )


class _FusedLinearLoss(nn.Module):
    def __init__(
        self,
        *,
        temperature: float = 1.0,
        ignore_index: int = -100,
        reduction: Reduction = "batchmean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        check_options(reduction, temperature, "auto")
        rows_per_chunk(chunk_size, 1)  # validates chunk_size
        self.temperature = temperature
        self.ignore_index = ignore_index
        self.reduction: Reduction = reduction
        self.chunk_size = chunk_size

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}, chunk_size={self.chunk_size}"


class FusedLinearKLLoss(_FusedLinearLoss):
    """Forward, reverse or symmetric KL of the logits ``hidden @ weight.T + bias``, never materialized:
    :func:`kldiv.losses.fused_linear_kl` as a module."""

    def __init__(
        self, *, direction: Direction = "forward", forward_weight: float | None = None, **options: object
    ) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        LL.check_direction(direction, forward_weight)
        self.direction: Direction = direction
        self.forward_weight = forward_weight

    def forward(
        self,
        hidden: Tensor,
        weight: Tensor,
        teacher: Tensor | TeacherHead,
        labels: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        bias: Tensor | None = None,
    ) -> Tensor:
        return LL.fused_linear_kl(
            hidden,
            weight,
            teacher,
            bias=bias,
            direction=self.direction,
            forward_weight=self.forward_weight,
            temperature=self.temperature,
            labels=labels,
            ignore_index=self.ignore_index,
            mask=mask,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
        )


class FusedLinearJSDLoss(_FusedLinearLoss):
    """Generalized JSD (GKD) with ``beta`` of the logits ``hidden @ weight.T + bias``, never materialized:
    :func:`kldiv.losses.fused_linear_jsd` as a module."""

    def __init__(self, *, beta: float = 0.5, normalized: bool = False, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.beta = _check_beta(beta, normalized)
        self.normalized = normalized

    def forward(
        self,
        hidden: Tensor,
        weight: Tensor,
        teacher: Tensor | TeacherHead,
        labels: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        bias: Tensor | None = None,
    ) -> Tensor:
        return LL.fused_linear_jsd(
            hidden,
            weight,
            teacher,
            bias=bias,
            beta=self.beta,
            normalized=self.normalized,
            temperature=self.temperature,
            labels=labels,
            ignore_index=self.ignore_index,
            mask=mask,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
        )


class FusedLinearDistillationLoss(_FusedLinearLoss):
    """Hinton's ``alpha T^2 KL + (1 - alpha) CE`` of the logits ``hidden @ weight.T + bias``, never materialized:
    :func:`kldiv.losses.fused_linear_distillation_loss` as a module."""

    def __init__(self, *, alpha: float = 0.5, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.alpha = check_scalar("alpha", alpha, low=0.0, high=1.0)

    def forward(
        self,
        hidden: Tensor,
        weight: Tensor,
        teacher: Tensor | TeacherHead,
        labels: Tensor,
        mask: Tensor | None = None,
        *,
        bias: Tensor | None = None,
    ) -> Tensor:
        return LL.fused_linear_distillation_loss(
            hidden,
            weight,
            teacher,
            labels,
            bias=bias,
            alpha=self.alpha,
            temperature=self.temperature,
            ignore_index=self.ignore_index,
            mask=mask,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
        )


TargetDirection = Literal["model_to_target", "target_to_model"]


class _RegularizerLoss(nn.Module):
    def __init__(self, *, dim: int = -1, reduction: RegularizerReduction = "mean") -> None:
        super().__init__()
        check_choice("reduction", reduction, get_args(RegularizerReduction))
        self.dim = dim
        self.reduction: RegularizerReduction = reduction

    def extra_repr(self) -> str:
        return f"dim={self.dim}, reduction={self.reduction!r}"


class KLToTargetLoss(_RegularizerLoss):
    """KL between ``softmax(logits)`` and a fixed distribution ``target`` (a buffer: it follows ``.to()``), in
    the named ``direction``: :func:`kldiv.losses.kl_model_to_target` or :func:`kldiv.losses.kl_target_to_model`
    as a module."""

    target: Tensor

    def __init__(
        self,
        target: Tensor,
        *,
        direction: TargetDirection,
        dim: int = -1,
        reduction: RegularizerReduction = "mean",
    ) -> None:
        super().__init__(dim=dim, reduction=reduction)
        check_choice("direction", direction, get_args(TargetDirection))
        if not isinstance(target, Tensor):
            raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
        self.direction: TargetDirection = direction
        self.register_buffer("target", target)

    def forward(self, logits: Tensor) -> Tensor:
        kl = LR.kl_model_to_target if self.direction == "model_to_target" else LR.kl_target_to_model
        return kl(logits, self.target, dim=self.dim, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"direction={self.direction!r}, {super().extra_repr()}"


class MarginalKLToUniformLoss(nn.Module):
    """``KL(mean_b softmax(logits_b) || U)``: :func:`kldiv.losses.marginal_kl_to_uniform` as a module."""

    def __init__(self, *, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, logits: Tensor) -> Tensor:
        return LR.marginal_kl_to_uniform(logits, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class ConfidencePenaltyLoss(_RegularizerLoss):
    """``-beta H(softmax(logits))``: :func:`kldiv.losses.confidence_penalty` as a module."""

    def __init__(self, *, beta: float, dim: int = -1, reduction: RegularizerReduction = "mean") -> None:
        super().__init__(dim=dim, reduction=reduction)
        self.beta = check_scalar("beta", beta, low=0.0)

    def forward(self, logits: Tensor) -> Tensor:
        return LR.confidence_penalty(logits, beta=self.beta, dim=self.dim, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, {super().extra_repr()}"


class LabelSmoothingLoss(_RegularizerLoss):
    """``(1 - eps) CE(y, p) + eps CE(U, p)``: :func:`kldiv.losses.label_smoothing_loss` as a module."""

    def __init__(
        self, *, eps: float, ignore_index: int = -100, dim: int = -1, reduction: RegularizerReduction = "mean"
    ) -> None:
        super().__init__(dim=dim, reduction=reduction)
        self.eps = check_scalar("eps", eps, low=0.0, high=1.0)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return LR.label_smoothing_loss(
            logits, labels, eps=self.eps, ignore_index=self.ignore_index, dim=self.dim, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"eps={self.eps}, ignore_index={self.ignore_index}, {super().extra_repr()}"
