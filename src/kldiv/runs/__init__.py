"""The one run layer of every training command: a locked run directory, atomic safetensors checkpoints, exact
resume (metrics included), refusal to overwrite a run or to resume with changed options, and no unpickling of
untrusted files.

:class:`Run` opens the directory (:class:`RunOptions` say how), :class:`TrainingLoop` runs epochs of steps in
it, :mod:`kldiv.runs.checkpoint` stores the files.
"""

from kldiv.runs.checkpoint import (
    Checkpoint,
    atomic_write_bytes,
    load_checkpoint,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from kldiv.runs.distributed import is_main_process, world
from kldiv.runs.errors import (
    OptionError,
    RunError,
    RunLockedError,
    RunWriteError,
    TrainingDivergedError,
    TrainingFailedError,
)
from kldiv.runs.loop import METRICS_FILE, TrainingLoop, csv_bytes, flush_subnormal_state_
from kldiv.runs.run import (
    RUN_FILE,
    Run,
    RunInfo,
    RunOptions,
    load_config,
    option_text,
    read_run,
    saved_config,
)

__all__ = [
    "METRICS_FILE",
    "RUN_FILE",
    "Checkpoint",
    "OptionError",
    "Run",
    "RunError",
    "RunInfo",
    "RunLockedError",
    "RunOptions",
    "RunWriteError",
    "TrainingDivergedError",
    "TrainingFailedError",
    "TrainingLoop",
    "atomic_write_bytes",
    "csv_bytes",
    "flush_subnormal_state_",
    "is_main_process",
    "load_checkpoint",
    "load_config",
    "option_text",
    "read_checkpoint",
    "read_run",
    "rng_state",
    "save_checkpoint",
    "saved_config",
    "set_rng_state",
    "world",
]
