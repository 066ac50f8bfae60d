"""The VAE trainer: exact resume (straight vs interrupted, also after SIGKILL), NaN stop, 2-process DDP, the CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kldiv.cli import app
from kldiv.data import ImageDataset, load_digits
from kldiv.runs import RunOptions, TrainingDivergedError, load_checkpoint, read_run
from kldiv.vae import train as train_module
from kldiv.vae.model import build_model
from kldiv.vae.train import TrainConfig, load_trained, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    data = load_digits()
    return replace(data, train=data.train[:600], train_labels=data.train_labels[:600])


def _config(**kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "dataset": "digits",
        "epochs": 4,
        "batch_size": 64,
        "schedule": "linear:1",
        "figures": False,
        "binarize": True,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _run(out: Path, **kw: object) -> RunOptions:
    return RunOptions(out=out, progress=False, **kw)  # type: ignore[arg-type]


def _timeless(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "threads")} for r in rows]


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs: max |diff| {float((a[key] - b[key]).abs().max())}"


def test_resume_after_two_epochs_is_bit_identical(tmp_path: Path, digits: ImageDataset) -> None:
    straight = train(_config(), _run(tmp_path / "straight"), data=digits)
    train(_config(epochs=2), _run(tmp_path / "split"), data=digits)
    resumed = train(_config(epochs=4), _run(tmp_path / "split", resume=True), data=digits)
    _assert_identical(_params(straight.model), _params(resumed.model))
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3, 4]
    assert _timeless(resumed.metrics) == _timeless(straight.metrics)
    with open(tmp_path / "split" / "metrics.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2, 3, 4]


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_the_thread_count_does_not_change_the_training(tmp_path: Path, digits: ImageDataset, model: str) -> None:
    """The automatic thread choice may switch between 1 and 2 threads mid-epoch: the weights must not notice."""
    runs = {
        threads: train(_config(epochs=1, model=model), _run(tmp_path / f"t{threads}", threads=threads), data=digits)
        for threads in (1, 2)
    }
    _assert_identical(_params(runs[1].model), _params(runs[2].model))
    assert _timeless(runs[1].metrics) == _timeless(runs[2].metrics)
    assert [r["threads"] for r in runs[1].metrics] == [1]
    assert [r["threads"] for r in runs[2].metrics] == [2]


def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical_metrics_included(
    tmp_path: Path, digits: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = train(_config(epochs=3), _run(tmp_path / "straight"), data=digits)
    calls = {"n": 0}
    real_loss = train_module.vae_loss

    def crashing_loss(*args: object, **kw: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 23:  # in the middle of epoch 3 (10 steps per epoch), after the checkpoint of step 21
            raise KeyboardInterrupt
        return real_loss(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "vae_loss", crashing_loss)
    with pytest.raises(KeyboardInterrupt):
        train(_config(epochs=3), _run(tmp_path / "crash", checkpoint_steps=3), data=digits)
    monkeypatch.setattr(train_module, "vae_loss", real_loss)
    state = load_checkpoint(tmp_path / "crash", model=build_model("mlp", (1, 8, 8)))
    loop = state["loop"]
    assert isinstance(loop, dict)
    assert (loop["epoch"], loop["batch"], loop["step"]) == (2, 1, 21)
    resumed = train(_config(epochs=3), _run(tmp_path / "crash", checkpoint_steps=3, resume=True), data=digits)
    _assert_identical(_params(straight.model), _params(resumed.model))
    # the running sums of the interrupted epoch were in the checkpoint: its train_loss, reconstruction and KL match
    assert _timeless(resumed.metrics) == _timeless(straight.metrics)


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    args = ["--dataset", "digits", "--epochs", "6", "--batch-size", "32", "--checkpoint-steps", "2", "--no-progress"]
    args += ["--threads", "1"]  # one core each: the test suite's other worker keeps the other
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "kldiv", "vae", "train", *args, "--out", str(killed)], env=env)
    deadline = time.monotonic() + 60
    while not (killed / "last.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.7)  # well into training, between or during checkpoint writes
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    _, partial = load_trained(killed)  # the last checkpoint is complete and loads
    state = load_checkpoint(killed, model=partial)
    assert state["loop"]["step"] > 0  # type: ignore[index]
    resumed = subprocess.run(
        [sys.executable, "-m", "kldiv", "vae", "train", *args, "--out", str(killed), "--resume"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    straight = subprocess.run(
        [sys.executable, "-m", "kldiv", "vae", "train", *args, "--out", str(tmp_path / "straight")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert straight.returncode == 0, straight.stderr
    _, a = load_trained(killed)
    _, b = load_trained(tmp_path / "straight")
    _assert_identical(_params(a), _params(b))


def test_nan_loss_stops_with_a_clear_message_naming_the_checkpoint_it_keeps(
    tmp_path: Path, digits: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real_loss = train_module.vae_loss

    def nan_loss(*args: object, **kw: object) -> torch.Tensor:
        calls["n"] += 1
        loss = real_loss(*args, **kw)  # type: ignore[arg-type]
        return loss * torch.nan if calls["n"] == 15 else loss

    monkeypatch.setattr(train_module, "vae_loss", nan_loss)
    with pytest.raises(
        TrainingDivergedError, match=r"loss is nan at epoch 2, step 14 .*last\.json: epoch 1 completed, step 10\)"
    ):
        train(_config(epochs=3), _run(tmp_path / "run"), data=digits)
    model = build_model("mlp", (1, 8, 8))
    state = load_checkpoint(tmp_path / "run", model=model)
    assert state["loop"]["step"] == 10  # type: ignore[index]
    for value in model.state_dict().values():
        assert torch.isfinite(value).all()


def test_two_process_ddp_matches_single_process_training(tmp_path: Path) -> None:
    args = ["--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--no-progress", "--binarize"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "kldiv",
            "vae",
            "train",
            *args,
            "--out",
            str(tmp_path / "ddp"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("test: -ELBO") == 1, ddp.stdout  # only rank 0 prints
    single = subprocess.run(
        [sys.executable, "-m", "kldiv", "vae", "train", *args, "--out", str(tmp_path / "single")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    _, a = load_trained(tmp_path / "ddp")
    _, b = load_trained(tmp_path / "single")
    pa, pb = a.state_dict(), b.state_dict()
    assert pa.keys() == pb.keys()
    for key in pa:
        # same data order and noise: the averaged gradients agree up to float rounding in the all-reduce
        torch.testing.assert_close(pa[key], pb[key], rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


def test_cli_train_eval_sample_sweep(tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        ["vae", "train", "--dataset", "digits", "--epochs", "2", "--z-dim", "2", "--no-progress", "--out", str(run)],
    )
    assert result.exit_code == 0, result.output
    assert "test: -ELBO" in result.output
    for name in ("metrics.csv", "run.json", "last.json", "samples.png", "reconstructions.png", "curves.png"):
        assert (run / name).is_file(), name
    assert (run / "latent.png").is_file()  # z_dim = 2
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    result = runner.invoke(app, ["vae", "eval", "--run", str(run), "--iwae-k", "20"])
    assert result.exit_code == 0, result.output
    ev = json.loads((run / "eval.json").read_text())
    assert ev["iwae_nll"] <= -ev["elbo"] + 0.5  # IWAE_20 is tighter than the ELBO (up to Monte Carlo noise)
    result = runner.invoke(app, ["vae", "sample", "--run", str(run), "-n", "9", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").stat().st_size > 0
    sweep = tmp_path / "sweep"
    result = runner.invoke(
        app, ["vae", "sweep", "--beta", "0.5", "4", "--epochs", "2", "--no-progress", "--out", str(sweep)]
    )
    assert result.exit_code == 0, result.output
    with open(sweep / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["beta"]) for r in table] == [0.5, 4.0]
    assert float(table[1]["kl"]) < float(table[0]["kl"])  # a larger beta buys a smaller KL
    assert (sweep / "tradeoff.png").is_file()


def test_cli_trains_the_conv_model_with_a_gaussian_decoder_free_bits_and_a_cyclical_schedule(tmp_path: Path) -> None:
    run = tmp_path / "conv"
    options = ["--model", "conv", "--likelihood", "gaussian", "--free-bits", "0.1", "--schedule", "cyclical:2:0.5"]
    result = CliRunner().invoke(
        app, ["vae", "train", *options, "--epochs", "2", "--val-size", "100", "--no-progress", "--out", str(run)]
    )
    assert result.exit_code == 0, result.output
    config, model = load_trained(run)
    assert (config.model, config.likelihood, config.free_bits) == ("conv", "gaussian", 0.1)
    assert model.log_sigma is not None
    with open(run / "metrics.csv") as f:
        betas = [float(r["beta"]) for r in csv.DictReader(f)]
    assert betas[0] == 1.0  # the end of the first cycle's plateau


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["vae", "train", "--epochs", "0", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "--epochs: must be an integer >= 1, got 0" in result.output
    result = runner.invoke(app, ["vae", "eval", "--run", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "holds no kldiv run" in result.output
    result = runner.invoke(
        app, ["vae", "train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 2
    assert "--data-dir:" in result.output
    assert not (tmp_path / "m").exists()  # a failed start leaves no directory


def test_cli_resume_takes_the_runs_options_and_refuses_a_change(tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["vae", "train", "--epochs", "1", "--z-dim", "3", "--batch-size", "100", "--no-progress", "--out", str(run)]
    assert runner.invoke(app, args).exit_code == 0
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2
    assert "already holds a run" in refused.output
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != "run.lock"}
    changed = runner.invoke(app, ["vae", "train", "--resume", "--out", str(run), "--lr", "0.01", "--epochs", "2"])
    assert changed.exit_code == 2
    assert "--lr 0.001 -> 0.01" in changed.output
    assert "--allow-change lr" in changed.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != "run.lock"} == before
    # options not given are the run's own (z_dim 3, batch size 100): a resume need not repeat them
    resumed = runner.invoke(app, ["vae", "train", "--resume", "--epochs", "2", "--no-progress", "--out", str(run)])
    assert resumed.exit_code == 0, resumed.output
    assert read_run(run).config["z_dim"] == 3
    allowed = ["vae", "train", "--resume", "--epochs", "3", "--lr", "0.01", "--allow-change", "lr", "--out", str(run)]
    assert runner.invoke(app, [*allowed, "--no-progress"]).exit_code == 0
    assert read_run(run).history[-1]["changes"]["lr"] == {"from": 0.001, "to": 0.01}
    (run / "eval.json").write_text("{}")
    overwritten = runner.invoke(app, [*args, "--overwrite"])
    assert overwritten.exit_code == 0, overwritten.output
    assert not (run / "eval.json").exists()
    assert [e["event"] for e in read_run(run).history] == ["start"]


VAE_TRAIN = [sys.executable, "-m", "kldiv", "vae", "train"]


def test_a_second_training_process_in_the_same_directory_is_refused_naming_the_first(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    run = tmp_path / "run"
    first = subprocess.Popen(
        [*VAE_TRAIN, "--epochs", "10000", "--no-progress", "--threads", "1", "--out", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (run / "last.json").exists() and time.monotonic() < deadline:  # well into training
            time.sleep(0.05)
        for extra in ([], ["--overwrite"], ["--resume"]):
            second = subprocess.run(
                [sys.executable, "-m", "kldiv", "vae", "train", "--out", str(run), *extra],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert second.returncode == 2, second.stderr
            assert f"is in use by pid {first.pid} on" in second.stderr, second.stderr
            assert second.stderr.count("\n") == 1
        assert first.poll() is None  # the first writer trains on, its files untouched
    finally:
        first.kill()
        first.wait()
    replaced = subprocess.run(  # the lock died with its holder
        [sys.executable, "-m", "kldiv", "vae", "train", "--out", str(run), "--overwrite", "--epochs", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replaced.returncode == 0, replaced.stderr
