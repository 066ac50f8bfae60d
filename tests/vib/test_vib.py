"""The variational information bottleneck: the objective against torch.distributions, the encoder's scale where
softplus underflows, training, exact resume, the rate falling with beta, and the commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kldiv.cli import app
from kldiv.data import ImageDataset, load_digits
from kldiv.runs import RunOptions
from kldiv.vib import VIBClassifier, vib_terms
from kldiv.vib.train import TrainConfig, load_trained, train

runner = CliRunner()


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits()


def _config(**kwargs: object) -> TrainConfig:
    base: dict[str, object] = {"hidden": "32", "z_dim": 8, "epochs": 2, "lr": 1e-3, "figures": False}
    return TrainConfig(**{**base, **kwargs})  # type: ignore[arg-type]


def _run(path: Path, **kwargs: object) -> RunOptions:
    return RunOptions(out=path, progress=False, threads=1, **kwargs)  # type: ignore[arg-type]


def test_the_objective_is_cross_entropy_plus_beta_times_the_kl_to_the_prior() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 10, dtype=torch.float64)
    labels = torch.randint(10, (5,))
    mu, log_sigma = torch.randn(5, 4, dtype=torch.float64), 0.3 * torch.randn(5, 4, dtype=torch.float64)
    terms = vib_terms(logits, labels, mu, log_sigma, beta=0.25)
    normal = torch.distributions.Normal(mu, log_sigma.exp())
    prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    rate = torch.distributions.kl_divergence(normal, prior).sum(-1).mean()
    nll = torch.stack([torch.nn.functional.cross_entropy(logits[s], labels) for s in range(3)]).mean()
    torch.testing.assert_close(terms.rate, rate)
    torch.testing.assert_close(terms.nll, nll)
    torch.testing.assert_close(terms.loss, nll + 0.25 * rate)


def test_the_scale_is_exact_and_differentiable_where_softplus_underflows() -> None:
    model = VIBClassifier(4, (8,), z_dim=2)
    with torch.no_grad():
        model.encoder[-1].weight.zero_()
        model.encoder[-1].bias.copy_(torch.tensor([0.0, 0.0, -100.0, 3.0]))
    x = torch.zeros(1, 4)
    mu, log_sigma = model.encode(x)
    assert float(log_sigma[0, 0].detach()) == pytest.approx(-105.0)
    expected = torch.log(torch.nn.functional.softplus(torch.tensor(-2.0)))  # a = 3: softplus(3 - 5)
    assert float(log_sigma[0, 1].detach()) == pytest.approx(float(expected))
    logits, mu, log_sigma = model(x, 2)
    terms = vib_terms(logits, torch.tensor([1]), mu, log_sigma, beta=1.0)
    terms.loss.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


def test_evaluation_averages_the_softmax_over_codes_and_leaves_the_global_generator_alone(digits: ImageDataset) -> None:
    from kldiv.vib.train import evaluate

    torch.manual_seed(5)
    model = VIBClassifier(64, (16,), z_dim=4)
    with torch.no_grad():
        model.encoder[-1].bias[4:].fill_(8.0)  # sigma = softplus(3): codes that really vary
    x, y = digits.test[:50], digits.test_labels[:50]
    state = torch.get_rng_state()
    metrics = evaluate(model, x, y, samples=7, seed=11, chunk=20)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(11)  # the same codes, by hand: chunks of 20, 7 codes each
    probs = []
    with torch.no_grad():
        for start in range(0, 50, 20):
            logits, _, _ = model(x[start : start + 20], 7)
            probs.append(torch.softmax(logits.double(), -1).mean(0))
    p = torch.cat(probs)
    assert metrics.accuracy == pytest.approx(float((p.argmax(-1) == y).double().mean()))
    assert metrics.nll == pytest.approx(float(-p.gather(1, y[:, None]).log().mean()), rel=1e-5)


def test_training_writes_metrics_and_a_larger_beta_lowers_the_rate(tmp_path: Path, digits: ImageDataset) -> None:
    low = train(_config(beta=1e-4, epochs=8, lr=3e-3), _run(tmp_path / "low"), data=digits)
    high = train(_config(beta=1.0, epochs=8, lr=3e-3), _run(tmp_path / "high"), data=digits)
    assert {"train_loss", "train_nll", "train_rate", "test_accuracy", "test_nll", "test_rate"} <= set(low.metrics[0])
    assert high.test.rate < 0.5 * low.test.rate
    assert low.test.accuracy > 0.8
    config, model = load_trained(tmp_path / "low")
    assert config.beta == 1e-4
    sa, sb = model.state_dict(), low.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_is_bit_identical(tmp_path: Path, digits: ImageDataset) -> None:
    straight = train(_config(epochs=3), _run(tmp_path / "straight"), data=digits)
    train(_config(epochs=1), _run(tmp_path / "split"), data=digits)
    resumed = train(_config(epochs=3), _run(tmp_path / "split", resume=True), data=digits)
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    timeless = [{k: v for k, v in r.items() if k not in ("seconds", "threads")} for r in straight.metrics]
    assert timeless == [{k: v for k, v in r.items() if k not in ("seconds", "threads")} for r in resumed.metrics]
    assert straight.test == resumed.test


def test_the_sweep_command_trains_one_run_per_beta(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = ["vib", "sweep", "--betas", "1e-3,0.5", "--hidden", "16", "--z-dim", "4", "--epochs", "1"]
    result = runner.invoke(app, [*args, "--lr", "1e-3", "--no-progress", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "sweep.json").read_text())
    assert [row["beta"] for row in summary["runs"]] == [1e-3, 0.5]
    assert (out / "sweep.png").is_file()
    assert (out / "beta-0.001" / "metrics.csv").is_file()
    again = runner.invoke(app, [*args, "--no-progress", "--out", str(out)])
    assert again.exit_code == 2  # the runs exist: --resume or --overwrite
    assert again.output.startswith("error: ")
