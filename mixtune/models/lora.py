"""`model.lora`: peft LoRA adapters, with the rows of tokens mixtune added (chat markers) trainable too."""

from __future__ import annotations

from typing import Any

from mixtune.errors import ConfigError
from mixtune.models.spec import Kind, LoraSpec


def trainable_token_indices(model: Any, token_ids: list[int]) -> dict[str, list[int]] | None:
    """peft's `trainable_token_indices`: these rows of the input embeddings (and of an untied LM head) train."""
    if not token_ids:
        return None
    names = {id(module): name for name, module in model.named_modules()}
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    indices = {names[id(embeddings)]: token_ids}
    if head is not None and head.weight is not embeddings.weight:
        indices[names[id(head)]] = token_ids
    return indices


def apply_lora(model: Any, spec: LoraSpec, kind: Kind, new_token_ids: list[int]) -> Any:
    """peft LoRA adapters; the rows of `new_token_ids` (e.g. chat markers) train too, as LoRA alone leaves
    embeddings frozen and a token added to the vocabulary would keep its random row."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=spec.target_modules,
                      task_type=TaskType.CAUSAL_LM if kind == "causal" else TaskType.SEQ_2_SEQ_LM,
                      trainable_token_indices=trainable_token_indices(model, new_token_ids))
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"LoRA cannot be applied: {e}", field="model.lora.target_modules",
                          hint="use 'all-linear' or module names of this model (e.g. q_proj, v_proj)") from None
