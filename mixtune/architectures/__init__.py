"""Model architectures mixtune defines itself, registered with transformers' Auto classes only on demand.

A checkpoint whose config.json names one of `MODEL_TYPES` is loaded by `mixtune.models.load` after
`register_architecture(model_type)`; a recipe that asks for one (e.g. `pointer_generator: true`) registers it
when it builds the model. Nothing is registered on a plain import of mixtune.

Add an architecture as a subpackage here (configuration and model classes plus a `register()`), and name
its model_type in `register_architecture`.
"""

from __future__ import annotations

#: model_type of the pointer-generator encoder-decoder (the CPU quickstart's model).
POINTER_GENERATOR = "mixtune-pointer-generator"

MODEL_TYPES = (POINTER_GENERATOR,)


def register_architecture(model_type: str | None) -> bool:
    """Register `model_type` with the Auto classes when mixtune defines it; True when it did."""
    if model_type == POINTER_GENERATOR:
        from mixtune.architectures.pointer_generator import register

        register()
        return True
    return False
