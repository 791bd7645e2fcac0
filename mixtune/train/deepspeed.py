"""DeepSpeed ZeRO presets (zero2, zero3, zero3_offload) and resolving `distributed.deepspeed`.

The dicts below are the one source of truth; `recipes/deepspeed/<name>.json` are copies for users
to read and edit (a test checks they are equal), and a recipe can name either a preset or a JSON
path. "auto" values are filled by transformers from the training arguments (batch sizes, learning
rate, gradient clipping, bf16/fp16), so one preset serves every recipe.

No preset names an optimizer except zero3_offload: the others use the trainer's torch AdamW, which
needs no compiled DeepSpeed ops (so they also run on CPU); offloading the optimizer state to CPU
needs DeepSpeed's CPU Adam.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from mixtune.errors import ConfigError
from mixtune.limits import json_loads

_COMMON: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
    "steps_per_print": 1000000,
    "wall_clock_breakdown": False,
}

_ZERO3: dict[str, Any] = {
    "stage": 3,
    "overlap_comm": True,
    "contiguous_gradients": True,
    "reduce_bucket_size": "auto",
    "stage3_prefetch_bucket_size": "auto",
    "stage3_param_persistence_threshold": "auto",
    "stage3_max_live_parameters": 1000000000,
    "stage3_max_reuse_distance": 1000000000,
    "stage3_gather_16bit_weights_on_model_save": True,
}

PRESETS: dict[str, dict[str, Any]] = {
    "zero2": {
        **_COMMON,
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "allgather_bucket_size": 200000000,
            "reduce_bucket_size": "auto",
        },
    },
    "zero3": {**_COMMON, "zero_optimization": _ZERO3},
    "zero3_offload": {
        **_COMMON,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        },
        "zero_optimization": {
            **_ZERO3,
            "offload_optimizer": {"device": "cpu", "pin_memory": True},
            "offload_param": {"device": "cpu", "pin_memory": True},
        },
    },
}


def deepspeed_config(value: str | None, *, recipe_path: str | None = None) -> dict[str, Any] | None:
    """The DeepSpeed config dict for `distributed.deepspeed`: a preset name, a JSON path, or None."""
    if value is None:
        return None
    if value in PRESETS:
        return copy.deepcopy(PRESETS[value])
    path = Path(value)
    try:
        config = json_loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"DeepSpeed config {value!r} not found", path=recipe_path, field="distributed.deepspeed",
                          hint=f"a preset ({', '.join(PRESETS)}) or an existing .json file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"invalid JSON in {value}: {e}", path=recipe_path, field="distributed.deepspeed") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{value} must hold a JSON object", path=recipe_path, field="distributed.deepspeed")
    return config


def zero_stage(config: dict[str, Any] | None) -> int:
    """ZeRO stage of a DeepSpeed config (0 when none)."""
    if not config:
        return 0
    return int(config.get("zero_optimization", {}).get("stage", 0))


def from_launcher_env(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The preset matching `accelerate launch --use_deepspeed --zero_stage N [--offload_*_device cpu]`.

    Used when the recipe names no DeepSpeed config but the launcher asked for DeepSpeed, so both
    ways of turning it on end in the same configuration. None when the launcher did not ask.
    """
    import os

    env = os.environ if environ is None else environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if config_file.lower() != "none":
        return deepspeed_config(config_file)
    stage = int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2") or 2)
    offload = env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none") == "cpu"
    if stage == 3:
        return copy.deepcopy(PRESETS["zero3_offload" if offload else "zero3"])
    config = copy.deepcopy(PRESETS["zero2"])
    config["zero_optimization"]["stage"] = stage
    return config
