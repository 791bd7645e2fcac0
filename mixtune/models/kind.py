"""The one place that decides whether a model is causal (decoder-only) or seq2seq (encoder-decoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixtune.errors import ConfigError
from mixtune.limits import json_loads
from mixtune.models.spec import Kind, ModelConfig


def model_kind(source: Any, *, declared: Kind | None = None) -> Kind | None:
    """'causal' or 'seq2seq' of whatever describes the model, or None when that cannot be told unloaded.

    `source` is a `ModelConfig` (its `kind`, an `encoder_decoder`, a `config` dict, or a local folder's
    config.json; None for a hub model of undeclared kind), a folder (its config.json; None without one), a
    config dict (its `is_encoder_decoder`, else its model_type's default), or a loaded model or transformers
    config (its `is_encoder_decoder`; never None). A `declared` kind that disagrees is a ConfigError.
    """
    if isinstance(source, ModelConfig):
        if source.kind is not None:
            return source.kind
        if source.encoder_decoder is not None:
            return "seq2seq"
        found = model_kind(source.config if source.config is not None else str(source.name_or_path))
    elif isinstance(source, (str, Path)):
        try:
            values = json_loads((Path(source).expanduser() / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        found = _seq2seq_if(bool(values.get("is_encoder_decoder")))
    elif isinstance(source, dict):
        found = _kind_of_values(source)
    else:
        config = getattr(source, "config", source)
        found = _seq2seq_if(bool(getattr(config, "is_encoder_decoder", False)))
    if declared is not None and found is not None and declared != found:
        raise ConfigError(f"model.kind is {declared!r} but the model config is "
                          f"{'an encoder-decoder' if found == 'seq2seq' else 'decoder-only'}",
                          field="model.kind", hint=f"set kind: {found} or leave it out to detect it")
    return found


def _seq2seq_if(is_encoder_decoder: bool) -> Kind:
    return "seq2seq" if is_encoder_decoder else "causal"


def _kind_of_values(values: dict[str, Any]) -> Kind | None:
    if "is_encoder_decoder" in values:
        return _seq2seq_if(bool(values["is_encoder_decoder"]))
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        config_cls = CONFIG_MAPPING[values.get("model_type")]
    except KeyError:
        return None
    return _seq2seq_if(bool(getattr(config_cls(), "is_encoder_decoder", False)))
