"""What every command shares: one-line errors, rank-0-only output, and the options of training runs."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer import _click as click
from typer.core import TyperGroup

from kldiv.runs import (
    OptionError,
    RunError,
    RunOptions,
    TrainingFailedError,
    is_main_process,
    option_text,
    saved_config,
)

T = TypeVar("T")


def one_line(text: str) -> str:
    """``text`` with its line breaks folded into spaces: an error is one line."""
    return " ".join(text.split())


def console() -> Console:
    """Standard output; silent on every rank but 0 under ``torchrun``."""
    return Console(quiet=not is_main_process(), soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` as one line on standard error (rank 0) and return the exit to raise."""
    if is_main_process():
        Console(stderr=True, soft_wrap=True, highlight=False).print(
            f"[red]error:[/red] {escape(one_line(message))}", markup=True
        )
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's errors into one ``error:`` line each: exit 2 for bad options and refused runs, 1 for a
    training that started and could not go on (NaN, disk full)."""
    try:
        yield
    except OptionError as e:
        raise fail(f"{option_text(e.option, True)}: {e.message}") from None
    except TrainingFailedError as e:
        raise fail(str(e), code=1) from None
    except (RunError, ValueError, TypeError, FileNotFoundError, NotADirectoryError) as e:
        raise fail(str(e)) from None
    except OSError as e:
        raise fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e), code=1) from None


class Group(TyperGroup):
    """The root command: usage errors (bad values, unknown options) as one ``error:`` line and exit 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(
                args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra
            )
        except click.exceptions.NoArgsIsHelpError as e:
            if is_main_process():
                e.show()
            code = e.exit_code
        except click.exceptions.ClickException as e:
            context = getattr(e, "ctx", None)
            where = f" (see '{context.command_path} --help')" if context is not None else ""
            fail(f"{e.format_message()}{where}")
            code = e.exit_code
        except typer.Abort:
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


# ---------------------------------------------------------------------------------------- training run options

Out = Annotated[Path, typer.Option("--out", "-o", help="Run directory (created; must be new or empty).")]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue the run in --out exactly from its last checkpoint; options not given are the run's own.",
    ),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the run in --out (its files are deleted).")]
AllowChange = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-change",
        metavar="OPTION",
        help="With --resume: let OPTION (e.g. lr) differ from the run's; recorded in run.json. Repeatable.",
    ),
]
DataDir = Annotated[
    str | None,
    typer.Option("--data-dir", help="Directory with the MNIST IDX files (.gz or raw); default: $KLDIV_DATA."),
]
CheckpointSteps = Annotated[int, typer.Option(help="Also checkpoint every N optimizer steps (0: at epoch ends).")]
Progress = Annotated[bool, typer.Option(help="Show progress bars.")]
Threads = Annotated[
    str,
    typer.Option(
        help="torch threads for training: a number, or 'auto' (each epoch times its first steps with torch's "
        "default and with 1, and keeps the faster: on a busy machine one thread can be many times faster)."
    ),
]


def run_options(
    out: Path,
    *,
    resume: bool,
    overwrite: bool,
    allow_change: list[str] | None,
    checkpoint_steps: int = 0,
    progress: bool = True,
    threads: str = "auto",
) -> RunOptions:
    """The command line's run options (checked: a bad one is one ``error:`` line)."""
    count: int | None = None
    if threads != "auto":
        try:
            count = int(threads)
        except ValueError:
            raise fail(f"--threads: a number or 'auto', got {threads!r}") from None
    with user_errors():
        return RunOptions(
            out=out,
            resume=resume,
            overwrite=overwrite,
            allow_changes=tuple(name.replace("-", "_").removeprefix("__") for name in allow_change or ()),
            checkpoint_steps=checkpoint_steps,
            progress=progress,
            threads=count,
            cli=True,
        )


def explicit(ctx: typer.Context, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` whose option the user typed (not left at its default)."""
    default = click.core.ParameterSource.DEFAULT
    return {name: value for name, value in values.items() if ctx.get_parameter_source(name) not in (None, default)}


def resolve_config(ctx: typer.Context, values: Mapping[str, Any], options: RunOptions, build: Callable[..., T]) -> T:
    """The configuration to train with, built by ``build(**values)`` (checked: a bad value is one ``error:`` line
    naming its option). With ``--resume`` the run's own configuration (the one its last checkpoint was trained
    with) is the base and only the options the user typed replace it: a resume need not repeat the run's
    options."""
    saved = None
    if options.resume:
        try:
            saved = saved_config(options.out)
        except (OSError, ValueError) as e:
            raise fail(str(e)) from None
    if saved is None:
        with user_errors():
            return build(**values)
    config, where = saved
    base = {k: v for k, v in config.items() if k in values}
    try:
        build(**{**values, **base})
    except (OptionError, TypeError) as e:
        raise fail(f"{where}: the run's saved options are invalid ({e})") from None
    with user_errors():
        return build(**{**values, **base, **explicit(ctx, values)})
