"""The errors of training runs; the command line turns each into one ``error:`` line."""

from __future__ import annotations


class OptionError(ValueError):
    """A bad value of one option of a training configuration.

    ``option`` is the configuration field's name (``batch_size``); the command line shows it as the option the
    user typed (``--batch-size``). ``str(error)`` reads ``"batch_size: must be a positive int, got 0"``.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


class RunError(RuntimeError):
    """A run directory cannot be used as asked: it holds a run already, has nothing to resume, would change the
    run's options, or its checkpoint cannot be read or written."""


class TrainingFailedError(RunError):
    """Training started and could not go on; the message names the checkpoint that was kept, if any."""


class TrainingDivergedError(TrainingFailedError):
    """The loss became NaN or infinite."""


class RunWriteError(TrainingFailedError):
    """A file of the run could not be written (a full disk, say); the previous checkpoint is intact."""


class RunLockedError(RunError):
    """Another process is writing to the run directory."""
