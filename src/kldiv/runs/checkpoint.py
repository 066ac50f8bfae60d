"""Checkpoint files: weights in safetensors, the rest loaded with ``weights_only=True``, atomic saves.

This is the storage layer of :mod:`kldiv.runs`; training code uses :class:`kldiv.runs.TrainingLoop`, which decides
what goes into a checkpoint. A checkpoint named ``name`` in ``directory`` is three files::

    {name}-{generation}.safetensors   model.state_dict() (safetensors; tied tensors stored once)
    {name}-{generation}.state.pt      {"format_version", "state": state}
    {name}.json                       the manifest: format version, generation, and both file names, sizes, sha256

``generation`` counts the saves of ``name`` (1, 2, ...). A save writes the two data files under the new
generation's names, each to a temporary file that is flushed, ``fsync``-ed and renamed with ``os.replace``
(then the directory is ``fsync``-ed); only then is the manifest replaced the same way, and finally the files of
older generations (and temporary files left by an interrupted save) are deleted. A save that fails (a full disk,
say) removes what it wrote and leaves the previous checkpoint as it was.

Guarantee: the manifest is the only thing that names the current checkpoint and it is replaced atomically after
both data files are durable, so a process killed at any moment (SIGKILL, an exception, a power loss on a file
system that honours ``fsync``) leaves ``{name}.json`` pointing at either the previous complete checkpoint or the
new complete one, never a mix; the next save removes the leftovers. One writer per directory (the run layer
holds a lock on it).

Loading reads the manifest, checks the size and sha256 of both files before deserializing anything (a missing,
truncated or altered file is a ``ValueError`` naming it), checks the model's keys and shapes against the file,
and unpickles the state with ``torch.load(weights_only=True)`` only: tensors, numbers, strings, bytes, ``None``,
``torch.dtype`` / ``torch.device`` / ``torch.Size`` and lists, tuples, sets, dicts of them. ``save_checkpoint``
refuses (``TypeError`` naming the key) anything else in ``state`` rather than write a file that cannot be loaded
back; :func:`rng_state` gives the random number generators' states in that form.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import re
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn

FORMAT = "kldiv.checkpoint"
FORMAT_VERSION = 2

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_ALIASES = "kldiv.aliases"  # safetensors metadata key: {dropped name: kept name} for tied tensors
_ATOMS = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.dtype, torch.device, torch.Size)
_CONTAINERS = (list, tuple, set, dict, OrderedDict)


# ---------------------------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of ``data``, never a part.

    The bytes go to a temporary file in the same directory, which is flushed, ``fsync``-ed and renamed over
    ``path`` with ``os.replace``; then the directory is ``fsync``-ed so the rename itself is durable. On an
    exception the temporary file is removed (a SIGKILL leaves it behind: ``.{name}.{pid}-{random}.tmp``, which
    :func:`remove_orphaned_temporaries` deletes once its writer is gone). An ``OSError`` names ``path`` (not the
    temporary file).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)
    except OSError as e:
        if e.errno is None or e.filename == str(path):
            raise
        raise type(e)(e.errno, e.strerror, str(path)) from None


_TEMPORARY = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)-[0-9a-f]+\.tmp")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's), or we cannot tell: leave its files alone
    return True


def remove_orphaned_temporaries(directory: str | Path) -> None:
    """Delete the temporary files of :func:`atomic_write_bytes` in ``directory`` whose writing process is gone
    (killed mid-write); a temporary file of a live process (a concurrent ``vae eval``, say) is left alone."""
    for p in Path(directory).iterdir():
        match = _TEMPORARY.fullmatch(p.name)
        if match and not _process_alive(int(match.group("pid"))):
            p.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory; its renames are journaled by NTFS
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------- save and load


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    state: dict[str, object],
    name: str = "last",
    meta: dict[str, object] | None = None,
) -> Path:
    """Save ``model``'s weights and ``state`` as checkpoint ``name``; return the manifest path.

    ``state`` holds whatever else a resume needs (optimizer state dicts, step, epoch, metrics, :func:`rng_state`,
    ``generator.get_state()`` of each ``torch.Generator``, ...) in types that ``torch.load(weights_only=True)``
    restores; anything else is a ``TypeError`` naming the key, raised before any file is written. ``directory``
    is created if needed. ``meta`` (plain JSON) goes into the manifest, for readers that need it without reading
    the checkpoint (:func:`read_manifest_meta`). A save that fails (``OSError``: a full disk, say) removes the
    files it wrote; the previous checkpoint stays complete. See the module docstring for the crash guarantee.
    """
    directory = Path(directory)
    _check_name(name)
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {_type_name(state)}")
    _check_weights_only(state, "state")
    tensors, aliases = _weights_to_save(model)
    weights = _to_bytes(safetensors.torch.save(tensors, metadata={"format": "pt", _ALIASES: json.dumps(aliases)}))
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "state": state}, buffer)
    payload = buffer.getvalue()

    if not directory.exists():
        directory.mkdir(parents=True, exist_ok=True)
        _fsync_directory(directory.parent)
    generation = _next_generation(directory, name)
    files = {"weights": f"{name}-{generation}.safetensors", "state": f"{name}-{generation}.state.pt"}
    manifest: dict[str, object] = {"format": FORMAT, "version": FORMAT_VERSION, "name": name, "generation": generation}
    if meta is not None:
        manifest["meta"] = meta
    entries: dict[str, object] = {}
    manifest_path = directory / f"{name}.json"
    try:
        for role, data in (("weights", weights), ("state", payload)):
            atomic_write_bytes(directory / files[role], data)
            entries[role] = {"file": files[role], "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest["files"] = entries
        atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    except BaseException:
        if _manifest_generation(manifest_path) != generation:  # the manifest still names the previous files
            for file in files.values():
                (directory / file).unlink(missing_ok=True)
        raise
    remove_stale_files(directory, name, keep=set(files.values()))
    return manifest_path


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk and verified against its manifest, not yet applied to a model."""

    weights: dict[str, Tensor]
    state: dict[str, object]
    weights_path: Path
    state_path: Path

    def check_fits(self, model: nn.Module) -> None:
        """Raise one ``ValueError`` naming the weights file and every missing key, unexpected key and bad shape."""
        _check_fits(model, self.weights, self.weights_path)

    def load_into(self, model: nn.Module) -> None:
        """Copy the weights into ``model``'s parameters and buffers (checked first: on an error it is untouched)."""
        self.check_fits(model)
        model.load_state_dict(self.weights, strict=True)


