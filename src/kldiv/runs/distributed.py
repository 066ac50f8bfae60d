"""Process-group helpers of training runs: the rank and world size under ``torchrun``, and rank 0 alone speaking."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size), initializing the default process group when launched by ``torchrun`` (``WORLD_SIZE``
    > 1): gloo on CPU, nccl when CUDA is available."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launch_rank() -> int:
    """This process's rank as ``torchrun`` announces it (``RANK``), before any process group exists; 0 alone."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main_process() -> bool:
    """Whether this process prints and writes files: rank 0, or the only process."""
    return launch_rank() == 0
