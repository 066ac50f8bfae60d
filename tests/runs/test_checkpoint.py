"""Checkpoints: exact round trips, RNG replay, weights_only loading, and saves that survive exceptions and SIGKILL."""

from __future__ import annotations

import copy
import errno
import hashlib
import io
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from kldiv.runs.checkpoint import (
    atomic_write_bytes,
    has_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 2))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """Steps whose data and dropout masks come from the global torch RNG."""
    for _ in range(steps):
        x = torch.randn(5, 6)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _linear(out_features: int = 3, fill: float | None = None) -> nn.Linear:
    model = nn.Linear(4, out_features)
    if fill is not None:
        with torch.no_grad():
            model.weight.fill_(fill)
            model.bias.fill_(fill)
    return model


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# ------------------------------------------------------------------------------------------------- round trip


def test_round_trip_restores_weights_and_optimizer_and_training_continues_bit_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train(model, optimizer, 4)
    save_checkpoint(tmp_path, model=model, state={"step": 4, "rng": rng_state(), "optimizer": optimizer.state_dict()})
    saved_params, saved_optimizer = _params(model), copy.deepcopy(optimizer.state_dict())
    _train(model, optimizer, 3)

    torch.manual_seed(123)  # another initialization and RNG position, both overwritten by the checkpoint
    fresh = _net()
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    state = load_checkpoint(tmp_path, model=fresh)
    assert state["step"] == 4
    optimizer_state = state["optimizer"]
    assert isinstance(optimizer_state, dict)
    fresh_optimizer.load_state_dict(optimizer_state)
    for key, value in saved_params.items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    loaded_optimizer = fresh_optimizer.state_dict()
    assert loaded_optimizer["param_groups"] == saved_optimizer["param_groups"]
    assert loaded_optimizer["state"].keys() == saved_optimizer["state"].keys() == {0, 1, 2, 3}
    for index, entry in saved_optimizer["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(entry[key], loaded_optimizer["state"][index][key]), (index, key)

    rng = state["rng"]
    assert isinstance(rng, dict)
    set_rng_state(rng)
    _train(fresh, fresh_optimizer, 3)
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key


def test_tied_weights_are_stored_once_and_views_of_buffers_survive(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(4, 4, bias=False)
            self.decoder = nn.Linear(4, 4, bias=False)
            self.decoder.weight = self.encoder.weight
            table = torch.randn(10)
            self.register_buffer("table", table)
            self.register_buffer("window", table[2:6])  # overlaps `table`: stored as a copy

    model = Tied()
    save_checkpoint(tmp_path, model=model, state={})
    (weights,) = tmp_path.glob("*.safetensors")
    assert set(safetensors.torch.load_file(weights)) == {"encoder.weight", "table", "window"}
    copy = Tied()
    load_checkpoint(tmp_path, model=copy)
    assert copy.decoder.weight is copy.encoder.weight
    for key, value in model.state_dict().items():
        assert torch.equal(value, copy.state_dict()[key]), key


def test_map_location_places_the_state_tensors(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, model=_linear(), state={"buffer": torch.ones(3)})
    state = load_checkpoint(tmp_path, model=_linear(), map_location="meta")
    buffer = state["buffer"]
    assert isinstance(buffer, torch.Tensor)
    assert buffer.device.type == "meta"
    state = load_checkpoint(tmp_path, model=_linear(), map_location=torch.device("cpu"))
    assert isinstance(state["buffer"], torch.Tensor)
    assert torch.equal(state["buffer"], torch.ones(3))


# ------------------------------------------------------------------------------------------------------- RNG


def _draws() -> tuple[list[float], list[float], list[float], torch.Tensor]:
    python = [random.random(), random.gauss(0.0, 1.0), random.random()]
    numpy = [*np.random.rand(3).tolist(), float(np.random.standard_normal())]  # noqa: NPY002
    return python, numpy, torch.rand(3).tolist(), torch.randn(4)


def test_rng_state_replays_python_numpy_and_torch_draws(tmp_path: Path) -> None:
    random.gauss(0.0, 1.0)  # leave a cached second Gaussian in both generators
    np.random.standard_normal()  # noqa: NPY002
    model, generator = _linear(), torch.Generator().manual_seed(7)
    saved = rng_state()
    save_checkpoint(tmp_path, model=model, state={"rng": saved, "gen": generator.get_state()})
    first = _draws()
    from_generator = torch.rand(5, generator=generator)

    state = load_checkpoint(tmp_path, model=model)  # through weights_only loading
    rng, generator_state = state["rng"], state["gen"]
    assert isinstance(rng, dict)
    assert isinstance(generator_state, torch.Tensor)
    set_rng_state(rng)
    second = _draws()
    restored = torch.Generator()
    restored.set_state(generator_state)
    assert first[:3] == second[:3]
    assert torch.equal(first[3], second[3])
    assert torch.equal(from_generator, torch.rand(5, generator=restored))


def test_set_rng_state_rejects_a_foreign_dict() -> None:
    with pytest.raises(ValueError, match="rng_state"):
        set_rng_state({"python": 1})


# -------------------------------------------------------------------------------------------- weights_only


def test_state_of_every_allowed_type_round_trips(tmp_path: Path) -> None:
    state: dict[str, object] = {
        "step": 12,
        "big": 2**100,
        "loss": float("inf"),
        "z": 1 + 2j,
        "flag": True,
        "none": None,
        "tag": "run",
        "raw": b"\x00\xff",
        "seen": {1, 2},
        "order": OrderedDict(a=1),
        "shape": torch.Size([2, 3]),
        "dtype": torch.bfloat16,
        "device": torch.device("cpu"),
        "nested": {"history": [1.0, 2.0], "pair": (torch.arange(3), {"k": [torch.ones(1, dtype=torch.uint8)]})},
        7: "int key",
    }
    save_checkpoint(tmp_path, model=_linear(), state=state)
    loaded = load_checkpoint(tmp_path, model=_linear())
    nested = loaded.pop("nested")
    assert loaded == {k: v for k, v in state.items() if k != "nested"}
    assert isinstance(nested, dict)
    assert nested["history"] == [1.0, 2.0]
    assert torch.equal(nested["pair"][0], torch.arange(3))
    assert torch.equal(nested["pair"][1]["k"][0], torch.ones(1, dtype=torch.uint8))


class _Opaque:
    pass


@pytest.mark.parametrize(
    ("state", "where", "kind"),
    [
        ({"sampler": np.arange(3)}, "state['sampler']", "numpy.ndarray"),
        ({"loss": np.float64(1.0)}, "state['loss']", "numpy.float64"),
        ({"gen": torch.Generator()}, "state['gen']", "torch._C.Generator"),
        ({"a": [1, {"b": _Opaque()}]}, "state['a'][1]['b']", "_Opaque"),
        ({"a": (1, frozenset({1}))}, "state['a'][1]", "frozenset"),
        ({"a": {np.int64(1): 2}}, "state['a'] (the key", "numpy.int64"),
    ],
)
def test_state_that_weights_only_cannot_restore_is_refused_naming_the_key(
    tmp_path: Path, state: dict[str, object], where: str, kind: str
) -> None:
    with pytest.raises(TypeError, match="weights_only") as error:
        save_checkpoint(tmp_path / "run", model=_linear(), state=state)
    assert where in str(error.value)
    assert kind in str(error.value)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def _mark(path: str) -> None:
    Path(path).write_text("executed")


class _Evil:
    """Unpickling it calls ``_mark``: what a malicious checkpoint would do with ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return _mark, (str(self.marker),)


def test_state_file_with_a_pickled_object_is_refused_not_executed(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, model=_linear(), state={"step": 1})
    manifest_path = tmp_path / "last.json"
    manifest = json.loads(manifest_path.read_text())
    state_file = tmp_path / manifest["files"]["state"]["file"]
    marker = tmp_path / "marker"
    buffer = io.BytesIO()
    torch.save({"format_version": 2, "state": {"step": _Evil(marker)}}, buffer)
    state_file.write_bytes(buffer.getvalue())
    manifest["files"]["state"].update(size=len(buffer.getvalue()), sha256=hashlib.sha256(buffer.getvalue()).hexdigest())
    manifest_path.write_text(json.dumps(manifest))  # a consistent manifest: only weights_only stands in the way

    with pytest.raises(ValueError, match="weights_only") as error:
        load_checkpoint(tmp_path, model=_linear())
    assert str(state_file) in str(error.value)
    assert not marker.exists()
    torch.load(state_file, weights_only=False)  # the file really is dangerous to unpickle
    assert marker.read_text() == "executed"


# ---------------------------------------------------------------------------------------------- mismatches


@pytest.mark.parametrize(
    ("other", "messages"),
    [
        (lambda: _linear(5), ["'weight': file (3, 4), model (5, 4)", "'bias': file (3,), model (5,)"]),
        (lambda: nn.Sequential(_linear()), ["missing keys", "'0.weight'", "unexpected keys", "'weight'"]),
    ],
)
def test_model_that_does_not_fit_is_refused_naming_the_keys(
    tmp_path: Path, other: Callable[[], nn.Module], messages: list[str]
) -> None:
    save_checkpoint(tmp_path, model=_linear(), state={})
    model = other()
    before = _params(model)
    with pytest.raises(ValueError, match="does not fit the model") as error:
        load_checkpoint(tmp_path, model=model)
    for message in messages:
        assert message in str(error.value)
    for key, value in before.items():
        assert torch.equal(value, model.state_dict()[key])


def test_missing_checkpoint_and_bad_names(tmp_path: Path) -> None:
    assert not has_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"last\.json"):
        load_checkpoint(tmp_path, model=_linear())
    save_checkpoint(tmp_path, model=_linear(), state={})
    assert has_checkpoint(tmp_path)
    assert not has_checkpoint(tmp_path, "best")
    for name in ("", "../up", "a/b", ".hidden", "-dash"):
        with pytest.raises(ValueError, match="file name stem"):
            save_checkpoint(tmp_path, model=_linear(), state={}, name=name)


# ------------------------------------------------------------------------------------------ atomicity, crashes


def test_atomic_write_keeps_the_old_content_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "file.bin"
    atomic_write_bytes(path, b"old")

    def fail(*args: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"old"
    assert _files(tmp_path) == {"file.bin"}  # the temporary file is gone


def test_atomic_write_names_the_target_not_its_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "x.png"
    with pytest.raises(FileNotFoundError) as error:
        atomic_write_bytes(target, b"data")
    assert error.value.filename == str(target)
    assert ".tmp" not in str(error.value)


@pytest.mark.parametrize("failing_write", [1, 2, 3], ids=["weights", "state", "manifest"])
def test_save_on_a_full_disk_removes_what_it_wrote_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_write: int
) -> None:
    save_checkpoint(tmp_path, model=_linear(fill=1.0), state={"step": 1})
    before = _files(tmp_path)
    fsync, calls = os.fsync, []

    def full(fd: int) -> None:
        calls.append(fd)
        if len(calls) == failing_write:
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left") as error:
        save_checkpoint(tmp_path, model=_linear(fill=2.0), state={"step": 2})
    monkeypatch.undo()
    assert error.value.errno == errno.ENOSPC
    assert _files(tmp_path) == before  # no orphaned data or temporary files block a retry
    model = _linear(fill=0.0)
    assert load_checkpoint(tmp_path, model=model) == {"step": 1}
    assert bool((model.weight == 1.0).all())
    save_checkpoint(tmp_path, model=_linear(fill=3.0), state={"step": 3})  # the retry on the same disk
    assert load_checkpoint(tmp_path, model=model) == {"step": 3}


@pytest.mark.parametrize("failing_replace", [1, 2, 3], ids=["weights", "state", "manifest"])
def test_save_interrupted_at_any_rename_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_replace: int
) -> None:
    save_checkpoint(tmp_path, model=_linear(fill=1.0), state={"step": 1})
    replace, calls = os.replace, []

    def flaky(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == failing_replace:
            raise OSError("killed here")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="killed here"):
        save_checkpoint(tmp_path, model=_linear(fill=2.0), state={"step": 2})
    monkeypatch.undo()

    model = _linear(fill=0.0)
    assert load_checkpoint(tmp_path, model=model) == {"step": 1}
    assert bool((model.weight == 1.0).all())
    manifest = save_checkpoint(tmp_path, model=_linear(fill=3.0), state={"step": 3})
    generation = json.loads(manifest.read_text())["generation"]
    assert _files(tmp_path) == {"last.json", f"last-{generation}.safetensors", f"last-{generation}.state.pt"}
    assert load_checkpoint(tmp_path, model=model) == {"step": 3}
    assert bool((model.weight == 3.0).all())


def test_save_removes_leftovers_of_its_name_only(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, model=_linear(), state={}, name="best")
    dead = 2**22 + 12345  # beyond Linux's default pid_max: no process has it
    leftovers = (
        "last-7.state.pt",
        "last-2.safetensors",
        f".last-8.safetensors.{dead}-0123ab.tmp",
        f".last.json.{dead}-9f.tmp",
    )
    for leftover in leftovers:
        (tmp_path / leftover).write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("mine")
    save_checkpoint(tmp_path, model=_linear(), state={})
    assert _files(tmp_path) == {
        "best.json",
        "best-1.safetensors",
        "best-1.state.pt",
        "last.json",
        "last-8.safetensors",  # a generation above every one on disk: never overwrites a referenced file
        "last-8.state.pt",
        "notes.txt",
    }
    load_checkpoint(tmp_path, model=_linear(), name="best")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [(_truncate, "truncated"), (_flip_bit, "sha256 does not match"), (Path.unlink, "is missing")],
    ids=["truncated", "bit-flip", "deleted"],
)
@pytest.mark.parametrize("suffix", [".safetensors", ".state.pt"])
def test_damaged_file_is_detected_by_the_manifest_naming_it(
    tmp_path: Path, corrupt: Callable[[Path], None], message: str, suffix: str
) -> None:
    save_checkpoint(tmp_path, model=_linear(fill=1.0), state={"step": 1})
    (path,) = tmp_path.glob(f"last-*{suffix}")
    corrupt(path)
    model = _linear(fill=0.0)
    with pytest.raises(ValueError, match=message) as error:
        load_checkpoint(tmp_path, model=model)
    assert str(path) in str(error.value)
    assert bool((model.weight == 0.0).all())  # nothing was loaded


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: "{not json", "not valid JSON"),
        (lambda m: json.dumps({**m, "version": 99}), "version 99"),
        (
            lambda m: json.dumps({**m, "files": {**m["files"], "state": {**m["files"]["state"], "file": "../x"}}}),
            "state",
        ),
    ],
    ids=["not-json", "newer-version", "path-outside"],
)
def test_damaged_manifest_is_refused(tmp_path: Path, edit: Callable[[dict[str, object]], str], message: str) -> None:
    save_checkpoint(tmp_path, model=_linear(), state={})
    manifest = tmp_path / "last.json"
    manifest.write_text(edit(json.loads(manifest.read_text())))
    with pytest.raises(ValueError, match=message) as error:
        load_checkpoint(tmp_path, model=_linear())
    assert str(manifest) in str(error.value)


_SAVER = r"""
import sys, torch
from torch import nn
from kldiv.runs.checkpoint import save_checkpoint

model = nn.Linear(1000, 2000)  # 8 MB of weights per save
payload = torch.empty(250_000)  # 1 MB of state
step = 0
while True:
    step += 1
    with torch.no_grad():
        model.weight.fill_(step)
        model.bias.fill_(-step)
    payload.fill_(step)
    save_checkpoint(sys.argv[1], model=model, state={"step": step, "payload": payload})
    print(step, flush=True)
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
def test_sigkill_during_saves_leaves_a_consistent_checkpoint(tmp_path: Path) -> None:
    delays = sorted(random.uniform(0.0, 0.5) for _ in range(4))
    directories = [tmp_path / f"run{i}" for i in range(len(delays))]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for d in directories
    ]
    try:
        for child in children:  # wait until each has completed one save
            assert child.stdout is not None
            ready, _, _ = select.select([child.stdout], [], [], 60)
            assert ready, "the saver did not save within 60 s"
            assert child.stdout.readline().strip() == "1", child.stderr.read() if child.stderr else ""
        start = time.monotonic()
        for child, delay in zip(children, delays, strict=True):
            time.sleep(max(0.0, start + delay - time.monotonic()))
            child.send_signal(signal.SIGKILL)
    finally:
        for child in children:
            child.kill()
    for directory, child, delay in zip(directories, children, delays, strict=True):
        assert child.stdout is not None
        # read through the text wrapper: readline() above may have buffered later lines (communicate() reads the
        # raw pipe and would miss them, undercounting the completed saves)
        out = child.stdout.read()
        child.wait()
        assert child.returncode == -signal.SIGKILL
        completed = int(out.split()[-1]) if out.split() else 1  # the last save that returned before the kill
        model = nn.Linear(1000, 2000)
        state = load_checkpoint(directory, model=model)
        step = state["step"]
        assert step in (completed, completed + 1), f"killed after {delay:.3f} s: step {step}, completed {completed}"
        assert bool((model.weight == step).all())
        assert bool((model.bias == -step).all())
        payload = state["payload"]
        assert isinstance(payload, torch.Tensor)
        assert bool((payload == step).all())
        manifest = save_checkpoint(directory, model=model, state=state)  # the resumed run saves
        generation = json.loads(manifest.read_text())["generation"]
        assert _files(directory) == {"last.json", f"last-{generation}.safetensors", f"last-{generation}.state.pt"}
