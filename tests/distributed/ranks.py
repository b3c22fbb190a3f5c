"""Run a function on several gloo processes (one per rank) and collect what each returns."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank: int, function: Callable[[int], Any], world: int, directory: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{directory}/init", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.save(function(rank), os.path.join(directory, f"rank{rank}.pt"))
    dist.destroy_process_group()


def run_on_ranks(function: Callable[[int], Any], directory: Path, world: int = 2) -> list[Any]:
    """``[function(0), ..., function(world - 1)]``, each called in its own process of one gloo group.

    ``function`` must be importable (a module-level function or a ``functools.partial`` of one):
    the processes are spawned.
    """
    mp.start_processes(_rank_main, args=(function, world, str(directory)), nprocs=world, start_method="spawn",
                       join=True)
    return [torch.load(Path(directory) / f"rank{rank}.pt", weights_only=False) for rank in range(world)]
