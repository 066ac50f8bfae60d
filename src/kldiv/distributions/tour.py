"""The tour's section on parametric distributions: the tutorial's examples next to torch, the pairs only kldiv has,
and a figure of KL between Gaussians against the 2-Wasserstein distance."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure as MplFigure
from torch.distributions import (
    Bernoulli,
    Distribution,
    Gamma,
    LogNormal,
    MultivariateNormal,
    Normal,
    Poisson,
    StudentT,
    VonMises,
    Weibull,
)

import kldiv
from kldiv.distributions import registered_pairs
from kldiv.distributions.continuous import Chi
from kldiv.distributions.gaussian import wasserstein2_gaussian
from kldiv.distributions.registry import torch_has_formula
from kldiv.report import Cell, Context, Figure, Section, Table, png_bytes, register_section

F64 = torch.float64


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64) if len(values) > 1 else torch.tensor(values[0], dtype=F64)


def _torch_value(p: Distribution, q: Distribution) -> Cell:
    try:
        return float(torch.distributions.kl_divergence(p, q))
    except NotImplementedError as exc:
        return f"NotImplementedError{': ' + str(exc) if str(exc) else ''}"


def seed_examples_table() -> Table:
    """The tutorial's three examples, each with torch's value."""
    examples: list[tuple[str, Distribution, Distribution]] = [
        ("KL(N(0,1) ‖ N(1,2))", Normal(_t(0.0), _t(1.0)), Normal(_t(1.0), _t(2.0))),
        (
            "KL(N(0, I) ‖ N(1, [[2, .5], [.5, 1]]))",
            MultivariateNormal(_t(0.0, 0.0), torch.eye(2, dtype=F64)),
            MultivariateNormal(_t(1.0, 1.0), torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)),
        ),
        ("KL(Bern(0.3) ‖ Bern(0.7))", Bernoulli(_t(0.3)), Bernoulli(_t(0.7))),
    ]
    rows: list[list[Cell]] = []
    for name, p, q in examples:
        ours = float(kldiv.kl(p, q))
        theirs = _torch_value(p, q)
        diff = f"{abs(ours - theirs):.1e}" if isinstance(theirs, float) else "-"
        rows.append([name, ours, theirs, diff])
    return Table(
        ["pair", "kldiv", "torch.distributions", "|difference|"],
        rows,
        title="The tutorial's examples: closed forms, next to torch",
        summary_columns=("pair", "kldiv", "torch.distributions"),
    )


def beyond_torch_table() -> Table:
    """A few pairs torch cannot compute, with kldiv's value and a Monte-Carlo check with its standard error."""
    examples: list[tuple[str, Distribution, Distribution]] = [
        ("Weibull(1, 2) ‖ Weibull(1.5, 3)", Weibull(_t(1.0), _t(2.0)), Weibull(_t(1.5), _t(3.0))),
        ("Gamma(2, 1) ‖ LogNormal(0.5, 0.8)", Gamma(_t(2.0), _t(1.0)), LogNormal(_t(0.5), _t(0.8))),
        ("VonMises(0, 2) ‖ VonMises(1, 0.5)", VonMises(_t(0.0), _t(2.0)), VonMises(_t(1.0), _t(0.5))),
        ("StudentT(5, 0, 1) ‖ N(0, 1.2)", StudentT(_t(5.0), _t(0.0), _t(1.0)), Normal(_t(0.0), _t(1.2))),
        ("N(0, 1) ‖ StudentT(3, 0, 1)", Normal(_t(0.0), _t(1.0)), StudentT(_t(3.0), _t(0.0), _t(1.0))),
        ("Chi(3) ‖ Chi(4, 0.8)", Chi(_t(3.0)), Chi(_t(4.0), _t(0.8))),
        ("Poisson(0) ‖ Poisson(3) (torch: NaN)", Poisson(_t(0.0)), Poisson(_t(3.0))),
    ]
    rows: list[list[Cell]] = []
    for name, p, q in examples:
        ours = float(kldiv.kl(p, q))
        est = kldiv.kl_mc(p, q, 200_000, seed=0)
        theirs = _torch_value(p, q)
        rows.append([name, ours, float(est.value), float(est.stderr), theirs])
    return Table(
        ["pair", "kldiv", "Monte Carlo (2e5 samples)", "standard error", "torch.distributions"],
        rows,
        title="Pairs torch does not resolve (or gets wrong), with a Monte-Carlo check",
        summary_columns=("pair", "kldiv", "Monte Carlo (2e5 samples)", "standard error"),
    )


