"""Recipes: one YAML file that describes a whole training run.

```yaml
model:        {config: {model_type: llama, hidden_size: 64, ...}}   # or name_or_path: org/model
data:         {mixture: ../data_mixtures/x.yaml, max_length: 512, packing: true}
training:     {learning_rate: 1e-4, max_steps: 100, per_device_batch_size: 8, save_steps: 50}
distributed:  {deepspeed: zero3}        # zero2 | zero3 | zero3_offload | path/to/ds.json | null
logging:      {wandb: offline, project: mixtune}
output_dir:   runs/x
resume:       auto                      # auto | never | path/to/checkpoint-N
```

`load_recipe(path, overrides)` applies `key=value` overrides (defaults < YAML < command line),
resolves the mixture path against the recipe's folder and validates everything, so an error
names the file and the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, field_validator, model_validator

from mixtune.config import StrictModel, apply_overrides, load_yaml, validate
from mixtune.errors import ConfigError
from mixtune.eval.spec import EvalSpec
from mixtune.models.kind import model_kind
from mixtune.models.spec import ModelConfig
from mixtune.train.spec import DataSection, DistributedSection, LoggingSection, TrainingSection


class Recipe(StrictModel):
    """A whole training run: model, data, optimisation, distribution, logging, evaluation, outputs."""

    model: ModelConfig = Field(description="The model to train and how to load it (mixtune.models.spec).")
    data: DataSection = Field(description="The mixture and the length budgets.")
    training: TrainingSection = Field(default_factory=TrainingSection, description="Optimisation and intervals.")
    distributed: DistributedSection = Field(
        default_factory=DistributedSection, description="DeepSpeed and process layout.")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="wandb, text log, progress bar.")
    eval: EvalSpec | None = Field(
        None, description="Optional held-out evaluation during training (mixtune.eval.spec.EvalSpec).")
    output_dir: str = Field(description="Folder for checkpoints, logs and the final model (output_dir/final).")
    resume: str = Field(
        "auto", description="auto: continue from the latest complete checkpoint in output_dir (or start fresh); "
        "a finished run (its final/ there) is left as it is; never: start over (the earlier run's checkpoints are "
        "deleted, its final/ replaced at the end); or a path to a checkpoint folder.")

    @field_validator("output_dir")
    @classmethod
    def _output_dir_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("output_dir is empty: name a folder for checkpoints, logs and the final model")
        return value

    @model_validator(mode="after")
    def _settings_work_together(self) -> Recipe:
        """Cross-field rules (both `recipe check` and `mixtune train` load recipes through here): a setting
        that would be ignored or that cannot work with another is an error naming the field."""
        m, d, t = self.model, self.data, self.training
        kind = model_kind(m)
        if kind == "seq2seq" and d.packing:
            raise ConfigError("packing applies to causal models; a seq2seq model would train unpacked",
                              field="data.packing", hint="set data.packing: false")
        if kind == "seq2seq" and m.chat_template is not None:
            raise ConfigError("chat rendering applies to causal models; a seq2seq model trains on plain prompts",
                              field="model.chat_template", hint="remove model.chat_template")
        if kind == "causal" and d.max_target_length is not None:
            raise ConfigError("max_target_length applies to seq2seq targets; a causal model would ignore it",
                              field="data.max_target_length",
                              hint="remove it; data.max_length bounds prompt + completion of a causal model")
        if m.dtype != "fp32" and m.lora is None and self.distributed.deepspeed is None:
            raise ConfigError(
                f"model.dtype {m.dtype} would train {m.dtype} weights with no fp32 master copy"
                + (" (and a GradScaler cannot unscale fp16 gradients)" if m.dtype == "fp16" else ""),
                field="model.dtype", hint=f"use model.dtype: fp32 with training.precision: {m.dtype} (mixed "
                "precision), or LoRA (frozen low-precision base), or DeepSpeed (keeps fp32 master weights)")
        if m.dtype != "fp32" and t.precision != m.dtype:
            raise ConfigError(f"model.dtype {m.dtype} computes in {m.dtype}, but training.precision is {t.precision}",
                              field="training.precision", hint=f"set training.precision: {m.dtype}")
        return self

    #: path of the recipe file (set by load_recipe); not a YAML key
    _source: str | None = PrivateAttr(None)

    @property
    def source(self) -> str | None:
        """The recipe file this recipe was read from, if any."""
        return self._source


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe YAML, apply `key=value` overrides, resolve relative paths and validate."""
    path = Path(path)
    data = load_yaml(path)
    data = apply_overrides(data, overrides)
    base = path.resolve().parent
    section = data.get("data")
    if isinstance(section, dict) and isinstance(section.get("mixture"), str):
        section["mixture"] = str(_resolve(base, section["mixture"]))
    dist = data.get("distributed")
    if isinstance(dist, dict) and isinstance(dist.get("deepspeed"), str) and dist["deepspeed"].endswith(".json"):
        resolved = _resolve(base, dist["deepspeed"])
        if not resolved.is_file():
            raise ConfigError(f"DeepSpeed config {dist['deepspeed']!r} not found (looked for {resolved})",
                              path=path, field="distributed.deepspeed",
                              hint="a preset name (zero2, zero3, zero3_offload) or an existing .json file")
        dist["deepspeed"] = str(resolved)
    try:
        recipe = validate(Recipe, data, path, overrides)
    except ConfigError as e:  # a cross-field rule: add the file it came from
        e.path = e.path or str(path)
        raise
    recipe._source = str(path)
    return recipe


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data (what `mixtune_run.json` and checkpoints record)."""
    return recipe.model_dump(mode="json")
