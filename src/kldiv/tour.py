"""The tour: the sections of the `kldiv tour` report, each computed live from the library.

Every section is a function `section(ctx) -> Section` registered with `kldiv.report.register_section`.
A new section (VAE, distributions, ...) lives next to its application and is imported in
`_SECTION_MODULES` below so that it registers itself.

The discrete section reproduces the tutorial's worked examples, P = [0.4, 0.5, 0.1], Q = [0.3, 0.4, 0.3],
and puts each kldiv value next to SciPy's value (and PyTorch's, for the edge cases).
"""

from __future__ import annotations

import importlib
import math
import platform
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import scipy
import scipy.spatial.distance as ssd
import scipy.special as ssp
import scipy.stats as sst
import torch
from torch.distributions import Categorical, kl_divergence
from torch.nn import functional

import kldiv
from kldiv import viz
from kldiv.report import (
    Cell,
    Context,
    Figure,
    Report,
    Section,
    Table,
    format_cell,
    png_bytes,
    register_section,
)

__all__ = [
    "SEED_P",
    "SEED_Q",
    "discrete_section",
    "edge_case_table",
    "make_report",
    "other_divergences_table",
    "worked_examples_table",
]

SEED_P = (0.4, 0.5, 0.1)
SEED_Q = (0.3, 0.4, 0.3)
LN2 = math.log(2.0)

_SECTION_MODULES: tuple[str, ...] = (
    "kldiv.distributions.tour",
    "kldiv.losses.tour",
    "kldiv.mle_tour",
    "kldiv.vae.tour",
    "kldiv.classify.tour",
    "kldiv.bayes.tour",
    "kldiv.rl.tour",
    "kldiv.mi.tour",
)
"""Modules (besides this one) that register tour sections on import, e.g. "kldiv.vae.tour"."""

Vector = Sequence[float]


def _f(x: object) -> float:
    """A library result (np.float64, 0-d array or 0-d tensor) as a Python float."""
    if isinstance(x, torch.Tensor):
        return float(x.detach().item())
    return float(np.asarray(x, dtype=np.float64))


def _diff(a: float, b: float) -> str:
    if a == b:  # also +inf == +inf
        return "0"
    return f"{abs(a - b):.1e}"


# --- Worked examples -----------------------------------------------------------------------------


def worked_examples_table(p: Vector, q: Vector) -> Table:
    """KL both ways, entropies, cross-entropies and KL = H(P,Q) - H(P), in nats and bits, vs SciPy."""
    pa, qa = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    rows: list[list[Cell]] = []
    for unit, base in (("nats", None), ("bits", 2.0)):
        scale = 1.0 if base is None else LN2
        b = "" if base is None else ", base=2"
        to_bits = "" if base is None else " / ln 2"
        entries: list[tuple[str, float, str, float, str]] = [
            (
                "KL(P‖Q)",
                _f(kldiv.kl(p, q, base=base)),
                f"kl(P, Q{b})",
                float(ssp.rel_entr(pa, qa).sum()) / scale,
                f"rel_entr(P, Q).sum(){to_bits}",
            ),
            (
                "KL(Q‖P)",
                _f(kldiv.kl(q, p, base=base)),
                f"kl(Q, P{b})",
                float(ssp.rel_entr(qa, pa).sum()) / scale,
                f"rel_entr(Q, P).sum(){to_bits}",
            ),
            (
                "H(P)",
                _f(kldiv.entropy(p, base=base)),
                f"entropy(P{b})",
                float(sst.entropy(pa, base=base)),
                f"stats.entropy(P{b})",
            ),
            (
                "H(Q)",
                _f(kldiv.entropy(q, base=base)),
                f"entropy(Q{b})",
                float(sst.entropy(qa, base=base)),
                f"stats.entropy(Q{b})",
            ),
            (
                "H(P,Q)",
                _f(kldiv.cross_entropy(p, q, base=base)),
                f"cross_entropy(P, Q{b})",
                -float(ssp.xlogy(pa, qa).sum()) / scale,
                f"-xlogy(P, Q).sum(){to_bits}",
            ),
            (
                "H(Q,P)",
                _f(kldiv.cross_entropy(q, p, base=base)),
                f"cross_entropy(Q, P{b})",
                -float(ssp.xlogy(qa, pa).sum()) / scale,
                f"-xlogy(Q, P).sum(){to_bits}",
            ),
            (
                "H(P,Q) − H(P)",
                _f(kldiv.cross_entropy(p, q, base=base)) - _f(kldiv.entropy(p, base=base)),
                f"cross_entropy(P, Q{b}) − entropy(P{b})",
                float(sst.entropy(pa, qa, base=base)),
                f"stats.entropy(P, Q{b})",
            ),
            (
                "H(Q,P) − H(Q)",
                _f(kldiv.cross_entropy(q, p, base=base)) - _f(kldiv.entropy(q, base=base)),
                f"cross_entropy(Q, P{b}) − entropy(Q{b})",
                float(sst.entropy(qa, pa, base=base)),
                f"stats.entropy(Q, P{b})",
            ),
        ]
        rows.extend(
            [name, unit, ours, ref, _diff(ours, ref), f"`{call}`", f"`{ref_call}`"]
            for name, ours, call, ref, ref_call in entries
        )
    return Table(
        header=["quantity", "unit", "kldiv", "scipy", "|kldiv − scipy|", "kldiv call", "scipy call"],
        rows=rows,
        title="Worked examples: P = [0.4, 0.5, 0.1], Q = [0.3, 0.4, 0.3]",
        summary_columns=["quantity", "unit", "kldiv", "scipy", "|kldiv − scipy|"],
    )