def coverage_counts() -> str:
    """How many pairs kldiv resolves, and how many of those torch does not."""
    pairs = registered_pairs()
    ours = [p for p in pairs if p.source == "kldiv"]
    new = [p for p in ours if not torch_has_formula(p.type_p, p.type_q)]
    by_method: dict[str, int] = {}
    for p in pairs:
        by_method[p.method] = by_method.get(p.method, 0) + 1
    methods = ", ".join(f"{n} {m}" for m, n in sorted(by_method.items()))
    return (
        f"kldiv resolves {len(pairs)} pairs of distribution types ({methods}); {len(ours)} are kldiv's own "
        f"formulas, of which {len(new)} have no formula in torch's registry. The full table, next to "
        "torch's and TensorFlow Probability's coverage, is docs/distribution_coverage.md."
    )


def kl_vs_wasserstein_figure() -> Figure:
    """KL and W2 between N(0, 1) and N(mu, sigma): KL blows up as sigma shrinks, W2 stays a distance."""
    sigmas = np.linspace(0.05, 3.0, 200)
    fig = MplFigure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    for mu, style in ((0.0, "-"), (1.0, "--")):
        s = torch.tensor(sigmas, dtype=F64)
        kl = kldiv.kl_normal(_t(0.0), _t(1.0), torch.full_like(s, mu), s)
        w2 = wasserstein2_gaussian(
            _t(0.0).reshape(1),
            torch.ones(1, 1, dtype=F64),
            torch.full((len(s), 1), mu, dtype=F64),
            (s**2).reshape(-1, 1, 1),
        )
        ax.plot(sigmas, np.asarray(kl), "C0" + style, label=f"KL(N(0,1) ‖ N({mu:g}, σ²))")
        ax.plot(sigmas, np.asarray(w2), "C1" + style, label=f"W2(N(0,1), N({mu:g}, σ²))")
    ax.set_yscale("log")
    ax.set_xlabel("σ")
    ax.set_ylabel("divergence / distance")
    ax.set_title("KL is unbounded as Q narrows; the 2-Wasserstein distance is not")
    ax.legend(fontsize=8)
    return Figure(
        "kl-vs-wasserstein-gaussians",
        png_bytes(fig),
        "KL(N(0,1) ‖ N(μ, σ²)) and the 2-Wasserstein distance against σ, for μ = 0 and μ = 1 (log scale): KL "
        "grows like 1/(2σ²) as σ → 0 and is asymmetric, while W2 = sqrt(μ² + (1 − σ)²) is a metric.",
    )


def _near_equal_sentence() -> str:
    sigma = 1 + 1e-9
    eps = sigma - 1  # exactly representable; KL = log(1 + eps) + 1/(2 (1 + eps)^2) - 1/2 = eps^2 - 5/3 eps^3 + ...
    exact = eps**2 * (1 - 5 / 3 * eps + 7 / 4 * eps**2)
    p, q = Normal(_t(0.0), _t(1.0)), Normal(_t(0.0), _t(sigma))
    ours = float(kldiv.kl(p, q))
    theirs = float(torch.distributions.kl_divergence(p, q))
    return (
        f"The Gaussian closed forms keep relative accuracy for nearly equal distributions: KL(N(0, 1) ‖ N(0, σ²)) "
        f"with σ = 1 + 1e-9 is {ours:.10e} in kldiv (relative error {abs(ours - exact) / exact:.1e} against the "
        f"series), {theirs:.10e} in torch (relative error {abs(theirs - exact) / exact:.1e})."
    )


@register_section("distributions", order=20)
def distributions_section(ctx: Context) -> Section:
    """Closed forms between parametric distributions, the pairs beyond torch, KL against W2."""
    torch.manual_seed(ctx.seed)
    return Section(
        "Parametric distributions: closed forms beyond torch.distributions",
        [
            "kldiv.kl(p, q) accepts two torch.distributions objects and looks up kldiv's registry, then torch's; "
            "it always returns a tensor of the batch shape, like torch.distributions.kl_divergence; "
            "kldiv.kl_mc(p, q, n) gives a Monte-Carlo estimate with its standard error for any pair. "
            + coverage_counts(),
            seed_examples_table(),
            beyond_torch_table(),
            kl_vs_wasserstein_figure(),
            _near_equal_sentence(),
        ],
    )


__all__ = ["beyond_torch_table", "coverage_counts", "distributions_section", "seed_examples_table"]
