"""A run directory and the rules for writing into it: one writer, no silent overwrite, resume only as it was.

A run directory holds ``run.json`` (the command, its configuration and the history of starts, resumes and
changes), the checkpoint ``last`` (:mod:`kldiv.runs.checkpoint`), ``metrics.csv`` and whatever figures the
command writes. :meth:`Run.open` enforces, before anything is written:

* a new run goes only into a new or empty directory (or one whose earlier start never saved a checkpoint);
  a directory holding a run is refused unless ``resume`` (continue it) or ``overwrite`` (replace it: every file
  in it is deleted first) is given, and ``overwrite`` refuses a directory that holds no kldiv run;
* ``resume`` needs a checkpoint, and refuses options that differ from the ones the checkpoint was trained with
  (except the ones the command declares harmless, and those named in ``allow_changes``, which are recorded in
  ``run.json``); a refused resume changes nothing on disk;
* one process writes at a time: the directory is locked (:mod:`kldiv.runs.lock`) and a second writer fails at
  once naming the holder;
* a start that fails before its first checkpoint leaves no directory behind (or, in a directory that existed,
  nothing of its own).

Under ``torchrun`` rank 0 alone takes the lock and writes; the other ranks follow its verdict.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kldiv.runs.checkpoint import (
    Checkpoint,
    atomic_write_bytes,
    clean_interrupted_saves,
    read_checkpoint,
    save_checkpoint,
)
from kldiv.runs.distributed import world
from kldiv.runs.errors import RunWriteError, OptionError, RunError
from kldiv.runs.lock import LOCK_FILE, DirectoryLock

RUN_FILE = "run.json"
CHECKPOINT = "last"
RUN_FORMAT = "kldiv.run"
RUN_FORMAT_VERSION = 1

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
    progress bars. ``cli``: name options as on the command line in messages.
    """

    out: str | Path
    resume: bool = False
    overwrite: bool = False
    allow_changes: tuple[str, ...] = ()
    checkpoint_steps: int = 0
    progress: bool = True
    cli: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.out, (str, Path)) or not str(self.out):
            raise OptionError("out", f"must be a directory path, got {self.out!r}")
        path = Path(self.out)
        if path.exists() and not path.is_dir():
            raise OptionError("out", f"{path} is a file, not a directory")
        if self.resume and self.overwrite:
            raise OptionError(
                "overwrite",
                f"cannot be combined with {option_text('resume', self.cli)}: one continues the run, the other replaces it",
            )
        if isinstance(self.checkpoint_steps, bool) or not isinstance(self.checkpoint_steps, int):
            raise OptionError("checkpoint_steps", f"must be an int >= 0, got {self.checkpoint_steps!r}")
        if self.checkpoint_steps < 0:
            raise OptionError("checkpoint_steps", f"must be >= 0 (0: at epoch ends only), got {self.checkpoint_steps}")
        if self.allow_changes and not self.resume:
            raise OptionError("allow_change", f"only applies with {option_text('resume', self.cli)}")
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
    ):
        raise ValueError(f"{path}: not a kldiv run description (format {RUN_FORMAT!r}, command, config, history)")
    if data.get("version") != RUN_FORMAT_VERSION:
        raise ValueError(f"{path}: run format version {data.get('version')!r}, this kldiv reads {RUN_FORMAT_VERSION}")
    return RunInfo(path=path, command=data["command"], config=data["config"], history=data["history"])


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
        rank: int,
        world_size: int,
    ) -> None:
        self.directory = directory
        self.command = command
        self.config = config
        self.options = options
        self.rank = rank
        self.world_size = world_size
        self.checkpoint: Checkpoint | None = None  # the checkpoint to resume from
        self.changes: dict[str, list[JSONValue]] = {}
        self.saved: tuple[int, int, int] | None = None  # (epoch, batch, step) of the last checkpoint saved or loaded
        self._lock = DirectoryLock(directory, command)
        self._created: Path | None = None  # the outermost directory this process created
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
    ) -> Run:
        """Open ``options.out`` for a run of ``command`` with ``config`` (the options that define the run).

        ``volatile`` names the keys of ``config`` that a resume may change freely (where the data lives, how
        often to evaluate, ...): they are recorded, not refused. Raises :class:`RunError` (or
        :class:`kldiv.runs.errors.RunLockedError`) when the directory cannot be used as asked, ``OptionError``
        for an ``allow_changes`` entry that is not an option.
        """
        json_config = _json_config(config)
        unknown = [name for name in options.allow_changes if name not in json_config]
        if unknown:
            raise OptionError(
                "allow_change", f"{', '.join(map(repr, unknown))} is not an option of {command}; options: "
                + ", ".join(sorted(json_config))
            )
        rank, world_size = world()
        run = cls(
            Path(options.out), command=command, config=json_config, options=options, rank=rank, world_size=world_size
        )
        error: str | None = None
        if rank == 0:
            try:
                run._open_main(set(volatile))
            except RunError as e:
                error = str(e)
                if world_size == 1:
                    raise
        if world_size > 1:
            verdict = [error]
            dist.broadcast_object_list(verdict, src=0)
            if verdict[0] is not None:
                raise RunError(verdict[0])
            if rank != 0 and options.resume:
                run.checkpoint = run._read_checkpoint()
        return run

    def _say(self, name: str) -> str:
        return option_text(name, self.options.cli)

    def _open_main(self, volatile: set[str]) -> None:
        directory, options = self.directory, self.options
        if not directory.exists():
            if options.resume:
                raise RunError(f"nothing to resume: {directory} does not exist (check {self._say('out')})")
            missing = directory
            while not missing.parent.exists():
                missing = missing.parent
            directory.mkdir(parents=True, exist_ok=True)
            self._created = missing
        try:
            self._lock.acquire()
        except RunError:
            self._remove_created()
            raise
        try:
            self._claim(volatile)
        except BaseException:
            if self._created is not None:
                self._remove_created()
            self._lock.release()
            raise

    def _claim(self, volatile: set[str]) -> None:
        """Decide, holding the lock, whether the directory may be used as asked; prepare it if so."""
        directory, options = self.directory, self.options
        entries = {p.name for p in directory.iterdir()} - {LOCK_FILE}
        leftovers = {name for name in entries if name.startswith(".") and name.endswith(".tmp")}
        entries -= leftovers
        has_run = RUN_FILE in entries
        has_checkpoint = (directory / f"{CHECKPOINT}.json").is_file()
        if options.resume:
            if not has_checkpoint:
                why = "the run there saved no checkpoint yet" if has_run else "it holds no checkpoint"
                raise RunError(
                    f"nothing to resume in {directory}: {why}; check {self._say('out')}, or start without "
                    f"{self._say('resume')}"
                )
            self._check_command()
            self.checkpoint = self._read_checkpoint()
            self.changes = self._compare(self.checkpoint, volatile)
            for name in leftovers:
                (directory / name).unlink(missing_ok=True)
            clean_interrupted_saves(directory, CHECKPOINT)
            return
        if has_run and has_checkpoint and not options.overwrite:
            raise RunError(
                f"{directory} already holds a run ({self._describe_run()}); continue it with {self._say('resume')}, "
                f"replace it with {self._say('overwrite')}, or choose another {self._say('out')}"
            )
        if entries and not has_run:
            shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise RunError(
                f"{directory} is not empty and holds no kldiv run ({shown}); refusing to write into it or delete its "
                f"files: choose a new or empty {self._say('out')}"
            )
        self._empty()
        self._fresh = True
        self._write_run_file([{"event": "start", "time": _now(), **_environment()}])

    def _check_command(self) -> None:
        info = read_run(self.directory)
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
            return "unreadable run.json"
        return f"`kldiv {info.command}`, started {info.history[0].get('time', '?') if info.history else '?'}"

    def _compare(self, checkpoint: Checkpoint, volatile: set[str]) -> dict[str, list[JSONValue]]:
        """``{option: [saved, requested]}`` for every option that differs; refuses the ones not allowed."""
        saved = checkpoint.state.get("config")
        if not isinstance(saved, dict) or not all(isinstance(k, str) for k in saved):
            raise RunError(f"{checkpoint.state_path}: malformed checkpoint: its config is not a dict of options")
        changes = {
            key: [saved.get(key), self.config.get(key)]
            for key in sorted(set(saved) | set(self.config))
            if saved.get(key) != self.config.get(key)
        }
        refused = [key for key in changes if key not in volatile and key not in self.options.allow_changes]
        if refused:
            listed = "; ".join(f"{self._say(k)} {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
            allow = " ".join(f"{self._say('allow_change')} {k}" for k in refused)
            raise RunError(
                f"resuming {self.directory} would change the run: {listed} (the checkpoint was trained with the "
                f"former). Pass the same options, or make the change deliberately with {allow}"
            )
        return changes

    def _empty(self) -> None:
        """Delete everything in the directory but the lock (a new run, or ``overwrite``)."""
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

    def record_resume(self, at: Mapping[str, int]) -> None:
        """Append the resume (and the options it changed) to ``run.json``'s history; the config becomes the new one."""
        if not self.is_main:
            return
        info = read_run(self.directory)
        event: dict[str, JSONValue] = {"event": "resume", "time": _now(), "at": dict(at), **_environment()}
        if self.changes:
            event["changes"] = {key: {"from": old, "to": new} for key, (old, new) in self.changes.items()}
        self._write_run_file([*info.history, event])

    def save(self, model: nn.Module, state: dict[str, object], at: tuple[int, int, int]) -> None:
        """Save checkpoint ``last`` (rank 0); ``at`` is its (epoch, batch, step). A failed write is a
        :class:`RunError` saying that the previous checkpoint is intact."""
        if self.is_main:
            try:
                save_checkpoint(self.directory, model=model, state={"config": self.config, **state}, name=CHECKPOINT)
            except OSError as e:
                before = self.describe_checkpoint()
                raise RunWriteError(
                    f"could not save the checkpoint in {self.directory}: {e.strerror or e} "
                    f"({e.filename or self.directory}); {before[0].upper() + before[1:]}"
                ) from None
        self.saved = at

    def describe_checkpoint(self) -> str:
        """Which checkpoint the directory holds now, for messages ("the checkpoint ... is kept" / "there is none")."""
        if self.saved is None:
            return "no checkpoint was saved"
        epoch, batch, step = self.saved
        where = f"epoch {epoch} completed" if batch == 0 else f"epoch {epoch + 1}, after batch {batch}"
        return f"the last checkpoint ({self.directory / (CHECKPOINT + '.json')}: {where}, step {step}) is intact"

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a file of the run atomically (rank 0 only; other ranks do nothing)."""
        if self.is_main:
            atomic_write_bytes(self.directory / name, data)

    # --------------------------------------------------------------------------------------------- closing

    def close(self, failed: bool = False) -> None:
        """Release the directory. After a failed start that saved no checkpoint, remove what this run wrote."""
        if not self.is_main:
            return
        if failed and self._fresh and self.saved is None and self._lock.held:
            if self._created is not None:
                self._remove_created()
            else:
                self._empty()
                (self.directory / LOCK_FILE).unlink(missing_ok=True)
        self._lock.release()

    def _remove_created(self) -> None:
        """Remove the directories this process created (holding the lock while the files go)."""
        if self._created is None:
            return
        (self.directory / LOCK_FILE).unlink(missing_ok=True)
        shutil.rmtree(self._created, ignore_errors=True)
        self._created = None

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close(failed=kind is not None)

