"""Shared fixtures: the bundled SuperNI sample and an isolated mixtune cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "mixtune" / "data" / "superni"
#: A 2-layer Llama (MiniLM vocabulary) for evaluation tests; `tiny_llama_dir` is it written with save_pretrained.
TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}


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


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TINY_LLAMA (seed 0) with its tokenizer, written with save_pretrained, shared by the tests that load a model dir."""
    import torch

    from mixtune.train.modeling import ModelConfig, load_model_and_tokenizer

    torch.manual_seed(0)
    model, tokenizer, _ = load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA))
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