def read_checkpoint(
    directory: str | Path, *, name: str = "last", map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Read checkpoint ``name`` of ``directory``, verified against the manifest's sizes and sha256 before anything
    is deserialized.

    ``map_location`` places the tensors of the state. Raises ``FileNotFoundError`` when there is no checkpoint
    ``name``, ``ValueError`` naming the file when a file is missing, corrupt, or holds objects that
    ``weights_only`` loading refuses.
    """
    directory = Path(directory)
    _check_name(name)
    manifest_path = directory / f"{name}.json"
    for attempt in range(3):  # a save may replace the checkpoint between reading its manifest and its files
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no checkpoint named {name!r} in {directory}: {manifest_path} does not exist")
        before = manifest_path.read_bytes()
        files = _read_manifest(manifest_path)
        try:
            data = {
                role: _read_verified(directory / file, size, digest, manifest_path)
                for role, (file, size, digest) in files.items()
            }
            break
        except ValueError:
            if attempt == 2 or _read_bytes_or_none(manifest_path) == before:
                raise
    weights_path, state_path = directory / files["weights"][0], directory / files["state"][0]
    tensors = _load_weights(data["weights"], weights_path)
    try:
        payload = torch.load(io.BytesIO(data["state"]), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
        reason = next((line for line in lines if "Unsupported" in line), lines[0])
        raise ValueError(
            f"{state_path}: refusing to load it: it holds objects that torch.load(weights_only=True) does not "
            f"restore ({reason})"
        ) from e
    except Exception as e:  # a damaged archive fails in many ways (EOFError, KeyError, struct.error, ...)
        raise ValueError(f"{state_path}: not a readable torch.save file ({type(e).__name__}: {e})") from e
    if not (isinstance(payload, dict) and payload.keys() == {"format_version", "state"}):
        raise ValueError(f"{state_path}: expected a dict with keys format_version and state, got {_describe(payload)}")
    if payload["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{state_path}: state format version {payload['format_version']!r}, this kldiv reads {FORMAT_VERSION}"
        )
    if not isinstance(payload["state"], dict):
        raise ValueError(f"{state_path}: expected state to be a dict, got {_type_name(payload['state'])}")
    return Checkpoint(weights=tensors, state=payload["state"], weights_path=weights_path, state_path=state_path)


def load_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    name: str = "last",
    map_location: str | torch.device = "cpu",
) -> dict[str, object]:
    """Load checkpoint ``name`` into ``model`` in place and return the saved ``state``.

    Everything is verified before the model is touched (see :func:`read_checkpoint`, :meth:`Checkpoint.load_into`):
    on any error the model is as it was.
    """
    checkpoint = read_checkpoint(directory, name=name, map_location=map_location)
    checkpoint.load_into(model)
    return checkpoint.state


def has_checkpoint(directory: str | Path, name: str = "last") -> bool:
    """Whether checkpoint ``name`` exists in ``directory`` (its manifest does; :func:`load_checkpoint` verifies it)."""
    _check_name(name)
    return (Path(directory) / f"{name}.json").is_file()


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            "name must be a file name stem: letters, digits, '_', '-' or '.', not starting with '.' or '-'; "
            f"got {name!r}"
        )


def _next_generation(directory: Path, name: str) -> int:
    """One more than any generation of ``name`` on disk or in its manifest: never overwrites the current files."""
    pattern = re.compile(rf"{re.escape(name)}-(\d+)\.(?:safetensors|state\.pt)")
    generations = [int(m.group(1)) for p in directory.iterdir() if (m := pattern.fullmatch(p.name))]
    current = _manifest_generation(directory / f"{name}.json")  # an unreadable manifest has no say
    return max([*generations, current or 0]) + 1


def _manifest_generation(path: Path) -> int | None:
    """The generation a manifest names, or None when there is none to read."""
    try:
        generation = json.loads(path.read_text())["generation"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return generation if isinstance(generation, int) else None


def clean_interrupted_saves(directory: str | Path, name: str = "last") -> None:
    """Delete what interrupted saves of ``name`` left behind (temporary files, data files no manifest names).

    Only for the directory's one writer; a manifest that cannot be read protects every data file.
    """
    directory = Path(directory)
    _check_name(name)
    manifest_path = directory / f"{name}.json"
    keep: set[str] = set()
    if manifest_path.exists():
        try:
            keep = {file for file, _, _ in _read_manifest(manifest_path).values()}
        except (OSError, ValueError):
            return
    remove_stale_files(directory, name, keep=keep)


def remove_stale_files(directory: Path, name: str, keep: set[str]) -> None:
    """Delete the data files of other generations of ``name`` and the temporary files of interrupted saves."""
    stem = re.escape(name)
    data = re.compile(rf"{stem}-\d+\.(?:safetensors|state\.pt)")
    tmp = re.compile(rf"\.(?:{stem}-\d+\.(?:safetensors|state\.pt)|{stem}\.json)\.\d+-[0-9a-f]+\.tmp")
    for p in directory.iterdir():
        if p.name not in keep and (data.fullmatch(p.name) or tmp.fullmatch(p.name)):
            p.unlink(missing_ok=True)


def _read_manifest(path: Path) -> dict[str, tuple[str, int, str]]:
    """The manifest's ``{role: (file name, size, sha256)}``, every field checked."""
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: the checkpoint manifest is not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a kldiv checkpoint manifest (expected format {FORMAT!r})")
    if manifest.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format version {manifest.get('version')!r}, this kldiv reads version {FORMAT_VERSION}"
        )
    files = manifest.get("files")
    out = {}
    for role in ("weights", "state"):
        entry = files.get(role) if isinstance(files, dict) else None
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("file"), str)
            and _NAME.fullmatch(entry["file"])
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
        ):
            raise ValueError(
                f"{path}: the manifest's files.{role} must be {{file, size, sha256}} naming a file in its directory"
            )
        out[role] = (entry["file"], entry["size"], entry["sha256"])
    return out


