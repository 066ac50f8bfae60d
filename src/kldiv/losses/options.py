"""What the losses accept: the option types, the top-k teacher, and the checks of every argument.

One place for the messages of :mod:`kldiv.losses`: each check names the argument, what was expected and what
was received. Row checks run one cheap pass (the row maxima) and diagnose in full only once something is wrong.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor

from kldiv._validate import check_log_space, check_scalar, is_validation_enabled, sum_tolerance

Reduction = Literal["batchmean", "sum", "mean", "none"]
TeacherKind = Literal["logits", "log_probs", "probs"]
Implementation = Literal["auto", "chunked", "naive"]
Divergence = Literal["forward", "reverse", "symmetric", "jsd"]


@dataclass(frozen=True)
class TopK:
    """A teacher given by its top-k entries per token: ``indices`` (int64, ``(..., k)``) and ``values`` (same shape).

    ``kind`` says what ``values`` are: ``"logits"``, ``"log_probs"`` or ``"probs"``. ``rest`` is the policy for
    the mass outside the k entries:

    * ``"renormalize"``: the teacher is ``softmax`` over the k entries (zero elsewhere), at the loss's temperature.
      ``KL(P||Q)`` is then the usual sparse distillation loss; ``KL(Q||P)`` is +inf (the student has mass where
      the teacher has none), the generalized JSD stays finite.
    * ``"mass"``: the k values are the teacher's true (log-)probabilities and ``1 - sum`` of them is its remaining
      mass. Both distributions are coarse-grained to ``k + 1`` categories (the k ids and "the rest", the
      student's rest being ``1 - sum_k q``), and the divergence is taken between those: a lower bound of the
      full divergence (data processing inequality), exact when the teacher's rest mass sits on one id.
      Requires ``kind`` in {"log_probs", "probs"} and ``temperature == 1`` (the tempered teacher is not known
      from its top k). A rest below the rounding noise of the sum (``4 (k + 1) eps``) counts as exactly 0.

    Indices must be distinct within a token; an index beyond the student's vocabulary is teacher mass the
    student cannot represent (see the vocabulary policy of :mod:`kldiv.losses.functional`): with any mass there
    ``KL(P||Q)`` is +inf. Such ids are merged into one entry (only their total mass matters to every loss
    here), so an id of 2^40 costs no more than one of V.

    The values of valid tokens are checked like a dense teacher's: a NaN or +inf, a row with no mass (all
    ``-inf``, or all 0 for probabilities; allowed with ``rest="mass"``, where it is all "rest"), probabilities
    outside [0, 1], or values that overflow at the temperature raise ``ValueError`` naming the row and entry.
    """

    indices: Tensor
    values: Tensor
    kind: TeacherKind = "logits"
    rest: Literal["renormalize", "mass"] = "renormalize"


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_logits_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; a floating-point dtype is required")
    if x.dim() == 0:
        raise ValueError(f"{name} is a scalar; expected shape (..., V) with the vocabulary last")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has an empty vocabulary dimension (shape {tuple(x.shape)})")
    return x


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16/float32 inputs, float64 if any input is float64."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def check_label_tensor(labels: object, batch_shape: torch.Size, *, ids: str, expected: str) -> Tensor:
    """``labels``, checked to be an integer tensor of shape ``batch_shape`` (``ids`` and ``expected`` word the
    errors)."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of {ids}, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels has dtype {labels.dtype}; an integer dtype is required")
    if labels.shape != batch_shape:
        raise ValueError(f"labels has shape {tuple(labels.shape)}; expected {expected}")
    return labels


def valid_rows(
    batch_shape: torch.Size,
    labels: Tensor | None,
    ignore_index: int,
    mask: Tensor | None,
    device: torch.device,
) -> Tensor:
    """Flat bool tensor (N,) of the valid tokens: ``labels != ignore_index`` and ``mask``."""
    valid = torch.ones(batch_shape, dtype=torch.bool, device=device)
    if labels is not None:
        check_label_tensor(
            labels, batch_shape, ids="token ids", expected=f"the logits' batch shape {tuple(batch_shape)}"
        )
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        valid = valid & (labels != ignore_index)
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            kind = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor (True = valid token), got {kind}")
        if mask.shape != batch_shape:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}; expected the logits' batch shape {tuple(batch_shape)}"
            )
        valid = valid & mask
    return valid.reshape(-1)


