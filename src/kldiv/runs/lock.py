"""An exclusive OS lock on a run directory, held by its one writer for as long as it trains.

The lock is ``fcntl.flock`` (POSIX) or ``msvcrt.locking`` (Windows) on the file ``run.lock`` inside the
directory. The operating system releases it when the process ends, however it ends (a SIGKILL included), so a
stale lock never blocks a later run. The holder writes who it is (pid, host, start time, command) into the
file, and a second writer is refused at once with that description.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from kldiv.runs.errors import RunLockedError

LOCK_FILE = "run.lock"


def _try_lock(f: IO[bytes]) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _holder(path: Path) -> str:
    """The description the holder wrote into the lock file (it may be mid-write: then say less)."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}, since {info['since']} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class DirectoryLock:
    """The exclusive lock of ``directory`` (which must exist); ``acquire`` raises :class:`RunLockedError` at once if
    another process holds it."""

    def __init__(self, directory: Path, command: str) -> None:
        self.path = directory / LOCK_FILE
        self.command = command
        self._file: IO[bytes] | None = None

    def acquire(self) -> None:
        while True:
            f = open(self.path, "a+b")  # noqa: SIM115 - held open for the lock's lifetime
            if not _try_lock(f):
                f.close()
                raise RunLockedError(
                    f"{self.path.parent} is in use by {_holder(self.path)}; wait for it to finish or choose "
                    "another output directory"
                )
            try:  # the file may have been deleted (a failed start removing its directory) between open and lock
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": self.command,
        }
        f.seek(0)
        f.truncate()
        f.write(json.dumps(info).encode())
        f.flush()
        self._file = f

    def release(self) -> None:
        """Release the lock (the file stays: deleting it would let two processes lock two different files)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None
