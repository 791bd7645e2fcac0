"""The mixture YAML: a pydantic model for every key, and `load_mixture` (nesting, overrides, cycles).

A mixture file names its sources (task collections and which of their tasks to take), how to weigh
the tasks (cap, temperature, explicit weights), any nested mixture files, the held-out split it must
not touch, its size (`total_examples` or `epochs`) and a seed. See docs/mixtures.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from mixtune.config import StrictModel, apply_overrides, load_yaml, validate
from mixtune.encodings import EncodingSpec
from mixtune.errors import ConfigError

BUNDLED = "bundled"


class TaskSelection(StrictModel):
    """Which tasks of a source enter the mixture, and their explicit weights."""

    include: list[str] = Field(
        default_factory=list,
        description="Task names or globs (task1*) to take; empty takes every candidate task "
        "(the split's train tasks, or every task of the collection without a split).",
    )
    exclude: list[str] = Field(default_factory=list, description="Task names or globs to leave out.")
    categories: list[str] = Field(
        default_factory=list, description="Keep only tasks with one of these categories (empty: any)."
    )
    languages: list[str] = Field(
        default_factory=list, description="Keep only tasks whose input language is one of these (empty: any)."
    )
    output_languages: list[str] = Field(
        default_factory=list, description="Keep only tasks whose output language is one of these (empty: any)."
    )
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="Explicit per-task weight multiplying the task's rate; keys are task names or globs "
        "(default 1.0).",
    )

    @model_validator(mode="after")
    def _positive_weights(self) -> TaskSelection:
        for task, w in self.weights.items():
            if not w > 0:
                raise ValueError(f"weight of {task!r} must be > 0 (got {w}); use `exclude` to drop a task")
        return self


class SourceSpec(StrictModel):
    """One task collection and the tasks taken from it."""

    name: str = Field(description="Name of the source, shown in `mixture show` and in the `source` column.")
    type: Literal["superni", "hf", "jsonl"] = Field(
        "superni", description="Collection type: a SuperNI folder, a Hugging Face dataset, or JSONL tasks."
    )
    path: str = Field(
        BUNDLED,
        description="`bundled` (the SuperNI sample shipped with mixtune), a folder (relative paths are "
        "relative to this YAML file), or for type hf a hub name. `--collection PATH` overrides it.",
    )
    split: str | None = Field(
        None,
        description="Take the train tasks of splits/<split>/train_tasks.txt; without it every task of "
        "the collection is a candidate.",
    )
    columns: dict[str, str] | None = Field(
        None, description="type hf/jsonl: column mapping to definition / input / output / task."
    )
    tasks: TaskSelection = Field(default_factory=TaskSelection, description="Which tasks to take.")
    encoding: EncodingSpec = Field(
        default_factory=EncodingSpec, description="How a task and instance become a prompt (Tk-Instruct)."
    )
    weight: float = Field(1.0, gt=0, description="Multiplies the rate of every task of this source.")
    missing_tasks: Literal["error", "skip"] = Field(
        "error",
        description="What to do when the split's train list names a task the collection lacks: `error`, "
        "or `skip` it (the bundled sample ships the official, complete split lists, so it needs `skip`).",
    )


class NestedMixture(StrictModel):
    """A mixture file included in this one, as one component with a weight."""

    path: str = Field(description="The mixture YAML to include, relative to the including file.")
    weight: float = Field(1.0, gt=0, description="Share of this sub-mixture relative to the other components.")


class HeldOutSpec(StrictModel):
    """The evaluation split the mixture must not train on."""

    split: str | None = Field(
        None,
        description="Split whose test_tasks.txt + excluded_tasks.txt are held out (default: each source's "
        "`split`, else `default`; a collection without split files holds out nothing by itself).",
    )
    tasks: list[str] = Field(default_factory=list, description="More task names to hold out.")
    allow: bool = Field(
        False,
        description="Set true to build a mixture that contains held-out tasks anyway (the evaluation "
        "on that split is then contaminated).",
    )


class StageSpec(StrictModel):
    """One stage of a staged mixture (curriculum): its length and the mixture keys that pick its tasks."""

    fraction: float | None = Field(None, gt=0, le=1, description="Length as a fraction of the mixture's "
                                   "examples (the fractions of all stages add up to 1).")
    examples: int | None = Field(None, gt=0, description="Length in examples (instead of `fraction`).")
    sources: list[SourceSpec] = Field(default_factory=list, description="Task collections of this stage.")
    sources_weight: float = Field(1.0, gt=0, description="Share of the stage's own sources next to `mixtures`.")
    mixtures: list[NestedMixture] = Field(default_factory=list, description="Nested mixture files of this stage.")
    temperature: float | None = Field(None, gt=0, description="The stage's temperature (default: the mixture's).")
    max_instances_per_task: int | None = Field(None, gt=0, description="The stage's cap (default: the mixture's).")

    @model_validator(mode="after")
    def _check(self) -> StageSpec:
        if (self.fraction is None) == (self.examples is None):
            raise ValueError("a stage sets exactly one of `fraction` or `examples`")
        if not self.sources and not self.mixtures:
            raise ValueError("a stage needs at least one entry in `sources` or `mixtures`")
        return self


class MixingSpec(StrictModel):
    """How the tasks' rates evolve during training: fixed (`static`) or re-weighted online from the
    per-group training losses (`online`: ODM's EXP3 bandit, Albalak et al. 2023); see docs/mixtures.md."""

    strategy: Literal["static", "online"] = Field(
        "static", description="`static`: the rates above, fixed (the default); `online`: re-weight the groups "
        "every `every_steps` optimizer steps from their training losses (training only: `mixture build` refuses).")
    method: Literal["exp3"] = Field(
        "exp3", description="Online method: `exp3` is ODM (Albalak et al. 2023, 'Efficient Online Data Mixing "
        "For Language Model Pre-Training'): an EXP3 bandit whose reward is a group's training loss.")
    group_by: Literal["task", "category", "source"] = Field(
        "task", description="The arms of the bandit: every task (its sources/encodings together), every "
        "category, or every source.")
    every_steps: int = Field(10, ge=1, description="Update interval in optimizer steps: the stream is cut into "
                             "segments of every_steps × global batch positions, one weight vector each.")
    floor: float | None = Field(
        None, ge=0, lt=1, description="Minimum probability of every group, so none starves (default: a tenth of "
        "uniform, 0.1 / number of groups); groups × floor must be at most 1.")
    smoothing: float = Field(0.9, ge=0, lt=1, description="ODM's moving-average factor α of the estimated "
                             "rewards (the paper's default 0.9): R̂ ← α R̂ + (1 − α) loss / probability, per example.")


class MixtureSpec(StrictModel):
    """A mixture file: sources and nested mixtures, weighed by cap, temperature and weights."""

    name: str = Field(description="Name of the mixture (shown in reports and logs).")
    seed: int = Field(0, description="Seed of the sample order, the capped pools and per-example choices.")
    total_examples: int | None = Field(None, gt=0, description="Number of examples to sample (or `epochs`).")
    epochs: float | None = Field(
        None, gt=0, description="Number of examples as a multiple of the summed (capped) pool sizes."
    )
    temperature: float = Field(
        1.0, gt=0, description="Rate ∝ min(n, cap)^(1/temperature): 1 is proportional, large is uniform."
    )
    max_instances_per_task: int | None = Field(
        None, gt=0, description="Cap: at most this many instances per task (a seeded random subset)."
    )
    sources: list[SourceSpec] = Field(default_factory=list, description="Task collections to take tasks from.")
    sources_weight: float = Field(
        1.0, gt=0, description="Share of this file's own sources, as one component next to `mixtures`."
    )
    mixtures: list[NestedMixture] = Field(default_factory=list, description="Nested mixture files.")
    held_out: HeldOutSpec = Field(default_factory=HeldOutSpec, description="The held-out guard.")
    stages: list[StageSpec] = Field(
        default_factory=list,
        description="A curriculum: stages in order, each with its length (`fraction` or `examples`) and its "
        "own sources/mixtures (instead of the mixture's); see docs/mixtures.md.",
    )

    mixing: MixingSpec = Field(default_factory=MixingSpec,
                               description="Static rates (default) or online re-weighting during training.")

    _path: Path | None = PrivateAttr(None)
    _children: list[tuple[float, MixtureSpec]] = PrivateAttr(default_factory=list)
    _stages: list[MixtureSpec] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> MixtureSpec:
        if self.total_examples is not None and self.epochs is not None:
            raise ValueError("set either total_examples or epochs, not both")
        if self.stages:
            if self.sources or self.mixtures:
                raise ValueError("a staged mixture gives its sources and mixtures inside `stages`, not beside them")
            fractions = [st.fraction for st in self.stages]
            if None not in fractions and abs(sum(fractions) - 1) > 1e-6:  # type: ignore[arg-type]
                raise ValueError(f"the stages' fractions add up to {sum(fractions):g}, not 1")  # type: ignore[arg-type]
            if None in fractions and any(f is not None for f in fractions):
                raise ValueError("give every stage a `fraction`, or every stage `examples`, not a mix")
            if None in fractions and (self.total_examples is not None or self.epochs is not None):
                raise ValueError("stages given in `examples` set the mixture's length: drop total_examples/epochs")
            if self.mixing.strategy != "static":
                raise ValueError("online re-weighting (`mixing`) of a staged mixture is not supported: use one "
                                 "or the other")
        elif not self.sources and not self.mixtures:
            raise ValueError("a mixture needs at least one entry in `sources` or `mixtures`")
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique (repeated: {', '.join(dup)})")
        return self

    @property
    def path(self) -> Path | None:
        """The YAML file this spec was read from (None for a dict)."""
        return self._path

    @property
    def children(self) -> list[tuple[float, MixtureSpec]]:
        """The resolved nested mixtures: (weight, spec)."""
        return list(self._children)

    @property
    def stage_specs(self) -> list[MixtureSpec]:
        """Each stage as a mixture of its own (name `<name>/stage<k>`, the mixture's seed and held-out guard)."""
        return list(self._stages)

    def walk(self) -> Iterable[MixtureSpec]:
        """This spec and every nested spec (stages included), depth first."""
        yield self
        for stage in self._stages:
            yield from stage.walk()
        for _, child in self._children:
            yield from child.walk()

    def resolved(self) -> dict[str, Any]:
        """The spec with nested mixtures inlined (for hashing and manifests)."""
        # a static mixture's resolved form (and so its hash) is what it was before `mixing` existed
        exclude = {"mixtures", "stages"} | ({"mixing"} if self.mixing.strategy == "static" else set())
        data = self.model_dump(mode="json", exclude=exclude)
        data["mixtures"] = [{"weight": w, "mixture": c.resolved()} for w, c in self._children]
        if self._stages:
            data["stages"] = [{"fraction": st.fraction, "examples": st.examples, "mixture": sub.resolved()}
                              for st, sub in zip(self.stages, self._stages, strict=True)]
        return data


def load_mixture(
    path_or_dict: str | Path | Mapping[str, Any],
    *,
    overrides: Sequence[str] = (),
    collection: str | None = None,
) -> MixtureSpec:
    """Read and validate a mixture (YAML path or dict), resolving nested mixture files.

    `overrides` are `key=value` strings applied to the top file (e.g. `seed=7`). `collection`
    replaces the `path` of every superni source, nested ones included (the `--collection` flag).
    Errors name the file and the field; a cycle of nested files is an error listing the cycle.
    """
    if collection is not None and collection != BUNDLED:
        collection = str(Path(collection).expanduser().resolve())
    spec = _load(path_or_dict, overrides, collection, stack=())
    given_lengths = bool(spec.stages) and all(st.examples is not None for st in spec.stages)
    if spec.total_examples is None and spec.epochs is None and not given_lengths:
        raise ConfigError(
            "the mixture sets neither total_examples nor epochs", path=spec.path, field="total_examples",
            hint="add e.g. `total_examples: 20000` or `epochs: 2`",
        )
    return spec


def _load(source: str | Path | Mapping[str, Any], overrides: Sequence[str], collection: str | None,
          stack: tuple[Path, ...]) -> MixtureSpec:
    if isinstance(source, Mapping):
        path, data = None, dict(source)
    else:
        path = Path(source).expanduser().resolve()
        if path in stack:
            cycle = " -> ".join(str(p) for p in (*stack[stack.index(path):], path))
            raise ConfigError(f"nested mixtures form a cycle: {cycle}", path=stack[-1], field="mixtures",
                              hint="remove one of these includes")
        data = load_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    spec = validate(MixtureSpec, data, path, overrides)
    spec._path = path
    _resolve_paths(spec, path, collection, stack)
    for k, stage in enumerate(spec.stages):
        sub = MixtureSpec(name=f"{spec.name}/stage{k + 1}", seed=spec.seed, total_examples=1,
                          temperature=stage.temperature or spec.temperature,
                          max_instances_per_task=stage.max_instances_per_task or spec.max_instances_per_task,
                          sources=stage.sources, sources_weight=stage.sources_weight, mixtures=stage.mixtures,
                          held_out=spec.held_out)
        sub._path = path
        _resolve_paths(sub, path, collection, stack, field=f"stages[{k}].")
        spec._stages.append(sub)
    return spec


def _resolve_paths(spec: MixtureSpec, path: Path | None, collection: str | None, stack: tuple[Path, ...],
                   field: str = "") -> None:
    """Make the sources' paths absolute and load the nested mixture files (into `spec._children`)."""
    base = path.parent if path is not None else Path.cwd()
    for source_spec in spec.sources:
        if collection is not None and source_spec.type == "superni":
            source_spec.path = collection
        elif source_spec.path != BUNDLED and not Path(source_spec.path).is_absolute():
            candidate = base / source_spec.path
            if candidate.exists():
                source_spec.path = str(candidate.resolve())
    here = (*stack, path) if path is not None else stack
    for i, nested in enumerate(spec.mixtures):
        child_path = Path(nested.path).expanduser()
        if not child_path.is_absolute():
            child_path = base / child_path
        if not child_path.exists():
            raise ConfigError(f"nested mixture {nested.path!r} not found (looked at {child_path})",
                              path=path, field=f"{field}mixtures[{i}].path", hint="paths are relative to this file")
        child = _load(child_path, (), collection, here)
        if child.mixing.strategy != "static":
            raise ConfigError("a nested mixture cannot re-weight online", path=child_path, field="mixing",
                              hint="set `mixing:` in the top mixture file only")
        spec._children.append((nested.weight, child))