def check_rows(name: str, x: Tensor, valid: Tensor, temperature: float, *, log_probs: bool = False) -> None:
    """Check the valid rows of flat logits ``x`` (N, V): no NaN or +inf, not all ``-inf``, no overflow at ``T``;
    with ``log_probs``, also normalized. Errors name the row and entry (row = token of the flattened batch).

    One pass (the row maxima); the full diagnosis (which entry) runs only once something is wrong.
    """
    if not is_validation_enabled() or x.numel() == 0:
        return
    xd = x.detach().to(compute_dtype(x.dtype))
    top = xd.amax(-1)
    bad = valid & ~torch.isfinite(top / temperature)
    ok = not bool(bad.any())
    if ok and log_probs:
        lse = torch.logsumexp(xd, -1)
        ok = not bool((valid & ~(lse.abs() <= sum_tolerance(x.dtype))).any())
    if ok:
        return
    # ignored rows may hold anything: a harmless row in their place keeps the indices of the others
    rows = torch.where(valid[:, None], x.detach(), -math.log(x.shape[1]) if log_probs else 0.0)
    check_log_space(name, rows, 1, x.dtype, log_probs=log_probs)
    row = int(bad.nonzero()[0, 0])
    raise ValueError(
        f"{name} / temperature overflows in row {row} (max {float(top[row]):g}, temperature={temperature:g}); "
        "use a larger temperature or smaller logits"
    )


def check_labels(labels: Tensor, valid: Tensor, vocab: int, ignore_index: int, vocab_of: str = "the student") -> None:
    """Raise unless the flat ``labels`` (N,) of the valid tokens lie in ``[0, vocab)``, naming the first that does
    not (always checked: the kernels index by the labels)."""
    out_of_range = valid & ((labels < 0) | (labels >= vocab))
    if bool(out_of_range.any()):
        i = int(out_of_range.nonzero()[0, 0])
        raise ValueError(
            f"labels holds {int(labels[i])} at index {i}, outside [0, {vocab}) (V of {vocab_of}) for a valid token "
            f"(and not ignore_index={ignore_index})"
        )


_WARNED: set[str] = set()
"""The warnings given so far in this process: each is given once."""


def warn_once(key: str, message: str) -> None:
    """A ``UserWarning`` the first time ``key`` comes up in this process (a training loop calls a loss often),
    attributed to the caller's line: the first frame outside kldiv and torch."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    internal = (str(Path(__file__).parents[1]), str(Path(torch.__file__).parent))
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(internal):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level + 1)


def warn_if_probabilities(name: str, x: Tensor, valid: Tensor) -> None:
    """Warn once if the logits ``x`` (N, V) are plainly probabilities: every valid row >= 0 and summing to 1
    within the tolerance of ``x``'s dtype. The first valid row is looked at first, so logits cost O(V)."""
    if not is_validation_enabled() or x.numel() == 0 or not bool(valid.any()):
        return
    tol = sum_tolerance(x.dtype)
    first = x[int(valid.to(torch.uint8).argmax())].detach()
    if not bool((first >= 0).all()) or abs(float(first.sum(dtype=torch.float64)) - 1.0) > tol:
        return
    rows = x.detach()[valid]
    if bool((rows >= 0).all()) and bool(((rows.sum(-1, dtype=torch.float64) - 1).abs() <= tol).all()):
        warn_once(
            "probabilities as logits",
            f"{name} holds probabilities (every row >= 0 and summing to 1) but is read as logits; pass "
            f"teacher_kind='probs' (or their log with teacher_kind='log_probs')",
        )