def _read_bytes_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def read_manifest_meta(directory: str | Path, name: str = "last") -> dict[str, object] | None:
    """The ``meta`` a checkpoint's manifest holds (see :func:`save_checkpoint`), or None when there is none."""
    _check_name(name)
    path = Path(directory) / f"{name}.json"
    if not path.is_file():
        return None
    _read_manifest(path)
    meta = json.loads(path.read_bytes()).get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"{path}: the manifest's meta must be a JSON object, got {type(meta).__name__}")
    return meta


def _read_verified(path: Path, size: int, sha256: str, manifest: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path} is missing (listed in {manifest})") from None
    if len(data) != size:
        raise ValueError(f"{path} is truncated or was changed: {len(data)} bytes, {manifest} says {size}")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path} is corrupt or was changed after saving: its sha256 does not match {manifest}")
    return data


# ------------------------------------------------------------------------------------------------------ weights


def _weights_to_save(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``model.state_dict()`` as contiguous tensors sharing no memory, and ``{name: tied name}`` for tied ones.

    A tensor that is exactly another one (tied weights) is stored once and recorded as an alias; one that
    only overlaps another's memory (a view of a buffer, say) is stored as a copy.
    """
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple[object, ...], str] = {}
    storages: set[tuple[object, ...]] = set()
    for key, value in model.state_dict().items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"model.state_dict()[{key!r}] is a {_type_name(value)}; safetensors stores tensors only "
                "(extra state from get_extra_state belongs in `state`)"
            )
        if value.numel() == 0 or value.device.type == "meta":
            tensors[key] = value.contiguous()
            continue
        storage = (value.device, value.untyped_storage().data_ptr())
        view = (*storage, value.storage_offset(), tuple(value.shape), value.stride(), value.dtype)
        if view in views:
            aliases[key] = views[view]
            continue
        views[view] = key
        tensors[key] = value.clone() if storage in storages else value.contiguous()
        storages.add(storage)
    return tensors, aliases


def _load_weights(data: bytes, path: Path) -> dict[str, Tensor]:
    try:
        tensors: dict[str, Tensor] = safetensors.torch.load(data)
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
        aliases = json.loads(metadata.get(_ALIASES, "{}"))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    if not (isinstance(aliases, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items())):
        raise ValueError(f"{path}: its tied-tensor metadata must map names to names, got {aliases!r:.200}")
    for key, target in aliases.items():
        if target not in tensors:
            raise ValueError(f"{path}: tied tensor {key!r} refers to {target!r}, which the file does not hold")
        tensors[key] = tensors[target]
    return tensors


def _check_fits(model: nn.Module, tensors: Mapping[str, Tensor], path: Path) -> None:
    """Raise one ``ValueError`` listing every missing key, unexpected key, shape and dtype mismatch."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing:
        problems.append(f"missing keys (in the model, not in the file): {missing}")
    if unexpected:
        problems.append(f"unexpected keys (in the file, not in the model): {unexpected}")
    shapes = [
        f"{k!r}: file {tuple(tensors[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and isinstance(v, Tensor) and tensors[k].shape != v.shape
    ]
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes))
    dtypes = [
        f"{k!r}: file {tensors[k].dtype}, model {v.dtype}"
        for k, v in expected.items()
        if k in tensors and isinstance(v, Tensor) and tensors[k].dtype != v.dtype
    ]
    if dtypes:
        problems.append("dtype mismatches: " + "; ".join(dtypes))
    if problems:
        raise ValueError(f"{path} does not fit the model ({type(model).__name__}): " + "; ".join(problems))


