"""Offline use of torchvision's pretrained weights: seed the torch hub cache.

torchvision's weights API downloads ``<hub dir>/checkpoints/<file>`` on first use and reads it
from there afterwards. Where the network is closed, copy the files there beforehand; the loading
code stays standard torchvision (``mobilenet_v2(weights="IMAGENET1K_V1")``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .._atomic import atomic_copy

__all__ = ["seed_torch_hub_cache"]


def seed_torch_hub_cache(weights_dir: str | os.PathLike) -> list[Path]:
    """Copy every ``*.pth`` of ``weights_dir`` into the torch hub checkpoint cache (if missing).

    Returns the cached paths. Raises ``FileNotFoundError`` naming the folder if it has no weights.
    """
    source = Path(weights_dir)
    files = sorted(source.glob("*.pth")) if source.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no *.pth weight files in {source}")
    target = Path(torch.hub.get_dir()) / "checkpoints"
    target.mkdir(parents=True, exist_ok=True)
    cached = []
    for file in files:
        destination = target / file.name
        if not destination.exists() or destination.stat().st_size != file.stat().st_size:
            atomic_copy(file, destination)
        cached.append(destination)
    return cached