def warn_if_vocabularies_make_it_infinite(value: Tensor, student_vocab: int, teacher_ids: int) -> None:
    """Warn once if the loss ``value`` is +inf where the vocabularies differ (teacher ids up to ``teacher_ids``
    against the student's ``student_vocab``): mass on ids one side lacks makes a KL +inf."""
    if teacher_ids == student_vocab or not bool((value == math.inf).any()):
        return
    if teacher_ids > student_vocab:
        cause = f"the teacher puts mass on ids the student lacks (its ids {student_vocab} to {teacher_ids - 1})"
        remedy = f"teacher[..., :{student_vocab}] compares over the student's ids (the teacher renormalized there)"
    else:
        cause = f"the student puts mass on ids the teacher lacks (its ids {teacher_ids} to {student_vocab - 1})"
        remedy = f"student_logits[..., :{teacher_ids}] compares over the teacher's ids"
    warn_once(
        "vocabularies",
        f"the loss is +inf: the teacher has {teacher_ids} ids and the student {student_vocab}, and {cause}, "
        f"where the shorter side has probability 0; {remedy}",
    )


def check_not_meta(what: str, *tensors: Tensor) -> None:
    """Raise a clear error for meta tensors where ``what`` reads their data (only the shapes are known)."""
    if any(x.device.type == "meta" for x in tensors):
        raise NotImplementedError(
            f"{what} reads the values of its inputs, which meta tensors lack; on meta tensors (shapes only) the "
            "losses of logits and log-probability teachers with implementation='chunked' or 'auto' work"
        )


def check_options(reduction: str, temperature: float, implementation: str) -> float:
    check_choice("reduction", reduction, get_args(Reduction))
    check_choice("implementation", implementation, get_args(Implementation))
    return check_scalar("temperature", temperature, low=0.0, low_open=True)


# ----------------------------------------------------------------------------------------------------------


def check_probs(name: str, p: Tensor, valid: Tensor, step: int) -> None:
    """Raise unless the valid rows of ``p`` (N, V) are probabilities: finite, >= 0, summing to 1 within the
    tolerance of ``p``'s dtype, checked ``step`` rows at a time (no N x V temporaries). Errors name the row (token
    of the flattened batch) and the entry."""
    if not is_validation_enabled() or p.numel() == 0:
        return
    tol = sum_tolerance(p.dtype)
    x = p.detach()
    for i0 in range(0, x.shape[0], step):
        rows, ok = x[i0 : i0 + step].to(compute_dtype(x.dtype)), valid[i0 : i0 + step, None]
        _raise_at(name, x, ok & ~(torch.isfinite(rows) & (rows >= 0)), "probabilities must be finite and >= 0", i0)
        sums = rows.sum(-1)
        _raise_in_row(
            ok[:, 0] & ((sums - 1).abs() > tol),
            sums,
            f"{name} sums to {{value}} in row {{row}}; probabilities must sum to 1 (tolerance {tol:.2g})",
            i0,
        )


def check_topk(teacher: TopK, batch_shape: torch.Size, temperature: float) -> None:
    check_choice("TopK.kind", teacher.kind, get_args(TeacherKind))
    check_choice("TopK.rest", teacher.rest, ("renormalize", "mass"))
    if not isinstance(teacher.indices, Tensor) or teacher.indices.dtype not in (torch.int64, torch.int32):
        raise TypeError("TopK.indices must be an int64 (or int32) tensor of vocabulary ids")
    check_logits_tensor("TopK.values", teacher.values)
    if teacher.indices.shape != teacher.values.shape or teacher.values.shape[:-1] != batch_shape:
        raise ValueError(
            f"TopK.indices {tuple(teacher.indices.shape)} and TopK.values {tuple(teacher.values.shape)} must both "
            f"have shape (*{tuple(batch_shape)}, k), the student's batch shape and k entries"
        )
    if teacher.indices.numel():
        if bool((teacher.indices < 0).any()):
            raise ValueError("TopK.indices must be >= 0 (vocabulary ids)")
        srt = teacher.indices.sort(-1).values
        if bool((srt[..., 1:] == srt[..., :-1]).any()):
            raise ValueError("TopK.indices must be distinct within each token")
    if teacher.rest == "mass":
        if teacher.kind == "logits":
            raise ValueError('TopK(rest="mass") needs kind "probs" or "log_probs": top-k logits carry no rest mass')
        if temperature != 1.0:
            raise ValueError(
                f'TopK(rest="mass") needs temperature=1 (got {temperature:g}): the tempered teacher is not known '
                "from its top k entries"
            )


