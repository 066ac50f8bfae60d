"""Sides that train in processes of their own, one epoch per request, and a competing CPU-bound process.

A benchmark module runs itself with ``--worker NAME`` as a worker: :func:`serve` says it is ready (its set-up
done), then reads one command per line from stdin and answers each with one line of JSON; the controller's
:class:`Worker` waits for the worker to be ready (so no side's set-up competes with another side's epoch), then
writes the commands and reads the answers. A side in its own process keeps its thread count, its allocator and
its random state to itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def serve(run_epoch: Callable[[], dict[str, Any]], finish: Callable[[], dict[str, Any]]) -> None:
    """Say 'ready', then answer 'epoch' with one epoch's figures and 'finish' with the final ones, until stdin
    closes."""
    _reply({"ready": True})
    for line in sys.stdin:
        command = line.strip()
        if command == "epoch":
            _reply(run_epoch())
        elif command == "finish":
            _reply(finish())
            return


def _reply(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


class Worker:
    """A side that lives in its own process (``python -m MODULE --worker NAME ARGS``) and trains one epoch when
    asked."""

    def __init__(self, module: str, name: str, args: list[str]) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--worker", name, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self._read()  # the worker's set-up is done

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker died (exit code {self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Load:
    """One competing CPU-bound process, created paused; :meth:`resume` and :meth:`pause` switch it on and off."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        self.pause()

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
