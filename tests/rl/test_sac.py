"""SAC: the squashed Gaussian's log-density against torch.distributions, the replay buffer, short trainings of both
variants, and exact resume (the replay buffer and the environments' state included)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("gymnasium", reason="the RL trainers need gymnasium (pip install 'kldiv[rl]')")

from kldiv.rl.sac import ReplayBuffer, SACConfig, SquashedGaussianActor, train
from kldiv.runs import OptionError, RunError, RunOptions


def _run(path: Path, **kwargs: object) -> RunOptions:
    return RunOptions(out=path, progress=False, threads=1, **kwargs)  # type: ignore[arg-type]


def _small(**kwargs: object) -> SACConfig:
    base: dict[str, object] = {
        "total_steps": 400,
        "learning_starts": 200,
        "batch_size": 32,
        "hidden": "16,16",
        "log_interval": 50,
        "epoch_steps": 200,
        "figures": False,
    }
    return SACConfig(**{**base, **kwargs})  # type: ignore[arg-type]


def test_squashed_gaussian_log_density_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
    actor = SquashedGaussianActor(3, 2, (8,), low, high).double()
    obs = torch.randn(500, 3, dtype=torch.float64)
    torch.manual_seed(1)
    actions, log_pi = actor.sample(obs)
    mean, std = actor(obs)
    reference = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, std),
        [
            torch.distributions.TanhTransform(),
            torch.distributions.AffineTransform((high + low).double() / 2, (high - low).double() / 2),
        ],
    )
    expected = reference.log_prob(actions).sum(-1)
    # torch's TanhTransform inverts atanh(a): exact only where tanh(u) is not within rounding of +-1
    inner = ((actions - (high + low) / 2) / ((high - low) / 2)).abs().amax(-1) < 1 - 1e-6
    assert inner.sum() > 400
    torch.testing.assert_close(log_pi[inner], expected[inner], rtol=1e-9, atol=1e-9)
    assert bool(((actions >= low) & (actions <= high)).all())


def test_squashed_gaussian_log_density_is_finite_when_tanh_saturates() -> None:
    actor = SquashedGaussianActor(1, 1, (4,), torch.tensor([-1.0]), torch.tensor([1.0]))
    with torch.no_grad():
        actor.net[-1].bias.copy_(torch.tensor([40.0, -5.0]))  # mean 40: tanh(u) rounds to 1 in float32
    actions, log_pi = actor.sample(torch.zeros(64, 1))
    assert bool(torch.isfinite(log_pi).all())
    assert bool((actions == 1.0).all())
    # log N(u) - log(1 - tanh(u)^2) with 1 - tanh^2 = 4 e^{-2u} / (1 + e^{-2u})^2 ~ 4 e^{-80}
    _, std = actor(torch.zeros(1, 1))
    assert float(log_pi.detach().mean()) == pytest.approx(
        -math.log(float(std.detach())) - 0.5 * math.log(2 * math.pi) - 0.5 - math.log(4.0) + 80.0, abs=0.5
    )


def test_replay_buffer_wraps_and_round_trips() -> None:
    buffer = ReplayBuffer(5, 2, (), torch.int64)
    for i in range(7):
        buffer.add(
            torch.full((1, 2), float(i)),
            torch.tensor([i]),
            torch.tensor([float(i)]),
            torch.full((1, 2), i + 0.5),
            torch.tensor([0.0]),
        )
    assert buffer.size == 5
    assert buffer.position == 2
    assert sorted(buffer.rewards.tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]
    copy = ReplayBuffer(5, 2, (), torch.int64)
    copy.load_state_dict(buffer.state_dict())
    for name in ("obs", "next_obs", "actions", "rewards", "terminals"):
        assert torch.equal(getattr(copy, name), getattr(buffer, name)), name
    assert (copy.size, copy.position) == (5, 2)
    with pytest.raises(ValueError, match="replay buffer"):
        ReplayBuffer(5, 3, (), torch.int64).load_state_dict(buffer.state_dict())


@pytest.mark.parametrize("env", ["Pendulum-v1", "CartPole-v1"])
def test_short_training_writes_its_files_and_adapts_alpha(tmp_path: Path, env: str) -> None:
    result = train(_small(env=env, figures=True), _run(tmp_path / "run"))
    for name in ("metrics.csv", "updates.csv", "episodes.csv", "learning_curve.png", "temperature.png"):
        assert (tmp_path / "run" / name).is_file(), name
    alphas = [row["alpha"] for row in result.updates]
    # a row every 50 environment steps once learning has started (the first environment step at 200 updates)
    assert [row["env_step"] for row in result.updates] == list(range(200, 401, 50))
    assert alphas[0] != 1.0
    assert all(math.isfinite(a) and a > 0 for a in alphas)
    assert len(result.metrics) == 2


def test_without_autotune_alpha_stays(tmp_path: Path) -> None:
    result = train(_small(autotune=False, alpha=0.3), _run(tmp_path / "run"))
    assert all(row["alpha"] == pytest.approx(0.3, rel=1e-6) for row in result.updates)


def test_resume_mid_run_is_bit_identical(tmp_path: Path) -> None:
    straight = train(_small(), _run(tmp_path / "straight"))
    train(_small(total_steps=200), _run(tmp_path / "split"))
    resumed = train(_small(), _run(tmp_path / "split", resume=True))
    sa, sb = straight.policy.state_dict(), resumed.policy.state_dict()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    timeless = [{k: v for k, v in row.items() if k not in ("seconds", "threads")} for row in straight.metrics]
    assert timeless == [{k: v for k, v in row.items() if k not in ("seconds", "threads")} for row in resumed.metrics]
    assert straight.updates == resumed.updates
    assert straight.episodes == resumed.episodes
    for name in ("updates.csv", "episodes.csv"):
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "split" / name).read_bytes()


def test_resume_refuses_a_fixed_option(tmp_path: Path) -> None:
    train(_small(total_steps=200), _run(tmp_path / "run"))
    with pytest.raises(RunError, match=re.escape("hidden")):
        train(_small(hidden="8,8"), _run(tmp_path / "run", resume=True))


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"tau": 0.0}, "tau"),
        ({"tau": 1.5}, "tau"),
        ({"alpha": 0.0}, "alpha"),
        ({"target_entropy_scale": 1.5}, "target_entropy_scale"),
        ({"learning_starts": -1}, "learning_starts"),
        ({"buffer_size": 0}, "buffer_size"),
        ({"hidden": "64,x"}, "hidden"),
        ({"autotune": "yes"}, "autotune"),
        ({"env": ""}, "env"),
    ],
)
def test_bad_options_name_themselves(options: dict[str, object], option: str) -> None:
    with pytest.raises(OptionError) as info:
        SACConfig(**options)  # type: ignore[arg-type]
    assert info.value.option == option


def test_an_unbounded_action_box_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gymnasium as gym

    from kldiv.rl import envs

    original = envs.EnvBatch.__init__

    def unbounded(self: envs.EnvBatch, env_id: str, n_envs: int, seed: int) -> None:
        original(self, env_id, n_envs, seed)
        self.action_high = torch.full_like(self.action_high, math.inf)  # type: ignore[arg-type]

    monkeypatch.setattr(envs.EnvBatch, "__init__", unbounded)
    assert gym.spec("Pendulum-v1") is not None
    with pytest.raises(OptionError, match="unbounded"):
        train(_small(), _run(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
