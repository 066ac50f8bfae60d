"""Adversarial tests of the run layer and of the commands on top of it.

Races between writers, kills and full disks at every write, hostile checkpoints and run.json files whose hashes
match, symlinks, bad paths and option values, sweeps, and resumes that change the run or its data. Each test states
the behaviour the run layer promises (docs/runs.md); the ones named ``test_defect_...`` reproduce a defect found in
review.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn
from typer.testing import CliRunner

from kldiv.cli import app
from kldiv.data import ImageDataset, load_digits
from kldiv.runs import (
    OptionError,
    Run,
    RunError,
    RunLockedError,
    RunOptions,
    RunWriteError,
    TrainingLoop,
    csv_bytes,
    read_run,
)
from kldiv.runs.checkpoint import read_checkpoint
from kldiv.runs.lock import DirectoryLock
from kldiv.vae import train as train_module
from kldiv.vae.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "toy train"
runner = CliRunner()


# ----------------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Toy:
    """A tiny run: noisy linear regression with dropout and momentum (global RNG, generator and optimizer state)."""

    epochs: int = 3
    batch_size: int = 8
    lr: float = 0.01
    seed: int = 0


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(50, 4, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(50, generator=g)


def _toy_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))


def train_toy(config: Toy, options: RunOptions) -> tuple[nn.Module, list[dict[str, float]]]:
    x, y = _data()
    torch.manual_seed(config.seed)
    model = _toy_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    noise = torch.Generator().manual_seed(config.seed + 1)
    with Run.open(options, command=COMMAND, config=asdict(config), volatile=("epochs",)) as run:
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
                target = y[index] + 0.01 * torch.randn(len(index), generator=noise)
                loss = (model(x[index]).squeeze(1) - target).pow(2).mean()
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


def _files(directory: Path, *, lock: bool = False) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes (``run.lock`` left out unless ``lock``)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and (lock or p.name != "run.lock")
    }


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def _timeless(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _rehash(run: Path, role: str, data: bytes) -> Path:
    """Write ``data`` as the checkpoint's ``role`` file and make the manifest's size and sha256 match it."""
    manifest = json.loads((run / "last.json").read_text())
    path = run / manifest["files"][role]["file"]
    path.write_bytes(data)
    manifest["files"][role].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (run / "last.json").write_text(json.dumps(manifest))
    return path


def _rewrite_state(run: Path, edit: Callable[[dict[str, object]], None]) -> Path:
    """Edit the saved state; the manifest's hashes match again, so only the state's own checks stand."""
    state = read_checkpoint(run).state
    edit(state)
    buffer = io.BytesIO()
    torch.save({"format_version": 2, "state": state}, buffer)
    return _rehash(run, "state", buffer.getvalue())


def _loop(state: dict[str, object]) -> dict[str, object]:
    loop = state["loop"]
    assert isinstance(loop, dict)
    return loop


def _rng(state: dict[str, object], part: str) -> dict[str, object]:
    rng = state["rng"]
    assert isinstance(rng, dict)
    value = rng[part]
    assert isinstance(value, dict)
    return value


def _sgd(state: dict[str, object]) -> dict[str, object]:
    optimizers = state["optimizers"]
    assert isinstance(optimizers, dict)
    sgd = optimizers["sgd"]
    assert isinstance(sgd, dict)
    return sgd


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy run with one completed epoch (copy it before changing it)."""
    run = tmp_path_factory.mktemp("toy") / "run"
    train_toy(Toy(epochs=1), _options(run))
    return run


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    data = load_digits()
    return replace(data, train=data.train[:300], train_labels=data.train_labels[:300])


def _vae(**kw: object) -> TrainConfig:
    base: dict[str, object] = {"epochs": 1, "batch_size": 64, "z_dim": 4, "figures": False, "binarize": True}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


# ------------------------------------------------------------------------------------------------ the sources


