"""`kldiv distill`: a CNN teacher, and per seed a label-only and a distilled MLP student, compared (thin: parse,
call :mod:`kldiv.classify.distill`, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table as RichTable

from kldiv.cli._common import DataDir, Overwrite, Progress, console, fail, run_options, user_errors


def _seeds(text: str) -> tuple[int, ...]:
    values = []
    for i, part in enumerate(text.split(",")):
        try:
            values.append(int(part.strip()))
        except ValueError:
            raise fail(f"--seeds: entry {i} is {part.strip()!r}, not an integer (e.g. --seeds 0,1,2)") from None
    return tuple(values)


def distill(
    dataset: Annotated[str, typer.Option(help="'digits' (embedded, 8x8) or 'mnist' (needs --data-dir).")] = "digits",
    data_dir: DataDir = None,
    teacher: Annotated[
        Path | None,
        typer.Option(
            help="Distill from this run of `kldiv classify train` instead of training a teacher in OUT/teacher."
        ),
    ] = None,
    teacher_epochs: Annotated[
        int, typer.Option(help="Epochs of the CNN teacher, trained on the whole training set.")
    ] = 10,
    student_epochs: Annotated[int, typer.Option(help="Epochs of each student.")] = 30,
    temperature: Annotated[float, typer.Option(help="Temperature T > 0 of the soft targets.")] = 4.0,
    alpha: Annotated[
        float, typer.Option(help="Weight in [0, 1] of the teacher term; 1 - alpha weighs the labels' term.")
    ] = 0.9,
    train_fraction: Annotated[
        float,
        typer.Option(
            help="Fraction in (0, 1] of the training set the students see (class-stratified, drawn from the random "
            "seed; the same for both students of a seed). The teacher always trains on the whole set (unless "
            "--teacher)."
        ),
    ] = 1.0,
    hidden: Annotated[
        int | None,
        typer.Option(
            help="Hidden width of the MLP students (default: about a tenth of the CNN's parameters: 100 on MNIST, "
            "116 on the digits)."
        ),
    ] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated student seeds (two students each).")] = "0,1,2",
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory of the runs, summary.json and accuracy.png.")
    ] = Path("runs/distill"),
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the unfinished runs in --out and start the missing ones; finished runs are kept."
        ),
    ] = False,
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Knowledge distillation measured: test accuracy, NLL and ECE of label-only and distilled MLP students.

    Trains the tutorial's CNN as the teacher in OUT/teacher, on the whole training set (or reuses --teacher).

    Then, per seed, an MLP with about a tenth of its parameters, twice: on the labels (OUT/labels-seedS) and with
    alpha T^2 KL(teacher_T || student_T) + (1 - alpha) CE (OUT/distilled-seedS).

    Both students of a seed see the same images (--train-fraction) in the same order from the same weights.
    """
    from kldiv.classify.distill import DistillConfig, mean_std_text
    from kldiv.classify.distill import distill as run_distill
    from kldiv.runs import options as check

    options = run_options(out, resume=resume, overwrite=overwrite, allow_change=None, progress=progress)
    with user_errors():
        config = DistillConfig(
            dataset=dataset,
            data_dir=data_dir,
            teacher=None if teacher is None else str(teacher),
            teacher_epochs=teacher_epochs,
            student_epochs=student_epochs,
            temperature=temperature,
            alpha=alpha,
            train_fraction=train_fraction,
            hidden=hidden,
            seeds=_seeds(seeds),
            batch_size=batch_size,
            lr=lr,
        )
        data = check.dataset(config.dataset, config.data_dir, val_size=0)
        result = run_distill(config, options, data=data)
    s = result.summary
    n, fraction = len(s["seeds"]), s["train_fraction"]
    seen = "all" if fraction == 1 else f"{fraction:g}"
    console().print(
        f"Distillation on {s['dataset']}, test set; {n} seed{'s' if n > 1 else ''}: mean ± sample std (ddof=1) "
        f"over seeds. Students (MLP, {s['student']['parameters']:,} parameters, "
        f"{s['student']['teacher_to_student']:.1f}x fewer than the teacher) trained on {seen} of the training set "
        f"({s['student']['train_images']} images); T = {s['temperature']:g}, alpha = {s['alpha']:g}."
    )
    table = RichTable()
    for column in ("model", "accuracy", "NLL (nats)", "ECE"):
        table.add_column(column, justify="left" if column == "model" else "right")
    t = s["teacher"]
    table.add_row("teacher (CNN)", f"{t['accuracy']:.4f}", f"{t['nll']:.4f}", f"{t['ece']:.4f}")
    for key, name in (("labels", "label-only"), ("distilled", "distilled")):
        row = s[key]
        table.add_row(name, mean_std_text(row["accuracy"]), f"{row['nll']['mean']:.4f}", f"{row['ece']['mean']:.4f}")
    d = s["accuracy_difference"]
    in_std = "" if d["in_std"] is None else f" ({d['in_std']:+.1f} std)"
    table.add_row("distilled − label-only", mean_std_text(d, signed=True) + in_std, "", "")
    console().print(table)
    console().print(f"Wrote {result.out_dir}/summary.json and accuracy.png.")