# ------------------------------------------------------------------------------------------ weights_only state


def _check_weights_only(value: object, path: str) -> None:
    """Raise ``TypeError`` naming the first entry of ``value`` that ``torch.load(weights_only=True)`` refuses."""
    kind = type(value)
    if kind in _ATOMS or kind in (Tensor, nn.Parameter):
        return
    if kind in (dict, OrderedDict):
        assert isinstance(value, dict)
        for key, item in value.items():
            _check_weights_only(key, f"{path} (the key {key!r})")
            _check_weights_only(item, f"{path}[{key!r}]")
        return
    if kind in _CONTAINERS:
        assert isinstance(value, (list, tuple, set))
        for i, item in enumerate(value):
            _check_weights_only(item, f"{path}[{i}]" if kind is not set else f"{path} (an element)")
        return
    raise TypeError(
        f"{path} is a {_type_name(value)}, which torch.load(weights_only=True) cannot restore; store tensors "
        "(torch.from_numpy(array), generator.get_state() for a torch.Generator), numbers, strings, bytes, None, "
        "torch.dtype / torch.device / torch.Size, or lists, tuples, sets and dicts of them"
    )


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "a dict with keys " + ", ".join(sorted(map(repr, value))) if value else "an empty dict"
    return _type_name(value)


def _type_name(value: object) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _to_bytes(data: object) -> bytes:
    if not isinstance(data, bytes):  # pragma: no cover - safetensors.torch.save returns bytes
        raise TypeError(f"safetensors.torch.save returned {_type_name(data)}, expected bytes")
    return data