def test_defect_no_source_or_test_file_is_ignored_by_git() -> None:
    """`.gitignore`'s `runs/` (meant for output directories) also matches src/kldiv/runs/ and tests/runs/: the run
    layer's modules were never committed, so a fresh checkout cannot import kldiv.cli."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(ROOT)) for d in ("src", "tests") for p in (ROOT / d).rglob("*.py")]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=ROOT,
        input="\n".join(files),
        capture_output=True,
        text=True,
        check=False,
    )
    ignored = [line for line in result.stdout.splitlines() if "__pycache__" not in line]
    assert ignored == [], f"ignored by .gitignore, so never committed: {ignored}"


# ------------------------------------------------------------------------------------------------------ races


def test_defect_two_new_runs_racing_for_one_new_directory_never_delete_the_winners_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B creates the new directory; A takes the lock first; B, refused, must not remove what A is writing.

    Seen with real processes too: two `Run.open` of the same new directory at the same moment, 100 times, deleted
    the winner's directory 5 times."""
    out = tmp_path / "new" / "run"
    real_acquire = DirectoryLock.acquire
    winner: dict[str, Run] = {}

    def a_rival_locks_first(self: DirectoryLock) -> None:
        monkeypatch.setattr(DirectoryLock, "acquire", real_acquire)
        winner["run"] = Run.open(_options(out), command=COMMAND, config={"who": "A"})
        real_acquire(self)

    monkeypatch.setattr(DirectoryLock, "acquire", a_rival_locks_first)
    with pytest.raises(RunLockedError):
        Run.open(_options(out), command=COMMAND, config={"who": "B"})
    run = winner["run"]
    try:
        assert (out / "run.json").is_file(), "the refused writer deleted the holder's run directory"
        assert read_run(out).config == {"who": "A"}
        with pytest.raises(RunLockedError):  # and nobody else may write there while A holds it
            Run.open(_options(out), command=COMMAND, config={"who": "C"}).close()
    finally:
        run.close()


def test_defect_a_writer_starting_during_a_failed_start_cleanup_keeps_its_run_and_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's start failed before its first checkpoint, so A removes the directory it created: it unlinks run.lock,
    then removes the tree. B, starting between the two, locks a new run.lock and writes its run.json; the tree
    removal then deletes B's files, and a third writer can lock yet another run.lock beside B. (B starts right
    after run.lock is unlinked, however the cleanup does it.)"""
    out = tmp_path / "new" / "run"
    first = Run.open(_options(out), command=COMMAND, config={"who": "A"})
    real_unlink = os.unlink
    newcomer: dict[str, Run | None] = {}

    def a_newcomer_once_the_lock_file_is_gone(path: object, *args: object, **kw: object) -> None:
        real_unlink(path, *args, **kw)  # type: ignore[arg-type]
        if os.path.basename(str(path)) == "run.lock" and not newcomer:
            newcomer["run"] = None
            with contextlib.suppress(RunError):  # refused: fine, as long as nothing of a live run is deleted
                newcomer["run"] = Run.open(_options(out), command=COMMAND, config={"who": "B"})

    monkeypatch.setattr(os, "unlink", a_newcomer_once_the_lock_file_is_gone)
    first.close(failed=True)
    monkeypatch.undo()
    second = newcomer.get("run")
    if second is None:
        return  # the newcomer was refused (or came too late): nothing of a live run was at stake
    try:
        assert (out / "run.json").is_file(), "the failed start's cleanup deleted a newer writer's run"
        assert read_run(out).config == {"who": "B"}
        with pytest.raises(RunLockedError):
            Run.open(_options(out), command=COMMAND, config={"who": "C"}).close()
    finally:
        second.close()


def test_defect_taking_up_a_run_does_not_delete_a_concurrent_evals_temporary_file(
    tmp_path: Path, digits: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kldiv vae eval` writes RUN/eval.json without the run's lock; a `--resume` starting meanwhile deletes every
    `.*.tmp` in the directory, the evaluation's temporary file included, and the evaluation fails."""
    if sys.platform != "linux":
        pytest.skip("finds the file being written through /proc")
    run = tmp_path / "run"
    train(_vae(), _options(run), data=digits)
    fsync = os.fsync
    taken_up: list[bool] = []

    def resume_while_eval_writes(fd: int) -> None:
        if not taken_up and os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".eval.json."):
            taken_up.append(True)
            with Run.open(_options(run, resume=True), command="vae train", config=read_run(run).config):
                pass
        fsync(fd)

    monkeypatch.setattr(os, "fsync", resume_while_eval_writes)
    result = runner.invoke(app, ["vae", "eval", "--run", str(run), "--iwae-k", "0"])
    monkeypatch.undo()
    assert taken_up
    assert result.exit_code == 0, result.output
    assert (run / "eval.json").is_file()


