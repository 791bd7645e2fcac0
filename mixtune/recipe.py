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
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from mixtune.config import StrictModel, apply_overrides, load_yaml, suggest, validate
from mixtune.errors import ConfigError
from mixtune.train.modeling import ModelConfig

try:  # the eval section's typed spec, when the eval package provides it
    from mixtune.eval.spec import EvalSpec as _EvalSection
except ImportError:  # pragma: no cover - eval package not installed
    _EvalSection = dict  # type: ignore[assignment,misc]

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
              "polynomial", "inverse_sqrt")


class DataSection(StrictModel):
    """The recipe's `data:` section: which mixture to train on and how examples are cut to length."""

    mixture: str | dict[str, Any] = Field(
        description="Mixture YAML file (relative paths resolve against the recipe's folder) or an inline "
        "mixture mapping (the same keys as a mixture file).")
    collection: str | None = Field(
        None, description="A SuperNI-format folder (or `bundled`) that replaces the path of every superni "
        "source of the mixture, nested mixtures included: point a shipped recipe at your checkout. "
        "Relative paths resolve against the working directory. `mixtune train --collection PATH` sets it.")
    max_source_length: int | None = Field(
        None, ge=1, description="Prompt budget in tokens: demonstrations that do not fit are dropped, then "
        "the prompt is cut (Tk-Instruct's rule). Default: no limit.")
    max_target_length: int | None = Field(
        None, ge=1, description="Seq2seq models: target budget in tokens (EOS included); longer targets are cut. "
        "Causal models use max_length for prompt + completion.")
    max_length: int | None = Field(
        None, ge=2, description="Budget of prompt + completion together (causal models), and the length "
        "of a packed row when packing is on.")
    packing: bool = Field(
        False, description="Causal models: pack several examples into each row (block-diagonal attention, "
        "position ids restart per example) instead of padding each to the batch maximum.")

    num_workers: int | None = Field(
        None, ge=0, description="DataLoader worker processes that format, tokenize and pack examples beside "
        "training (the batches are the same with any number). Default: 2 with a GPU, 0 on CPU.")

    @model_validator(mode="after")
    def _packing_needs_length(self) -> DataSection:
        if self.packing and self.max_length is None:
            raise ValueError("packing needs data.max_length (the length of a packed row)")
        return self


class TrainingSection(StrictModel):
    """The recipe's `training:` section: optimisation, schedule, batch sizes and save/log intervals."""

    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    lr_scheduler: Literal[SCHEDULERS] = Field(  # type: ignore[valid-type]
        "linear", description=f"Learning-rate schedule after warmup: {', '.join(SCHEDULERS)}.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warmup as a fraction of all steps.")
    warmup_steps: int = Field(0, ge=0, description="Warmup in optimizer steps (overrides warmup_ratio when > 0).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0: no clipping).")
    epochs: float | None = Field(
        None, gt=0, description="Passes over the mixture (its `total_examples`); ignored when max_steps is set. "
        "Default: 1 when max_steps is not set either.")
    max_steps: int | None = Field(None, ge=1, description="Number of optimizer steps; takes precedence over epochs.")
    per_device_batch_size: int = Field(
        8, ge=1, description="Examples per process per micro-step (with data.packing they are packed into rows "
        "of data.max_length tokens).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    seed: int = Field(42, ge=0, description="Seed of model initialisation (config-built models), dropout and the "
                      "trainer (0 or more).")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Mixed precision of the forward/backward pass, separate from model.dtype (the storage "
        "dtype): bf16 or fp16 autocast over fp32 master weights (fp16 with dynamic loss scaling; a step whose "
        "scaled gradients overflow is skipped by the scaler, not reported as NaN). DeepSpeed presets follow it.")
    save_steps: int = Field(500, ge=1, description="Write a checkpoint every N optimizer steps.")
    save_total_limit: int | None = Field(
        3, ge=1, description="Keep at most this many complete checkpoints (oldest deleted first, only once the "
        "newest is marked complete; the best held-out one is kept besides); null keeps all.")
    logging_steps: int = Field(10, ge=1, description="Log loss, learning rate and throughput every N steps.")
    on_nan: Literal["stop", "skip"] = Field(
        "stop", description="A step whose loss or gradients are NaN/inf: 'stop' ends the run with an error "
        "naming the step and its batch's tasks (before the weights change); 'skip' drops that step's update "
        "and goes on (too many in a row still stop the run; under DeepSpeed, which updates inside backward, "
        "a non-finite loss stops the run before its backward with either policy).")


class DistributedSection(StrictModel):
    """The recipe's `distributed:` section: DeepSpeed and the process layout for `--print-launch`."""

    deepspeed: str | None = Field(
        None, description="DeepSpeed ZeRO config: a preset name (zero2, zero3, zero3_offload; copies in "
        "recipes/deepspeed/), a path to a DeepSpeed JSON (relative to the recipe's folder), or null for "
        "plain data parallel (DDP) or a single process.")
    nodes: int = Field(1, ge=1, description="Machines the run spans (used by `mixtune train --print-launch`).")
    processes_per_node: int = Field(
        1, ge=1, description="Processes (GPUs) per machine (used by `mixtune train --print-launch`).")
    timeout_s: int = Field(
        1800, ge=10, description="Seconds a process waits for the others in a collective operation before the "
        "job fails (so a dead process ends the run instead of hanging it); TrainingArguments.ddp_timeout.")
    launcher: Literal["accelerate", "deepspeed", "torchrun"] = Field(
        "accelerate", description="Launcher whose command `mixtune train --print-launch` prints.")

    @field_validator("deepspeed")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        from mixtune.train.deepspeed import PRESETS

        if value is None or value in PRESETS or value.endswith(".json"):
            return value
        close = suggest(value, PRESETS)
        raise ValueError(f"unknown DeepSpeed preset {value!r}" + (f" ({close})" if close else "")
                         + f"; give a preset ({', '.join(PRESETS)}) or a path to a .json file")


class LoggingSection(StrictModel):
    """The recipe's `logging:` section: wandb, the plain-text log and the progress bar."""

    wandb: Literal["offline", "online", "disabled"] = Field(
        "offline", description="Weights & Biases mode: offline (files under output_dir/wandb, sync later with "
        "`wandb sync`), online (needs WANDB_API_KEY in the environment) or disabled.")
    project: str = Field("mixtune", description="wandb project.")
    run_name: str | None = Field(None, description="wandb run name (default: the recipe file's name).")
    log_file: str = Field("train.log", description="Plain-text log, relative to output_dir.")
    progress_bar: bool = Field(
        True, description="Show progress on the main process: a status line for each phase that can take a while "
        "(indexing, mixture planning, model loading, each held-out evaluation, saving) and progress bars for "
        "training and evaluation.")


class Recipe(StrictModel):
    """A whole training run: model, data, optimisation, distribution, logging, evaluation, outputs."""

    model: ModelConfig = Field(description="The model to train and how to load it (mixtune.train.modeling).")
    data: DataSection = Field(description="The mixture and the length budgets.")
    training: TrainingSection = Field(default_factory=TrainingSection, description="Optimisation and intervals.")
    distributed: DistributedSection = Field(
        default_factory=DistributedSection, description="DeepSpeed and process layout.")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="wandb, text log, progress bar.")
    eval: _EvalSection | None = Field(  # type: ignore[valid-type]
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
        from mixtune.train.modeling import known_kind

        m, d, t = self.model, self.data, self.training
        kind = known_kind(m)
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
