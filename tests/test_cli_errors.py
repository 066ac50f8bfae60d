"""Every command with bad values: one `error:` line naming the option, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import kldiv
from kldiv.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained run, a file, a directory that holds no run, and a missing path."""
    root = tmp_path_factory.mktemp("cli")
    run = root / "run"
    result = runner.invoke(app, ["vae", "train", "--epochs", "1", "--z-dim", "2", "--no-progress", "--out", str(run)])
    assert result.exit_code == 0, result.output
    (root / "file.txt").write_text("not a directory")
    (root / "notes").mkdir()
    (root / "notes" / "a.txt").write_text("mine")
    return {"run": run, "file": root / "file.txt", "notes": root / "notes", "missing": root / "missing", "root": root}


# (arguments with {run}/{file}/{notes}/{missing}/{root} placeholders, text the error line must contain)
CASES: list[tuple[list[str], str]] = [
    # kldiv divergence
    (["divergence", "0.4,abc", "0.3,0.7"], "entry 1 is 'abc'"),
    (["divergence", "0.4,0.6"], "expected two vectors"),
    (["divergence", "0.4,0.6", "0.3,0.7", "--base", "-1"], "base"),
    (["divergence", "0.4,0.6", "0.3,0.7", "--base", "nan"], "base"),
    (["divergence", "0.4,0.5", "0.3,0.7"], "sum"),
    # kldiv tour
    (["tour", "--out", "{file}"], "{file}"),
    # kldiv vae train
    (["vae", "train", "--epochs", "0"], "--epochs"),
    (["vae", "train", "--epochs", "x"], "--epochs"),
    (["vae", "train", "--batch-size", "0"], "--batch-size"),
    (["vae", "train", "--z-dim", "-3"], "--z-dim"),
    (["vae", "train", "--lr", "0"], "--lr"),
    (["vae", "train", "--lr", "nan"], "--lr"),
    (["vae", "train", "--lr", "inf"], "--lr"),
    (["vae", "train", "--beta", "-1"], "--beta"),
    (["vae", "train", "--free-bits", "-0.5"], "--free-bits"),
    (["vae", "train", "--schedule", "sometimes"], "--schedule"),
    (["vae", "train", "--schedule", "linear:1e308"], "--schedule"),
    (["vae", "train", "--schedule", "cyclical:0:0.5"], "--schedule"),
    (["vae", "train", "--schedule", "cyclical:2:7"], "--schedule"),
    (["vae", "train", "--seed", "-1"], "--seed"),
    (["vae", "train", "--seed", "18446744073709551616"], "--seed"),
    (["vae", "train", "--val-size", "-1"], "--val-size"),
    (["vae", "train", "--val-size", "100000"], "--val-size"),
    (["vae", "train", "--dataset", "cifar"], "--dataset"),
    (["vae", "train", "--model", "resnet"], "--model"),
    (["vae", "train", "--likelihood", "poisson"], "--likelihood"),
    (["vae", "train", "--dataset", "mnist", "--data-dir", "{missing}"], "--data-dir"),
    (["vae", "train", "--checkpoint-steps", "-1"], "--checkpoint-steps"),
    (["vae", "train", "--threads", "many"], "--threads"),
    (["vae", "train", "--threads", "0"], "--threads"),
    (["vae", "train", "--out", "{file}"], "--out"),
    (["vae", "train", "--out", "{run}"], "--resume"),
    (["vae", "train", "--out", "{notes}"], "holds no kldiv run"),
    (["vae", "train", "--out", "{notes}", "--overwrite"], "holds no kldiv run"),
    (["vae", "train", "--out", "{missing}", "--resume"], "nothing to resume"),
    (["vae", "train", "--out", "{run}", "--resume", "--overwrite"], "--overwrite"),
    (["vae", "train", "--out", "{missing}", "--allow-change", "lr"], "--allow-change"),
    (["vae", "train", "--out", "{run}", "--resume", "--allow-change", "momentum"], "--allow-change"),
    (["vae", "train", "--out", "{run}", "--resume", "--batch-size", "64"], "--batch-size 128 -> 64"),
    (["vae", "train", "--no-such-option"], "--no-such-option"),
    # kldiv vae eval
    (["vae", "eval", "--run", "{run}", "--iwae-k", "-5"], "--iwae-k"),
    (["vae", "eval", "--run", "{run}", "--limit", "-1"], "--limit"),
    (["vae", "eval", "--run", "{run}", "--seed", "-1"], "--seed"),
    (["vae", "eval", "--run", "{missing}"], "holds no kldiv run"),
    (["vae", "eval", "--run", "{notes}"], "holds no kldiv run"),
    (["vae", "eval", "--run", "{file}"], "holds no kldiv run"),
    # kldiv vae sample
    (["vae", "sample", "--run", "{run}", "-n", "0"], "-n"),
    (["vae", "sample", "--run", "{run}", "-o", "{missing}/dir/x.png"], "--out"),
    (["vae", "sample", "--run", "{run}", "-o", "{notes}"], "--out"),
    (["vae", "sample", "--run", "{missing}"], "holds no kldiv run"),
    # kldiv vae sweep
    (["vae", "sweep", "--beta", "-1"], "--beta"),
    (["vae", "sweep", "--beta", "nan"], "--beta"),
    (["vae", "sweep", "--beta", "1", "x"], "--beta"),
    (["vae", "sweep"], "--beta"),
    (["vae", "sweep", "--beta", "1", "--epochs", "0"], "--epochs"),
    (["vae", "sweep", "--beta", "1", "--out", "{file}"], "--out"),
    # kldiv classify train
    (["classify", "train", "--epochs", "0"], "--epochs"),
    (["classify", "train", "--batch-size", "0"], "--batch-size"),
    (["classify", "train", "--reg", "mixup"], "--reg"),
    (["classify", "train", "--reg", "kl-target"], "--target"),
    (["classify", "train", "--target", "0.5,0.5"], "--target"),
    (["classify", "train", "--reg", "kl-target", "--target", "0.5,0.5"], "--target"),
    (["classify", "train", "--reg", "kl-target", "--target", "a" + ",0.1" * 9], "--target"),
    (["classify", "train", "--reg", "kl-target", "--target", "0.2" + ",0.1" * 9], "--target"),
    (["classify", "train", "--beta", "-1"], "--beta"),
    (["classify", "train", "--beta", "nan"], "--beta"),
    (["classify", "train", "--eps", "1.5"], "--eps"),
    (["classify", "train", "--lr", "0"], "--lr"),
    (["classify", "train", "--n-bins", "0"], "--n-bins"),
    (["classify", "train", "--seed", "-1"], "--seed"),
    (["classify", "train", "--val-size", "100000"], "--val-size"),
    (["classify", "train", "--dataset", "cifar"], "--dataset"),
    (["classify", "train", "--model", "resnet"], "--model"),
    (["classify", "train", "--dataset", "mnist", "--data-dir", "{missing}"], "--data-dir"),
    (["classify", "train", "--out", "{file}"], "--out"),
    (["classify", "train", "--out", "{run}", "--resume"], "kldiv vae train"),
    # kldiv classify eval
    (["classify", "eval", "{run}"], "not of `kldiv classify train`"),
    (["classify", "eval", "{missing}"], "holds no kldiv run"),
    (["classify", "eval", "{run}", "--n-bins", "0"], "--n-bins"),
    (["classify", "eval", "{run}", "--limit", "-1"], "--limit"),
    (["classify", "eval"], "Missing argument 'run'"),
    # kldiv classify train: distillation options
    (["classify", "train", "--temperature", "2"], "--temperature"),
    (["classify", "train", "--alpha", "0.5"], "--alpha"),
    (["classify", "train", "--teacher", "{missing}", "--model", "mlp"], "--teacher"),
    (["classify", "train", "--teacher", "{run}", "--model", "mlp"], "not of `kldiv classify train`"),
    (["classify", "train", "--teacher", "{missing}", "--reg", "confidence"], "--reg"),
    (["classify", "train", "--teacher", "{missing}", "--temperature", "0"], "--temperature"),
    (["classify", "train", "--teacher", "{missing}", "--alpha", "1.5"], "--alpha"),
    (["classify", "train", "--train-fraction", "0"], "--train-fraction"),
    (["classify", "train", "--train-fraction", "1.5"], "--train-fraction"),
    (["classify", "train", "--hidden", "100"], "--hidden"),
    (["classify", "train", "--model", "mlp", "--hidden", "0"], "--hidden"),
    # kldiv distill
    (["distill", "--temperature", "0"], "--temperature"),
    (["distill", "--temperature", "nan"], "--temperature"),
    (["distill", "--alpha", "2"], "--alpha"),
    (["distill", "--train-fraction", "0"], "--train-fraction"),
    (["distill", "--hidden", "0"], "--hidden"),
    (["distill", "--seeds", "0,a"], "--seeds"),
    (["distill", "--seeds", "0,0"], "--seeds"),
    (["distill", "--seeds", "-1"], "--seeds"),
    (["distill", "--teacher-epochs", "0"], "--teacher-epochs"),
    (["distill", "--student-epochs", "0"], "--student-epochs"),
    (["distill", "--batch-size", "0"], "--batch-size"),
    (["distill", "--lr", "0"], "--lr"),
    (["distill", "--dataset", "cifar"], "--dataset"),
    (["distill", "--dataset", "mnist", "--data-dir", "{missing}"], "--data-dir"),
    (["distill", "--teacher", "{missing}"], "--teacher"),
    (["distill", "--teacher", "{run}"], "not of `kldiv classify train`"),
    (["distill", "--out", "{file}"], "--out"),
    (["distill", "--out", "{notes}"], "not of a distillation experiment"),
    (["distill", "--resume", "--overwrite"], "--overwrite"),
    # kldiv mle
    (["mle", "--model", "poisson"], "--model"),
    (["mle", "--steps", "0"], "--steps"),
    (["mle", "--steps", "x"], "--steps"),
    (["mle", "--lr", "0"], "--lr"),
    (["mle", "--lr", "-1"], "--lr"),
    (["mle", "--lr", "nan"], "--lr"),
    (["mle", "--lr", "inf"], "--lr"),
    (["mle", "--samples", "1"], "--samples"),
    (["mle", "--seed", "-1"], "--seed"),
    (["mle", "--out", "{file}"], "--out"),
    # kldiv bnn train
    (["bnn", "train", "--task", "segment"], "--task"),
    (["bnn", "train", "--mode", "dropout"], "--mode"),
    (["bnn", "train", "--prior", "laplace"], "--prior"),
    (["bnn", "train", "--prior-sigma", "0"], "--prior-sigma"),
    (["bnn", "train", "--init-std", "-1"], "--init-std"),
    (["bnn", "train", "--hidden", "400,x"], "--hidden"),
    (["bnn", "train", "--kl-schedule", "sometimes"], "--kl-schedule"),
    (["bnn", "train", "--beta", "-1"], "--beta"),
    (["bnn", "train", "--samples", "0"], "--samples"),
    (["bnn", "train", "--noise-std", "0.1"], "--noise-std"),
    (["bnn", "train", "--task", "regression", "--dataset", "mnist"], "--dataset"),
    (["bnn", "train", "--epochs", "0"], "--epochs"),
    (["bnn", "train", "--dataset", "mnist", "--data-dir", "{missing}"], "--data-dir"),
    # kldiv bnn eval
    (["bnn", "eval", "{missing}"], "{missing}"),
    (["bnn", "eval", "{run}", "--ood", "blur"], "--ood"),
    # kldiv rl ppo|trpo|sac
    (["rl", "ppo", "--n-envs", "0"], "--n-envs"),
    (["rl", "ppo", "--minibatches", "0"], "--minibatches"),
    (["rl", "ppo", "--kl-target", "0.01"], "--kl-target"),
    (["rl", "ppo", "--gamma", "1.5"], "--gamma"),
    (["rl", "ppo", "--hidden", "64,x"], "--hidden"),
    (["rl", "ppo", "--env", "Nope-v0"], "--env"),
    (["rl", "ppo", "--out", "{file}"], "--out"),
    (["rl", "ppo", "--resume", "--overwrite"], "--overwrite"),
    (["rl", "trpo", "--max-kl", "0"], "--max-kl"),
    (["rl", "trpo", "--shrink", "1"], "--shrink"),
    (["rl", "trpo", "--epoch-steps", "0"], "--epoch-steps"),
    (["rl", "sac", "--tau", "0"], "--tau"),
    (["rl", "sac", "--env", "Nope-v0"], "--env"),
    (["rl", "sac", "--target-entropy-scale", "2"], "--target-entropy-scale"),
    # kldiv mi bench
    (["mi", "bench", "--bounds", "tuba"], "--bounds"),
    (["mi", "bench", "--bounds", "smile:0"], "--bounds"),
    (["mi", "bench", "--bounds", "dv:3"], "--bounds"),
    (["mi", "bench", "--bounds", "dv,dv"], "--bounds"),
    (["mi", "bench", "--levels", "2,x"], "--levels"),
    (["mi", "bench", "--levels", "-1"], "--levels"),
    (["mi", "bench", "--dim", "0"], "--dim"),
    (["mi", "bench", "--batch-size", "1"], "--batch-size"),
    (["mi", "bench", "--steps-per-level", "1"], "--steps-per-level"),
    (["mi", "bench", "--critic", "bilinear"], "--critic"),
    (["mi", "bench", "--lr", "0"], "--lr"),
    (["mi", "bench", "--out", "{file}"], "--out"),
    # kldiv vib train|sweep
    (["vib", "train", "--beta", "-1"], "--beta"),
    (["vib", "train", "--z-dim", "0"], "--z-dim"),
    (["vib", "train", "--hidden", "64,x"], "--hidden"),
    (["vib", "train", "--eval-samples", "0"], "--eval-samples"),
    (["vib", "train", "--lr", "0"], "--lr"),
    (["vib", "train", "--dataset", "cifar"], "--dataset"),
    (["vib", "train", "--dataset", "mnist", "--data-dir", "{missing}"], "--data-dir"),
    (["vib", "sweep", "--betas", "1e-3,x"], "--betas"),
    (["vib", "sweep", "--betas", "0.1,0.1"], "--betas"),
    (["vib", "sweep", "--epochs", "0"], "--epochs"),
]


