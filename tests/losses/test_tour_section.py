"""The tour's losses section: registered, built live, the failure-mode table and the timing figure (its speed is
measured by benchmarks/large_vocab.py, never asserted here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kldiv.report import Context, Figure, Section, Table, format_cell, tour_sections

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROW_STARTS = (
    "every token ignored",
    "a vocabulary entry masked to −inf",
    "both log-probabilities of one entry",
    "bf16 logits",
    "generalized JSD as β → 0",
    "a tiny per-token KL",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Section:
    import kldiv.tour

    kldiv.tour.import_section_modules()
    build = dict(tour_sections.items())["losses"]
    section: Section = build(Context(out_dir=Path(tmp_path_factory.mktemp("tour"))))
    return section


def _table(section: Section) -> Table:
    (table,) = [b for b in section.blocks if isinstance(b, Table)]
    return table


def test_the_section_is_registered_between_discrete_and_vae() -> None:
    import kldiv.tour

    kldiv.tour.import_section_modules()
    names = tour_sections.names()
    assert "losses" in names
    assert names.index("discrete") < names.index("losses") < names.index("vae")


def test_the_section_has_its_title(built: Section) -> None:
    assert built.title == "Distillation and RLHF losses over large vocabularies"


def test_the_table_has_the_expected_rows(built: Section) -> None:
    table = _table(built)
    assert list(table.header) == [
        "case",
        "plain torch, the usual way",
        "kldiv.losses",
        "exact (float64 or closed form)",
    ]
    assert len(table.rows) == len(ROW_STARTS)
    for row, start in zip(table.rows, ROW_STARTS, strict=True):
        assert format_cell(row[0]).startswith(start)


def test_kldiv_has_no_nan_and_the_all_ignored_row_is_zero(built: Section) -> None:
    table = _table(built)
    ours = [format_cell(row[2]) for row in table.rows]
    assert all("nan" not in cell.lower() for cell in ours), ours
    assert ours[0] == "0; grad 0"


def test_plain_torch_fails_where_expected(built: Section) -> None:
    rows = _table(built).rows
    assert format_cell(rows[0][1]).startswith("NaN")  # 0/0
    assert format_cell(rows[1][1]).startswith("NaN")  # -inf - (-inf)
    assert "teacher grad err NaN" in format_cell(rows[2][1])  # d(p log p)/dp at p = 0


def test_the_figure_is_a_png(built: Section) -> None:
    (figure,) = [b for b in built.blocks if isinstance(b, Figure)]
    assert figure.png.startswith(PNG_SIGNATURE)
    assert figure.name == "losses-time-vs-vocab"