# --- Other divergences ---------------------------------------------------------------------------


def _gjsd_reference(p: npt.NDArray[np.float64], q: npt.NDArray[np.float64], beta: float) -> float:
    """(beta KL(P||M) + (1-beta) KL(Q||M)) / (beta (1-beta)), M = beta P + (1-beta) Q, with rel_entr."""
    if beta == 0.0:
        return float(ssp.rel_entr(p, q).sum())
    if beta == 1.0:
        return float(ssp.rel_entr(q, p).sum())
    m = beta * p + (1.0 - beta) * q
    value = beta * ssp.rel_entr(p, m).sum() + (1.0 - beta) * ssp.rel_entr(q, m).sum()
    return float(value) / (beta * (1.0 - beta))


def _renyi_reference(p: npt.NDArray[np.float64], q: npt.NDArray[np.float64], alpha: float) -> float:
    if alpha == 0.0:
        return -math.log(float(q[p > 0].sum()))
    if alpha == 1.0:
        return float(ssp.rel_entr(p, q).sum())
    if math.isinf(alpha):
        return math.log(float(np.max(p / q)))
    return math.log(float(np.sum(p**alpha * q ** (1.0 - alpha)))) / (alpha - 1.0)


def other_divergences_table(p: Vector, q: Vector) -> Table:
    """JS, generalized JSD, Renyi, TV, Hellinger, chi2 and Jeffreys for P, Q, vs SciPy or the formula."""
    pa, qa = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    entries: list[tuple[str, float, str, float, str]] = [
        (
            "JS (nats)",
            _f(kldiv.js(p, q)),
            "js(P, Q)",
            float(ssd.jensenshannon(pa, qa)) ** 2,
            "jensenshannon(P, Q)**2",
        ),
        (
            "JS (bits)",
            _f(kldiv.js(p, q, base=2)),
            "js(P, Q, base=2)",
            float(ssd.jensenshannon(pa, qa, base=2)) ** 2,
            "jensenshannon(P, Q, base=2)**2",
        ),
        (
            "JSD(β=0.5), not normalized",
            _f(kldiv.generalized_js(p, q, beta=0.5)),
            "generalized_js(P, Q, beta=0.5)",
            float(ssd.jensenshannon(pa, qa)) ** 2,
            "jensenshannon(P, Q)**2",
        ),
    ]
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        limit = {0.0: " = KL(P‖Q)", 1.0: " = KL(Q‖P)"}.get(beta, "")
        entries.append(
            (
                f"JSD(β={beta:g}) / (β(1−β)){limit}",
                _f(kldiv.generalized_js(p, q, beta=beta, normalized=True)),
                f"generalized_js(P, Q, beta={beta:g}, normalized=True)",
                _gjsd_reference(pa, qa, beta),
                "rel_entr(Q, P).sum()"
                if beta == 1.0
                else "rel_entr(P, Q).sum()"
                if beta == 0.0
                else "(β rel_entr(P, M) + (1−β) rel_entr(Q, M)).sum() / (β(1−β))",
            )
        )
    for alpha in (0.0, 0.5, 1.0, 2.0, math.inf):
        a = "inf" if math.isinf(alpha) else f"{alpha:g}"
        ref_call = {
            0.0: "−log Σ_{p>0} q",
            1.0: "rel_entr(P, Q).sum()",
            math.inf: "log max p/q",
        }.get(alpha, "log(Σ p^α q^(1−α)) / (α−1)")
        entries.append(
            (
                f"Rényi α={a}" + (" = KL(P‖Q)" if alpha == 1.0 else ""),
                _f(kldiv.renyi(p, q, alpha)),
                f"renyi(P, Q, {a if a != 'inf' else 'math.inf'})",
                _renyi_reference(pa, qa, alpha),
                ref_call + ("" if alpha == 1.0 else " (NumPy)"),
            )
        )
    entries += [
        ("TV", _f(kldiv.tv(p, q)), "tv(P, Q)", float(ssd.cityblock(pa, qa)) / 2, "cityblock(P, Q) / 2"),
        (
            "Hellinger",
            _f(kldiv.hellinger(p, q)),
            "hellinger(P, Q)",
            float(ssd.euclidean(np.sqrt(pa), np.sqrt(qa))) / math.sqrt(2.0),
            "euclidean(√P, √Q) / √2",
        ),
        (
            "χ² Pearson",
            _f(kldiv.chi2(p, q, kind="pearson")),
            'chi2(P, Q, kind="pearson")',
            float(sst.power_divergence(pa, qa, lambda_="pearson").statistic),
            'power_divergence(P, Q, lambda_="pearson")',
        ),
        (
            "χ² Neyman",
            _f(kldiv.chi2(p, q, kind="neyman")),
            'chi2(P, Q, kind="neyman")',
            float(sst.power_divergence(pa, qa, lambda_="neyman").statistic),
            'power_divergence(P, Q, lambda_="neyman")',
        ),
        (
            "Jeffreys = KL(P‖Q) + KL(Q‖P)",
            _f(kldiv.jeffreys(p, q)),
            "jeffreys(P, Q)",
            float(ssp.rel_entr(pa, qa).sum() + ssp.rel_entr(qa, pa).sum()),
            "rel_entr(P, Q).sum() + rel_entr(Q, P).sum()",
        ),
    ]
    return Table(
        header=["divergence", "kldiv", "reference", "|kldiv − reference|", "kldiv call", "reference call"],
        rows=[[name, ours, ref, _diff(ours, ref), f"`{call}`", f"`{rc}`"] for name, ours, call, ref, rc in entries],
        title="Other divergences of the same P, Q (nats unless stated)",
    )


