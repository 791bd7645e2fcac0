"""Tokenizers: loading with consistent special tokens, chat templates, and the ids models take from them."""

from __future__ import annotations

from typing import Any

from mixtune.errors import ConfigError
from mixtune.models.spec import MINILM, Kind, ModelConfig, source_path


def load_tokenizer(cfg: ModelConfig | str) -> Any:
    """The tokenizer of a `model:` section (or of a name/path/'minilm'), with pad/eos/bos ids set.

    Tokenizers without an EOS get their separator as EOS (MiniLM: [SEP]) and their [CLS] as BOS; a
    tokenizer without pad uses EOS as pad. The chat template is set from `cfg.chat_template`.
    """
    from transformers import AutoTokenizer

    if isinstance(cfg, str):
        name, chat, trust = cfg, None, False
    else:
        default = cfg.encoder_decoder.encoder if cfg.encoder_decoder is not None else MINILM
        name = cfg.tokenizer or cfg.name_or_path or default
        chat, trust = cfg.chat_template, cfg.trust_remote_code
    try:
        tok = AutoTokenizer.from_pretrained(source_path(name), trust_remote_code=trust)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load tokenizer {name!r}: {e}", field="model.tokenizer",
                          hint="give a hub name, a folder with tokenizer files, or 'minilm'") from None
    if tok.eos_token is None and tok.sep_token is not None:
        tok.eos_token = tok.sep_token
    if tok.bos_token is None and tok.cls_token is not None:
        tok.bos_token = tok.cls_token
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(f"tokenizer {name!r} has neither a pad nor an EOS token", field="model.tokenizer")
        tok.pad_token = tok.eos_token
    if chat is not None:
        _set_chat_template(tok, chat)
    return tok


def _set_chat_template(tok: Any, chat: str) -> None:
    if chat == "tokenizer":
        if not getattr(tok, "chat_template", None):
            raise ConfigError("model.chat_template is 'tokenizer' but the tokenizer has no chat template",
                              field="model.chat_template", hint="use 'default' or give a Jinja template")
        return
    if chat == "default":
        from mixtune.encodings import DEFAULT_CHAT_MARKERS, DEFAULT_CHAT_TEMPLATE

        markers = [m for m in DEFAULT_CHAT_MARKERS if m not in tok.get_vocab()]
        if markers:
            tok.add_special_tokens({"additional_special_tokens": markers})
        tok.chat_template = DEFAULT_CHAT_TEMPLATE
        return
    tok.chat_template = chat


def end_of_turn_id(tokenizer: Any) -> int | None:
    """Id of the end-of-turn token of mixtune's default chat template, when the tokenizer has it."""
    from mixtune.encodings import DEFAULT_END_OF_TURN

    return tokenizer.get_vocab().get(DEFAULT_END_OF_TURN)


def chat_marker_ids(tokenizer: Any) -> list[int]:
    """Ids of the default chat template's markers (tokens mixtune adds when a tokenizer lacks them)."""
    from mixtune.encodings import DEFAULT_CHAT_MARKERS, DEFAULT_CHAT_TEMPLATE

    if getattr(tokenizer, "chat_template", None) != DEFAULT_CHAT_TEMPLATE:
        return []
    vocab = tokenizer.get_vocab()
    return [vocab[m] for m in DEFAULT_CHAT_MARKERS if m in vocab]


def set_special_ids(model: Any, tokenizer: Any, kind: Kind, *, fresh: bool) -> None:
    """Make config and generation config agree with the tokenizer's pad/eos/bos (and decoder start).

    A model built from a config (`fresh`) takes every id from the tokenizer; a pretrained one keeps
    its own and only gets the missing ones. Generation stops at every EOS that the generation
    config or the tokenizer names, and at the default chat template's end-of-turn token.
    """
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
           "bos_token_id": tokenizer.bos_token_id}
    if kind == "seq2seq":
        start = getattr(model.config, "decoder_start_token_id", None)
        ids["decoder_start_token_id"] = start if start is not None else tokenizer.pad_token_id
    text_config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else None
    configs = [model.config] + ([text_config] if text_config is not None and text_config is not model.config else [])
    gen = getattr(model, "generation_config", None)
    targets = configs + ([gen] if gen is not None else [])
    for key, value in ids.items():
        if value is None:
            continue
        for obj in targets:
            if fresh or getattr(obj, key, None) is None:
                setattr(obj, key, value)
    if gen is None:
        return
    eot = end_of_turn_id(tokenizer) if getattr(tokenizer, "chat_template", None) else None
    stops: list[int] = []
    for value in (gen.eos_token_id, tokenizer.eos_token_id, eot):
        for i in value if isinstance(value, list) else [value]:
            if i is not None and i not in stops:
                stops.append(i)
    gen.eos_token_id = stops[0] if len(stops) == 1 else stops
