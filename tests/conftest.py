"""Shared fixtures: the bundled SuperNI sample and an isolated mixtune cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "mixtune" / "data" / "superni"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point mixtune's cache, wandb and the HF hub at per-session folders, offline."""
    cache = tmp_path_factory.mktemp("mixtune-cache")
    os.environ["MIXTUNE_CACHE"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["WANDB_MODE"] = "disabled"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    """The SuperNI sample shipped with mixtune."""
    return BUNDLED


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
