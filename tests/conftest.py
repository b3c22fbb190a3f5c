"""Shared pytest fixtures.

``shared_dir`` points at the read-only ``../shared`` folder beside the checkout (override with the
``DETLOSSES_SHARED`` environment variable); tests that need it are skipped with a reason when absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# pytest-xdist runs one process per core: more threads than cores makes OpenMP spin and
# slows everything down many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_root() -> Path:
    return Path(os.environ.get("DETLOSSES_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = _shared_root()
    if not root.is_dir():
        pytest.skip(f"../shared is not available at {root} (set DETLOSSES_SHARED to its location)")
    return root


@pytest.fixture(scope="session")
def bccd_root(shared_dir: Path) -> Path:
    root = shared_dir / "datasets" / "bccd"
    if not (root / "Annotations").is_dir():
        pytest.skip(f"BCCD data set not found at {root}")
    return root


@pytest.fixture(scope="session")
def coco128_yaml(shared_dir: Path) -> Path:
    path = shared_dir / "datasets" / "coco128" / "data.yaml"
    if not path.is_file():
        pytest.skip(f"coco128 data set not found at {path}")
    return path


@pytest.fixture(scope="session")
def mobilenet_weights(shared_dir: Path) -> Path:
    path = shared_dir / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        pytest.skip(f"MobileNetV2 ImageNet weights not found at {path}")
    return path
