"""Every row of docs/from-trl-and-liger.md: the kldiv call equals the TRL / Liger-Kernel / torch formula it
stands for. The references are written here from the documented math of those libraries (TRL's
``GKDTrainer.generalized_jsd_loss``, Liger-Kernel's ``LigerJSD`` / ``LigerFusedLinearJSD`` / ``LigerKLDIVLoss``,
which follows ``torch.nn.KLDivLoss``), in float64, not from kldiv."""

from __future__ import annotations

import math

import pytest
import torch

from kldiv.losses import distillation_loss, forward_kl, fused_linear_jsd, generalized_jsd, reverse_kl

F64 = torch.float64
B, S, V, H = 3, 5, 11, 4
IGNORE = -100


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = 2 * torch.randn(B, S, V, generator=g, dtype=F64)
    teacher = 2 * torch.randn(B, S, V, generator=g, dtype=F64)
    labels = torch.randint(0, V, (B, S), generator=g)
    labels[0, -2:] = IGNORE  # padding of the first sequence
    labels[2, 0] = IGNORE
    return student, teacher, labels


def _entrywise_gjsd(log_q: torch.Tensor, log_p: torch.Tensor, beta: float) -> torch.Tensor:
    """The generalized JSD per vocabulary entry as TRL and Liger write it: at beta = 0 the forward KL terms
    p (log p - log q), at beta = 1 the reverse KL terms q (log q - log p), else beta p log(p / m) + (1 - beta)
    q log(q / m) with m = beta p + (1 - beta) q (P the teacher, Q the student)."""
    p, q = log_p.exp(), log_q.exp()
    if beta == 0.0:
        return p * (log_p - log_q)
    if beta == 1.0:
        return q * (log_q - log_p)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), 0)
    return beta * p * (log_p - log_m) + (1 - beta) * q * (log_q - log_m)


def trl_generalized_jsd(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    beta: float,
    temperature: float,
    reduction: str,
) -> torch.Tensor:
    """TRL's generalized_jsd_loss: both logits divided by T (no T^2), entrywise terms, rows with label -100
    dropped; "batchmean" = sum / valid tokens with labels, sum / size(0) (the batch of sequences) without;
    "mean" = mean over entries; "none" = the entrywise terms."""
    terms = _entrywise_gjsd(
        torch.log_softmax(student / temperature, -1), torch.log_softmax(teacher / temperature, -1), beta
    )
    if labels is not None:
        terms = terms[labels != IGNORE]
    if reduction == "batchmean":
        return terms.sum() / (terms.shape[0] if labels is not None else student.shape[0])
    if reduction == "sum":
        return terms.sum()
    return terms.mean() if reduction == "mean" else terms


def liger_jsd(log_q: torch.Tensor, log_p: torch.Tensor, labels: torch.Tensor | None, beta: float) -> torch.Tensor:
    """Liger's LigerJSD on (BT, V) log-probabilities: the entrywise terms summed over valid rows, divided by the
    number of rows whose label is not ignore_index (all rows without labels)."""
    terms = _entrywise_gjsd(log_q, log_p, beta)
    valid = torch.ones(log_q.shape[0], dtype=torch.bool) if labels is None else labels != IGNORE
    return terms[valid].sum() / valid.sum()


