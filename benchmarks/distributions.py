"""``kldiv.kl(p, q)`` on distribution objects against ``torch.distributions.kl_divergence``
on the same inputs, in the same run.

Cases: batched Normal (1e6 pairs), diagonal MVN (d=64, batch 4096; ``Independent(Normal, 1)``), full MVN
(d=64, batch 4096, given by ``scale_tril``), Dirichlet (K=100, batch 1e5). The claim measured: no pair slower
than torch, and the full MVN faster (no redundant factorizations). Each ratio is taken within a round (the sides
interleaved) and reported as median (range) over the rounds.

Run: ``.venv/bin/python -m benchmarks.distributions`` (writes ``benchmarks/results/distributions.json``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch.distributions import Dirichlet, Distribution, Independent, MultivariateNormal, Normal, kl_divergence

import kldiv
from benchmarks._common import interleaved_rounds, machine, ratio_text, round_ratios, spread, write_json


def _tril(batch: int, d: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(batch, d, d, generator=g, dtype=torch.float64) / d**0.5
    cov = a @ a.mT + 0.5 * torch.eye(d, dtype=torch.float64)
    return torch.linalg.cholesky(cov)


def cases(g: torch.Generator) -> dict[str, tuple[Distribution, Distribution]]:
    f64 = torch.float64
    n, b, d = 1_000_000, 4096, 64
    return {
        "normal_1e6": (
            Normal(torch.randn(n, generator=g, dtype=f64), torch.rand(n, generator=g, dtype=f64) + 0.5),
            Normal(torch.randn(n, generator=g, dtype=f64), torch.rand(n, generator=g, dtype=f64) + 0.5),
        ),
        "diag_mvn_d64_b4096": (
            Independent(
                Normal(torch.randn(b, d, generator=g, dtype=f64), torch.rand(b, d, generator=g, dtype=f64) + 0.5), 1
            ),
            Independent(
                Normal(torch.randn(b, d, generator=g, dtype=f64), torch.rand(b, d, generator=g, dtype=f64) + 0.5), 1
            ),
        ),
        "full_mvn_d64_b4096": (
            MultivariateNormal(torch.randn(b, d, generator=g, dtype=f64), scale_tril=_tril(b, d, g)),
            MultivariateNormal(torch.randn(b, d, generator=g, dtype=f64), scale_tril=_tril(b, d, g)),
        ),
        "dirichlet_k100_b1e5": (
            Dirichlet(torch.rand(100_000, 100, generator=g, dtype=f64) * 5 + 0.1),
            Dirichlet(torch.rand(100_000, 100, generator=g, dtype=f64) * 5 + 0.1),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    results = []
    for name, (p, q) in cases(g).items():
        ours: Callable[[], object] = lambda p=p, q=q: kldiv.kl(p, q)  # noqa: E731
        theirs: Callable[[], object] = lambda p=p, q=q: kl_divergence(p, q)  # noqa: E731
        a, b = ours(), theirs()
        assert isinstance(a, torch.Tensor)
        assert isinstance(b, torch.Tensor)
        max_rel = float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())
        samples = interleaved_rounds({"kldiv": ours, "torch": theirs}, rounds=args.rounds)
        ratio = round_ratios(samples, "kldiv", "torch")
        seconds = {side: spread(values) for side, values in samples.items()}
        results.append(
            {"case": name, "seconds": seconds, "ratio_kldiv_vs_torch": ratio, "max_rel_diff_vs_torch": max_rel}
        )
        print(
            f"{name:>22}: kldiv {seconds['kldiv']['median'] * 1e3:8.2f} ms  "
            f"torch {seconds['torch']['median'] * 1e3:8.2f} ms  kldiv/torch {ratio_text(ratio)}  "
            f"max rel diff {max_rel:.1e}",
            flush=True,
        )
    path = write_json(
        "distributions",
        {
            "benchmark": "kldiv.kl(p, q) vs torch.distributions.kl_divergence(p, q), float64",
            "rounds": args.rounds,
            "machine": machine(),
            "cases": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
