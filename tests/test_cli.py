"""The command line: `kldiv tour` writes a report of kldiv's and SciPy's numbers; every --help works."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.spatial.distance as ssd
import scipy.special as ssp
import scipy.stats as sst
import typer.main
from typer.testing import CliRunner

import kldiv
from kldiv.cli import app

P = [0.4, 0.5, 0.1]
Q = [0.3, 0.4, 0.3]
runner = CliRunner()


def _all_command_paths() -> list[list[str]]:
    """Every command and group of the app, as the argument lists that reach it."""
    paths: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def _md_tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Tables of report.md by their bold title, as lists of {header: cell} with `\\|` unescaped."""
    tables: dict[str, list[dict[str, str]]] = {}
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        title = re.fullmatch(r"\*\*(.+)\*\*", line)
        if not title or i + 2 >= len(lines) or not lines[i + 2].startswith("|"):
            continue
        block = []
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            cells = [c.strip().replace(r"\|", "|") for c in re.split(r"(?<!\\)\|", row)[1:-1]]
            block.append(cells)
        header, body = block[0], block[2:]
        tables[title.group(1)] = [dict(zip(header, cells, strict=True)) for cells in body]
    return tables


def _num(text: str) -> float:
    return float(text)


@pytest.fixture(scope="module")
def tour_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("tour") / "runs" / "tour"
    result = runner.invoke(app, ["tour", "--quick", "--out", str(out)])  # the full tour is the README's main job
    assert result.exit_code == 0, result.output
    return out, result.stdout


@pytest.fixture(scope="module")
def tour_tables(tour_run: tuple[Path, str]) -> dict[str, list[dict[str, str]]]:
    out, _ = tour_run
    return _md_tables((out / "report.md").read_text(encoding="utf-8"))


def _table(tables: dict[str, list[dict[str, str]]], prefix: str) -> list[dict[str, str]]:
    matches = [rows for title, rows in tables.items() if title.startswith(prefix)]
    assert len(matches) == 1, f"expected one table titled {prefix!r}..., found {list(tables)}"
    return matches[0]


# --- help ----------------------------------------------------------------------------------------


def test_the_app_has_the_tour_and_divergence_commands() -> None:
    assert ["tour"] in _all_command_paths()
    assert ["divergence"] in _all_command_paths()


