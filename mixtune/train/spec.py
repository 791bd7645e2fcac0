"""The training sections of a recipe (`data`, `training`, `distributed`, `logging`): pydantic schemas only.

Like `mixtures/spec.py` and `eval/spec.py` this imports base modules only, so `mixtune.recipe` can build
the whole recipe schema without importing training code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mixtune.config import StrictModel, suggest

#: names of the DeepSpeed ZeRO presets (their configs: `mixtune.train.deepspeed.PRESETS`)
DEEPSPEED_PRESETS = ("zero2", "zero3", "zero3_offload")

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
        if value is None or value in DEEPSPEED_PRESETS or value.endswith(".json"):
            return value
        close = suggest(value, DEEPSPEED_PRESETS)
        raise ValueError(f"unknown DeepSpeed preset {value!r}" + (f" ({close})" if close else "")
                         + f"; give a preset ({', '.join(DEEPSPEED_PRESETS)}) or a path to a .json file")


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
