"""The vocab-parallel losses against the unsharded kldiv.losses results: world size 1, and 2 gloo processes on CPU.

Every case (KL directions, symmetric, generalized JSD, distillation with hard labels, the sharded head) runs
in one spawned pair of processes; the parent compares value and gradients with the unsharded reference in
float64 to 1e-10.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from kldiv.losses import distillation_loss, forward_kl, generalized_jsd, reverse_kl, symmetric_kl
from kldiv.losses.linear import fused_linear_kl
from kldiv.losses.parallel import vocab_parallel_distillation_loss, vocab_parallel_kl, vocab_parallel_linear_kl
from kldiv.losses.rows import reduce_rows

INF = math.inf
REFERENCE = {"forward": forward_kl, "reverse": reverse_kl}
REDUCTIONS = ("batchmean", "sum", "mean", "none")
WORLD = 2
TIMEOUT_S = 120.0

# (id, kind, options); kind "kl" = vocab_parallel_kl, "distill" = vocab_parallel_distillation_loss, "linear" =
# vocab_parallel_linear_kl. "mask" names the data entry used as the mask (default "mask").
CASES: list[tuple[str, str, dict[str, Any]]] = [
    *(
        (f"{d}-{r}-{t}", "kl", {"direction": d, "reduction": r, "temperature": t})
        for d in ("forward", "reverse")
        for r in REDUCTIONS
        for t in (1.0, 2.5)
    ),
    *(
        (f"symmetric0.3-{r}", "kl", {"direction": "symmetric", "weight": 0.3, "reduction": r, "temperature": 2.5})
        for r in REDUCTIONS
    ),
    ("symmetric-default-T1", "kl", {"direction": "symmetric", "reduction": "batchmean"}),
    ("symmetric-w0", "kl", {"direction": "symmetric", "weight": 0.0, "reduction": "sum"}),
    ("symmetric-w1", "kl", {"direction": "symmetric", "weight": 1.0, "reduction": "none", "temperature": 2.5}),
    *((f"jsd0.3-{r}", "kl", {"direction": "jsd", "beta": 0.3, "reduction": r, "temperature": 2.5}) for r in REDUCTIONS),
    ("jsd-default-T1", "kl", {"direction": "jsd", "reduction": "batchmean"}),
    ("jsd0.3-normalized", "kl", {"direction": "jsd", "beta": 0.3, "normalized": True, "reduction": "none"}),
    ("jsd0-normalized", "kl", {"direction": "jsd", "beta": 0.0, "normalized": True, "reduction": "sum"}),
    ("jsd1-normalized", "kl", {"direction": "jsd", "beta": 1.0, "normalized": True, "reduction": "none"}),
    ("forward-labels", "kl", {"labels": "labels", "ignore_index": -100, "reduction": "none", "temperature": 2.5}),
    ("symmetric-all-masked", "kl", {"direction": "symmetric", "weight": 0.3, "mask": "all_masked"}),
    ("jsd-all-masked", "kl", {"direction": "jsd", "beta": 0.3, "mask": "all_masked", "reduction": "none"}),
    *((f"distill-{r}", "distill", {"alpha": 0.4, "temperature": 2.0, "reduction": r}) for r in REDUCTIONS),
    ("distill-T1", "distill", {"alpha": 0.4, "reduction": "batchmean"}),
    ("distill-alpha1", "distill", {"alpha": 1.0, "temperature": 2.0, "reduction": "sum"}),
    ("distill-alpha0", "distill", {"alpha": 0.0, "temperature": 2.0, "reduction": "none"}),
    ("distill-all-masked", "distill", {"alpha": 0.4, "temperature": 2.0, "mask": "all_masked"}),
    # several row chunks, each with its own three collectives
    ("symmetric-chunks", "kl", {"direction": "symmetric", "weight": 0.3, "chunk_size": 2, "temperature": 2.5}),
    ("jsd-chunks", "kl", {"direction": "jsd", "beta": 0.3, "reduction": "none", "chunk_size": 3}),
    ("reverse-chunks-mean", "kl", {"direction": "reverse", "reduction": "mean", "chunk_size": 1}),
    ("distill-chunks", "distill", {"alpha": 0.4, "temperature": 2.0, "reduction": "sum", "chunk_size": 2}),
    *(
        (f"linear-{d}", "linear", {"direction": d, "temperature": 1.5, "bias": True, "chunk_size": 3})
        for d in ("forward", "reverse", "symmetric", "jsd")
    ),
    ("linear-forward-sum-nobias", "linear", {"reduction": "sum", "bias": False}),
    ("linear-reverse-mean", "linear", {"direction": "reverse", "reduction": "mean", "bias": True, "chunk_size": 2}),
    ("linear-jsd-normalized", "linear", {"direction": "jsd", "beta": 0.3, "normalized": True, "bias": True}),
    ("linear-all-masked", "linear", {"direction": "symmetric", "bias": True, "mask": "all_masked"}),
]


CHUNKS_DIFFER: dict[str, Any] = {"direction": "jsd", "bias": True, "reduction": "sum"}


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """float64 data with the edge cases.

    Logits (7, 11) sharded 6 + 5. Row 0: an entry -inf on both sides. Row 1: teacher -inf alone (reverse KL
    +inf). Row 2: student -inf alone (forward KL +inf). Row 3: masked, NaN everywhere. Row 5: the first 6
    columns (rank 0's shard) -inf on both sides. Rows 4, 6: ordinary. Labels: row 0's at a -inf logit (CE
    +inf), row 4 ignored (-100), rows 1 and 5 on rank 1's shard (row 5 at its first column), row 6 at rank 0's
    last column.

    The head: hidden (7, 4) with row 3 (masked) NaN; weight (11, 4); bias (11,) with entry 9 -inf, where the
    head's teacher logits (7, 11) are -inf too (row 3 NaN).
    """
    gen = torch.Generator().manual_seed(seed)
    s = 3.0 * torch.randn(7, 11, generator=gen, dtype=torch.float64)
    t = 3.0 * torch.randn(7, 11, generator=gen, dtype=torch.float64)
    s[0, 0] = t[0, 0] = -INF
    t[1, 3] = -INF
    s[2, 8] = -INF
    s[3] = t[3] = math.nan
    s[5, :6] = t[5, :6] = -INF
    mask = torch.ones(7, dtype=torch.bool)
    mask[3] = False
    weights = torch.rand(7, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 7, 2, 5, -100, 6, 5])
    hidden = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    hidden[3] = math.nan
    head = torch.randn(11, 4, generator=gen, dtype=torch.float64)
    bias = torch.randn(11, generator=gen, dtype=torch.float64)
    bias[9] = -INF
    lin_teacher = 2.0 * torch.randn(7, 11, generator=gen, dtype=torch.float64)
    lin_teacher[:, 9] = -INF
    lin_teacher[3] = math.nan
    return {
        "student": s,
        "teacher": t,
        "mask": mask,
        "all_masked": torch.zeros(7, dtype=torch.bool),
        "weights": weights,
        "labels": labels,
        "hidden": hidden,
        "head": head,
        "bias": bias,
        "lin_teacher": lin_teacher,
    }


def _shard(x: torch.Tensor, rank: int | None, dim: int = -1) -> torch.Tensor:
    """Rank ``rank``'s contiguous part along ``dim`` (11 = 6 + 5: uneven shards); all of ``x`` for None."""
    return x if rank is None else torch.tensor_split(x, WORLD, dim=dim)[rank].contiguous()


def _grads(loss: Any, leaves: dict[str, torch.Tensor | None], weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"value": loss(**leaves)}`` and the gradient of (weighted) loss w.r.t. each leaf."""
    names = [k for k, v in leaves.items() if v is not None]
    inputs = {k: (None if v is None else v.detach().clone().requires_grad_()) for k, v in leaves.items()}
    value = loss(**inputs)
    objective = (value * weights).sum() if value.dim() else 1.7 * value
    grads = torch.autograd.grad(objective, [inputs[k] for k in names])
    return {"value": value.detach(), **dict(zip(names, grads, strict=True))}


def _options(kw: dict[str, Any], data: dict[str, torch.Tensor]) -> tuple[dict[str, Any], torch.Tensor]:
    kw = dict(kw)
    mask = data[kw.pop("mask", "mask")]
    if isinstance(kw.get("labels"), str):
        kw["labels"] = data[kw["labels"]]
    return kw, mask


def _run(kind: str, kw: dict[str, Any], data: dict[str, torch.Tensor], rank: int | None) -> dict[str, torch.Tensor]:
    """The vocab-parallel loss of this rank's shards (the whole data for ``rank=None``), value and gradients."""
    kw, mask = _options(kw, data)
    if kind == "linear":
        leaves = {
            "hidden": data["hidden"],
            "weight_shard": _shard(data["head"], rank, 0),
            "bias_shard": _shard(data["bias"], rank, 0) if kw.pop("bias") else None,
            "teacher_shard": _shard(data["lin_teacher"], rank),
        }
        return _grads(lambda **x: vocab_parallel_linear_kl(**x, mask=mask, **kw), leaves, data["weights"])
    leaves = {"student": _shard(data["student"], rank), "teacher": _shard(data["teacher"], rank)}
    if kind == "distill":
        return _grads(
            lambda student, teacher: vocab_parallel_distillation_loss(
                student, teacher, data["labels"], mask=mask, **kw
            ),
            leaves,
            data["weights"],
        )
    return _grads(
        lambda student, teacher: vocab_parallel_kl(student, teacher, mask=mask, **kw), leaves, data["weights"]
    )


def _kl_reference(
    s: torch.Tensor,
    t: torch.Tensor,
    *,
    direction: str = "forward",
    weight: float | None = None,
    beta: float | None = None,
    normalized: bool = False,
    **kw: Any,
) -> torch.Tensor:
    """The unsharded loss. "symmetric" is composed from forward_kl and reverse_kl: symmetric_kl itself returns NaN
    on any row with a student -inf logit (``0.0 * log_s.sum(-1)`` in ``divergence_rows``); it is compared
    directly in ``test_symmetric_equals_symmetric_kl`` on data without those."""
    if direction == "jsd":
        return generalized_jsd(s, t, beta=0.5 if beta is None else beta, normalized=normalized, **kw)
    if direction == "symmetric":
        w = 0.5 if weight is None else weight
        rows_kw = {**kw, "reduction": "none"}
        parts = [w * forward_kl(s, t, **rows_kw)] if w > 0 else []
        parts += [(1 - w) * reverse_kl(s, t, **rows_kw)] if w < 1 else []
        rows = sum(parts[1:], parts[0])
        rows = torch.where(rows < INF, rows, rows.detach())  # the documented zero gradient on rows of value +inf
        return reduce_rows(rows, kw["mask"], kw.get("reduction", "batchmean"), s.shape[-1], rows.shape)
    return REFERENCE[direction](s, t, **kw)


def _cross_entropy_reference(
    s: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, reduction: str, temperature: float
) -> torch.Tensor:
    """``distillation_loss`` at ``alpha = 0``, from ``F.cross_entropy`` (the reference returns NaN there on rows of
    infinite KL, ``0 * inf``)."""
    del temperature  # the CE is at T = 1
    valid = mask & (labels != -100)
    rows = F.cross_entropy(
        torch.where(valid[:, None], s, 0.0), torch.where(valid, labels, -100), reduction="none", ignore_index=-100
    )
    count = max(int(valid.sum()), 1)
    return {"none": rows, "sum": rows.sum(), "batchmean": rows.sum() / count}.get(
        reduction, rows.sum() / (count * s.shape[-1])
    )


def _reference(kind: str, kw: dict[str, Any], data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    kw, mask = _options(kw, data)
    if kind == "linear":
        kw.pop("chunk_size", None)
        with_bias = kw.pop("bias")

        def materialized(hidden: torch.Tensor, weight_shard: torch.Tensor, **rest: torch.Tensor) -> torch.Tensor:
            logits = torch.where(mask[:, None], hidden, 0.0) @ weight_shard.T
            if rest.get("bias_shard") is not None:
                logits = logits + rest["bias_shard"]
            return _kl_reference(logits, rest["teacher_shard"], mask=mask, **kw)

        leaves = {
            "hidden": data["hidden"],
            "weight_shard": data["head"],
            "bias_shard": data["bias"] if with_bias else None,
            "teacher_shard": data["lin_teacher"],
        }
        return _grads(materialized, leaves, data["weights"])
    leaves = {"student": data["student"], "teacher": data["teacher"]}
    if kind == "distill":
        if kw["alpha"] == 0.0:
            return _grads(
                lambda student, teacher: (
                    _cross_entropy_reference(student, data["labels"], mask, kw["reduction"], kw["temperature"])
                    + 0.0 * torch.where(torch.isfinite(teacher), teacher, 0.0).sum()
                ),
                leaves,
                data["weights"],
            )
        return _grads(
            lambda student, teacher: distillation_loss(student, teacher, data["labels"], mask=mask, **kw),
            leaves,
            data["weights"],
        )
    return _grads(lambda student, teacher: _kl_reference(student, teacher, mask=mask, **kw), leaves, data["weights"])


def _assert_matches_reference(
    name: str, kind: str, kw: dict[str, Any], data: dict[str, torch.Tensor], got: dict[str, torch.Tensor]
) -> None:
    """Value and every gradient equal the unsharded result (float64, 1e-10).

    Where the reference's logit gradient is not finite (NaN from ``0 * inf`` on rows of value +inf in the chunked
    Function) the row must have value +inf, and the vocab-parallel gradient there must be the documented 0.
    """
    ref = _reference(kind, kw, data)
    torch.testing.assert_close(got["value"], ref["value"], rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")
    assert set(got) == set(ref), f"{name}: gradients {sorted(got)} vs reference {sorted(ref)}"
    rows_value = _reference(kind, {**kw, "reduction": "none"}, data)["value"] if kind != "linear" else None
    for key in ref:
        if key == "value":
            continue
        g, r = got[key], ref[key]
        assert g.shape == r.shape, f"{name}: {key} gradient shape {tuple(g.shape)} vs {tuple(r.shape)}"
        if key in ("student", "teacher"):
            assert rows_value is not None
            bad = ~torch.isfinite(r).all(-1)
            assert bool((rows_value[bad] == INF).all()), f"{name}: reference {key} gradient not finite on a finite row"
            assert int((~bad).sum()) >= 4
            torch.testing.assert_close(
                g[~bad], r[~bad], rtol=1e-10, atol=1e-10, msg=lambda m, k=key: f"{name} {k}: {m}"
            )
            assert bool((g[bad] == 0).all()), f"{name}: {key} gradient not 0 on a row of value +inf"
        else:
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=lambda m, k=key: f"{name} {k}: {m}")
    if kw.get("mask") == "all_masked":
        assert bool((got["value"] == 0).all()), f"{name}: all rows masked but value {got['value']}"
        assert all(bool((got[k] == 0).all()) for k in got), f"{name}: all rows masked but a gradient is not 0"
    elif kind != "linear":
        assert bool((got["student"][3] == 0).all())
        assert bool((got["teacher"][3] == 0).all())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_world_size_one_equals_unsharded_loss(case: tuple[str, str, dict[str, Any]]) -> None:
    assert not (dist.is_available() and dist.is_initialized())
    name, kind, kw = case
    data = _inputs()
    _assert_matches_reference(name, kind, kw, data, _run(kind, kw, data, None))


def test_reference_data_has_the_edge_cases() -> None:
    """The comparisons see +inf rows in both KL directions and an infinite cross-entropy."""
    data = _inputs()
    s, t, mask = data["student"], data["teacher"], data["mask"]
    assert bool((forward_kl(s, t, mask=mask, reduction="none") == INF).any())
    assert bool((reverse_kl(s, t, mask=mask, reduction="none") == INF).any())
    ce = _cross_entropy_reference(s, data["labels"], mask, "none", 1.0)
    assert bool((ce == INF).any())
    assert bool((ce[mask & (data["labels"] != -100)] < INF).sum() >= 4)


def test_symmetric_equals_symmetric_kl() -> None:
    data = _inputs()
    s = torch.where(data["student"] == -INF, -2.0, data["student"])  # no student -inf: see _kl_reference
    for weight, reduction in ((0.3, "none"), (0.5, "batchmean")):
        kw: dict[str, Any] = {"temperature": 1.5, "mask": data["mask"], "reduction": reduction}
        leaves = {"student": s, "teacher": data["teacher"]}
        got = _grads(
            lambda student, teacher, w=weight, k=kw: vocab_parallel_kl(
                student, teacher, direction="symmetric", weight=w, **k
            ),
            leaves,
            data["weights"],
        )
        ref = _grads(
            lambda student, teacher, w=weight, k=kw: symmetric_kl(student, teacher, weight=w, **k),
            leaves,
            data["weights"],
        )
        torch.testing.assert_close(got["value"], ref["value"], rtol=1e-10, atol=1e-10)
        assert bool((got["value"] == INF).any()) if reduction == "none" else True
        for key in ("student", "teacher"):
            ok = torch.isfinite(ref[key]).all(-1)
            torch.testing.assert_close(got[key][ok], ref[key][ok], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_linear_world_size_one_equals_fused_linear_kl(direction: str) -> None:
    data = _inputs()
    hidden = torch.where(data["mask"][:, None], data["hidden"], 0.5)  # fused_linear_kl needs finite masked rows
    teacher = torch.where(data["mask"][:, None], data["lin_teacher"], 0.0)
    leaves = {"hidden": hidden, "weight": data["head"], "bias": data["bias"]}
    kw: dict[str, Any] = {"direction": direction, "temperature": 1.5, "mask": data["mask"], "chunk_size": 3}
    got = _grads(
        lambda hidden, weight, bias: vocab_parallel_linear_kl(hidden, weight, teacher, bias_shard=bias, **kw),
        leaves,
        data["weights"],
    )
    ref = _grads(
        lambda hidden, weight, bias: fused_linear_kl(hidden, weight, teacher, bias=bias, **kw),
        leaves,
        data["weights"],
    )
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-10, atol=1e-10, msg=lambda m, k=key: f"{k}: {m}")


def test_all_rows_masked_gives_zero_not_nan() -> None:
    s = torch.full((3, 4), math.nan, dtype=torch.float64, requires_grad=True)
    t = torch.full((3, 4), -INF, dtype=torch.float64, requires_grad=True)
    none = torch.zeros(3, dtype=torch.bool)
    losses = [
        *(lambda d=d: vocab_parallel_kl(s, t, direction=d, mask=none) for d in ("forward", "reverse")),
        lambda: vocab_parallel_kl(s, t, direction="symmetric", mask=none),
        lambda: vocab_parallel_kl(s, t, direction="jsd", beta=0.2, mask=none),
        lambda: vocab_parallel_distillation_loss(s, t, torch.tensor([1, 2, 3]), temperature=2.0, mask=none),
        lambda: vocab_parallel_distillation_loss(s, t, torch.full((3,), -100), temperature=2.0),
    ]
    for loss in losses:
        value = loss()
        gs, gt = torch.autograd.grad(value, (s, t))
        assert value.item() == 0.0
        assert bool((gs == 0).all())
        assert bool((gt == 0).all())
    h = torch.full((3, 2), math.nan, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    value = vocab_parallel_linear_kl(h, w, t, mask=none, direction="jsd")
    gh, gw = torch.autograd.grad(value, (h, w))
    assert value.item() == 0.0
    assert bool((gh == 0).all())
    assert bool((gw == 0).all())


def test_float32_inputs_accumulate_in_float32_and_match_reference() -> None:
    data = _inputs(1)
    s = data["student"].float()
    t = data["teacher"].float()
    leaves = {"student": s, "teacher": t}
    for direction, kw in (("forward", {}), ("jsd", {"beta": 0.3})):
        got = _grads(
            lambda student, teacher, d=direction, k=kw: vocab_parallel_kl(
                student, teacher, direction=d, mask=data["mask"], reduction="none", **k
            ),
            leaves,
            torch.ones(()),
        )
        ref = _grads(
            lambda student, teacher, d=direction, k=kw: _kl_reference(
                student, teacher, direction=d, mask=data["mask"], reduction="none", **k
            ),
            leaves,
            torch.ones(()),
        )
        assert got["value"].dtype == torch.float32
        assert got["student"].dtype == torch.float32
        finite = ref["value"] < INF
        torch.testing.assert_close(got["value"], ref["value"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["student"][finite], ref["student"][finite], rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_the_argument() -> None:
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="teacher_shard has shape"):
        vocab_parallel_kl(s, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="direction must be one of"):
        vocab_parallel_kl(s, s, direction="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        vocab_parallel_kl(s, s, temperature=0.0)
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        vocab_parallel_kl(torch.tensor([[0.0, math.nan]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="teacher_shard is -inf on every rank at valid row 1"):
        vocab_parallel_kl(torch.zeros(2, 2), torch.tensor([[0.0, 0.0], [-INF, -INF]]))
    with pytest.raises(ValueError, match="weight applies to direction='symmetric' only"):
        vocab_parallel_kl(s, s, weight=0.3)
    with pytest.raises(ValueError, match="beta and normalized apply to direction='jsd' only"):
        vocab_parallel_kl(s, s, direction="symmetric", beta=0.3)
    with pytest.raises(ValueError, match="weight must be in"):
        vocab_parallel_kl(s, s, direction="symmetric", weight=1.5)
    with pytest.raises(ValueError, match=r"beta=0: .*normalized=True"):
        vocab_parallel_kl(s, s, direction="jsd", beta=0.0)
    with pytest.raises(TypeError, match="normalized must be a bool"):
        vocab_parallel_kl(s, s, direction="jsd", normalized=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha must be in"):
        vocab_parallel_distillation_loss(s, s, torch.zeros(2, dtype=torch.int64), alpha=-0.1)
    with pytest.raises(TypeError, match=r"labels must be a torch\.Tensor"):
        vocab_parallel_distillation_loss(s, s, [0, 1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="labels has dtype"):
        vocab_parallel_distillation_loss(s, s, torch.zeros(2))
    with pytest.raises(ValueError, match="labels holds 3, outside \\[0, 3\\)"):
        vocab_parallel_distillation_loss(s, s, torch.tensor([0, 3]))
    h, w = torch.zeros(2, 5), torch.zeros(3, 5)
    with pytest.raises(ValueError, match="weight_shard must be \\(V_r, H\\)"):
        vocab_parallel_linear_kl(h, torch.zeros(3, 4), s)
    with pytest.raises(TypeError, match="hidden has dtype"):
        vocab_parallel_linear_kl(h.double(), w, s)
    with pytest.raises(ValueError, match="bias_shard must have shape"):
        vocab_parallel_linear_kl(h, w, s, bias_shard=torch.zeros(4))
    with pytest.raises(ValueError, match="teacher_shard has shape \\(2, 4\\); expected \\(2, 3\\)"):
        vocab_parallel_linear_kl(h, w, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="reduction must be one of"):
        vocab_parallel_linear_kl(h, w, s, reduction="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        vocab_parallel_linear_kl(h, w, s, chunk_size=0)
    with pytest.raises(TypeError, match=r"hidden must be a torch\.Tensor"):
        vocab_parallel_linear_kl([[0.0]], w, s)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------
# Two processes, gloo on CPU
# ----------------------------------------------------------------------------------------------------------


def _expect_value_error(call: Any) -> str:
    try:
        call()
    except ValueError as exc:
        return str(exc)
    return "no ValueError"


def _rank_main(rank: int, init_file: str, data_file: str, out_dir: str) -> None:
    """One rank: every case's value and its shards' gradients, and the errors of the bad-input calls, saved to
    ``out_dir/rank{rank}.pt``."""
    out = Path(out_dir)
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
        )
        data = torch.load(data_file)
        results: dict[str, Any] = {name: _run(kind, kw, data, rank) for name, kind, kw in CASES}
        # chunk sizes that differ between the ranks: the ranks agree on one (else their collectives mismatch)
        results["linear-chunks-differ"] = _run("linear", {**CHUNKS_DIFFER, "chunk_size": 2 + rank}, data, rank)
        # bad inputs on one rank only: every rank must raise (nobody left waiting in a collective)
        s, t = _shard(data["student"], rank), _shard(data["teacher"], rank)
        s_nan = s.clone()
        if rank == 1:
            s_nan[4, 0] = math.nan
        head_nan = _shard(data["head"], rank, 0).clone()
        if rank == 0:
            head_nan[0, 0] = math.nan
        labels_bad = data["labels"].clone()
        labels_bad[6] = 11  # = V; valid on neither shard, while 6..10 are valid globally though not on rank 0
        results["errors"] = {
            "nan": _expect_value_error(lambda: vocab_parallel_kl(s_nan, t, direction="jsd", mask=data["mask"])),
            "label": _expect_value_error(
                lambda: vocab_parallel_distillation_loss(s, t, labels_bad, temperature=2.0, mask=data["mask"])
            ),
            "head": _expect_value_error(
                lambda: vocab_parallel_linear_kl(
                    data["hidden"], head_nan, _shard(data["lin_teacher"], rank), mask=data["mask"]
                )
            ),
        }
        # the group is still in step after the errors: one more loss agrees with the first run
        results["after"] = vocab_parallel_kl(s, t, mask=data["mask"], direction="jsd").detach()
        dist.barrier()
        dist.destroy_process_group()
        torch.save(results, out / f"rank{rank}.pt")
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def _concat(key: str, parts: list[torch.Tensor]) -> torch.Tensor:
    if key == "hidden":  # all-reduced: the full gradient on every rank
        assert torch.equal(parts[0], parts[1]), "the ranks disagree on the hidden gradient"
        return parts[0]
    return torch.cat(parts, 0 if key in ("weight_shard", "bias_shard") else -1)


def test_two_gloo_processes_match_unsharded_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    data = _inputs()
    data_file = tmp_path / "data.pt"
    torch.save(data, data_file)
    # the spawned interpreters must import kldiv and this module: hand them the parent's sys.path
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    if (
        sys.platform.startswith("linux")
        and Path("/sys/class/net/lo").exists()
        and "GLOO_SOCKET_IFNAME" not in os.environ
    ):
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback only, whatever the host name resolves to
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_rank_main, args=(rank, str(tmp_path / "rendezvous"), str(data_file), str(tmp_path)))
        for rank in range(WORLD)
    ]
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + TIMEOUT_S
        for proc in procs:
            proc.join(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
    errors = [p.read_text() for p in sorted(tmp_path.glob("rank*.err"))]
    codes = [proc.exitcode for proc in procs]
    assert codes == [0] * WORLD, f"rank exit codes {codes} (None = killed after {TIMEOUT_S} s)\n" + "\n".join(errors)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]
    for name, kind, kw in [*CASES, ("linear-chunks-differ", "linear", CHUNKS_DIFFER)]:
        r0, r1 = ranks[0][name], ranks[1][name]
        assert torch.equal(r0["value"], r1["value"]), f"{name}: the ranks disagree on the value"
        assert set(r0) == set(r1)
        if kind == "linear":
            assert r0["weight_shard"].shape == (6, 4)
            assert r1["weight_shard"].shape == (5, 4)
        else:
            assert r0["student"].shape == (7, 6)
            assert r1["student"].shape == (7, 5)
        got = {"value": r0["value"], **{k: _concat(k, [r0[k], r1[k]]) for k in r0 if k != "value"}}
        _assert_matches_reference(name, kind, kw, data, got)
    for rank in ranks:
        errors_of_rank = rank["errors"]
        assert "NaN or +inf in a valid row" in errors_of_rank["nan"]
        assert "labels holds 11, outside [0, 11)" in errors_of_rank["label"]
        assert "NaN or +inf in a valid row" in errors_of_rank["head"]
        assert torch.equal(rank["after"], ranks[0]["jsd-default-T1"]["value"])


@pytest.mark.parametrize("direction", ["forward", "reverse", "symmetric", "jsd"])
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_gradcheck_vocab_parallel_function(direction: str, reduction: str) -> None:
    g = torch.Generator().manual_seed(11)
    s = torch.randn(5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    mask = torch.tensor([True, True, False, True, True])

    def fn(s_: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
        return vocab_parallel_kl(s_, t_, direction=direction, temperature=1.3, mask=mask, reduction=reduction)  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(fn, (s, t), eps=1e-6, atol=1e-8)
    labels = torch.tensor([3, 0, -100, 6, 2])
    assert torch.autograd.gradcheck(
        lambda s_, t_: vocab_parallel_distillation_loss(
            s_, t_, labels, alpha=0.3, temperature=2.0, reduction=reduction
        ),  # type: ignore[arg-type]
        (s, t),
        eps=1e-6,
        atol=1e-8,
    )


@pytest.mark.parametrize("direction", ["forward", "reverse", "symmetric", "jsd"])
def test_gradcheck_vocab_parallel_linear_function(direction: str) -> None:
    g = torch.Generator().manual_seed(12)
    h = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(6, 7, dtype=torch.float64, generator=g, requires_grad=True)
    mask = torch.tensor([True, False, True, True, True, True])

    def fn(h_: torch.Tensor, w_: torch.Tensor, b_: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
        return vocab_parallel_linear_kl(
            h_,
            w_,
            t_,
            bias_shard=b_,
            direction=direction,
            temperature=1.5,
            mask=mask,
            chunk_size=4,  # type: ignore[arg-type]
        )

    assert torch.autograd.gradcheck(fn, (h, w, b, t), eps=1e-6, atol=1e-8)


def test_errors_name_the_batch_row_across_chunks() -> None:
    s, t = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    s[5] = -INF
    with pytest.raises(ValueError, match="student_shard is -inf on every rank at valid row 5"):
        vocab_parallel_kl(s, t, chunk_size=2)
    with pytest.raises(ValueError, match="chunk_size"):
        vocab_parallel_kl(s, t, chunk_size=0)