# ----------------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, object]:
    """The global random number generators' states, in types ``torch.load(weights_only=True)`` restores.

    ``{"python": {"version", "internal" (int64 tensor), "gauss_next"}, "numpy": {"bit_generator", "key" (int64
    tensor), "pos", "has_gauss", "cached_gaussian"}, "torch": uint8 tensor, "cuda": [uint8 tensor per device]}``;
    ``"cuda"`` only when CUDA is available. Generators you own (``torch.Generator``, ``np.random.Generator``)
    are not global: store ``generator.get_state()`` / ``bit_generator.state`` yourself.
    """
    version, internal, gauss_next = random.getstate()
    bit_generator, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)  # noqa: NPY002  (the global state)
    state: dict[str, object] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(bit_generator),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, object]) -> None:
    """Restore the global generators from :func:`rng_state`'s result (as saved and loaded by a checkpoint).

    Every field is checked before any generator is touched (``ValueError`` naming the field). The CUDA states
    are restored for the devices present both now and in ``state``, and skipped when CUDA is not available (a
    run resumed on another device cannot replay its random numbers anyway).
    """
    expected = {"python", "numpy", "torch"}
    if not (isinstance(state, Mapping) and expected <= state.keys() <= expected | {"cuda"}):
        keys = sorted(map(str, state)) if isinstance(state, Mapping) else _type_name(state)
        raise ValueError(f"state must be rng_state()'s dict with keys python, numpy, torch (and cuda); got {keys}")
    python, numpy_state, torch_state = state["python"], state["numpy"], state["torch"]
    words = 2**32
    if not (
        isinstance(python, Mapping)
        and python.keys() == {"version", "internal", "gauss_next"}
        and type(python["version"]) is int
        and _words(python["internal"], 625, words)
        and (python["gauss_next"] is None or type(python["gauss_next"]) is float)
    ):
        raise ValueError("state['python'] must be {'version': int, 'internal': 625 words, 'gauss_next': float|None}")
    if not (
        isinstance(numpy_state, Mapping)
        and numpy_state.keys() == {"bit_generator", "key", "pos", "has_gauss", "cached_gaussian"}
        and numpy_state["bit_generator"] == "MT19937"
        and _words(numpy_state["key"], 624, words)
        and type(numpy_state["pos"]) is int
        and 0 <= numpy_state["pos"] <= 624
        and numpy_state["has_gauss"] in (0, 1)
        and type(numpy_state["cached_gaussian"]) is float
    ):
        raise ValueError(
            "state['numpy'] must be {'bit_generator': 'MT19937', 'key': 624 words, 'pos' in [0, 624], "
            "'has_gauss' 0 or 1, 'cached_gaussian': float}"
        )
    reference = torch.get_rng_state()
    if not (
        isinstance(torch_state, Tensor) and torch_state.dtype == torch.uint8 and torch_state.shape == reference.shape
    ):
        raise ValueError(f"state['torch'] must be a uint8 tensor of {reference.numel()} bytes")
    cuda = state.get("cuda")
    if cuda is not None and not (isinstance(cuda, list) and all(isinstance(c, Tensor) for c in cuda)):
        raise ValueError("state['cuda'] must be a list of uint8 tensors")
    try:
        random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
        np.random.set_state(  # noqa: NPY002  (the global state np.random.* draws from)
            (
                numpy_state["bit_generator"],
                numpy_state["key"].cpu().numpy().astype(np.uint32),
                numpy_state["pos"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
        torch.set_rng_state(torch_state.cpu())
        if isinstance(cuda, list) and torch.cuda.is_available():
            for device in range(min(len(cuda), torch.cuda.device_count())):
                torch.cuda.set_rng_state(cuda[device].cpu(), device)
    except (ValueError, TypeError, RuntimeError, OverflowError) as e:
        raise ValueError(f"the saved random generator states do not load ({e})") from None


def _words(value: object, length: int, bound: int) -> bool:
    """Whether ``value`` is an integer tensor of ``length`` entries in ``[0, bound)``."""
    return (
        isinstance(value, Tensor)
        and value.dtype == torch.int64
        and value.shape == (length,)
        and bool(((value >= 0) & (value < bound)).all())
    )