def test_defect_a_reader_during_a_save_does_not_report_the_checkpoint_as_damaged(
    tmp_path: Path, digits: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kldiv vae sample` (or eval) reading a checkpoint while its writer saves the next one: the manifest read
    first names files that the save then removes, and the reader reports a healthy run's checkpoint file as
    "missing" (a retry on the new manifest would do)."""
    from kldiv.runs import checkpoint as checkpoint_module

    run = tmp_path / "run"
    train(_vae(), _options(run), data=digits)
    real = checkpoint_module._read_verified
    saved: list[bool] = []

    def a_save_lands_in_between(path: Path, size: int, sha256: str, manifest: Path) -> bytes:
        if not saved:
            saved.append(True)
            train(_vae(epochs=2), _options(run, resume=True), data=digits)  # the writer's next checkpoint
        return real(path, size, sha256, manifest)

    monkeypatch.setattr(checkpoint_module, "_read_verified", a_save_lands_in_between)
    result = runner.invoke(app, ["vae", "sample", "--run", str(run), "-n", "4", "-o", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------------------------------------- lock and paths


def test_defect_a_refused_start_leaves_no_lock_file_in_a_directory_that_holds_no_run(tmp_path: Path) -> None:
    """The lock is taken before the directory is judged: refusing `--out ~/notes` (or `.`, or `/`) leaves a
    run.lock there, and a refused `--resume` of an empty directory leaves one too."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("precious")
    for options in (_options(notes), _options(notes, overwrite=True)):
        with pytest.raises(RunError, match="holds no kldiv run"):
            train_toy(Toy(epochs=1), options)
    assert sorted(p.name for p in notes.iterdir()) == ["thesis.tex"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunError, match="nothing to resume"):
        train_toy(Toy(), _options(empty, resume=True))
    assert list(empty.iterdir()) == []


def test_defect_a_run_whose_checkpoints_were_deleted_is_not_emptied_without_overwrite(tmp_path: Path) -> None:
    """A finished run whose checkpoint files were deleted to save space (run.json, metrics.csv and eval.json kept)
    counts as "an earlier start that never saved a checkpoint": a new run without --overwrite silently deletes
    its results."""
    run = tmp_path / "run"
    train_toy(Toy(epochs=2), _options(run))
    (run / "eval.json").write_text('{"elbo": -90.1}')
    for path in run.glob("last*"):
        path.unlink()
    before = _files(run)
    with pytest.raises(RunError, match="overwrite"):
        train_toy(Toy(epochs=1), _options(run))
    assert _files(run) == before


def test_defect_the_lock_never_writes_through_a_symlink(tmp_path: Path, toy_run: Path) -> None:
    """A run.lock that is a symlink (a copied or hostile run directory) is opened and truncated: the file it
    points to, anywhere on disk, is replaced by the lock holder's description."""
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    precious = tmp_path / "precious.txt"
    precious.write_text("years of work\n")
    (run / "run.lock").unlink()
    (run / "run.lock").symlink_to(precious)
    with contextlib.suppress(RunError):  # refusing the directory is fine
        train_toy(Toy(epochs=2), _options(run, resume=True))
    assert precious.read_text() == "years of work\n"


def test_overwrite_never_follows_symlinks_out_of_the_run_directory(tmp_path: Path, toy_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "keep.txt").write_text("keep")
    (outside / "deep" / "keep.txt").write_text("keep")
    (run / "figures").symlink_to(outside)
    (run / "eval.json").symlink_to(outside / "keep.txt")
    (run / "sub").mkdir()
    (run / "sub" / "link").symlink_to(outside / "deep")
    train_toy(Toy(epochs=1), _options(run, overwrite=True))
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["run.json", "run.lock", "metrics.csv", "last.json", "last-1.safetensors", "last-1.state.pt"]
    )
    assert _files(outside) == {"keep.txt": b"keep", "deep/keep.txt": b"keep"}


@pytest.mark.parametrize("where", ["dangling symlink", "file as parent"])
def test_defect_a_bad_out_path_is_one_error_line_naming_out_with_exit_2(
    tmp_path: Path, digits: ImageDataset, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--out` at a dangling symlink exits 1 with "File exists: ..."; under a file it prints "[Errno 20] Not a
    directory"; neither names --out."""
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    out = {"dangling symlink": tmp_path / "dangling", "file as parent": tmp_path / "file.txt" / "sub" / "run"}[where]
    monkeypatch.setattr(train_module, "load_data", lambda config: digits)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["vae", "train", "--epochs", "1", "--no-progress", "--out", str(out)])
    line = _one_error_line(result.output)
    assert result.exit_code == 2, result.output
    assert "--out" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_defect_an_absurd_z_dim_is_one_error_line_not_a_traceback(tmp_path: Path) -> None:
    """`--z-dim 1000000000000` passes the checks and fails allocating the model: a RuntimeError traceback."""
    if sys.platform != "linux":
        pytest.skip("caps the address space with RLIMIT_AS")
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    result = subprocess.run(
        [sys.executable, "-m", "kldiv", "vae", "train", "--z-dim", "1000000000000", "--out", str(tmp_path / "r")],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=cap,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert "--z-dim" in result.stderr
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------------------------------- resume


def test_defect_an_allowed_learning_rate_change_takes_effect(tmp_path: Path, digits: ImageDataset) -> None:
    """`--resume --lr X --allow-change lr` records lr X in run.json, but the optimizer's saved state brings the
    old learning rate back: the resumed run is bit for bit the one without the change."""
    train(_vae(), _options(tmp_path / "changed"), data=digits)
    shutil.copytree(tmp_path / "changed", tmp_path / "same")
    changed = train(
        _vae(epochs=2, lr=0.05), _options(tmp_path / "changed", resume=True, allow_changes=("lr",)), data=digits
    )
    same = train(_vae(epochs=2), _options(tmp_path / "same", resume=True), data=digits)
    assert read_run(tmp_path / "changed").config["lr"] == 0.05
    assert not _same_weights(changed.model, same.model), "the allowed change of lr had no effect"


def test_defect_an_allowed_batch_size_change_is_not_called_a_malformed_checkpoint(
    tmp_path: Path, toy_run: Path
) -> None:
    """`--allow-change batch_size` fails with "malformed checkpoint: loop.step is 7, but ...": the checkpoint is
    fine; the change is what cannot be made (or should be made)."""
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    message = ""
    try:
        train_toy(Toy(epochs=2, batch_size=16), _options(run, resume=True, allow_changes=("batch_size",)))
    except RunError as e:
        message = str(e)
    assert "malformed" not in message, message
    assert not message or "batch_size" in message, message


def test_defect_resume_with_fewer_epochs_than_completed_is_refused(tmp_path: Path) -> None:
    """A 3-epoch run resumed with epochs=1 "succeeds": run.json now says 1 epoch beside 3 epochs of metrics."""
    run = tmp_path / "run"
    train_toy(Toy(epochs=3), _options(run))
    before = _files(run)
    with pytest.raises((RunError, OptionError), match="epochs"):
        train_toy(Toy(epochs=1), _options(run, resume=True))
    assert _files(run) == before


def test_defect_a_kill_between_the_last_checkpoint_and_metrics_csv_is_repaired_by_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final epoch's checkpoint is saved, then the process dies before metrics.csv is rewritten: `--resume`
    has no epoch left to run, so metrics.csv keeps missing the last row for good."""
    run = tmp_path / "run"
    real = Run.write_bytes

    def killed_at_the_last_metrics(self: Run, name: str, data: bytes) -> None:
        if name == "metrics.csv" and data.count(b"\n") == 4:  # the header and 3 rows
            raise KeyboardInterrupt
        real(self, name, data)

    monkeypatch.setattr(Run, "write_bytes", killed_at_the_last_metrics)
    with pytest.raises(KeyboardInterrupt):
        train_toy(Toy(), _options(run))
    monkeypatch.undo()
    _, metrics = train_toy(Toy(), _options(run, resume=True))
    assert (run / "metrics.csv").read_bytes() == csv_bytes(metrics)
    assert len(metrics) == 3


def test_defect_a_plain_resume_after_a_kill_following_an_allowed_change_is_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--resume --lr 0.01 --allow-change lr` writes lr 0.01 into run.json at once; killed before its first
    checkpoint, the run's checkpoint still says lr 0.001. A plain `--resume` (no option typed) is then refused with
    "would change the run: --lr 0.001 -> 0.01 ... Pass the same options"."""
    run = tmp_path / "run"
    base = ["vae", "train", "--epochs", "1", "--z-dim", "2", "--batch-size", "500", "--no-progress", "--out", str(run)]
    assert runner.invoke(app, base).exit_code == 0

    def interrupted(*args: object, **kw: object) -> torch.Tensor:
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "vae_loss", interrupted)
    changed = ["vae", "train", "--resume", "--epochs", "2", "--lr", "0.01", "--allow-change", "lr", "--no-progress"]
    runner.invoke(app, [*changed, "--out", str(run)])
    monkeypatch.undo()
    result = runner.invoke(app, ["vae", "train", "--resume", "--no-progress", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert read_run(run).config == read_checkpoint(run).state["config"]


def _mnist(directory: Path, n: int, seed: int) -> Path:
    """Four raw IDX files of ``n`` random 28x28 training images (and 50 test images)."""
    directory.mkdir()
    g = torch.Generator().manual_seed(seed)
    for stem, count in (("train", n), ("t10k", 50)):
        images = torch.randint(0, 256, (count, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (count,), generator=g, dtype=torch.uint8)
        header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (count, 28, 28))
        (directory / f"{stem}-images-idx3-ubyte").write_bytes(header + images.numpy().tobytes())
        (directory / f"{stem}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + count.to_bytes(4, "big") + labels.numpy().tobytes()
        )
    return directory


@pytest.mark.parametrize("change", ["more images", "other images"])
def test_defect_resume_on_a_changed_data_set_is_refused_as_such(tmp_path: Path, change: str) -> None:
    """The data directory may move (data_dir is volatile), but nothing records what the data was: other images of
    the same count train on silently, and a different count is reported as a "malformed checkpoint"."""
    first = _mnist(tmp_path / "a", 120, seed=1)
    other = _mnist(tmp_path / "b", 200 if change == "more images" else 120, seed=2)
    config = _vae(dataset="mnist", data_dir=str(first), batch_size=60)
    train(config, _options(tmp_path / "run"))
    with pytest.raises(RunError) as error:
        train(replace(config, data_dir=str(other), epochs=2), _options(tmp_path / "run", resume=True))
    assert "malformed" not in str(error.value)
    assert "data" in str(error.value)


# ------------------------------------------------------------------------------------------ malformed state


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(
            lambda s: _loop(s).update(order_generator=torch.zeros_like(_loop(s)["order_generator"])),  # type: ignore[arg-type]
            id="order_generator-all-zero",
        ),
        pytest.param(lambda s: _rng(s, "python").pop("version"), id="rng-python-without-version"),
        pytest.param(
            lambda s: _rng(s, "python").update(internal=torch.full((625,), -1, dtype=torch.int64)),
            id="rng-python-negative-state",
        ),
        pytest.param(lambda s: _rng(s, "numpy").pop("pos"), id="rng-numpy-without-pos"),
        pytest.param(lambda s: _sgd(s).update(state=[1, 2]), id="optimizer-state-a-list"),
        pytest.param(lambda s: s.update(optimizers={"sgd": 5}), id="optimizer-an-int"),
        pytest.param(
            lambda s: _sgd(s)["state"][0].update(momentum_buffer=torch.zeros(3)),  # type: ignore[index]
            id="optimizer-buffer-of-the-wrong-shape",
        ),
        pytest.param(
            lambda s: _sgd(s)["param_groups"][0].update(lr="fast"),  # type: ignore[index]
            id="optimizer-lr-a-string",
        ),
    ],
)
def test_defect_malformed_state_is_one_run_error_naming_the_file_and_changes_nothing(
    tmp_path: Path, toy_run: Path, edit: Callable[[dict[str, object]], None]
) -> None:
    """Hash-matching edits that escape the checks: RuntimeError, KeyError, OverflowError or AttributeError while
    loading, or a RuntimeError/TypeError at the first optimizer step (after run.json recorded the resume)."""
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    state_file = _rewrite_state(run, edit)
    before = _files(run)
    with pytest.raises(RunError) as error:
        train_toy(Toy(epochs=2), _options(run, resume=True))
    assert str(state_file) in str(error.value)
    assert _files(run) == before


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda s: _loop(s).update(count=float("inf")), id="count-inf"),
        pytest.param(lambda s: _loop(s).update(count=True), id="count-a-bool"),
        pytest.param(lambda s: _loop(s).update(seconds=-5.0), id="seconds-negative"),
        pytest.param(lambda s: _loop(s).update(seconds=float("nan")), id="seconds-nan"),
        pytest.param(lambda s: _loop(s).update(sums={"loss": torch.tensor(1 + 2j)}), id="sums-complex"),
        pytest.param(
            lambda s: _loop(s).update(sums={"loss": torch.tensor(5.0, dtype=torch.float64)}, count=3.0),
            id="sums-at-an-epoch-start",
        ),
    ],
)
def test_defect_absurd_running_sums_are_refused_not_turned_into_metrics(
    tmp_path: Path, toy_run: Path, edit: Callable[[dict[str, object]], None]
) -> None:
    """These load silently: an infinite count makes the epoch's loss 0.0, sums at an epoch start (batch 0, where
    the loop holds none) are added to the next epoch's metrics, a complex sum loses its imaginary part."""
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    state_file = _rewrite_state(run, edit)
    with pytest.raises(RunError) as error:
        train_toy(Toy(epochs=2), _options(run, resume=True))
    assert str(state_file) in str(error.value)


