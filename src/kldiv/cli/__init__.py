"""The `kldiv` command line: one module per command group; each is thin (parse, call the library, print)."""

from __future__ import annotations

from typing import Annotated

import typer

from kldiv.cli import bnn, classify, distill, divergence, mi, mle, rl, tour, vae, vib
from kldiv.cli._common import Group

__all__ = ["app", "main"]

app = typer.Typer(
    name="kldiv",
    cls=Group,
    help="Kullback-Leibler divergences and their relatives for deep learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from kldiv import __version__

        typer.echo(f"kldiv {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Kullback-Leibler divergences and their relatives for deep learning."""


app.command("tour")(tour.tour)
app.command("divergence", no_args_is_help=True)(divergence.divergence)
app.add_typer(vae.app, name="vae")
app.add_typer(classify.app, name="classify")
app.command("mle")(mle.mle)
app.command("distill")(distill.distill)
app.add_typer(bnn.app, name="bnn")
app.add_typer(rl.app, name="rl")
app.add_typer(mi.app, name="mi")
app.add_typer(vib.app, name="vib")


def main() -> None:
    """Entry point of the `kldiv` console script and of `python -m kldiv`."""
    app(prog_name="kldiv")