# --- Edge cases ----------------------------------------------------------------------------------

TorchKL = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _grad_status(grads: Sequence[torch.Tensor | None]) -> str:
    g = torch.cat([x.reshape(-1) if x is not None else torch.zeros(0, dtype=torch.float64) for x in grads])
    if bool(torch.isnan(g).any()):
        return "NaN"
    if bool(torch.isinf(g).any()):
        return "inf"
    return "finite"


def _torch_cell(fn: TorchKL, a: Vector, b: Vector) -> str:
    """Value of fn(a, b) in float64, and whether its gradient w.r.t. both inputs is finite."""
    x = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    value = fn(x, y)
    v = float(value.detach())
    if not math.isfinite(v):
        return format_cell(v)
    grads = torch.autograd.grad(value, [x, y], allow_unused=True)
    return f"{format_cell(v)}; grad {_grad_status(grads)}"


def _torch_probs_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return functional.kl_div(q.log(), p, reduction="sum")


def _torch_logits_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    return functional.kl_div(
        functional.log_softmax(q_logits, -1),
        functional.log_softmax(p_logits, -1),
        reduction="sum",
        log_target=True,
    )


def _categorical_probs_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return kl_divergence(Categorical(probs=p), Categorical(probs=q))


def _categorical_logits_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    return kl_divergence(Categorical(logits=p_logits), Categorical(logits=q_logits))


def _kldiv_probs_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    result = kldiv.kl(p, q)
    assert isinstance(result, torch.Tensor)
    return result


def _kldiv_logits_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    result = kldiv.kl_from_logits(p_logits, q_logits)
    assert isinstance(result, torch.Tensor)
    return result