@pytest.mark.parametrize(
    ("tensors", "metadata"),
    [
        pytest.param(lambda w: {k: v.to(torch.int8) for k, v in w.items()}, "{}", id="int8-weights"),
        pytest.param(lambda w: w, "[1, 2]", id="aliases-a-list"),
        pytest.param(lambda w: w, '{"x": ["y"]}', id="alias-target-a-list"),
    ],
)
def test_defect_a_weights_file_of_the_wrong_types_is_one_error_naming_it(
    tmp_path: Path,
    toy_run: Path,
    tensors: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    metadata: str,
) -> None:
    """int8 weights are cast into the float model without a word; alias metadata that is not a dict of names
    raises AttributeError or "unhashable type: 'list'"."""
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    weights = read_checkpoint(run).weights
    data = safetensors.torch.save(tensors(dict(weights)), metadata={"format": "pt", "kldiv.aliases": metadata})
    weights_file = _rehash(run, "weights", data)
    with pytest.raises((RunError, ValueError)) as error:
        train_toy(Toy(epochs=2), _options(run, resume=True))
    assert str(weights_file) in str(error.value)


def test_defect_a_corrupt_state_pickle_with_matching_hashes_is_a_value_error_naming_the_file(
    tmp_path: Path, toy_run: Path
) -> None:
    """Bytes of data.pkl flipped inside the state archive (hashes made to match): torch.load raises EOFError,
    KeyError, IndexError, struct.error or TypeError, which read_checkpoint lets through."""
    state_file = toy_run / json.loads((toy_run / "last.json").read_text())["files"]["state"]["file"]
    archive = zipfile.ZipFile(io.BytesIO(state_file.read_bytes()))
    contents = {name: archive.read(name) for name in archive.namelist()}
    pickle_name = next(name for name in contents if name.endswith("data.pkl"))
    rng = random.Random(0)
    escaped: dict[str, str] = {}
    for trial in range(80):
        data = bytearray(contents[pickle_name])
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as out:
            for name, value in contents.items():
                out.writestr(name, bytes(data) if name == pickle_name else value)
        run = shutil.copytree(toy_run, tmp_path / f"trial-{trial}")
        _rehash(run, "state", buffer.getvalue())
        try:
            read_checkpoint(run)
        except Exception as e:
            if not (isinstance(e, ValueError) and "state.pt" in str(e)):
                escaped.setdefault(type(e).__name__, str(e)[:80])
    assert escaped == {}, f"not a ValueError naming the file: {escaped}"


