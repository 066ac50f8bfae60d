"""``kldiv.kl`` against ``scipy.special.rel_entr(p, q).sum()`` and
``torch.nn.functional.kl_div`` called correctly, from 1e3 to 1e7 elements, validation on and off.

The claim measured: at >= 1e5 elements kldiv with validation on is no slower than either baseline. Every
ratio is taken within a round (the sides interleaved) and reported as median (range) over the rounds.

Run: ``.venv/bin/python -m benchmarks.discrete`` (writes ``benchmarks/results/discrete.json`` and prints a table).
Layouts: one distribution of n entries (``1d``), n / 1000 rows of 1000 entries (``rows``, one value per
row), and ``near``: rows of nearly equal distributions (KL ~ 1e-7), where kldiv takes its accurate path (reported
apart). The torch baseline is given probabilities like kldiv, so its call includes ``q.log()``:
``F.kl_div(q.log(), p, reduction="sum")`` (``reduction="none"`` then ``.sum(-1)`` for rows); the figures with
``log q`` precomputed are reported too.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import scipy.special
import torch
import torch.nn.functional as F

import kldiv
from benchmarks._common import interleaved_rounds, machine, ratio_text, round_ratios, spread, write_json


def _inputs(n: int, layout: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (n,) if layout == "1d" else (n // 1000, 1000)
    p = rng.random(shape)
    q = p * (1 + 1e-3 * rng.standard_normal(shape)) if layout == "near" else rng.random(shape)
    p /= p.sum(-1, keepdims=True)
    q /= q.sum(-1, keepdims=True)
    return p, q


def _case(n: int, layout: str, rounds: int) -> dict[str, Any]:
    p, q = _inputs(n, layout, seed=n)
    pt, qt = torch.from_numpy(p), torch.from_numpy(q)
    log_q = qt.log()
    if layout == "1d":

        def torch_kl_div() -> object:
            return F.kl_div(qt.log(), pt, reduction="sum")

        def torch_kl_div_log_q() -> object:
            return F.kl_div(log_q, pt, reduction="sum")

        def scipy_rel_entr() -> object:
            return scipy.special.rel_entr(p, q).sum()
    else:

        def torch_kl_div() -> object:
            return F.kl_div(qt.log(), pt, reduction="none").sum(-1)

        def torch_kl_div_log_q() -> object:
            return F.kl_div(log_q, pt, reduction="none").sum(-1)

        def scipy_rel_entr() -> object:
            return scipy.special.rel_entr(p, q).sum(-1)

    def kldiv_numpy() -> object:
        return kldiv.kl(p, q)

    def kldiv_torch() -> object:
        return kldiv.kl(pt, qt)

    def kldiv_numpy_noval() -> object:
        with kldiv.validation(False):
            return kldiv.kl(p, q)

    def kldiv_torch_noval() -> object:
        with kldiv.validation(False):
            return kldiv.kl(pt, qt)

    # The values agree (a benchmark of wrong answers is worthless).
    ref = scipy_rel_entr()
    # For nearly equal rows the naive sums (scipy's, torch's) lose ~eps * 1e3 / KL of relative accuracy.
    rtol = 1e-6 if layout == "near" else 1e-10
    np.testing.assert_allclose(kldiv_numpy(), ref, rtol=rtol)
    np.testing.assert_allclose(kldiv_torch().numpy(), ref, rtol=rtol)
    samples = interleaved_rounds(
        {
            "scipy_rel_entr_sum": scipy_rel_entr,
            "torch_kl_div": torch_kl_div,
            "torch_kl_div_log_q_given": torch_kl_div_log_q,
            "kldiv_numpy": kldiv_numpy,
            "kldiv_torch": kldiv_torch,
            "kldiv_numpy_no_validation": kldiv_numpy_noval,
            "kldiv_torch_no_validation": kldiv_torch_noval,
        },
        rounds=rounds,
    )
    return {
        "n": n,
        "layout": layout,
        "seconds": {name: spread(values) for name, values in samples.items()},
        "ratios": {
            "kldiv_numpy_vs_scipy": round_ratios(samples, "kldiv_numpy", "scipy_rel_entr_sum"),
            "kldiv_torch_vs_torch_kl_div": round_ratios(samples, "kldiv_torch", "torch_kl_div"),
            "kldiv_torch_vs_torch_kl_div_log_q_given": round_ratios(samples, "kldiv_torch", "torch_kl_div_log_q_given"),
            "kldiv_numpy_no_validation_vs_scipy": round_ratios(
                samples, "kldiv_numpy_no_validation", "scipy_rel_entr_sum"
            ),
            "kldiv_torch_no_validation_vs_torch_kl_div": round_ratios(
                samples, "kldiv_torch_no_validation", "torch_kl_div"
            ),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    cases = []
    for n in (int(s) for s in args.sizes):
        for layout in ("1d", "rows", "near") if n >= 10_000 else ("1d",):
            case = _case(n, layout, args.rounds)
            cases.append(case)
            r = case["ratios"]
            print(
                f"n={n:>9,} {layout:>4}: kldiv/scipy {ratio_text(r['kldiv_numpy_vs_scipy'])}  "
                f"kldiv/F.kl_div {ratio_text(r['kldiv_torch_vs_torch_kl_div'])}  "
                f"(log q given {ratio_text(r['kldiv_torch_vs_torch_kl_div_log_q_given'])})  "
                f"no validation: {ratio_text(r['kldiv_numpy_no_validation_vs_scipy'])} / "
                f"{ratio_text(r['kldiv_torch_no_validation_vs_torch_kl_div'])}",
                flush=True,
            )
    path = write_json(
        "discrete",
        {
            "benchmark": "kldiv.kl vs scipy.special.rel_entr(...).sum() and torch.nn.functional.kl_div",
            "rounds": args.rounds,
            "machine": machine(),
            "cases": cases,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