_INF = math.inf
EDGE_CASES_PROBS: tuple[tuple[str, str, Vector, Vector], ...] = (
    ("p_i = 0", "contributes 0", (0.5, 0.5, 0.0), (0.25, 0.25, 0.5)),
    ("q_i = 0 < p_i", "+inf", (0.5, 0.5, 0.0), (0.5, 0.0, 0.5)),
    ("p_i = q_i = 0", "contributes 0", (0.5, 0.5, 0.0), (0.5, 0.5, 0.0)),
)
EDGE_CASES_LOGITS: tuple[tuple[str, str, Vector, Vector], ...] = (
    ("p logit = −inf", "contributes 0", (0.0, 0.0, -_INF), (0.0, 1.0, 2.0)),
    ("both logits = −inf", "contributes 0", (0.0, 0.0, -_INF), (0.0, 1.0, -_INF)),
    ("q logit = −inf where p > 0", "+inf", (0.0, 0.0, 0.0), (0.0, 0.0, -_INF)),
)


def _vec(v: Vector) -> str:
    return "[" + ", ".join("−inf" if x == -_INF else f"{x:g}" for x in v) + "]"


def edge_case_table() -> Table:
    """Exact semantics of kldiv next to SciPy, F.kl_div and Categorical, computed live (float64)."""
    rows: list[list[Cell]] = []
    for case, semantics, p, q in EDGE_CASES_PROBS:
        scipy_value = float(ssp.rel_entr(np.asarray(p), np.asarray(q)).sum())
        rows.append(
            [
                f"{case}: probs P={_vec(p)}, Q={_vec(q)}",
                semantics,
                _torch_cell(_kldiv_probs_kl, p, q),
                format_cell(scipy_value),
                _torch_cell(_torch_probs_kl, p, q),
                _torch_cell(_categorical_probs_kl, p, q),
            ]
        )
    for case, semantics, p, q in EDGE_CASES_LOGITS:
        scipy_value = float(ssp.rel_entr(ssp.softmax(np.asarray(p)), ssp.softmax(np.asarray(q))).sum())
        rows.append(
            [
                f"{case}: logits P={_vec(p)}, Q={_vec(q)}",
                semantics,
                _torch_cell(_kldiv_logits_kl, p, q),
                format_cell(scipy_value),
                _torch_cell(_torch_logits_kl, p, q),
                _torch_cell(_categorical_logits_kl, p, q),
            ]
        )
    return Table(
        header=[
            "case",
            "kldiv semantics",
            "kldiv",
            "scipy rel_entr",
            "torch F.kl_div",
            "torch Categorical",
        ],
        rows=rows,
        title="Edge cases: KL(P‖Q) and the gradient w.r.t. both inputs (computed live, float64)",
    )


# --- Figures -------------------------------------------------------------------------------------


def _path_figure(p: Vector, q: Vector) -> Figure:
    pa, qa = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    rising = qa > pa
    t_min = float(np.max(-pa[rising] / (qa[rising] - pa[rising]))) if rising.any() else -0.5
    t = np.unique(np.concatenate([[t_min, 0.0], np.linspace(t_min + 1e-4, 1.0, 300)]))
    path = (1.0 - t)[:, None] * pa + t[:, None] * qa
    path = np.clip(path, 0.0, None)
    path /= path.sum(axis=-1, keepdims=True)
    forward = np.asarray(kldiv.kl(path, qa), dtype=np.float64)
    reverse = np.asarray(kldiv.kl(qa, path), dtype=np.float64)
    fig = viz.kl_along_path(t, forward, reverse)
    return Figure(
        "kl-asymmetry-path",
        png_bytes(fig),
        f"KL(P_t‖Q) and KL(Q‖P_t) along P_t = (1−t)P + tQ, from t = {t_min:g} (where P_t has a zero "
        "where Q does not) to t = 1 (P_t = Q). The two directions differ everywhere except at Q itself; "
        "at the left end KL(Q‖P_t) is +inf while KL(P_t‖Q) stays finite.",
    )


def _renyi_figure(p: Vector, q: Vector) -> tuple[Figure, list[tuple[float, float]]]:
    alphas = np.unique(np.concatenate([np.linspace(0.0, 6.0, 241), 1.0 + np.array([-1e-6, -1e-3, 1e-3, 1e-6])]))
    values = np.array([_f(kldiv.renyi(p, q, float(a))) for a in alphas])
    kl_value = _f(kldiv.kl(p, q))
    d_inf = _f(kldiv.renyi(p, q, math.inf))
    near_one = [(a, _f(kldiv.renyi(p, q, a))) for a in (1.0 - 1e-6, 1.0, 1.0 + 1e-6)]
    fig = viz.renyi_vs_alpha(alphas, values, kl_value=kl_value, limit_inf=d_inf)
    caption = "Rényi divergence D_α(P‖Q) against α; the star is KL(P‖Q) = D_1, the dashed line the limit D_∞."
    return Figure("renyi-vs-alpha", png_bytes(fig), caption), near_one