def check_topk_values(teacher: TopK, valid: Tensor, vocab: int, temperature: float) -> None:
    """Check the valid rows of ``TopK.values`` (and, for ``rest="mass"``, the ids against the student's ``vocab``).

    Logits and log-probabilities: no NaN or +inf, no overflow at the temperature, and with ``"renormalize"`` not
    all ``-inf`` (no mass to renormalize). Probabilities: finite, in [0, 1], and with ``"renormalize"`` not all 0.
    With ``"mass"`` the k values must hold at most mass 1 (the rest is ``1 - sum``; all of it may be the rest).
    Errors name the row (token of the flattened batch) and the entry.
    """
    if teacher.rest == "mass":
        check_mass_indices(teacher.indices.reshape(-1, teacher.indices.shape[-1]), valid, vocab)
    if not is_validation_enabled() or teacher.values.numel() == 0:
        return
    values = teacher.values.detach().reshape(-1, teacher.values.shape[-1])
    name = f"TopK.values ({teacher.kind})"
    tol = sum_tolerance(values.dtype)
    x = values.to(compute_dtype(values.dtype))
    if teacher.kind == "probs":
        entry_ok = torch.isfinite(x) & (x >= 0) & (x <= 1)
        _raise_at(name, values, valid[:, None] & ~entry_ok, "probabilities must be finite and in [0, 1]")
        total = x.sum(-1)
        if teacher.rest == "mass":
            _raise_in_row(
                valid & (total > 1 + tol),
                total,
                f"{name} sums to {{value}} in row {{row}}; with rest='mass' the k probabilities must sum to at most 1",
            )
        _raise_in_row(
            valid & (total == 0) & (teacher.rest == "renormalize"),
            total,
            f"{name} is 0 everywhere in row {{row}}: no teacher mass to renormalize",
        )
        top = x.amax(-1)
        log_top = torch.log(torch.where(top > 0, top, 1.0))
        _raise_in_row(
            valid & ~torch.isfinite(log_top / temperature),
            top,
            f"log {name} / temperature overflows "
            f"in row {{row}} (max {{value}}, temperature={temperature:g}); use a larger temperature",
        )
        return
    if teacher.rest == "renormalize":
        check_rows(name, values, valid, temperature)
        return
    _raise_at(name, values, valid[:, None] & (torch.isnan(x) | (x == math.inf)), "NaN and +inf are not allowed")
    lse = torch.logsumexp(x, -1)
    _raise_in_row(
        valid & (lse > tol),
        lse,
        f"{name} has logsumexp {{value}} in row {{row}}; with rest='mass' "
        "the log-probabilities must have logsumexp <= 0 (mass at most 1)",
    )


def _raise_at(name: str, x: Tensor, bad: Tensor, what: str, offset: int = 0) -> None:
    """Raise naming the first (row, entry) where ``bad`` holds (rows ``offset`` onwards of ``x``)."""
    if bool(bad.any()):
        row, entry = (int(i) for i in bad.nonzero()[0])
        row += offset
        raise ValueError(f"{name} has {float(x[row, entry])!r} in row {row}, entry {entry}; {what}")


def _raise_in_row(bad: Tensor, per_row: Tensor, message: str, offset: int = 0) -> None:
    """Raise ``message`` (with ``{row}`` and ``{value}``) for the first row where ``bad`` holds; ``per_row`` and
    ``bad`` hold rows ``offset`` onwards."""
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(message.format(row=row + offset, value=repr(float(per_row[row]))))


def check_mass_indices(indices: Tensor, valid: Tensor, vocab: int) -> None:
    """Raise unless the top-k ids (N, k) of the valid rows lie in the student's ``vocab`` ids (``rest="mass"``)."""
    top = indices[valid]
    if top.numel() and int(top.max()) >= vocab:
        raise ValueError(
            f"TopK.indices reach {int(top.max())} but the student has {vocab} ids; with rest='mass' "
            "the teacher's top k must lie in the student's vocabulary"
        )
