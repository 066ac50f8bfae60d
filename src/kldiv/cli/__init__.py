"""The `kldiv` command line: one module per command group; each is thin (parse, call the library, print)."""

from __future__ import annotations

import typer

from kldiv.cli import divergence, tour, vae

__all__ = ["app", "main"]

app = typer.Typer(
    name="kldiv",
    help="Kullback-Leibler divergences and their relatives for deep learning.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("tour")(tour.tour)
app.add_typer(divergence.app, name="divergence")
app.add_typer(vae.app, name="vae")


def main() -> None:
    """Entry point of the `kldiv` console script and of `python -m kldiv`."""
    app(prog_name="kldiv")