def _gjsd_figure(p: Vector, q: Vector) -> Figure:
    betas = np.linspace(0.0, 1.0, 201)
    normalized = np.array([_f(kldiv.generalized_js(p, q, beta=float(b), normalized=True)) for b in betas])
    inner = betas[1:-1]
    unnormalized = np.concatenate([[np.nan], [_f(kldiv.generalized_js(p, q, beta=float(b))) for b in inner], [np.nan]])
    fig = viz.generalized_js_vs_beta(
        betas, normalized, unnormalized, kl_pq=_f(kldiv.kl(p, q)), kl_qp=_f(kldiv.kl(q, p))
    )
    return Figure(
        "generalized-jsd-vs-beta",
        png_bytes(fig),
        "Generalized JSD(β) = β KL(P‖M) + (1−β) KL(Q‖M), M = βP + (1−β)Q. Divided by β(1−β) it runs "
        "continuously from KL(P‖Q) at β = 0 to KL(Q‖P) at β = 1; undivided it tends to 0 at both ends, "
        "so a loss that returns the KL at β ∈ {0, 1} (TRL's GKD, teacher = P, student = Q) jumps there.",
    )


# --- The section ---------------------------------------------------------------------------------


@register_section("discrete", order=10)
def discrete_section(ctx: Context) -> Section:
    """The tutorial's worked examples, other divergences of the same pair, edge cases and four figures."""
    p, q = SEED_P, SEED_Q
    kl_pq, kl_qp = _f(kldiv.kl(p, q)), _f(kldiv.kl(q, p))
    bits_pq, bits_qp = _f(kldiv.kl(p, q, base=2)), _f(kldiv.kl(q, p, base=2))
    identity_gap = max(
        abs(kl_pq - (_f(kldiv.cross_entropy(p, q)) - _f(kldiv.entropy(p)))),
        abs(kl_qp - (_f(kldiv.cross_entropy(q, p)) - _f(kldiv.entropy(q)))),
    )
    renyi_fig, near_one = _renyi_figure(p, q)
    near_one_text = ", ".join(f"D_{a:.7g} = {v:.10f}" for a, v in near_one)
    bars = Figure(
        "p-and-q",
        png_bytes(viz.pair_bars(p, q, title="The tutorial's distributions P and Q")),
        "P = [0.4, 0.5, 0.1] and Q = [0.3, 0.4, 0.3] over three outcomes.",
    )
    return Section(
        title="Discrete distributions: the tutorial's worked examples",
        blocks=[
            "KL(P‖Q) = Σ_i p_i log(p_i / q_i) for P = [0.4, 0.5, 0.1] and Q = [0.3, 0.4, 0.3]. "
            "Every kldiv value below is computed live and printed next to SciPy's, "
            "with the absolute difference.",
            bars,
            worked_examples_table(p, q),
            f"**KL is not symmetric**: KL(P‖Q) = {kl_pq:.6f} nats ({bits_pq:.6f} bits) but "
            f"KL(Q‖P) = {kl_qp:.6f} nats ({bits_qp:.6f} bits). "
            f"**KL = H(P,Q) − H(P)** in both directions: the largest gap between `kl` and "
            f"`cross_entropy − entropy` is {identity_gap:.1e} nats. "
            "Bits are nats divided by ln 2.",
            _path_figure(p, q),
            other_divergences_table(p, q),
            "Rényi's D_α is continuous through α = 1, where it equals KL(P‖Q): " + near_one_text + ".",
            renyi_fig,
            _gjsd_figure(p, q),
            "**Edge cases.** kldiv is exact by default: a zero p_i (or a −inf logit) contributes 0, a zero "
            "q_i under a positive p_i gives +inf, and gradients are finite wherever the value is finite. "
            "`F.kl_div` and `torch.distributions.Categorical` give NaN values or NaN gradients in some "
            "of these cases; the cells below are computed live (value; whether the gradient w.r.t. both "
            "inputs is finite).",
            edge_case_table(),
        ],
    )


# --- The report ----------------------------------------------------------------------------------


def import_section_modules() -> None:
    """Import the modules that register further tour sections."""
    for name in _SECTION_MODULES:
        importlib.import_module(name)


def make_report(sections: Sequence[Section]) -> Report:
    """The tour report with the versions it was computed with."""
    meta = {
        "kldiv": kldiv.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    return Report(title="kldiv tour", sections=list(sections), meta=meta)
