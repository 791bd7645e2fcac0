"""The evaluation spec: the recipe's `eval:` section, or a standalone eval YAML.

```yaml
collection: bundled          # a SuperNI folder, an HF dataset path or a JSONL file ("bundled": the sample)
type: superni
split: default               # held-out tasks: the split's test_tasks.txt
tasks: [task1*, task202_*]   # optional: explicit names or globs (default: every held-out test task)
max_instances_per_task: 100  # first N instances in file order, as the official evaluation
settings: [def_pos2]         # zero_shot | def_pos2 | pos2 | ... (mixtune.encodings.SETTINGS), or a control:
                             #   shuffled_definition | delusive_pos2 | output_space_only (mixtune.eval.controls)
mixture: null                # training mixture for the generalisation levels (default: the model's mixtune_run.json)
unseen_instances_per_task: 20
seed: 0                      # seed of the controls and the random_label baseline
max_new_tokens: 128
batch_size: 16
```
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from mixtune.config import StrictModel, apply_overrides, load_yaml, suggest, validate
from mixtune.errors import ConfigError

#: Metrics `metric_for_best` may name (an overall metric of the first setting; higher is better).
BEST_METRICS = ("rougeL", "exact_match", "primary")

#: control setting -> (the plain setting whose prompt shape it uses, what it changes: one phrase)
CONTROL_SETTINGS: dict[str, tuple[str, str]] = {
    "shuffled_definition": ("zero_shot", "each task shown another evaluated task's definition, no demonstrations"),
    "delusive_pos2": ("def_pos2", "the definition and 2 positive examples whose outputs are swapped for other "
                                  "outputs of the task's label space"),
    "output_space_only": ("zero_shot", "the definition replaced by one sentence listing the labels, on the tasks "
                                       "with a small label set"),
}


class EvalSpec(StrictModel):
    """What the held-out evaluation measures and how it generates."""

    collection: str = Field(
        "bundled",
        description="Task collection to evaluate on: a SuperNI folder, an HF dataset path, a JSONL file, "
        "or 'bundled' (the SuperNI sample shipped with mixtune).")
    type: Literal["superni", "hf", "jsonl"] = Field("superni", description="Format of `collection`.")
    split: str = Field("default", description="Split whose test tasks are held out (splits/<name>/test_tasks.txt).")
    tasks: list[str] | None = Field(
        None,
        description="Tasks to evaluate: names or shell globs (task1*). Default: every test task of `split` "
        "present in the collection.")
    max_instances_per_task: int = Field(
        100, ge=1, description="Evaluate the first N instances of each task, in file order (official: 100).")
    settings: list[str] = Field(
        default_factory=lambda: ["def_pos2"], min_length=1,
        description="Instruction encodings to evaluate, each a mixtune.encodings.SETTINGS name: zero_shot "
        "(definition only), def_pos2 (definition + 2 positive examples, as the paper reports), pos2 "
        "(2 positive examples only), ...; or an instruction-sensitivity control (mixtune.eval.controls): "
        "shuffled_definition, delusive_pos2, output_space_only. The first is the primary setting "
        "(predictions.jsonl).")
    mixture: str | None = Field(
        None, description="The training mixture, for the generalisation levels (unseen category / task / "
        "instance): a mixture YAML, or a mixtune_run.json (or the folder holding it). Default: the evaluated "
        "model folder's mixtune_run.json, which mixtune writes when it trains a model; none, no levels.")
    unseen_instances_per_task: int = Field(
        20, ge=0, description="Level unseen_instance: evaluate this many instances of each training task that lie "
        "outside the mixture's capped pool (the first ones in file order); 0 leaves the level out.")
    seed: int = Field(0, description="Seed of the controls' shuffles and of the random_label baseline.")
    chat: bool = Field(False, description="Render prompts through the tokenizer's chat template (chat models).")
    max_source_length: int | None = Field(
        None, ge=8, description="Prompt budget in tokens, cut as training cuts (mixtune.tokenization): seq2seq "
        "drops demonstrations that do not fit, then cuts the end (Tk-Instruct's rule); causal prompts keep their "
        "end (the Output: cue) and lose demonstrations, then the definition's end, then the input's start. "
        "Never more than the model's context (less max_new_tokens for causal models); null: the model's context.")
    max_new_tokens: int = Field(128, ge=1, description="Generation stops at EOS or after this many new tokens.")
    batch_size: int = Field(16, ge=1, description="Prompts per generation batch (per process).")
    rank_classification: bool = Field(
        False, description="Also score tasks with a small label set by ranking each label's log-likelihood "
        "(T0/MetaICL); reported separately from generation, as exact match.")
    max_labels: int = Field(
        10, ge=2, description="A task qualifies for rank classification when its instances and positive "
        "examples have at most this many distinct outputs.")
    every_n_steps: int | None = Field(
        None, ge=1, description="During training: evaluate every N optimizer steps (and always at the end).")
    at_start: bool = Field(
        False, description="During training: also evaluate the model before its first step (the untrained "
        "or initial model) and show it beside the trained model in the final report.")
    metric_for_best: str = Field(
        "rougeL", description="Overall metric of the first setting that picks the best checkpoint during "
        "training: rougeL, exact_match or primary (per-category primary metric, averaged).")

    @field_validator("settings")
    @classmethod
    def _known_settings(cls, value: list[str]) -> list[str]:
        from mixtune.encodings import SETTINGS, encoding_for_setting

        for i, name in enumerate(value):
            if name in CONTROL_SETTINGS:
                continue
            try:
                encoding_for_setting(name)
            except ConfigError:
                known = [*SETTINGS, *CONTROL_SETTINGS]
                hint = suggest(name, known) or f"known settings: {', '.join(known)}"
                raise ValueError(f"unknown setting {name!r} at position {i} ({hint})") from None
        if len(set(value)) != len(value):
            raise ValueError("a setting is listed twice")
        return value

    @field_validator("metric_for_best")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in BEST_METRICS:
            hint = suggest(value, BEST_METRICS) or f"one of {', '.join(BEST_METRICS)}"
            raise ValueError(f"unknown metric {value!r} ({hint})")
        return value

    def generation_fingerprint(self) -> dict[str, Any]:
        """The fields that change predictions (a resumed run must agree on them)."""
        return self.model_dump(include={"collection", "type", "split", "chat", "max_source_length",
                                        "max_new_tokens", "seed", "max_labels"})


def load_eval_spec(path: str | Path | dict[str, Any], overrides: Iterable[str] = ()) -> EvalSpec:
    """Read and validate an eval YAML (or an already-loaded mapping); `a.b=value` overrides apply first.

    A recipe file whose top level has an `eval:` section is accepted too (the section is read).
    """
    if isinstance(path, dict):
        data, where = path, None
    else:
        data, where = load_yaml(path), Path(path)
        if isinstance(data.get("eval"), dict) and ("model" in data or "data" in data):
            data = data["eval"]
    data = apply_overrides(data, overrides)
    spec = validate(EvalSpec, data, where, overrides)
    return resolve_paths(spec, where.parent if where is not None else None)


def resolve_paths(spec: EvalSpec, base: Path | None) -> EvalSpec:
    """A relative `collection` (or `mixture`) path that exists next to the YAML file (`base`) is made
    absolute, as mixture files do; 'bundled', hub names and absolute paths stay as they are."""
    if base is None:
        return spec
    if spec.collection != "bundled" and not Path(spec.collection).is_absolute():
        candidate = base / Path(spec.collection).expanduser()
        if candidate.exists():
            spec.collection = str(candidate.resolve())
    if spec.mixture is not None and not Path(spec.mixture).expanduser().is_absolute():
        candidate = base / Path(spec.mixture).expanduser()
        if candidate.exists():
            spec.mixture = str(candidate.resolve())
    return spec
