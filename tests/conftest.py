"""Shared test fixtures: paths to the real data beside the repository (the package is installed editable)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SHARED_DATA = ROOT.parent / "shared" / "data"
REAL_SUBSET = SHARED_DATA / "steeldefectx-real-subset"
ORACLE = SHARED_DATA / "attribute-oracle"
MAGNETIC_TILE = SHARED_DATA / "transfer-magnetic-tile" / "magnetic_tile"


def _require(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"real data not found at {path}: clone the repository with ../shared beside it")
    return path


@pytest.fixture(scope="session")
def real_subset() -> Path:
    """The 3,160-image real fixture (read in place, never copied)."""
    return _require(REAL_SUBSET)


@pytest.fixture(scope="session")
def oracle_dir() -> Path:
    """The 300 image/mask pairs with the authors' exact T3 values."""
    return _require(ORACLE)


@pytest.fixture(scope="session")
def magnetic_tile() -> Path:
    """The 392 real magnetic-tile images in 5 class folders, masks/ beside the folder (an external set)."""
    return _require(MAGNETIC_TILE)
