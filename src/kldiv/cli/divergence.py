"""`kldiv divergence ...`: divergences between two probability vectors given on the command line."""

from __future__ import annotations

from typing import Annotated

import typer

import kldiv

_UNITS = {2.0: "bits", 10.0: "hartleys"}


def parse_vector(text: str, *, name: str) -> list[float]:
    """'0.4,0.5,0.1' -> [0.4, 0.5, 0.1]; a clear error naming the argument and the bad entry."""
    values: list[float] = []
    for i, item in enumerate(text.split(",")):
        try:
            values.append(float(item))
        except ValueError:
            raise typer.BadParameter(
                f"expected comma-separated numbers such as 0.4,0.5,0.1; entry {i} is {item.strip()!r}",
                param_hint=name,
            ) from None
    return values


def unit_name(base: float | None) -> str:
    if base is None:
        return "nats"
    return _UNITS.get(base) or f"log base {base:g} units"


def divergence(
    vectors: Annotated[
        list[str],
        typer.Argument(
            metavar="[kl] P Q",
            help="P and Q as comma-separated probabilities, e.g. 0.4,0.5,0.1 0.3,0.4,0.3 (a leading 'kl' is allowed).",
            show_default=False,
        ),
    ],
    base: Annotated[float | None, typer.Option(help="Logarithm base: 2 gives bits; default e (nats).")] = None,
    normalize: Annotated[
        bool, typer.Option("--normalize", help="Divide P and Q by their sums first (e.g. counts).")
    ] = False,
) -> None:
    """Print KL(P||Q), KL(Q||P), JS, the cross-entropies and the entropies of P and Q."""
    if vectors[:1] == ["kl"]:
        vectors = vectors[1:]
    if len(vectors) != 2:
        raise typer.BadParameter(f"expected two vectors P and Q, got {len(vectors)} argument(s)", param_hint="P Q")
    pv, qv = parse_vector(vectors[0], name="P"), parse_vector(vectors[1], name="Q")
    try:
        rows = [
            ("KL(P||Q)", kldiv.kl(pv, qv, base=base, normalize=normalize)),
            ("KL(Q||P)", kldiv.kl(qv, pv, base=base, normalize=normalize)),
            ("JS(P,Q)", kldiv.js(pv, qv, base=base, normalize=normalize)),
            ("H(P,Q)", kldiv.cross_entropy(pv, qv, base=base, normalize=normalize)),
            ("H(Q,P)", kldiv.cross_entropy(qv, pv, base=base, normalize=normalize)),
            ("H(P)", kldiv.entropy(pv, base=base, normalize=normalize)),
            ("H(Q)", kldiv.entropy(qv, base=base, normalize=normalize)),
        ]
    except (ValueError, TypeError) as err:
        raise typer.BadParameter(str(err), param_hint="P, Q or --base") from None
    typer.echo(f"unit: {unit_name(base)}")
    for name, value in rows:
        typer.echo(f"{name:<9} {float(value):.12g}")