@pytest.mark.parametrize(
    ("file", "edit", "args"),
    [
        pytest.param("run.json", lambda info: info.update(history=["started"]), [], id="history-of-strings"),
        pytest.param(  # the options a resume starts from are the checkpoint's, recorded in its manifest
            "last.json",
            lambda info: info["meta"]["config"].update(batch_size="64"),
            ["--resume"],
            id="saved-batch-size-a-string",
        ),
    ],
)
def test_defect_a_hand_edited_run_file_is_one_error_line_naming_it(
    tmp_path: Path, file: str, edit: Callable[[dict[str, object]], None], args: list[str]
) -> None:
    """A history entry that is not a dict: AttributeError traceback when a new run is refused. A bad value in the
    saved options: "--batch-size: must be an integer, got '64'", blaming an option the user did not type."""
    run = tmp_path / "run"
    argv = ["vae", "train", "--epochs", "1", "--z-dim", "2", "--batch-size", "500", "--no-progress", "--out", str(run)]
    assert runner.invoke(app, argv).exit_code == 0
    info = json.loads((run / file).read_text())
    edit(info)
    (run / file).write_text(json.dumps(info))
    result = runner.invoke(app, ["vae", "train", "--no-progress", "--out", str(run), *args])
    line = _one_error_line(result.output)
    assert result.exit_code == 2
    assert file in line