def _fill(args: list[str], places: dict[str, Path]) -> list[str]:
    return [arg.format(**{k: str(v) for k, v in places.items()}) for arg in args]


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.name != "run.lock"}


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_bad_value_is_one_error_line_naming_the_option_and_exit_2(
    places: dict[str, Path], args: list[str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(places["root"])  # default outputs (runs/...) land here, where they are checked
    before = _listing(places["root"])
    result = runner.invoke(app, _fill(args, places))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    assert _fill([expected], places)[0] in lines[0]
    assert "Traceback" not in result.output
    assert _listing(places["root"]) == before  # nothing written, nothing deleted


def test_the_installed_command_prints_one_line_without_a_traceback(tmp_path: Path) -> None:
    src = str(Path(kldiv.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src}
    for args in (["vae", "eval", "--iwae-k", "-5", "--run", str(tmp_path)], ["vae", "train", "--seed", "x"]):
        result = subprocess.run(
            [sys.executable, "-m", "kldiv", *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("error: ")


def test_version_and_a_plain_divergence() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"kldiv {kldiv.__version__}"
    result = runner.invoke(app, ["divergence", "0.4,0.5,0.1", "0.3,0.4,0.3"])
    assert result.exit_code == 0, result.output
    assert "KL(P||Q)  0.116783375771" in result.output  # KL by default; `divergence kl P Q` still works
    assert runner.invoke(app, ["divergence", "kl", "0.4,0.5,0.1", "0.3,0.4,0.3"]).output == result.output
