"""The tour's "MLE is KL minimization" section: registered between the discrete section and the VAE, built live
with its table and figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from kldiv.mle import MLEConfig, run_categorical
from kldiv.report import Context, Figure, Section, Table, tour_sections


@pytest.fixture(scope="module")
def section(tmp_path_factory: pytest.TempPathFactory) -> Section:
    import kldiv.tour

    kldiv.tour.import_section_modules()
    build = dict(tour_sections.items())["mle"]
    built: Section = build(Context(out_dir=Path(tmp_path_factory.mktemp("tour"))))
    return built


def test_the_tour_section_is_registered_between_discrete_and_vae() -> None:
    import kldiv.tour

    kldiv.tour.import_section_modules()
    names = tour_sections.names()
    assert names.index("discrete") < names.index("mle") < names.index("vae")


def test_the_tour_section_has_the_table_and_the_figure(section: Section) -> None:
    assert section.title == "MLE is KL minimization"
    (table,) = [b for b in section.blocks if isinstance(b, Table)]
    (figure,) = [b for b in section.blocks if isinstance(b, Figure)]
    assert [row[0] for row in table.rows] == ["categorical", "gaussian"]
    assert table.rows[0][4] == run_categorical(MLEConfig()).trace.kl[-1]
    assert figure.png.startswith(b"\x89PNG\r\n\x1a\n")
