"""The tour's distillation section: a CNN teacher on the embedded 8x8 digits, and per seed an MLP student with a
tenth of its parameters trained on a tenth of the images, once on the labels and once distilled."""

from __future__ import annotations

import torch

from kldiv.classify.distill import DistillConfig, accuracy_figure, distill, mean_std_text
from kldiv.data import load_digits
from kldiv.report import Cell, Context, Figure, Section, Table, png_bytes, register_section
from kldiv.runs import RunOptions

CONFIG = DistillConfig(
    dataset="digits",
    teacher_epochs=3,
    student_epochs=20,
    train_fraction=0.1,
    batch_size=16,
    lr=3e-3,
    seeds=(0, 1, 2),
)


@register_section("distill", order=40)
def distill_section(ctx: Context) -> Section:
    """Teacher, label-only and distilled students: test accuracy, NLL and ECE over three seeds."""
    data = load_digits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these models are tiny: one thread is faster, and immune to a busy machine
    try:
        result = distill(
            CONFIG, RunOptions(out=ctx.out_dir / "distill", overwrite=True, progress=False), data=load_digits()
        )
    finally:
        torch.set_num_threads(threads)
    s = result.summary
    t, students = s["teacher"], s["student"]["parameters"]
    teacher_images, student_images = data.train.shape[0], s["student"]["train_images"]
    rows: list[list[Cell]] = [
        [
            f"teacher (CNN), {teacher_images} images",
            t["parameters"],
            f"{t['accuracy']:.4f}",
            f"{t['nll']:.4f}",
            f"{t['ece']:.4f}",
        ]
    ]
    for key, name in (("labels", "label-only student (MLP)"), ("distilled", "distilled student (MLP)")):
        row = s[key]
        rows.append(
            [
                f"{name}, {student_images} images",
                students,
                mean_std_text(row["accuracy"]),
                mean_std_text(row["nll"]),
                mean_std_text(row["ece"]),
            ]
        )
    d = s["accuracy_difference"]
    table = Table(
        header=["model", "parameters", "accuracy", "NLL (nats)", "ECE"],
        rows=rows,
        title="Knowledge distillation on the 8×8 digits (test set; students: mean ± sample std over 3 seeds)",
        summary_columns=["model", "accuracy"],
    )
    return Section(
        title="Knowledge distillation",
        blocks=[
            f"`kldiv distill` on scikit-learn's 8×8 digits: the tutorial's CNN ({t['parameters']:,} parameters) is "
            f"the teacher, trained on all {teacher_images} training images for {CONFIG.teacher_epochs} epochs. Each "
            f"student is an MLP with {students:,} parameters ({s['student']['teacher_to_student']:.1f}× fewer) that "
            f"sees only {student_images} of them (a class-stratified tenth, drawn from its seed) for "
            f"{CONFIG.student_epochs} epochs, once with the "
            f"labels' cross-entropy and once with Hinton's loss α T² KL(P_T ‖ Q_T) + (1 − α) CE at T = "
            f"{CONFIG.temperature:g}, α = {CONFIG.alpha:g} (`kldiv.losses.distillation_loss`). The two students of "
            "a seed share their images, initial weights and batch order, so their difference is paired.",
            table,
            f"Distilled minus label-only test accuracy: {d['mean']:+.4f} ± {d['std']:.4f} (sample std of the "
            f"three paired differences), {d['in_std']:+.1f} std.",
            Figure("distill-accuracy", png_bytes(accuracy_figure(s)), "Test accuracy per seed; the teacher's dashed."),
        ],
    )
