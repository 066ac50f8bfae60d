"""A run directory and the rules for writing into it: one writer, no silent overwrite, resume only as it was.

A run directory holds ``run.json`` (the command, its configuration and the history of starts, resumes and
changes), the checkpoint ``last`` (:mod:`kldiv.runs.checkpoint`, whose manifest also records the configuration it
was trained with), ``metrics.csv`` and whatever figures the command writes. :meth:`Run.open` enforces, before
anything is written:

* a new run goes only into a new or empty directory (or one whose earlier start never saved anything but its
  ``run.json``); a directory holding a run is refused unless ``resume`` (continue it) or ``overwrite`` (replace it:
  every file in it is deleted first) is given, and ``overwrite`` refuses a directory that holds no kldiv run;
* ``resume`` needs a checkpoint, and refuses options that differ from the ones the checkpoint was trained with,
  except the ones the command declares harmless (``volatile``) and those named in ``allow_changes`` (recorded in
  ``run.json``); options the command declares ``fixed`` (the model's shape, the data, the batch size) can never
  change within a run. A refused resume changes nothing on disk;
* one process writes at a time: the directory is locked (:mod:`kldiv.runs.lock`) and a second writer fails at
  once naming the holder; a refused writer leaves the directory as it found it;
* a start that fails before its first checkpoint leaves no directory behind (or, in a directory that existed,
  nothing of its own).

Under ``torchrun`` rank 0 alone takes the lock and writes; the other ranks follow its verdict.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from kldiv.runs.checkpoint import (
    Checkpoint,
    atomic_write_bytes,
    clean_interrupted_saves,
    read_checkpoint,
    read_manifest_meta,
    remove_orphaned_temporaries,
    save_checkpoint,
)
from kldiv.runs.distributed import world
from kldiv.runs.errors import OptionError, RunError, RunWriteError
from kldiv.runs.lock import LOCK_FILE, DirectoryLock

RUN_FILE = "run.json"
CHECKPOINT = "last"
RUN_FORMAT = "kldiv.run"
RUN_FORMAT_VERSION = 1
_START_FILES = {RUN_FILE, LOCK_FILE}  # all that a start leaves before its first checkpoint

T = TypeVar("T")
JSONValue = Any  # str | int | float | bool | None | list[JSONValue] | dict[str, JSONValue]


def option_text(name: str, cli: bool) -> str:
    """How a user names option ``name``: ``--batch-size`` on the command line, ``batch_size`` in Python."""
    return "--" + name.replace("_", "-") if cli else name


@dataclass(frozen=True)
class RunOptions:
    """How to run this time (none of it defines the run; :meth:`Run.open` documents the rules).

    ``out``: the run directory. ``resume``: continue the run in ``out`` from its checkpoint. ``overwrite``:
    replace the run in ``out``. ``allow_changes``: options a resume may change (recorded in ``run.json``).
    ``checkpoint_steps``: also checkpoint every N optimizer steps (0: at epoch ends only). ``progress``: show
    progress bars. ``threads``: torch's thread count for the steps; None chooses at every epoch between torch's
    default and 1 by timing the first steps (:class:`kldiv.runs.loop.ThreadChoice`). ``cli``: name options as on
    the command line in messages.
    """

    out: str | Path
    resume: bool = False
    overwrite: bool = False
    allow_changes: tuple[str, ...] = ()
    checkpoint_steps: int = 0
    progress: bool = True
    threads: int | None = None
    cli: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.out, (str, Path)) or not str(self.out):
            raise OptionError("out", f"must be a directory path, got {self.out!r}")
        path = Path(self.out)
        if path.is_symlink() and not path.exists():
            raise OptionError("out", f"{path} is a symbolic link to {os.readlink(path)}, which does not exist")
        if path.exists() and not path.is_dir():
            raise OptionError("out", f"{path} is a file, not a directory")
        blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise OptionError("out", f"{path} cannot be a directory: {blocked} is a file")
        resume = option_text("resume", self.cli)
        if self.resume and self.overwrite:
            raise OptionError(
                "overwrite", f"cannot be combined with {resume}: one continues the run, the other replaces it"
            )
        if isinstance(self.checkpoint_steps, bool) or not isinstance(self.checkpoint_steps, int):
            raise OptionError("checkpoint_steps", f"must be an int >= 0, got {self.checkpoint_steps!r}")
        if self.checkpoint_steps < 0:
            raise OptionError("checkpoint_steps", f"must be >= 0 (0: at epoch ends only), got {self.checkpoint_steps}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 1 <= self.threads <= 1024
        ):
            raise OptionError("threads", f"must be an integer in [1, 1024] or automatic, got {self.threads!r}")
        if self.allow_changes and not self.resume:
            raise OptionError("allow_change", f"only applies with {resume}")
        object.__setattr__(self, "allow_changes", tuple(self.allow_changes))


@dataclass(frozen=True)
class RunInfo:
    """What ``run.json`` says: the command, its current configuration and the history of the run."""

    path: Path
    command: str
    config: dict[str, JSONValue]
    history: list[dict[str, JSONValue]] = field(default_factory=list)


def read_run(directory: str | Path) -> RunInfo:
    """The ``run.json`` of a run directory, checked (``FileNotFoundError`` / ``ValueError`` naming the file)."""
    path = Path(directory) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no kldiv run: {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    if not (
        isinstance(data, dict)
        and data.get("format") == RUN_FORMAT
        and isinstance(data.get("command"), str)
        and isinstance(data.get("config"), dict)
        and isinstance(data.get("history"), list)
        and all(isinstance(event, dict) for event in data["history"])
    ):
        raise ValueError(
            f"{path}: not a kldiv run description (format {RUN_FORMAT!r}, command, config, history of events)"
        )
    if data.get("version") != RUN_FORMAT_VERSION:
        raise ValueError(f"{path}: run format version {data.get('version')!r}, this kldiv reads {RUN_FORMAT_VERSION}")
    return RunInfo(path=path, command=data["command"], config=data["config"], history=data["history"])


def saved_config(directory: str | Path) -> tuple[dict[str, JSONValue], Path] | None:
    """The configuration the run's last checkpoint was trained with, and the file that says so (the checkpoint's
    manifest); the ``run.json`` configuration when there is no checkpoint; None when the directory holds no run."""
    directory = Path(directory)
    meta = read_manifest_meta(directory, CHECKPOINT)
    config = None if meta is None else meta.get("config")
    if isinstance(config, dict):
        return config, directory / f"{CHECKPOINT}.json"
    try:
        info = read_run(directory)
    except FileNotFoundError:
        return None
    return info.config, info.path


def load_config(directory: str | Path, command: str, config_type: Callable[..., T]) -> T:
    """The configuration the run's last checkpoint was trained with, as the dataclass ``config_type`` (entries it
    has no field for, such as the data's fingerprint, are left out); raises ValueError when the directory holds a
    run of another command or a configuration ``config_type`` rejects."""
    info = read_run(directory)
    if info.command != command:
        raise ValueError(f"{directory} holds a run of `kldiv {info.command}`, not of `kldiv {command}`")
    saved = saved_config(directory)
    assert saved is not None  # run.json exists
    config, where = saved
    known = {f.name for f in fields(config_type)}  # type: ignore[arg-type]
    try:
        return config_type(**{k: v for k, v in config.items() if k in known})
    except (OptionError, TypeError) as e:
        raise ValueError(f"{where}: the run's configuration is invalid ({e})") from None


def _json_config(config: Mapping[str, object]) -> dict[str, JSONValue]:
    """``config`` as plain JSON values (tuples become lists), every key a str and every value JSON-able."""
    out: dict[str, JSONValue] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise TypeError(f"config keys must be str, got {key!r}")
        try:
            out[key] = json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise TypeError(f"config[{key!r}] = {value!r} is not a finite JSON value ({e})") from None
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _environment() -> dict[str, JSONValue]:
    from kldiv import __version__

    return {"kldiv": __version__, "torch": torch.__version__, "python": platform.python_version()}


class Run:
    """A run directory opened for training by this process (use :meth:`open`, as a context manager)."""

    def __init__(
        self,
        directory: Path,
        *,
        command: str,
        config: dict[str, JSONValue],
        options: RunOptions,
        volatile: Collection[str] = (),
        fixed: Collection[str] = (),
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.directory = directory
        self.command = command
        self.config = config
        self.options = options
        self.volatile = frozenset(volatile)
        self.fixed = frozenset(fixed)
        self.rank = rank
        self.world_size = world_size
        self.checkpoint: Checkpoint | None = None  # the checkpoint to resume from
        self.changes: dict[str, list[JSONValue]] = {}
        self.saved: tuple[int, int, int] | None = None  # (epoch, batch, step) of the last checkpoint saved or loaded
        self._lock = DirectoryLock(directory, command)
        self._created: list[Path] = []  # the directories this process created, outermost first
        self._fresh = False  # a new run: on a failed start, remove what it wrote

    # ------------------------------------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        options: RunOptions,
        *,
        command: str,
        config: Mapping[str, object],
        volatile: Collection[str] = (),
        fixed: Collection[str] = (),
    ) -> Run:
        """Open ``options.out`` for a run of ``command`` with ``config`` (the options that define the run).

        ``volatile`` names the keys of ``config`` that a resume may change freely (where the data lives, how
        often to evaluate, ...): they are recorded, not refused. ``fixed`` names the keys that can never change
        within a run. Raises :class:`RunError` (or :class:`kldiv.runs.errors.RunLockedError`) when the directory
        cannot be used as asked, ``OptionError`` for a bad ``out`` or ``allow_changes`` entry.
        """
        run = cls._make(options, command, config, volatile, fixed)
        error: str | None = None
        if run.rank == 0:
            try:
                run._open_main()
            except RunError as e:
                error = str(e)
                if run.world_size == 1:
                    raise
        if run.world_size > 1:
            verdict = [error]
            dist.broadcast_object_list(verdict, src=0)
            if verdict[0] is not None:
                raise RunError(verdict[0])
            if run.rank != 0 and options.resume:
                run.checkpoint = run._read_checkpoint()
        return run

    @classmethod
    def check(
        cls,
        options: RunOptions,
        *,
        command: str,
        config: Mapping[str, object],
        volatile: Collection[str] = (),
        fixed: Collection[str] = (),
    ) -> None:
        """Raise what :meth:`open` would raise for this directory now, without locking or writing anything (to
        check every run of a sweep before the first one trains)."""
        run = cls._make(options, command, config, volatile, fixed, world_size=1)
        if run.directory.is_dir():
            run._decide(write=False)
        elif options.resume:
            raise RunError(f"nothing to resume: {run.directory} does not exist (check {run._say('out')})")

    @classmethod
    def _make(
        cls,
        options: RunOptions,
        command: str,
        config: Mapping[str, object],
        volatile: Collection[str],
        fixed: Collection[str],
        world_size: int | None = None,
    ) -> Run:
        json_config = _json_config(config)
        choices = sorted(k for k in json_config if k not in volatile and k not in fixed)
        never = [name for name in options.allow_changes if name in fixed]
        if never:
            shown = ", ".join(option_text(k, options.cli) for k in never)
            raise OptionError("allow_change", f"{shown} cannot change within a run; start a new run instead")
        unknown = [name for name in options.allow_changes if name not in choices]
        if unknown:
            shown = ", ".join(option_text(k, options.cli) for k in choices)
            raise OptionError(
                "allow_change", f"{', '.join(map(repr, unknown))} is not an option of {command}; options: {shown}"
            )
        rank, size = (0, 1) if world_size == 1 else world()
        return cls(
            Path(options.out),
            command=command,
            config=json_config,
            options=options,
            volatile=volatile,
            fixed=fixed,
            rank=rank,
            world_size=size,
        )

    def _say(self, name: str) -> str:
        return option_text(name, self.options.cli)

    def _open_main(self) -> None:
        for _ in range(3):  # a directory removed by another process's failed start between our mkdir and lock
            self._make_directory()
            try:
                self._lock.acquire()
                break
            except FileNotFoundError:
                self._created.clear()
            except RunError:
                self._remove_created_directories()
                raise
        else:
            raise RunError(f"{self.directory} keeps disappearing while it is opened; is another process removing it?")
        try:
            self._decide(write=True)
            self._lock.describe_holder()
        except BaseException:
            self._release(failed=self._fresh)  # a refused directory is left as it was
            raise

    def _make_directory(self) -> None:
        """Create the missing components of the directory one by one, remembering the ones this process made."""
        if self.directory.is_dir():
            return
        if self.options.resume:
            raise RunError(f"nothing to resume: {self.directory} does not exist (check {self._say('out')})")
        missing = [p for p in (self.directory, *self.directory.parents) if not p.exists()]
        for path in reversed(missing):
            try:
                os.mkdir(path)
                self._created.append(path)
            except FileExistsError:
                continue
            except OSError as e:
                self._remove_created_directories()
                raise OptionError("out", f"cannot create the directory {path}: {e.strerror}") from None

    def _decide(self, *, write: bool) -> None:
        """Decide whether the directory may be used as asked; with ``write`` (holding the lock), prepare it."""
        directory, options = self.directory, self.options
        entries = {p.name for p in directory.iterdir()}
        content = {n for n in entries if n != LOCK_FILE and not (n.startswith(".") and n.endswith(".tmp"))}
        has_run = RUN_FILE in content
        has_checkpoint = (directory / f"{CHECKPOINT}.json").is_file()
        if options.resume:
            if not has_checkpoint:
                why = "the run there saved no checkpoint yet" if has_run else "it holds no checkpoint"
                raise RunError(
                    f"nothing to resume in {directory}: {why}; check {self._say('out')}, or start without "
                    f"{self._say('resume')}"
                )
            self._check_command()
            checkpoint = self._read_checkpoint()
            self.changes = self._compare(checkpoint)
            if write:
                self.checkpoint = checkpoint
                remove_orphaned_temporaries(directory)
                clean_interrupted_saves(directory, CHECKPOINT)
            return
        orphans = {n for n in content if re.fullmatch(rf"{CHECKPOINT}-\d+\.(?:safetensors|state\.pt)", n)}
        abandoned = has_run and not has_checkpoint and content - orphans <= _START_FILES
        if has_run and not abandoned and not options.overwrite:
            raise RunError(
                f"{directory} already holds a run ({self._describe_run()}); continue it with {self._say('resume')}, "
                f"replace it with {self._say('overwrite')}, or choose another {self._say('out')}"
            )
        if content and not has_run:
            shown = ", ".join(sorted(content)[:5]) + (", ..." if len(content) > 5 else "")
            raise RunError(
                f"{directory} is not empty and holds no kldiv run ({shown}); refusing to write into it or delete its "
                f"files: choose a new or empty {self._say('out')}"
            )
        if write:
            self._empty()
            self._fresh = True
            self._write_run_file([{"event": "start", "time": _now(), **_environment()}])

    def _check_command(self) -> None:
        try:
            info = read_run(self.directory)
        except (FileNotFoundError, ValueError) as e:
            raise RunError(str(e)) from None
        if info.command != self.command:
            raise RunError(
                f"{self.directory} holds a run of `kldiv {info.command}`, not of `kldiv {self.command}`; choose "
                f"another {self._say('out')}"
            )

    def _read_checkpoint(self) -> Checkpoint:
        try:
            return read_checkpoint(self.directory, name=CHECKPOINT)
        except (FileNotFoundError, ValueError) as e:
            raise RunError(str(e)) from None

    def _describe_run(self) -> str:
        try:
            info = read_run(self.directory)
        except (FileNotFoundError, ValueError):
            return "its run.json is unreadable"
        started = info.history[0].get("time", "?") if info.history else "?"
        return f"`kldiv {info.command}`, started {started}"

    def _compare(self, checkpoint: Checkpoint) -> dict[str, list[JSONValue]]:
        """``{option: [saved, requested]}`` for every option that differs; refuses the ones not allowed."""
        saved = checkpoint.state.get("config")
        if not isinstance(saved, dict) or not all(isinstance(k, str) for k in saved):
            raise RunError(f"{checkpoint.state_path}: malformed checkpoint: its config is not a dict of options")
        changes = {
            key: [saved.get(key), self.config.get(key)]
            for key in sorted(set(saved) | set(self.config))
            if saved.get(key) != self.config.get(key)
        }
        fixed = [key for key in changes if key in self.fixed]
        if fixed:
            listed = "; ".join(self._change_text(key, changes[key]) for key in fixed)
            raise RunError(
                f"resuming {self.directory} would change what the run is: {listed}. These cannot change within a "
                f"run (the checkpoint's weights, data order and position depend on them): pass the run's own values, "
                f"or start a new run with another {self._say('out')}"
            )
        refused = [key for key in changes if key not in self.volatile and key not in self.options.allow_changes]
        if refused:
            listed = "; ".join(self._change_text(key, changes[key]) for key in refused)
            allow = " ".join(f"{self._say('allow_change')} {k}" for k in refused)
            raise RunError(
                f"resuming {self.directory} would change the run: {listed} (the checkpoint was trained with the "
                f"former). Pass the same options, or make the change deliberately with {allow}"
            )
        return changes

    def _change_text(self, key: str, change: list[JSONValue]) -> str:
        return f"{self._say(key)} {change[0]!r} -> {change[1]!r}"

    def _empty(self) -> None:
        """Delete everything in the directory but the lock file (a new run, or ``overwrite``). Symbolic links are
        removed, never followed."""
        for path in self.directory.iterdir():
            if path.name == LOCK_FILE:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _write_run_file(self, history: list[dict[str, JSONValue]]) -> None:
        data = {
            "format": RUN_FORMAT,
            "version": RUN_FORMAT_VERSION,
            "command": self.command,
            "config": self.config,
            "history": history,
        }
        self.write_bytes(RUN_FILE, (json.dumps(data, indent=2) + "\n").encode())

    # ---------------------------------------------------------------------------------------------- while open

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def allowed_changes(self) -> dict[str, list[JSONValue]]:
        """The changes of this resume that needed ``allow_changes`` (not the volatile ones)."""
        return {key: change for key, change in self.changes.items() if key not in self.volatile}

    def record_resume(self, at: Mapping[str, int]) -> None:
        """Append the resume (and the options it changed) to ``run.json``'s history; its config becomes the new one."""
        if not self.is_main:
            return
        try:
            history = read_run(self.directory).history
        except (FileNotFoundError, ValueError):
            history = []
        event: dict[str, JSONValue] = {"event": "resume", "time": _now(), "at": dict(at), **_environment()}
        if self.changes:
            event["changes"] = {key: {"from": old, "to": new} for key, (old, new) in self.changes.items()}
        self._write_run_file([*history, event])

    def save(self, model: nn.Module, state: dict[str, object], at: tuple[int, int, int]) -> None:
        """Save checkpoint ``last`` (rank 0); ``at`` is its (epoch, batch, step). A failed write is a
        :class:`RunWriteError` saying which checkpoint the directory holds."""
        if self.is_main:
            try:
                save_checkpoint(
                    self.directory,
                    model=model,
                    state={"config": self.config, **state},
                    name=CHECKPOINT,
                    meta={"config": self.config},
                )
            except OSError as e:
                if self._names_new(at):  # the new checkpoint is in place; only making the rename durable failed
                    self.saved = at
                raise self._write_error("the checkpoint", e) from None
        self.saved = at

    def _names_new(self, at: tuple[int, int, int]) -> bool:
        """Whether the checkpoint on disk is the one being saved at ``at`` (its manifest was already replaced)."""
        try:
            loop = read_checkpoint(self.directory, name=CHECKPOINT).state.get("loop")
        except (OSError, ValueError):
            return False
        return isinstance(loop, dict) and (loop.get("epoch"), loop.get("batch"), loop.get("step")) == at

    def _write_error(self, what: str, e: OSError) -> RunWriteError:
        kept = self.describe_checkpoint()
        return RunWriteError(
            f"could not write {what} in {self.directory}: {e.strerror or e} ({e.filename or self.directory}); "
            f"{kept[0].upper() + kept[1:]}"
        )

    def describe_checkpoint(self) -> str:
        """Which checkpoint the directory holds now, for messages ("the checkpoint ... is kept" / "there is none")."""
        if self.saved is None:
            return "no checkpoint was saved"
        epoch, batch, step = self.saved
        where = f"epoch {epoch} completed" if batch == 0 else f"epoch {epoch + 1}, after batch {batch}"
        return f"the last checkpoint ({self.directory / (CHECKPOINT + '.json')}: {where}, step {step}) is intact"

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a file of the run atomically (rank 0 only; other ranks do nothing); a failure is a
        :class:`RunWriteError`."""
        if self.is_main:
            try:
                atomic_write_bytes(self.directory / name, data)
            except OSError as e:
                raise self._write_error(name, e) from None

    # --------------------------------------------------------------------------------------------- closing

    def close(self, failed: bool = False) -> None:
        """Release the directory. After a failed start that saved no checkpoint, remove what this run wrote."""
        if self.is_main:
            self._release(failed=failed and self._fresh and self.saved is None)

    def _release(self, *, failed: bool) -> None:
        """Release the lock; with ``failed``, first remove what this run wrote (holding the lock while the files go,
        so no newcomer can write into a directory that is being removed)."""
        if not self._lock.held:
            return
        if failed:
            self._empty()
            (self.directory / LOCK_FILE).unlink(missing_ok=True)
            if self._created and self._created[-1] == self.directory:
                _remove_empty_directory(self.directory)
        self._lock.release()
        self._remove_created_directories()  # only the empty ones: after a success, none

    def _remove_created_directories(self) -> None:
        """Remove the directories this process created, innermost first, each only if it is empty."""
        for path in reversed(self._created):
            _remove_empty_directory(path)
        self._created.clear()

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close(failed=kind is not None)


def _remove_empty_directory(path: Path) -> None:
    try:
        os.rmdir(path)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EBUSY):
            raise
