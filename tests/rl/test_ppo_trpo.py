"""PPO and TRPO end to end on tiny budgets: the files of a run, the logged KL against an independent measurement,
TRPO's trust region on every update, PPO's early stopping and adaptive KL coefficient, a Gaussian policy, exact
resume after an interruption, the run directory's refusals, and the options' validation."""

from __future__ import annotations

import copy
import csv
import itertools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributions import Categorical, Distribution, Independent, Normal, kl_divergence

import kldiv.rl.ppo
import kldiv.rl.trpo
from kldiv.rl.agents import GaussianPolicy, Policy
from kldiv.rl.envs import EnvBatch
from kldiv.rl.ppo import PPOConfig
from kldiv.rl.trpo import TRPOConfig, TrustRegionStep
from kldiv.runs import OptionError, RunError, RunOptions, read_run
from kldiv.runs.checkpoint import read_checkpoint

pytest.importorskip("gymnasium", reason="the RL trainers need gymnasium (pip install 'kldiv[rl]')")

SMALL = {"n_envs": 4, "n_steps": 64, "hidden": "16", "epoch_steps": 512, "figures": False}  # 2 updates of 256 steps


def _ppo(**kw: Any) -> PPOConfig:
    return PPOConfig(**{**SMALL, "total_steps": 1024, "update_epochs": 2, "minibatches": 2, **kw})


def _trpo(**kw: Any) -> TRPOConfig:
    return TRPOConfig(**{**SMALL, "total_steps": 1024, "value_epochs": 2, "value_minibatch": 128, **kw})


def _run(out: Path, **kw: Any) -> RunOptions:
    return RunOptions(out=out, progress=False, threads=1, **kw)


def _read_csv(path: Path) -> list[dict[str, float]]:
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _timeless(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "threads")} for r in rows]


def _same_rows(a: list[dict[str, float]], b: list[dict[str, float]]) -> bool:
    """Equal rows, NaN equal to NaN (a score before the first finished episode is NaN)."""
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(x[k] == y[k] or (math.isnan(x[k]) and math.isnan(y[k])) for k in x)
        for x, y in zip(a, b, strict=True)
    )


def _distribution(policy: Policy, obs: torch.Tensor) -> Distribution:
    """The policy's action distributions at ``obs``, computed in float64."""
    with torch.no_grad():
        params = copy.deepcopy(policy).double()(obs.double())
    if isinstance(policy, GaussianPolicy):
        return Independent(Normal(params[0], params[1]), 1)
    return Categorical(logits=params)


