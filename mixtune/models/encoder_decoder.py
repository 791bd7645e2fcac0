"""`model.encoder_decoder`: an encoder-decoder warm-started from two BERT-style checkpoints.

A BertModel encoder with its first N layers and a BertLMHeadModel decoder (causal self-attention, new
cross-attention) with its first M layers, LM head tied to the decoder's word embeddings; with
`pointer_generator: true` the copy head of `mixtune.architectures.pointer_generator` on top. It saves as a
transformers `EncoderDecoderModel` (model_type "encoder-decoder") or as "mixtune-pointer-generator".
"""

from __future__ import annotations

import logging
import re
from typing import Any

from mixtune.errors import ConfigError
from mixtune.models.spec import EncoderDecoderSpec, source_path

logger = logging.getLogger(__name__)


def build_encoder_decoder(spec: EncoderDecoderSpec, tokenizer: Any, extra: dict[str, Any]) -> Any:
    """An `EncoderDecoderModel` warm-started from BERT-style checkpoints (see `EncoderDecoderSpec`).

    Decoder start is the tokenizer's [CLS] (BOS), EOS its [SEP], pad its [PAD]; the LM head's output
    matrix is tied to the decoder's word embeddings; cross-attention and the LM-head transform are new.
    With `spec.pointer_generator` it is a `PointerGeneratorModel` (new copy head, generate/copy gate at 0.5).
    """
    from transformers import BertLMHeadModel, BertModel, EncoderDecoderModel

    def layers(n: int | None) -> dict[str, Any]:
        return {} if n is None else {"num_hidden_layers": n}

    def load(cls: Any, name: str, field: str, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        try:
            with WarmStartReport() as report:
                model, info = cls.from_pretrained(source_path(name), use_safetensors=True, output_loading_info=True,
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
    if spec.pointer_generator:
        from mixtune.architectures.pointer_generator import PointerGeneratorModel, register

        register()  # so that the model this run saves reloads through the Auto classes in this process too
        model = PointerGeneratorModel(encoder=encoder, decoder=decoder)
    else:
        model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
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
