"""An exclusive OS lock on a run directory, held by its one writer for as long as it trains.

On POSIX the lock is ``flock`` on the directory itself, so taking it creates no file and a refused writer leaves
the directory exactly as it found it. The operating system releases it when the process ends, however it ends
(SIGKILL included), so a stale lock never blocks a later run. Once the holder has claimed the directory it writes
who it is (pid, host, start time, command) into ``run.lock`` (replaced atomically, never followed through a
symbolic link), and a refused writer quotes it. On Windows, where a directory cannot be locked, ``run.lock``
itself is locked with ``msvcrt.locking``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from kldiv.runs.checkpoint import atomic_write_bytes
from kldiv.runs.errors import RunLockedError

LOCK_FILE = "run.lock"


def _holder(path: Path) -> str:
    """The description the holder wrote into ``run.lock`` (absent until it has claimed the directory)."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}, since {info['since']} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class DirectoryLock:
    """The exclusive lock of ``directory`` (which must exist); :meth:`acquire` raises :class:`RunLockedError` at
    once if another process holds it."""

    def __init__(self, directory: Path, command: str) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise at once; a directory that is gone or replaced meanwhile is ``FileNotFoundError``."""
        fd = self._open()
        if not self._try_lock(fd):
            os.close(fd)
            raise RunLockedError(
                f"{self.directory} is in use by {_holder(self.path)}; wait for it to finish or choose another "
                "output directory"
            )
        try:  # the directory may have been removed or replaced (a failed start cleaning up) since it was opened
            same = os.path.samestat(os.fstat(fd), os.stat(self._locked_path()))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            raise FileNotFoundError(f"{self.directory} was removed while it was being opened")
        self._fd = fd

    def _locked_path(self) -> Path:
        return self.path if sys.platform == "win32" else self.directory

    def _open(self) -> int:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            return os.open(self.path, os.O_RDWR | os.O_CREAT)
        return os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

    @staticmethod
    def _try_lock(fd: int) -> bool:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            import msvcrt

            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            except OSError:
                return False
            return True
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def describe_holder(self) -> None:
        """Write who holds the lock into ``run.lock`` (after the directory is claimed)."""
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": self.command,
        }
        if sys.platform != "win32":
            atomic_write_bytes(self.path, json.dumps(info).encode())

    def release(self) -> None:
        """Release the lock (``run.lock`` stays, naming the last holder)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
