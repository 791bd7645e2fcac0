"""Building or loading the model of a `model:` section, ready to train: `load_model_and_tokenizer`."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

from mixtune.errors import ConfigError
from mixtune.models.kind import model_kind
from mixtune.models.spec import Kind, ModelConfig

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def context_length(config: Any) -> int | None:
    """The longest input the model takes, from its config (max_position_embeddings, n_positions, ...;
    an encoder-decoder's encoder), or None when the config does not say (e.g. relative positions)."""
    if config is None:
        return None
    encoder = getattr(config, "encoder", None)
    if getattr(config, "is_encoder_decoder", False) and encoder is not None and not isinstance(encoder, dict):
        config = encoder
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, _DTYPES[name])


def _build_config(cfg: ModelConfig, tokenizer: Any) -> Any:
    from transformers import AutoConfig

    values = dict(cfg.config or {})
    model_type = values.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **values)
    except ValueError as e:
        raise ConfigError(str(e), field="model.config.model_type",
                          hint="a transformers model type, e.g. llama") from None
    config.vocab_size = len(tokenizer)
    return config


def _load_config(cfg: ModelConfig, source: str) -> Any:
    """The checkpoint's transformers config; a model type mixtune defines is registered first."""
    from transformers import AutoConfig, PretrainedConfig

    from mixtune.architectures import register_architecture

    try:
        values, _ = PretrainedConfig.get_config_dict(source)
        register_architecture(values.get("model_type"))
        return AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        hint = "check the hub name or that the folder has a config.json"
        if not Path(source).exists():
            hint += " (no such local folder; without network only local folders load)"
        raise ConfigError(f"cannot load model {source!r}: {e}", field="model.name_or_path", hint=hint) from None


@contextlib.contextmanager
def _attention_available(cfg: ModelConfig) -> Any:
    """Turn transformers' error for an attention kernel this machine lacks into a one-line ConfigError."""
    try:
        yield
    except ImportError as e:
        if cfg.attn_implementation is None or cfg.attn_implementation.split("_")[0] not in str(e).lower():
            raise
        raise ConfigError(f"attention implementation {cfg.attn_implementation!r} is not available here: "
                          f"{str(e).splitlines()[0]}", field="model.attn_implementation",
                          hint="install its package (e.g. flash-attn on a CUDA machine) or use sdpa") from None


def load_model_and_tokenizer(cfg: ModelConfig) -> tuple[Any, Any, Kind]:
    """Build or load the model of a `model:` section, with its tokenizer and kind ('causal'/'seq2seq').

    Config-built models get vocab_size = len(tokenizer). Saved folders and hub models load from
    safetensors only. Gradient checkpointing (non-reentrant) and LoRA are applied last.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from mixtune.models.encoder_decoder import build_encoder_decoder
    from mixtune.models.lora import apply_lora
    from mixtune.models.tokenizer import chat_marker_ids, load_tokenizer, set_special_ids
    from mixtune.models.warm_start import warm_start

    if cfg.trust_remote_code:
        warnings.warn(f"model.trust_remote_code is true: code from {cfg.name_or_path!r} will run on this machine",
                      UserWarning, stacklevel=2)
    dtype = _torch_dtype(cfg.dtype)
    extra: dict[str, Any] = {"dtype": dtype}
    if cfg.attn_implementation is not None:
        extra["attn_implementation"] = cfg.attn_implementation

    kind: Kind
    if cfg.encoder_decoder is not None:
        tokenizer = load_tokenizer(cfg)
        kind = "seq2seq"
        model = build_encoder_decoder(cfg.encoder_decoder, tokenizer, extra)
    elif cfg.config is not None:
        tokenizer = load_tokenizer(cfg)
        config = _build_config(cfg, tokenizer)
        kind = model_kind(config, declared=cfg.kind)  # type: ignore[assignment]
        auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        with _attention_available(cfg):
            model = auto.from_config(config, **extra)
        if cfg.init_from is not None:
            warm_start(model, cfg.init_from)
    else:
        source = cfg.name_or_path
        assert source is not None
        config = _load_config(cfg, source)
        tokenizer = load_tokenizer(cfg)
        kind = model_kind(config, declared=cfg.kind)  # type: ignore[assignment]
        auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        try:
            with _attention_available(cfg):
                model = auto.from_pretrained(source, use_safetensors=True, trust_remote_code=cfg.trust_remote_code,
                                             **extra)
        except OSError as e:
            raise ConfigError(f"cannot load weights of {source!r}: {e}", field="model.name_or_path",
                              hint="mixtune loads safetensors weights only; convert .bin checkpoints first") from None

    context = context_length(model.config)
    if context is not None:  # the model's, not the tokenizer's (MiniLM's 512, Llama-3's 131072)
        tokenizer.model_max_length = context
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    set_special_ids(model, tokenizer, kind, fresh=cfg.name_or_path is None)

    if cfg.gradient_checkpointing:
        model.config.use_cache = False
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is not None:
        model = apply_lora(model, cfg.lora, kind, chat_marker_ids(tokenizer))
    return model, tokenizer, kind
