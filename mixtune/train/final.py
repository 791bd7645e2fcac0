"""`output_dir/final/`: the finished run's model, written atomically, and the check that it is already there."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from mixtune.distributed import barrier
from mixtune.recipe import Recipe

FINAL = "final"
RUN_FILE = "mixtune_run.json"


def finished_run(recipe: Recipe, mixture_hash: str, max_steps: int) -> str | None:
    """With `resume: auto`: when output_dir already holds this run's `final/` (same mixture, at least
    `max_steps` steps), a message saying where its model and held-out report are; else None."""
    from mixtune.limits import json_loads

    if recipe.resume != "auto":
        return None
    output_dir = Path(recipe.output_dir)
    try:
        info = json_loads((output_dir / FINAL / RUN_FILE).read_text(encoding="utf-8"))
        steps, mixture = int(info["global_steps"]), info["mixture_hash"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if mixture != mixture_hash or steps < max_steps:
        return None
    text = f"{output_dir} already holds this finished run ({steps} steps): final model {output_dir / FINAL}"
    history = (info.get("heldout_eval") or {}).get("history") or []
    if history:
        report = output_dir / "heldout_eval" / f"step-{history[-1]['step']}" / "report.md"
        if report.is_file():
            text += f", held-out report {report}"
    return text + (". Nothing to do; to train again from scratch use resume=never (its checkpoints are "
                   "deleted and final/ is replaced) or another output_dir")


def save_final(trainer: Any, tokenizer: Any, output_dir: Path, info: dict[str, Any]) -> Path:
    """Write output_dir/final atomically: weights (ZeRO-3 shards gathered), tokenizer, mixtune_run.json.

    Every process takes part (gathering ZeRO-3 shards is collective); the main process fills a
    temporary folder and renames it into place, so `final/` is either complete or absent.
    """
    from mixtune.io import atomic_write_json, safetensors_write_errors
    from mixtune.secrets import redact

    final = output_dir / FINAL
    tmp = output_dir / f".{FINAL}.partial"
    is_main = trainer.args.process_index == 0
    if is_main and tmp.exists():
        shutil.rmtree(tmp)
    barrier()
    model = trainer.model
    lora = hasattr(model, "peft_config")
    if lora:
        trainer.save_model(str(tmp / "adapter"))
        info["lora"] = {"adapter": "adapter/", "merged": False}
        if trainer.is_deepspeed_enabled:
            info["lora"]["note"] = "ZeRO-3 training: only the adapter is saved; merge it with peft after loading"
        elif is_main:
            merged = model.merge_and_unload()
            with safetensors_write_errors(tmp / "model.safetensors"):
                merged.save_pretrained(str(tmp), safe_serialization=True)
            info["lora"]["merged"] = True
    else:
        trainer.save_model(str(tmp))
    barrier()
    if is_main:
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / RUN_FILE, redact(info), default=str)
        old = output_dir / f".{FINAL}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final