@pytest.mark.parametrize("path", _all_command_paths(), ids=lambda p: " ".join(p) or "kldiv")
def test_help_of_every_command(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert " ".join(["kldiv", *path]) in result.output


def test_python_dash_m_kldiv_runs_the_cli() -> None:
    src = str(Path(kldiv.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "kldiv", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "tour" in result.stdout
    assert "divergence" in result.stdout


# --- kldiv divergence kl -------------------------------------------------------------------------


def _printed_values(output: str) -> dict[str, float]:
    values = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0][0] in "KJH":
            values[parts[0]] = float(parts[1])
    return values


@pytest.mark.parametrize(("base_args", "base", "unit"), [([], None, "nats"), (["--base", "2"], 2.0, "bits")])
def test_divergence_kl_prints_the_kl_family_matching_scipy(base_args: list[str], base: float | None, unit: str) -> None:
    result = runner.invoke(app, ["divergence", "kl", "0.4,0.5,0.1", "0.3,0.4,0.3", *base_args])
    assert result.exit_code == 0, result.output
    assert f"unit: {unit}" in result.stdout
    values = _printed_values(result.stdout)
    p, q = np.array(P), np.array(Q)
    expected = {
        "KL(P||Q)": sst.entropy(p, q, base=base),
        "KL(Q||P)": sst.entropy(q, p, base=base),
        "JS(P,Q)": ssd.jensenshannon(p, q, base=base) ** 2,
        "H(P,Q)": -ssp.xlogy(p, q).sum() / (math.log(base) if base else 1.0),
        "H(Q,P)": -ssp.xlogy(q, p).sum() / (math.log(base) if base else 1.0),
        "H(P)": sst.entropy(p, base=base),
        "H(Q)": sst.entropy(q, base=base),
    }
    assert values.keys() == expected.keys()
    for name, value in expected.items():
        assert values[name] == pytest.approx(float(value), rel=1e-10), name


def test_divergence_kl_normalize_accepts_counts() -> None:
    result = runner.invoke(app, ["divergence", "kl", "2,3,5", "1,1,2", "--normalize"])
    assert result.exit_code == 0, result.output
    values = _printed_values(result.stdout)
    assert values["KL(P||Q)"] == pytest.approx(float(sst.entropy([2, 3, 5], [1, 1, 2])), rel=1e-10)


def test_divergence_kl_rejects_an_entry_that_is_not_a_number() -> None:
    result = runner.invoke(app, ["divergence", "kl", "0.4,abc,0.6", "0.3,0.4,0.3"])
    assert result.exit_code == 2
    assert "entry 1 is 'abc'" in result.output


def test_divergence_kl_reports_the_library_error_for_non_distributions() -> None:
    result = runner.invoke(app, ["divergence", "kl", "0.4,0.5,0.3", "0.3,0.4,0.3"])
    assert result.exit_code == 2
    assert "Invalid value" in result.output
    assert "Traceback" not in result.output


# --- kldiv tour ----------------------------------------------------------------------------------


def test_tour_writes_html_markdown_and_figures(tour_run: tuple[Path, str]) -> None:
    out, _ = tour_run
    html_text = (out / "index.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    pngs = sorted((out / "figures").glob("*.png"))
    names = {png.stem for png in pngs}
    assert {"p-and-q", "kl-asymmetry-path", "renyi-vs-alpha", "generalized-jsd-vs-beta"} <= names
    for png in pngs:
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert f"(figures/{png.name})" in md
    assert html_text.count("data:image/png;base64,") == len(pngs)
    assert "figures/" not in html_text


def test_tour_prints_the_summary_table(tour_run: tuple[Path, str]) -> None:
    _, stdout = tour_run
    assert "Worked examples" in stdout
    assert f"{float(sst.entropy(P, Q)):.8g}" in stdout
    assert f"{float(sst.entropy(Q, P, base=2)):.8g}" in stdout
    assert "index.html" in stdout


def test_tour_worked_examples_are_kldiv_values_next_to_scipy(
    tour_tables: dict[str, list[dict[str, str]]],
) -> None:
    rows = _table(tour_tables, "Worked examples")
    by_key = {(r["quantity"], r["unit"]): r for r in rows}
    assert len(by_key) == 16
    p, q = np.array(P), np.array(Q)
    for unit, base in (("nats", None), ("bits", 2.0)):
        scale = 1.0 if base is None else math.log(2.0)
        expected = {
            "KL(P‖Q)": (kldiv.kl(P, Q, base=base), ssp.rel_entr(p, q).sum() / scale),
            "KL(Q‖P)": (kldiv.kl(Q, P, base=base), ssp.rel_entr(q, p).sum() / scale),
            "H(P)": (kldiv.entropy(P, base=base), sst.entropy(p, base=base)),
            "H(Q)": (kldiv.entropy(Q, base=base), sst.entropy(q, base=base)),
            "H(P,Q)": (kldiv.cross_entropy(P, Q, base=base), -ssp.xlogy(p, q).sum() / scale),
            "H(Q,P)": (kldiv.cross_entropy(Q, P, base=base), -ssp.xlogy(q, p).sum() / scale),
            "H(P,Q) − H(P)": (kldiv.kl(P, Q, base=base), sst.entropy(p, q, base=base)),
            "H(Q,P) − H(Q)": (kldiv.kl(Q, P, base=base), sst.entropy(q, p, base=base)),
        }
        for quantity, (ours, theirs) in expected.items():
            row = by_key[(quantity, unit)]
            assert _num(row["kldiv"]) == pytest.approx(float(ours), rel=1e-7), (quantity, unit)
            assert _num(row["scipy"]) == pytest.approx(float(theirs), rel=1e-7), (quantity, unit)
            assert _num(row["|kldiv − scipy|"]) < 1e-12, (quantity, unit)


def test_tour_shows_the_asymmetry_of_the_seed_pair(tour_tables: dict[str, list[dict[str, str]]]) -> None:
    rows = {(r["quantity"], r["unit"]): r for r in _table(tour_tables, "Worked examples")}
    assert _num(rows[("KL(P‖Q)", "nats")]["kldiv"]) == pytest.approx(0.11678338, abs=1e-8)
    assert _num(rows[("KL(Q‖P)", "nats")]["kldiv"]) == pytest.approx(0.15402164, abs=1e-8)


def test_tour_other_divergences_match_their_references(tour_tables: dict[str, list[dict[str, str]]]) -> None:
    rows = {r["divergence"]: r for r in _table(tour_tables, "Other divergences")}
    p, q = np.array(P), np.array(Q)
    kl_pq, kl_qp = float(ssp.rel_entr(p, q).sum()), float(ssp.rel_entr(q, p).sum())
    independent = {
        "JS (nats)": float(ssd.jensenshannon(p, q)) ** 2,
        "JS (bits)": float(ssd.jensenshannon(p, q, base=2)) ** 2,
        "JSD(β=0) / (β(1−β)) = KL(P‖Q)": kl_pq,
        "JSD(β=1) / (β(1−β)) = KL(Q‖P)": kl_qp,
        "Rényi α=1 = KL(P‖Q)": kl_pq,
        "Rényi α=2": math.log(float(np.sum(p**2 / q))),
        "Rényi α=inf": math.log(float(np.max(p / q))),
        "TV": 0.2,
        "Hellinger": math.sqrt(0.5 * float(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2))),
        "χ² Pearson": float(np.sum((p - q) ** 2 / q)),
        "χ² Neyman": float(np.sum((p - q) ** 2 / p)),
        "Jeffreys = KL(P‖Q) + KL(Q‖P)": kl_pq + kl_qp,
    }
    for name, value in independent.items():
        assert _num(rows[name]["kldiv"]) == pytest.approx(value, rel=1e-7), name
        assert _num(rows[name]["reference"]) == pytest.approx(value, rel=1e-7), name
    for row in rows.values():
        assert _num(row["|kldiv − reference|"]) < 1e-12, row["divergence"]


def test_tour_edge_cases_show_kldiv_exact_and_finite_gradients(
    tour_tables: dict[str, list[dict[str, str]]],
) -> None:
    rows = _table(tour_tables, "Edge cases")
    assert len(rows) == 6
    for row in rows:
        value = row["kldiv"].split(";")[0]
        if row["kldiv semantics"] == "+inf":
            assert value == "inf", row
        else:
            assert row["kldiv"].endswith("grad finite"), row
            assert _num(value) == pytest.approx(_num(row["scipy rel_entr"]), rel=1e-7), row
    torch_cells = [row[c] for row in rows for c in ("torch F.kl_div", "torch Categorical")]
    assert any("nan" in cell.lower() for cell in torch_cells)  # what the report's paragraph claims
