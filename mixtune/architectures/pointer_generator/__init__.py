"""The pointer-generator encoder-decoder: transformers' `EncoderDecoderModel` plus a copy head.

The next-token distribution mixes the decoder's vocabulary softmax with a copy distribution over the
source tokens (See et al., 2017, "Get To The Point"); see `modeling`. Why: a small decoder trained for
minutes on CPU learns to copy label words from the task definition and spans of the input far sooner
through this head than through a softmax over 30k words (the CPU quickstart's model).

It generates through public transformers APIs only: `forward` returns the mixture's log-probabilities as
`logits`, and `generate` hands the source ids to every decoding step as a model keyword argument. It needs
nothing beyond the core's transformers floor (pyproject.toml: 5.23; its tests pass on 5.23.0 and 5.25.0).

`register()` registers model_type "mixtune-pointer-generator" with `AutoConfig` / `AutoModelForSeq2SeqLM`
(mixtune does so when it loads such a checkpoint or builds the model); call it before loading a saved
model with the Auto classes in your own code.
"""

from __future__ import annotations

from mixtune.architectures.pointer_generator.modeling import (
    MODEL_TYPE,
    PointerGeneratorConfig,
    PointerGeneratorModel,
)

__all__ = ["MODEL_TYPE", "PointerGeneratorConfig", "PointerGeneratorModel", "register"]


def register() -> None:
    """Register the config and model classes with transformers' Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    AutoConfig.register(MODEL_TYPE, PointerGeneratorConfig, exist_ok=True)
    AutoModelForSeq2SeqLM.register(PointerGeneratorConfig, PointerGeneratorModel, exist_ok=True)