def torch_kl_div_batchmean(log_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """torch.nn.KLDivLoss(reduction="batchmean") (and LigerKLDIVLoss): sum p (log p - log q) / input.size(0)."""
    return torch.xlogy(p, p).sum().sub((p * log_q).sum()) / log_q.shape[0]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_trl_generalized_jsd_with_labels_is_generalized_jsd(beta: float) -> None:
    s, t, labels = _data()
    _close(
        generalized_jsd(s, t, beta=beta, temperature=2.0, labels=labels),
        trl_generalized_jsd(s, t, labels, beta, 2.0, "batchmean"),
    )


@pytest.mark.parametrize(("beta", "kldiv_loss"), [(0.0, forward_kl), (1.0, reverse_kl)])
def test_trl_beta_0_and_1_are_forward_and_reverse_kl(beta: float, kldiv_loss: object) -> None:
    assert callable(kldiv_loss)
    s, t, labels = _data(1)
    ref = trl_generalized_jsd(s, t, labels, beta, 2.0, "batchmean")
    _close(kldiv_loss(s, t, temperature=2.0, labels=labels), ref)
    _close(generalized_jsd(s, t, beta=beta, normalized=True, temperature=2.0, labels=labels), ref)


def test_trl_jumps_at_beta_0_where_normalized_generalized_jsd_is_continuous() -> None:
    s, t, labels = _data(2)
    small = 1e-7
    trl_small, trl_zero = (trl_generalized_jsd(s, t, labels, b, 1.0, "batchmean") for b in (small, 0.0))
    assert float(trl_small) < 1e-5 * float(trl_zero)  # TRL: beta KL(P||M) + ... -> 0, then KL(P||Q) at 0
    ours = generalized_jsd(s, t, beta=small, normalized=True, labels=labels)
    torch.testing.assert_close(ours, forward_kl(s, t, labels=labels), rtol=1e-5, atol=0)


def test_trl_batchmean_without_labels_is_per_sequence() -> None:
    s, t, _ = _data(3)
    ref = trl_generalized_jsd(s, t, None, 0.5, 1.0, "batchmean")  # divides by B = 3 sequences, not 15 tokens
    _close(generalized_jsd(s, t, reduction="sum") / B, ref)
    _close(generalized_jsd(s, t) * S, ref)  # kldiv's batchmean is per token


@pytest.mark.parametrize("labelled", [True, False])
def test_trl_mean_and_none_reductions(labelled: bool) -> None:
    s, t, labels = _data(4)
    lab = labels if labelled else None
    ours_mean = generalized_jsd(s, t, beta=0.3, labels=lab, reduction="mean")
    _close(ours_mean, trl_generalized_jsd(s, t, lab, 0.3, 1.0, "mean"))
    per_entry = trl_generalized_jsd(s, t, lab, 0.3, 1.0, "none")  # (valid tokens, V)
    per_token = generalized_jsd(s, t, beta=0.3, labels=lab, reduction="none")  # (B, S), 0 at ignored tokens
    assert per_token.shape == (B, S)
    valid = labels != IGNORE if labelled else torch.ones(B, S, dtype=torch.bool)
    _close(per_token[valid], per_entry.sum(-1).reshape(-1))
    assert bool((per_token[~valid] == 0).all())


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_liger_jsd_is_generalized_jsd_of_log_probs(beta: float) -> None:
    s, t, labels = _data(5)
    log_q, log_p = s.log_softmax(-1).reshape(-1, V), t.log_softmax(-1).reshape(-1, V)
    flat = labels.reshape(-1)
    ours = generalized_jsd(
        log_q, log_p, beta=beta, normalized=beta in (0.0, 1.0), teacher_kind="log_probs", labels=flat
    )
    _close(ours, liger_jsd(log_q, log_p, flat, beta))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_liger_fused_linear_jsd_is_fused_linear_jsd(beta: float) -> None:
    """LigerFusedLinearJSD: both heads' logits divided by T, then LigerJSD over the valid rows."""
    g = torch.Generator().manual_seed(6)
    h, w = torch.randn(B * S, H, generator=g, dtype=F64), torch.randn(V, H, generator=g, dtype=F64)
    h_t, w_t = torch.randn(B * S, H, generator=g, dtype=F64), torch.randn(V, H, generator=g, dtype=F64)
    labels = _data()[2].reshape(-1)
    ref = liger_jsd((h @ w.T / 2.0).log_softmax(-1), (h_t @ w_t.T / 2.0).log_softmax(-1), labels, beta)
    ours = fused_linear_jsd(
        h, w, (h_t, w_t, None), beta=beta, normalized=beta in (0.0, 1.0), temperature=2.0, labels=labels
    )
    _close(ours, ref)


def test_torch_and_liger_kl_div_batchmean_is_per_first_dimension() -> None:
    s, t, _ = _data(7)
    log_q, p = s.log_softmax(-1), t.softmax(-1)
    _close(forward_kl(s, p, teacher_kind="probs", reduction="sum") / B, torch_kl_div_batchmean(log_q, p))
    flat = torch_kl_div_batchmean(log_q.reshape(-1, V), p.reshape(-1, V))  # on (BT, V): per token
    _close(forward_kl(s, p, teacher_kind="probs"), flat)
    _close(forward_kl(s, t), flat)  # the teacher as logits: the same loss


def test_hinton_t_squared_is_only_in_distillation_loss() -> None:
    s, t, labels = _data(8)
    t_sq = 4.0
    tempered = torch_kl_div_batchmean((s / 2.0).log_softmax(-1).reshape(-1, V), (t / 2.0).softmax(-1).reshape(-1, V))
    _close(forward_kl(s, t, temperature=2.0), tempered)  # no T^2
    _close(distillation_loss(s, t, torch.zeros_like(labels), alpha=1.0, temperature=2.0), t_sq * tempered)


def test_temperature_on_the_student_only() -> None:
    s, t, _ = _data(9)
    ref = torch_kl_div_batchmean((s / 2.0).log_softmax(-1).reshape(-1, V), t.softmax(-1).reshape(-1, V))
    _close(forward_kl(s / 2.0, t), ref)  # divide the student yourself, temperature=1


def test_num_items_in_batch_sums_micro_batches_to_the_full_batch_mean() -> None:
    """Gradient accumulation (HF Trainer's num_items_in_batch = valid tokens over all micro-batches): each
    micro-batch's loss is reduction="sum" / num_items_in_batch; summed, loss and gradient are the full batch's
    per-token mean."""
    s, t, labels = _data(10)
    num_items_in_batch = int((labels != IGNORE).sum())
    leaf = s.clone().requires_grad_()
    full = generalized_jsd(leaf, t, beta=0.4, temperature=2.0, labels=labels)
    (g_full,) = torch.autograd.grad(full, leaf)
    accumulated, g_acc = torch.zeros((), dtype=F64), torch.zeros_like(s)
    for rows in (slice(0, 2), slice(2, 3)):  # two micro-batches of sequences
        micro = s[rows].clone().requires_grad_()
        loss = generalized_jsd(micro, t[rows], beta=0.4, temperature=2.0, labels=labels[rows], reduction="sum")
        loss = loss / num_items_in_batch
        (g,) = torch.autograd.grad(loss, micro)
        accumulated, g_acc[rows] = accumulated + loss.detach(), g
    _close(accumulated, full.detach())
    _close(g_acc, g_full)