class _Snapshots:
    """Wraps ``collect_rollout`` in a trainer's module: keeps a copy of the policy each rollout acted with and the
    rollout's observations."""

    def __init__(self, module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.policies: list[Policy] = []
        self.observations: list[torch.Tensor] = []
        collect = module.collect_rollout

        def wrapper(envs: EnvBatch, policy: Policy, *args: Any, **kw: Any) -> Any:
            self.policies.append(copy.deepcopy(policy))
            rollout = collect(envs, policy, *args, **kw)
            self.observations.append(rollout.observations)
            return rollout

        monkeypatch.setattr(module, "collect_rollout", wrapper)

    def kl_between(self, i: int, later: Policy) -> float:
        """The exact mean KL(pi_i || later) over rollout ``i``'s observations."""
        obs = self.observations[i]
        return float(kl_divergence(_distribution(self.policies[i], obs), _distribution(later, obs)).mean())


# ------------------------------------------------------------------------------------------------------ PPO


def test_ppo_writes_its_run_files_and_logs_the_kl_of_each_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshots = _Snapshots(kldiv.rl.ppo, monkeypatch)
    result = kldiv.rl.ppo.train(_ppo(figures=True, lr=3e-3), _run(tmp_path / "ppo"))
    out = result.out_dir
    for name in ("learning_curve.png", "kl.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert _same_rows(_read_csv(out / "updates.csv"), result.updates)
    metrics = _read_csv(out / "metrics.csv")
    assert _timeless(metrics) == _timeless(result.metrics)
    episodes = _read_csv(out / "episodes.csv")
    assert [r["step"] for r in episodes] == result.episode_steps
    assert [r["return"] for r in episodes] == result.episode_returns
    assert all(r["return"] == r["length"] for r in episodes)  # CartPole: +1 per step
    rows = result.updates
    assert [r["update"] for r in rows] == [1, 2, 3, 4]
    assert [r["env_step"] for r in rows] == [256, 512, 768, 1024]
    assert [r["lr"] for r in rows] == pytest.approx([3e-3 * (1 - u / 4) for u in range(4)], rel=1e-12)
    # the logged KL of the last update, measured again in float64 from the policy before it and the final policy
    # (the trainer measures in float32: a relative error of about 1e-6)
    assert rows[-1]["kl"] == pytest.approx(snapshots.kl_between(3, result.policy), rel=1e-5)
    assert rows[-1]["kl"] > 0
    for epoch, row in enumerate(metrics):
        epoch_rows = rows[2 * epoch : 2 * epoch + 2]
        assert row["kl_max"] == max(r["kl"] for r in epoch_rows)
        assert row["kl"] == pytest.approx(sum(r["kl"] for r in epoch_rows) / 2, rel=1e-12)
        assert row["env_step"] == 512 * (epoch + 1)


def test_ppo_stops_an_update_early_once_the_k3_estimate_passes_target_kl(tmp_path: Path) -> None:
    minibatch_steps = 4 * 2  # update_epochs * minibatches
    stopped = kldiv.rl.ppo.train(_ppo(update_epochs=4, target_kl=1e-6, lr=3e-3), _run(tmp_path / "tiny"))
    for row in stopped.updates:
        assert row["stopped_early"] == 1.0
        assert 1 <= row["minibatch_steps"] < minibatch_steps
        assert row["approx_kl_max"] <= 1e-6  # only minibatches below the target were stepped on
    assert [r["stopped_early"] for r in stopped.metrics] == [1.0, 1.0]
    free = kldiv.rl.ppo.train(_ppo(update_epochs=4, target_kl=None, lr=3e-3), _run(tmp_path / "free"))
    assert all(r["stopped_early"] == 0.0 and r["minibatch_steps"] == minibatch_steps for r in free.updates)


def test_ppo_adaptive_kl_coefficient_follows_the_controller_formula_from_the_logged_kl(tmp_path: Path) -> None:
    target, horizon, batch = 0.001, 2000.0, 256
    config = _ppo(total_steps=2048, kl_coef=0.5, kl_target=target, kl_horizon=horizon, target_kl=None, lr=3e-3)
    rows = kldiv.rl.ppo.train(config, _run(tmp_path / "adaptive")).updates
    assert rows[0]["kl_coef"] == 0.5
    for before, after in itertools.pairwise(rows):
        error = min(max(before["kl"] / target - 1, -0.2), 0.2)
        assert after["kl_coef"] == pytest.approx(before["kl_coef"] * (1 + error * batch / horizon), rel=1e-12)
    assert len({r["kl_coef"] for r in rows}) == len(rows)  # it moved at every update
    fixed = kldiv.rl.ppo.train(_ppo(kl_coef=0.3, target_kl=None), _run(tmp_path / "fixed")).updates
    assert [r["kl_coef"] for r in fixed] == [0.3] * 4


def test_ppo_trains_a_gaussian_policy_on_pendulum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshots = _Snapshots(kldiv.rl.ppo, monkeypatch)
    config = _ppo(env="Pendulum-v1", n_envs=2, n_steps=128, total_steps=512, epoch_steps=512, lr=3e-3)
    result = kldiv.rl.ppo.train(config, _run(tmp_path / "pendulum"))
    assert isinstance(result.policy, GaussianPolicy)
    assert not torch.equal(result.policy.log_std.detach(), torch.zeros(1))  # the std is learned
    episodes = _read_csv(result.out_dir / "episodes.csv")
    assert [(r["step"], r["length"]) for r in episodes] == [(400, 200)] * 2  # the time limit, in both environments
    assert all(math.isfinite(r["kl"]) and math.isfinite(r["value_loss"]) for r in result.updates)
    assert result.updates[-1]["kl"] == pytest.approx(snapshots.kl_between(1, result.policy), rel=1e-5)


def test_ppo_takes_the_requested_number_of_minibatches_per_pass(tmp_path: Path) -> None:
    config = _ppo(n_envs=1, n_steps=6, total_steps=6, epoch_steps=6, update_epochs=1, minibatches=4, target_kl=None)
    (row,) = kldiv.rl.ppo.train(config, _run(tmp_path / "run")).updates
    assert row["minibatch_steps"] == 4


# ----------------------------------------------------------------------------------------------------- TRPO


def test_trpo_writes_its_run_files_and_every_accepted_step_is_within_max_kl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[tuple[TrustRegionStep, bool, float]] = []  # the step, whether the policy moved, the KL it moved
    natural_gradient_step = kldiv.rl.trpo.natural_gradient_step

    def checked(policy: Policy, obs: torch.Tensor, *args: Any) -> TrustRegionStep:
        before = copy.deepcopy(policy)
        step = natural_gradient_step(policy, obs, *args)
        moved = any(not torch.equal(a, b) for a, b in zip(before.parameters(), policy.parameters(), strict=True))
        kl = float(kl_divergence(_distribution(before, obs), _distribution(policy, obs)).mean())
        steps.append((step, moved, kl))
        return step

    monkeypatch.setattr(kldiv.rl.trpo, "natural_gradient_step", checked)
    config = _trpo(figures=True, total_steps=2048, epoch_steps=1024)
    result = kldiv.rl.trpo.train(config, _run(tmp_path / "trpo"))
    for name in ("learning_curve.png", "kl.png"):
        assert (result.out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert _same_rows(_read_csv(result.out_dir / "updates.csv"), result.updates)
    assert len(_read_csv(result.out_dir / "metrics.csv")) == 2
    assert len(_read_csv(result.out_dir / "episodes.csv")) == len(result.episode_steps) > 0
    assert len(steps) == len(result.updates) == 8
    for row, (step, moved, kl) in zip(result.updates, steps, strict=True):
        assert row["accepted"] == float(step.accepted)
        assert row["kl"] == step.kl
        if step.accepted:
            assert moved
            assert step.kl == pytest.approx(kl, rel=1e-5)
            assert step.kl <= config.max_kl
            assert kl <= config.max_kl * (1 + 1e-5)
            assert row["surrogate_improvement"] > 0
        else:
            assert not moved
            assert (row["kl"], row["backtracks"]) == (0.0, config.backtracks)
    assert sum(step.accepted for step, _, _ in steps) >= 6


# ------------------------------------------------------------------------------------------------- resume


TRAINERS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "ppo": (lambda **kw: _ppo(kl_coef=0.2, kl_target=0.01, kl_horizon=2000.0, **kw), kldiv.rl.ppo.train),
    "trpo": (_trpo, kldiv.rl.trpo.train),
}


class _CrashError(Exception):
    """A crash in the middle of a rollout (the process dies there; the run directory keeps what was saved)."""


@pytest.mark.parametrize("algorithm", sorted(TRAINERS))
def test_a_run_interrupted_mid_rollout_resumes_to_the_same_weights_and_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    make, train = TRAINERS[algorithm]
    config = make(total_steps=1536, epoch_steps=768)  # 6 updates, 3 per epoch
    straight = train(config, _run(tmp_path / "straight"))
    step = EnvBatch.step
    calls = 0

    def failing(self: EnvBatch, actions: torch.Tensor) -> Any:
        nonlocal calls
        calls += 1
        if calls == 4 * 64 + 10:  # in the fifth rollout, after the checkpoint of update 4 (mid-epoch 2)
            raise _CrashError
        return step(self, actions)

    monkeypatch.setattr(EnvBatch, "step", failing)
    with pytest.raises(_CrashError):
        train(config, _run(tmp_path / "cut", checkpoint_steps=1))
    monkeypatch.undo()
    resumed = train(config, _run(tmp_path / "cut", resume=True, checkpoint_steps=1))
    (event,) = [e for e in read_run(tmp_path / "cut").history if e["event"] == "resume"]
    assert event["at"] == {"epoch": 1, "batch": 1, "step": 4}  # mid-epoch: the running sums were saved too
    a, b = read_checkpoint(tmp_path / "straight").weights, read_checkpoint(tmp_path / "cut").weights
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _timeless(resumed.metrics) == _timeless(straight.metrics)
    for name in ("updates.csv", "episodes.csv"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert _same_rows(resumed.updates, straight.updates)
    assert resumed.episode_returns == straight.episode_returns


@pytest.mark.parametrize("algorithm", ["ppo-constant-lr", "trpo"])
def test_a_run_made_longer_by_resume_equals_one_trained_that_long(tmp_path: Path, algorithm: str) -> None:
    if algorithm == "trpo":
        make, train = TRAINERS["trpo"]
    else:
        make, train = (lambda **kw: _ppo(anneal_lr=False, **kw)), kldiv.rl.ppo.train
    straight = train(make(total_steps=1024), _run(tmp_path / "straight"))
    train(make(total_steps=512), _run(tmp_path / "grown"))
    grown = train(make(total_steps=1024), _run(tmp_path / "grown", resume=True))
    a, b = read_checkpoint(tmp_path / "straight").weights, read_checkpoint(tmp_path / "grown").weights
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _timeless(grown.metrics) == _timeless(straight.metrics)
    assert _same_rows(grown.updates, straight.updates)
    for name in ("updates.csv", "episodes.csv"):
        assert (tmp_path / "grown" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_a_resume_refuses_a_changed_fixed_option_and_a_new_run_refuses_an_existing_run(tmp_path: Path) -> None:
    config = _ppo(total_steps=256, epoch_steps=256)
    kldiv.rl.ppo.train(config, _run(tmp_path / "run"))
    before = (tmp_path / "run" / "updates.csv").read_bytes()
    with pytest.raises(RunError, match=re.escape("n_envs 4 -> 2")):
        kldiv.rl.ppo.train(_ppo(total_steps=256, epoch_steps=256, n_envs=2), _run(tmp_path / "run", resume=True))
    with pytest.raises(RunError, match="already holds a run"):
        kldiv.rl.ppo.train(config, _run(tmp_path / "run"))
    with pytest.raises(RunError, match=re.escape("total_steps 256 -> 512")):  # the annealing spans the run
        kldiv.rl.ppo.train(_ppo(total_steps=512, epoch_steps=256), _run(tmp_path / "run", resume=True))
    assert (tmp_path / "run" / "updates.csv").read_bytes() == before
    kldiv.rl.trpo.train(_trpo(total_steps=256, epoch_steps=256), _run(tmp_path / "trpo"))
    with pytest.raises(RunError, match=re.escape("max_kl 0.01 -> 0.02")):  # neither fixed nor volatile
        kldiv.rl.trpo.train(_trpo(total_steps=256, epoch_steps=256, max_kl=0.02), _run(tmp_path / "trpo", resume=True))


# -------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"env": ""}, "env"),
        ({"env": 3}, "env"),
        ({"total_steps": 0}, "total_steps"),
        ({"n_envs": 0}, "n_envs"),
        ({"n_steps": 1.5}, "n_steps"),
        ({"update_epochs": 0}, "update_epochs"),
        ({"minibatches": 0}, "minibatches"),
        ({"minibatches": 257, "n_envs": 4, "n_steps": 64}, "minibatches"),
        ({"lr": 0.0}, "lr"),
        ({"anneal_lr": "yes"}, "anneal_lr"),
        ({"gamma": 1.5}, "gamma"),
        ({"gae_lambda": -0.1}, "gae_lambda"),
        ({"clip_coef": -0.2}, "clip_coef"),
        ({"kl_coef": math.nan}, "kl_coef"),
        ({"kl_target": 0.01}, "kl_target"),  # without a kl_coef to adapt
        ({"kl_target": 0.0, "kl_coef": 0.1}, "kl_target"),
        ({"kl_target": 0.01, "kl_coef": 0.1, "kl_horizon": 100.0}, "kl_horizon"),
        ({"kl_horizon": 0.0}, "kl_horizon"),
        ({"target_kl": 0.0}, "target_kl"),
        ({"ent_coef": -1.0}, "ent_coef"),
        ({"vf_coef": math.inf}, "vf_coef"),
        ({"max_grad_norm": -0.5}, "max_grad_norm"),
        ({"hidden": "a,b"}, "hidden"),
        ({"hidden": "64,0"}, "hidden"),
        ({"epoch_steps": 0}, "epoch_steps"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
        ({"figures": 1}, "figures"),
    ],
)
def test_a_bad_ppo_option_raises_option_error_naming_it(options: dict[str, Any], option: str) -> None:
    with pytest.raises(OptionError) as info:
        PPOConfig(**options)
    assert info.value.option == option


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"env": None}, "env"),
        ({"total_steps": -5}, "total_steps"),
        ({"n_envs": 0}, "n_envs"),
        ({"n_steps": 0}, "n_steps"),
        ({"max_kl": 0.0}, "max_kl"),
        ({"damping": -0.1}, "damping"),
        ({"cg_iterations": 0}, "cg_iterations"),
        ({"backtracks": 0}, "backtracks"),
        ({"shrink": 1.0}, "shrink"),
        ({"shrink": 0.0}, "shrink"),
        ({"gamma": -0.5}, "gamma"),
        ({"gae_lambda": 2.0}, "gae_lambda"),
        ({"value_lr": 0.0}, "value_lr"),
        ({"value_epochs": 0}, "value_epochs"),
        ({"value_minibatch": 0}, "value_minibatch"),
        ({"hidden": "a,b"}, "hidden"),
        ({"epoch_steps": -1}, "epoch_steps"),
        ({"seed": 1.0}, "seed"),
        ({"figures": "no"}, "figures"),
    ],
)
def test_a_bad_trpo_option_raises_option_error_naming_it(options: dict[str, Any], option: str) -> None:
    with pytest.raises(OptionError) as info:
        TRPOConfig(**options)
    assert info.value.option == option


def test_the_defaults_are_valid_and_hidden_is_normalized() -> None:
    assert PPOConfig().hidden == TRPOConfig().hidden == "64,64"
    assert PPOConfig(hidden=" 32, 16 ").hidden == "32,16"
    config = PPOConfig(total_steps=1000, n_envs=2, n_steps=100, epoch_steps=300)
    # an epoch: 300 steps rounded up to 2 updates of 200; the run: 1000 steps rounded up to 3 epochs of 400
    assert (config.batch, config.updates_per_epoch, config.epochs) == (200, 2, 3)
    trpo = TRPOConfig(total_steps=512, n_envs=4, n_steps=64, epoch_steps=512)
    assert (trpo.updates_per_epoch, trpo.epochs) == (2, 1)