def test_a_hand_edited_config_in_run_json_changes_nothing(tmp_path: Path) -> None:
    """run.json's config records the options; a resume starts from the checkpoint's own (so an edit there neither
    changes the run nor blocks it)."""
    run = tmp_path / "run"
    argv = ["vae", "train", "--epochs", "1", "--z-dim", "2", "--batch-size", "500", "--no-progress", "--out", str(run)]
    assert runner.invoke(app, argv).exit_code == 0
    info = json.loads((run / "run.json").read_text())
    info["config"].update(batch_size="64", z_dim=7)
    (run / "run.json").write_text(json.dumps(info))
    result = runner.invoke(app, ["vae", "train", "--no-progress", "--epochs", "2", "--out", str(run), "--resume"])
    assert result.exit_code == 0, result.output
    assert read_run(run).config["batch_size"] == 500


# ------------------------------------------------------------------------------------------ kills and full disks


class _Fsyncs:
    """``os.fsync`` replaced by a counter that can act at its ``n``-th call. The real fsync is skipped: a killed
    process or a failed write leaves the page cache as it was, so durability plays no part in these tests."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int = 0, act: Callable[[], None] | None = None) -> None:
        self.calls, self.at, self.act = 0, at, act
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls == self.at and self.act is not None:
            self.act()


def _take_up(run: Path, config: Toy) -> tuple[nn.Module, list[dict[str, float]]]:
    """What a user does after a crash: resume if there is a checkpoint, else start again."""
    return train_toy(config, _options(run, resume=(run / "last.json").exists(), checkpoint_steps=3))


def _sigkilled_at_fsync(n: int, run: Path, config: Toy) -> bool:
    """Take up ``run`` in a forked child that SIGKILLs itself at its ``n``-th fsync; whether it died so."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 3
        try:
            with pytest.MonkeyPatch.context() as patch:
                _Fsyncs(patch, at=n, act=lambda: os.kill(os.getpid(), signal.SIGKILL))
                _take_up(run, config)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@dataclass
