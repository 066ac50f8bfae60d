"""The run layer: directory rules (no silent overwrite, resume only as it was), the lock, exact resume of weights and
metrics, the NaN stop, failed starts, a full disk, and malformed checkpoints."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from kldiv.runs import (
    OptionError,
    Run,
    RunError,
    RunLockedError,
    RunOptions,
    RunWriteError,
    TrainingDivergedError,
    TrainingLoop,
    read_run,
)
from kldiv.runs.checkpoint import read_checkpoint

COMMAND = "toy train"


@dataclass(frozen=True)
class Toy:
    """A tiny training run: noisy linear regression with dropout (so the global RNG matters)."""

    epochs: int = 3
    batch_size: int = 8
    lr: float = 0.01
    seed: int = 0
    verbose: bool = False


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(50, 4, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(50, generator=g)


def train_toy(
    config: Toy,
    options: RunOptions,
    *,
    fail_at_step: int | None = None,
    nan_at_step: int | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    x, y = _data()
    torch.manual_seed(config.seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    noise = torch.Generator().manual_seed(config.seed + 1)
    with Run.open(options, command=COMMAND, config=asdict(config), volatile=("verbose", "epochs")) as run:
        loop = TrainingLoop(
            run,
            model=model,
            epochs=config.epochs,
            optimizers={"sgd": optimizer},
            generators={"noise": noise},
            data_size=x.shape[0],
            batch_size=config.batch_size,
            seed=config.seed,
        )
        for _ in loop.epochs():
            model.train()
            for index in loop.batches():
                if fail_at_step is not None and loop.step == fail_at_step:
                    raise KeyboardInterrupt
                target = y[index] + 0.01 * torch.randn(len(index), generator=noise)
                loss = (model(x[index]).squeeze(1) - target).pow(2).mean()
                if nan_at_step is not None and loop.step == nan_at_step:
                    loss = loss * torch.nan
                loop.check_finite(loss)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loop.accumulate(len(index), loss=loss.detach() * len(index))
            model.eval()
            with torch.no_grad():
                loop.end_epoch(eval_mse=float((model(x).squeeze(1) - y).pow(2).mean()))
    return model, loop.metrics


def _options(out: Path, **kw: object) -> RunOptions:
    return RunOptions(out=out, progress=False, **kw)  # type: ignore[arg-type]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), key


def _timeless(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# ------------------------------------------------------------------------------------------------ exact resume


@pytest.mark.parametrize("interrupt_at", [3, 7, 14], ids=["mid-epoch-1", "epoch-2-start", "mid-epoch-3"])
def test_a_run_interrupted_anywhere_resumes_to_the_same_weights_and_metrics(tmp_path: Path, interrupt_at: int) -> None:
    straight, straight_metrics = train_toy(Toy(), _options(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        train_toy(Toy(), _options(tmp_path / "cut", checkpoint_steps=2), fail_at_step=interrupt_at)
    resumed, metrics = train_toy(Toy(), _options(tmp_path / "cut", resume=True, checkpoint_steps=2))
    _assert_same_weights(straight, resumed)
    assert _timeless(metrics) == _timeless(straight_metrics)  # the running sums of the cut epoch were saved
    lines = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["epoch", "1", "2", "3"]
    history = read_run(tmp_path / "cut").history
    assert [event["event"] for event in history] == ["start", "resume"]


def test_a_longer_run_by_resume_equals_one_trained_that_long(tmp_path: Path) -> None:
    straight, straight_metrics = train_toy(Toy(epochs=4), _options(tmp_path / "straight"))
    train_toy(Toy(epochs=2), _options(tmp_path / "grown"))
    grown, metrics = train_toy(Toy(epochs=4), _options(tmp_path / "grown", resume=True))
    _assert_same_weights(straight, grown)
    assert _timeless(metrics) == _timeless(straight_metrics)
    (event,) = [e for e in read_run(tmp_path / "grown").history if e["event"] == "resume"]
    assert event["changes"] == {"epochs": {"from": 2, "to": 4}}  # a volatile option: recorded, not refused


# ------------------------------------------------------------------------------------------- directory rules


def test_a_new_run_refuses_a_directory_that_holds_a_run(tmp_path: Path) -> None:
    train_toy(Toy(epochs=1), _options(tmp_path / "run"))
    before = _snapshot(tmp_path / "run")
    with pytest.raises(RunError, match="already holds a run") as error:
        train_toy(Toy(epochs=1), _options(tmp_path / "run"))
    assert "resume" in str(error.value)
    assert "overwrite" in str(error.value)
    assert _snapshot(tmp_path / "run") == before


def test_overwrite_replaces_a_run_cleanly_stale_files_included(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_toy(Toy(epochs=2), _options(run))
    (run / "eval.json").write_text("{}")
    (run / "figures").mkdir()
    (run / "figures" / "old.png").write_bytes(b"png")
    _, metrics = train_toy(Toy(epochs=1, lr=0.02), _options(run, overwrite=True))
    assert not (run / "eval.json").exists()
    assert not (run / "figures").exists()
    assert len(metrics) == 1
    assert read_run(run).config["lr"] == 0.02
    assert [e["event"] for e in read_run(run).history] == ["start"]


def test_overwrite_and_new_runs_refuse_a_directory_that_holds_no_run(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    for options in (_options(tmp_path / "mine"), _options(tmp_path / "mine", overwrite=True)):
        with pytest.raises(RunError, match="holds no kldiv run"):
            train_toy(Toy(epochs=1), options)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_an_empty_directory_is_a_fine_new_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    train_toy(Toy(epochs=1), _options(tmp_path / "empty"))
    assert read_run(tmp_path / "empty").command == COMMAND


def test_resume_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"nothing to resume: .*typo.* does not exist"):
        train_toy(Toy(), _options(tmp_path / "typo", resume=True))
    assert not (tmp_path / "typo").exists()  # a typo in out does not start a new run either
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"nothing to resume in .*empty.*no checkpoint"):
        train_toy(Toy(), _options(tmp_path / "empty", resume=True))


def test_a_resume_that_changes_the_run_is_refused_and_changes_nothing_on_disk(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_toy(Toy(epochs=1), _options(run))
    before = _snapshot(run)
    with pytest.raises(RunError, match=r"would change the run: batch_size 8 -> 16; lr 0.01 -> 0.1") as error:
        train_toy(Toy(epochs=2, batch_size=16, lr=0.1), _options(run, resume=True))
    assert "allow_change batch_size" in str(error.value)
    after = _snapshot(run)
    after.pop("run.lock")
    before.pop("run.lock")
    assert after == before


def test_an_allowed_change_is_made_and_recorded(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_toy(Toy(epochs=1), _options(run))
    train_toy(Toy(epochs=2, lr=0.005), _options(run, resume=True, allow_changes=("lr",)))
    info = read_run(run)
    assert info.config["lr"] == 0.005
    assert info.history[-1]["changes"] == {"epochs": {"from": 1, "to": 2}, "lr": {"from": 0.01, "to": 0.005}}
    train_toy(Toy(epochs=3, lr=0.005), _options(run, resume=True))  # the change is now the run's own


def test_run_options_are_checked(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OptionError, match=r"out: .* is a file"):
        RunOptions(out=tmp_path / "file")
    with pytest.raises(OptionError, match="overwrite: cannot be combined with resume"):
        RunOptions(out=tmp_path, resume=True, overwrite=True)
    with pytest.raises(OptionError, match="allow_change: only applies with resume"):
        RunOptions(out=tmp_path, allow_changes=("lr",))
    with pytest.raises(OptionError, match="checkpoint_steps"):
        RunOptions(out=tmp_path, checkpoint_steps=-1)
    with pytest.raises(OptionError, match="overwrite: cannot be combined with --resume") as error:
        RunOptions(out=tmp_path, resume=True, overwrite=True, cli=True)
    assert error.value.option == "overwrite"
    train_toy(Toy(epochs=1), _options(tmp_path / "run"))
    with pytest.raises(OptionError, match="'momentum' is not an option"):
        train_toy(Toy(epochs=1), _options(tmp_path / "run", resume=True, allow_changes=("momentum",)))


def test_a_run_of_another_command_is_not_resumed(tmp_path: Path) -> None:
    train_toy(Toy(epochs=1), _options(tmp_path / "run"))
    with (
        pytest.raises(RunError, match="holds a run of `kldiv toy train`, not of `kldiv other train`"),
        Run.open(_options(tmp_path / "run", resume=True), command="other train", config={}),
    ):
        pass


# ----------------------------------------------------------------------------------------------------- lock


def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path: Path) -> None:
    with Run.open(_options(tmp_path / "run"), command=COMMAND, config={"a": 1}):
        with pytest.raises(RunLockedError, match=rf"in use by pid {os.getpid()} on .*\({COMMAND}\)"):
            Run.open(_options(tmp_path / "run", overwrite=True), command=COMMAND, config={"a": 1})
        assert (tmp_path / "run" / "run.json").is_file()  # the holder's files are untouched
    with Run.open(_options(tmp_path / "run", overwrite=True), command=COMMAND, config={"a": 2}):
        pass  # released when the holder closed it


# ------------------------------------------------------------------------------------------ failed starts


def test_a_start_that_fails_before_its_first_checkpoint_leaves_no_directory(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(KeyboardInterrupt):
        train_toy(Toy(), _options(out), fail_at_step=2)
    assert not (tmp_path / "a").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(KeyboardInterrupt):
        train_toy(Toy(), _options(tmp_path / "kept"), fail_at_step=2)
    assert list((tmp_path / "kept").iterdir()) == []  # it existed: emptied, not removed


def test_the_nan_stop_says_there_is_no_checkpoint_or_names_the_one_kept(tmp_path: Path) -> None:
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at epoch 1, step 3 \(batch 3\).*no checkpoint"):
        train_toy(Toy(), _options(tmp_path / "early"), nan_at_step=3)
    assert not (tmp_path / "early").exists()
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, step 9 .*last\.json: epoch 1 completed, step 7"):
        train_toy(Toy(), _options(tmp_path / "late"), nan_at_step=9)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))
    state = read_checkpoint(tmp_path / "late").state
    assert state["loop"]["step"] == 7  # type: ignore[index]
    read_checkpoint(tmp_path / "late").load_into(model)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


# --------------------------------------------------------------------------------------------- full disk


@pytest.mark.skipif(sys.platform != "linux", reason="finds the file being written through /proc")
def test_a_full_disk_gives_one_clear_error_keeps_the_previous_checkpoint_and_a_retry_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    fsync = os.fsync

    def full_at_the_second_checkpoint(fd: int) -> None:
        if "last-2." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_at_the_second_checkpoint)
    with pytest.raises(RunWriteError, match=r"the checkpoint .*No space left on device.*epoch 1 completed, step 7\)"):
        train_toy(Toy(), _options(run))
    monkeypatch.undo()
    names = {p.name for p in run.iterdir()}
    assert names == {"run.json", "run.lock", "metrics.csv", "last.json", "last-1.safetensors", "last-1.state.pt"}
    straight, _ = train_toy(Toy(), _options(tmp_path / "straight"))
    resumed, _ = train_toy(Toy(), _options(run, resume=True))  # the retry on the same disk
    _assert_same_weights(straight, resumed)


def test_leftovers_of_interrupted_writes_are_cleaned_when_the_run_is_taken_up(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_toy(Toy(epochs=1), _options(run))
    dead = 2**22 + 12345  # beyond Linux's default pid_max: no process has it
    leftovers = [f".run.json.{dead}-0123ab.tmp", f".samples.png.{dead}-9f9f.tmp", "last-9.safetensors"]
    live = run / f".eval.json.{os.getpid()}-77.tmp"  # a concurrent writer's file, left alone
    live.write_bytes(b"being written")
    for name in leftovers:
        (run / name).write_bytes(b"partial")
    train_toy(Toy(epochs=2), _options(run, resume=True))
    assert not any((run / name).exists() for name in leftovers)
    assert live.exists()


# ------------------------------------------------------------------------------------- malformed checkpoints


def _rewrite_state(run: Path, edit: Callable[[dict[str, object]], None]) -> Path:
    """Edit the saved state and make the manifest's hashes match again (only the state's checks stand)."""
    checkpoint = read_checkpoint(run)
    state = checkpoint.state
    edit(state)
    buffer = io.BytesIO()
    torch.save({"format_version": 2, "state": state}, buffer)
    data = buffer.getvalue()
    checkpoint.state_path.write_bytes(data)
    manifest = json.loads((run / "last.json").read_text())
    manifest["files"]["state"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (run / "last.json").write_text(json.dumps(manifest))
    return checkpoint.state_path


def _loop(state: dict[str, object]) -> dict[str, object]:
    loop = state["loop"]
    assert isinstance(loop, dict)
    return loop


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("optimizers"), "no 'optimizers' entry"),
        (lambda s: s.pop("loop"), "no 'loop' entry"),
        (lambda s: s.update(loop=[1, 2]), "'loop' is a list"),
        (lambda s: _loop(s).update(epoch=-1), "loop.epoch is -1"),
        (lambda s: _loop(s).update(epoch="1"), "loop.epoch is '1'"),
        (lambda s: _loop(s).update(batch=10**9), "loop.batch is 1000000000"),
        (lambda s: _loop(s).update(epoch=10**12), "loop.step is 7, but epoch 1000000000000"),
        (lambda s: _loop(s).update(order_generator=torch.zeros(3)), "order_generator"),
        (lambda s: _loop(s).update(sums={"loss": "x"}), "loop.sums"),
        (lambda s: _loop(s).update(count=-5), "loop.count"),
        (lambda s: s.update(metrics=[]), "'metrics' must be a list of 1 rows"),
        (lambda s: s.update(metrics=[{"epoch": "one"}]), "'metrics' must be a list"),
        (lambda s: s.update(optimizers={"adam": {}}), "'optimizers' holds ['adam'], this run has ['sgd']"),
        (lambda s: s.update(optimizers={"sgd": {"state": {}, "param_groups": []}}), "optimizer 'sgd' does not fit"),
        (lambda s: s.update(generators={"noise": torch.zeros(2)}), "generators['noise']"),
        (lambda s: s.update(rng=None), "'rng' is not a dict"),
        (lambda s: s.update(rng={"python": 1}), "rng_state()'s dict"),
        (lambda s: s.update(config=[1]), "its config is not a dict"),
    ],
)
def test_a_malformed_checkpoint_with_matching_hashes_is_one_clear_error_naming_the_file(
    tmp_path: Path, edit: Callable[[dict[str, object]], None], message: str
) -> None:
    run = tmp_path / "run"
    train_toy(Toy(epochs=1), _options(run))
    state_file = _rewrite_state(run, edit)
    before = _snapshot(run)
    with pytest.raises(RunError) as error:
        train_toy(Toy(epochs=2), _options(run, resume=True))
    assert str(state_file) in str(error.value)
    assert message in str(error.value)
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if k != "run.lock"} == {k: v for k, v in before.items() if k != "run.lock"}