class _Straight:
    """An uninterrupted toy run to compare with."""

    model: nn.Module
    metrics: list[dict[str, float]]
    csv: list[dict[str, str]]

    @classmethod
    def train(cls, run: Path, config: Toy) -> _Straight:
        model, metrics = train_toy(config, _options(run))
        return cls(model, metrics, _csv_rows(run / "metrics.csv"))

    def differences(self, run: Path, model: nn.Module, metrics: list[dict[str, float]]) -> list[str]:
        """How a finished run differs from this one (weights, metrics, metrics.csv, temporary files left)."""
        problems = [] if _same_weights(model, self.model) else ["weights"]
        problems += [] if _timeless(metrics) == _timeless(self.metrics) else ["metrics"]
        problems += [] if _csv_rows(run / "metrics.csv") == self.csv else ["metrics.csv"]
        return problems + [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_every_write_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed at each fsync of a run (run.json, every checkpoint file and manifest, metrics.csv, before
    and after each rename), then taken up: weights, metrics and metrics.csv equal an uninterrupted run's, and no
    temporary file is left. The second pass kills a resume (its run.json write included)."""
    config = Toy(epochs=2)
    straight = _Straight.train(tmp_path / "straight", config)
    train_toy(Toy(epochs=1), _options(tmp_path / "one-epoch", checkpoint_steps=3))
    counts = {}
    for phase in ("start", "resume"):
        counter = _Fsyncs(monkeypatch)
        run = tmp_path / f"count-{phase}"
        if phase == "resume":
            shutil.copytree(tmp_path / "one-epoch", run)
        _take_up(run, config)
        counts[phase] = counter.calls
        monkeypatch.undo()
    failures = []
    for phase, calls in counts.items():
        for n in range(1, calls + 1):
            run = tmp_path / f"{phase}-{n}"
            if phase == "resume":
                shutil.copytree(tmp_path / "one-epoch", run)
            assert _sigkilled_at_fsync(n, run, config), (phase, n)
            _Fsyncs(monkeypatch)
            model, metrics = _take_up(run, config)
            monkeypatch.undo()
            problems = straight.differences(run, model, metrics)
            if problems:
                failures.append(f"{phase}, killed at fsync {n} of {calls}: {', '.join(problems)}")
    assert not failures, "; ".join(failures)


def test_a_full_disk_at_every_write_is_one_clear_error_and_a_retry_on_the_same_disk_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC at the n-th fsync of a run, for every n: one error line saying "No space left", no temporary file
    left, the checkpoint on disk loads, and a retry on the same disk ends as an uninterrupted run (metrics.csv
    included)."""
    config = Toy(epochs=2)
    straight = _Straight.train(tmp_path / "straight", config)
    counter = _Fsyncs(monkeypatch)
    train_toy(config, _options(tmp_path / "count", checkpoint_steps=3))
    monkeypatch.undo()

    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    failures = []
    for n in range(1, counter.calls + 1):
        run = tmp_path / f"full-{n}"
        _Fsyncs(monkeypatch, at=n, act=full)
        error: BaseException | None = None
        try:
            train_toy(config, _options(run, checkpoint_steps=3))
        except (OSError, RunWriteError) as e:
            error = e
        _Fsyncs(monkeypatch)
        if error is None or "No space left" not in str(error) or "\n" in str(error):
            failures.append(f"fsync {n}: error {error!r}")
        if (run / "last.json").exists():
            read_checkpoint(run).load_into(_toy_model())
        leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")] if run.exists() else []
        model, metrics = _take_up(run, config)
        monkeypatch.undo()
        problems = leftovers + straight.differences(run, model, metrics)
        if problems:
            failures.append(f"fsync {n} of {counter.calls}: {', '.join(problems)}")
    assert not failures, "; ".join(failures)


# ------------------------------------------------------------------------------------------------------ sweep


@pytest.fixture
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs of a sweep without their figures (matplotlib is most of a short run's time)."""
    from kldiv.vae import plots

    monkeypatch.setattr(plots, "write_figures", lambda *args, **kw: None)


def _sweep(out: Path, *args: str) -> object:
    return runner.invoke(
        app, ["vae", "sweep", "--z-dim", "2", "--batch-size", "500", "--no-progress", "--out", str(out), *args]
    )


def test_defect_sweep_resume_keeps_each_runs_own_options(tmp_path: Path, no_figures: None) -> None:
    """`kldiv vae sweep --resume` without --epochs trains every run on to the default 20 epochs (epochs may change
    on a resume), where `kldiv vae train --resume` keeps the run's own options."""
    out = tmp_path / "sweep"
    assert _sweep(out, "--beta", "1", "--epochs", "1").exit_code == 0  # type: ignore[attr-defined]
    result = _sweep(out, "--beta", "1", "--resume")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert read_run(out / "beta-1").config["epochs"] == 1
    assert len(_csv_rows(out / "beta-1" / "metrics.csv")) == 1


def test_defect_sweep_checks_every_run_directory_before_training_the_first(tmp_path: Path, no_figures: None) -> None:
    """`--beta 2 1` where beta-1 holds a run: beta 2 is trained in full, then the sweep stops with exit 2."""
    out = tmp_path / "sweep"
    assert _sweep(out, "--beta", "1", "--epochs", "1").exit_code == 0  # type: ignore[attr-defined]
    result = _sweep(out, "--beta", "2", "1", "--epochs", "1")
    assert result.exit_code == 2  # type: ignore[attr-defined]
    _one_error_line(result.output)  # type: ignore[attr-defined]
    assert not (out / "beta-2").exists(), "beta 2 was trained before beta 1 was refused"


def test_defect_sweep_betas_never_share_a_run_directory(tmp_path: Path, no_figures: None) -> None:
    """beta-{beta:g}: 3 and 3.0000001 both go to beta-3; the second is refused after the first was trained (with
    --overwrite it would replace it, and sweep.csv would list a run that no longer exists)."""
    out = tmp_path / "sweep"
    result = _sweep(out, "--beta", "3", "3.0000001", "--epochs", "1")
    if result.exit_code == 2:  # type: ignore[attr-defined]
        _one_error_line(result.output)  # type: ignore[attr-defined]
        assert not out.exists() or not any(out.iterdir()), "refused only after training"
    else:
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        assert len([p for p in out.iterdir() if p.is_dir()]) == 2


# ---------------------------------------------------------------------------------------- command-line values


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["divergence", "0.4,0.6", "0.3,0.7", "--base", "1"], "base"),
        (["divergence", "0.4,0.6", "0.3,0.7", "--base", "inf"], "base"),
        (["divergence", "0.4,0.6", "0.3,0.3,0.4"], "differ"),
        (["divergence", "0.4,0.6", "1e400,0"], "finite"),
        (["divergence", "0,0", "0.5,0.5", "--normalize"], "sum"),
        (["divergence", ",", ","], "entry 0"),
        (["vae", "train", "--seed", "9223372036854775807"], "--seed"),
        (["vae", "train", "--schedule", "linear:nan"], "--schedule"),
        (["vae", "train", "--schedule", "logistic:1:inf"], "--schedule"),
        (["vae", "train", "--beta", "1e309"], "--beta"),
        (["vae", "train", "--lr", "1e-400"], "--lr"),
        (["vae", "train", "--resume", "--allow-change", "lr", "--out", "{missing}"], "nothing to resume"),
        (["vae", "sample", "-n", "10001"], "-n"),
        (["vae", "sweep", "--beta", "1", "--resume", "--overwrite"], "--overwrite"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_more_bad_values_are_one_error_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{missing}", str(tmp_path / "missing")) for a in args]
    result = runner.invoke(app, args)
    line = _one_error_line(result.output)
    assert result.exit_code == 2, result.output
    assert expected in line
    assert list(tmp_path.iterdir()) == []
