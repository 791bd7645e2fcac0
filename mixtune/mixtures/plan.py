"""`plan_mixture`: resolve a spec into tasks, rates and a sample index; format examples by position."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mixtune.encodings import (
    TK_INSTRUCT_ENCODINGS,
    EncodingSpec,
    encode_prompt,
    prompt_prefix,
    resolve_encoding,
)
from mixtune.errors import ConfigError, DataError, HeldOutError
from mixtune.mixtures.formatting import instance_prompts, picked_references, reference_counts
from mixtune.mixtures.rates import mixing_rates, nest
from mixtune.mixtures.sampler import (
    SampleIndex,
    build_index,
    capped_pool,
    position_seed,
    position_seeds,
    stable_key,
)
from mixtune.mixtures.selection import held_out_tasks, select_tasks
from mixtune.mixtures.spec import MixtureSpec, SourceSpec
from mixtune.mixtures.stages import Stage, plan_stages, stage_lengths
from mixtune.tasks.schema import INSTANCE_SCHEMA, TaskCollection, TaskInfo

MAX_EXAMPLES = 2**32  # the sample index keeps 12 bytes per example in memory (~50 GB at this bound)

#: Bumped whenever the sampling algorithm changes what a (mixture, seed, position) yields.
SAMPLER_VERSION = 1
COLUMNS = ("prompt", "completion", "task", "category", "source", "position", "instance_id", "references")
#: The Arrow schema of formatted examples (and of a built mixture's files).
EXAMPLE_SCHEMA = pa.schema([
    ("prompt", pa.string()),
    ("completion", pa.string()),
    ("task", pa.string()),
    ("category", pa.string()),
    ("source", pa.string()),
    ("position", pa.int64()),
    ("instance_id", pa.string()),
    ("references", pa.list_(pa.string())),
])
_ENCODING_STREAM = 0x656E63


@dataclass
class PlanTask:
    """One task of the plan: where it comes from, its pool and its rate."""

    name: str
    source: str
    info: TaskInfo
    collection: TaskCollection = field(repr=False)
    encoding: EncodingSpec
    num_instances: int
    cap: int | None
    pool: np.ndarray = field(repr=False)
    weight: float
    rate: float = 0.0
    _table: pa.Table | None = field(default=None, repr=False)

    @property
    def category(self) -> str:
        return self.info.category

    def table(self) -> pa.Table:
        """The task's instances (memory-mapped), opened once."""
        if self._table is None:
            self._table = self.collection.instances(self.name)
        return self._table


class MixturePlan:
    """A resolved mixture: its tasks and rates, and the position -> example index.

    `len(plan)` is the number of examples; `plan.example(p)` and `plan.iter_examples(start)` give the
    formatted example at any position without touching earlier ones. `plan.without_instances(...)` derives
    a plan that leaves some instances out (e.g. decontamination).
    """

    def __init__(self, spec: MixtureSpec, tasks: list[PlanTask], index: SampleIndex,
                 held_out: frozenset[str], collections: dict[str, TaskCollection]) -> None:
        self.spec = spec
        self.tasks = tasks
        self.index = index
        self.held_out = held_out
        self.collections = collections
        self.seed = spec.seed
        self.hash = _plan_hash(spec, tasks, len(index))
        self._prefix_cache: dict[int, str] = {}
        self._task_arrays: tuple[pa.Array, pa.Array, pa.Array, np.ndarray] | None = None
        self.stages: list[Stage] = []  # a staged mixture's stages, in position order
        #: positions of the index the plan yields (None: all); set by `without_instances`
        self.keep: np.ndarray | None = None
        self.redrawn = 0  # examples `without_instances` re-drew from clean instances of their task
        self.dropped = 0  # examples `without_instances` dropped (their task had no clean instance left)
        #: extra sections of `summary()` (e.g. "decontamination"), set by whoever derived the plan
        self.notes: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.index) if self.keep is None else int(self.keep.sum())

    def __repr__(self) -> str:
        return f"MixturePlan(name={self.spec.name!r}, tasks={len(self.tasks)}, examples={len(self)}, hash={self.hash})"

    @property
    def rates(self) -> np.ndarray:
        return np.array([t.rate for t in self.tasks])

    def realised_counts(self) -> np.ndarray:
        """Number of examples each task actually gets in the index."""
        return self.index.counts(len(self.tasks))

    def without_instances(self, instances: Mapping[tuple[str, str], Iterable[int]], *, stream: int, tag: str,
                          mark: str) -> MixturePlan:
        """A copy of the plan whose examples never show these instances ((source, task) -> rows).

        The copy keeps the size where it can: each example that drew a listed instance is re-drawn (seeded
        by the plan's seed, `stream` and the task) from the clean instances of its task's pool, so every task
        keeps its count and every other example its position and content. Only a task with no clean
        instance left loses its examples (the others keep their position numbers). `redrawn` and `dropped`
        count the changed examples; the hash becomes `{hash}-{mark}{digest of hash and tag}` (`tag` names
        what was left out), so the built dataset differs from the full one.
        """
        rows = self.index.rows.copy()
        keep = np.ones(len(self.index), dtype=bool) if self.keep is None else self.keep.copy()
        redrawn = 0
        for k, task in enumerate(self.tasks):
            bad = np.asarray(sorted(set(instances.get((task.source, task.name), ()))), dtype=np.int64)
            if not len(bad):
                continue
            positions = np.flatnonzero((self.index.task_ids == k) & np.isin(self.index.rows, bad))
            if not len(positions):
                continue
            clean = task.pool[~np.isin(task.pool, bad)]
            if not len(clean):
                keep[positions] = False
                continue
            rng = np.random.default_rng([self.seed % 2**64, stream, stable_key(f"{task.source}/{task.name}")])
            rows[positions] = clean[rng.permutation(len(clean))[np.arange(len(positions)) % len(clean)]]
            redrawn += len(positions)
        derived = copy.copy(self)
        derived.index = SampleIndex(task_ids=self.index.task_ids, rows=rows)
        derived.keep = keep
        derived.redrawn = self.redrawn + redrawn
        derived.dropped = int((~keep).sum())
        derived.notes = dict(self.notes)
        digest = hashlib.blake2b(f"{self.hash}\n{tag}".encode(), digest_size=8).hexdigest()
        derived.hash = f"{self.hash}-{mark}{digest}"
        return derived

    def summary(self) -> dict[str, Any]:
        """The `mixture show --json` form: per task, category and source; rates sum to 1.

        Expected and realised examples are those of the sample index; `total_examples` is `len(plan)` (less
        when `without_instances` dropped examples)."""
        n = len(self.index)
        counts = self.realised_counts().tolist()
        tasks = [{"name": t.name, "source": t.source, "category": t.category, "num_instances": t.num_instances,
                  "cap": t.cap, "pool_size": len(t.pool), "rate": t.rate, "expected_examples": t.rate * n,
                  "realised_examples": c} for t, c in zip(self.tasks, counts, strict=True)]
        in_mixture = sorted({t.name for t in self.tasks} & self.held_out)
        return {
            "name": self.spec.name,
            "hash": self.hash,
            "seed": self.seed,
            "total_examples": len(self),
            "num_tasks": len(tasks),
            "tasks": tasks,
            "categories": _totals(tasks, "category"),
            "sources": _totals(tasks, "source"),
            "held_out": {"num_tasks": len(self.held_out), "allowed": self.spec.held_out.allow,
                         "in_mixture": in_mixture},
            **({"stages": [self._stage_summary(st) for st in self.stages]} if self.stages else {}),
            **({"mixing": _online_summary(self)} if self.spec.mixing.strategy == "online" else {}),
            **self.notes,
        }

    def _stage_summary(self, stage: Stage) -> dict[str, Any]:
        """A stage's positions and, per task it draws from, its realised examples in the stage."""
        counts = np.bincount(self.index.task_ids[stage.start:stage.stop], minlength=len(self.tasks))
        return {"name": stage.name, "start": stage.start, "stop": stage.stop,
                "tasks": [{"name": self.tasks[k].name, "source": self.tasks[k].source,
                           "category": self.tasks[k].category, "realised_examples": int(counts[k])}
                          for k in stage.tasks]}

    def example(self, position: int, *, tokenizer: Any = None, max_source_length: int | None = None) -> dict:
        """The formatted example at `position`."""
        if not 0 <= position < len(self.index):
            raise IndexError(f"position {position} is outside the mixture (0..{len(self.index) - 1})")
        return next(self.iter_examples(position, position + 1, tokenizer=tokenizer,
                                       max_source_length=max_source_length))

    def iter_examples(self, start: int = 0, stop: int | None = None, *, tokenizer: Any = None,
                      max_source_length: int | None = None, batch_size: int = 1024) -> Iterator[dict]:
        """Formatted examples from `start` (O(1): a slice of the index) to `stop`, in sampled order."""
        for batch in self.iter_batches(start, stop, tokenizer=tokenizer, max_source_length=max_source_length,
                                       batch_size=batch_size):
            keys = list(batch)
            for values in zip(*batch.values(), strict=True):
                yield dict(zip(keys, values, strict=True))

    def iter_batches(self, start: int = 0, stop: int | None = None, *, tokenizer: Any = None,
                     max_source_length: int | None = None, batch_size: int = 1024) -> Iterator[dict[str, list]]:
        """Like `iter_examples`, as column batches ({column: list}) of at most `batch_size` examples."""
        for table in self.iter_tables(start, stop, tokenizer=tokenizer, max_source_length=max_source_length,
                                      batch_size=batch_size):
            yield table.to_pydict()

    def iter_tables(self, start: int = 0, stop: int | None = None, *, tokenizer: Any = None,
                    max_source_length: int | None = None, batch_size: int = 1024,
                    read_batches: int = 1) -> Iterator[pa.Table]:
        """Like `iter_batches`, as Arrow tables with EXAMPLE_SCHEMA. The instances of `read_batches` batches
        are read at once (one `take` per task: fewer, larger reads; an instance is a fraction of its example).
        `start` and `stop` are positions of the sample index; positions a derived plan left out are
        skipped."""
        n = len(self.index)
        stop = n if stop is None else min(stop, n)
        if start < 0 or start > n:
            raise IndexError(f"start {start} is outside the mixture (0..{n})")
        for lo in range(start, stop, batch_size * read_batches):
            hi = min(lo + batch_size * read_batches, stop)
            instances = self._instances(self.index.task_ids[lo:hi], self.index.rows[lo:hi])
            for a in range(lo, hi, batch_size):
                b = min(a + batch_size, hi)
                table = self._format(a, b, instances.slice(a - lo, b - a), tokenizer, max_source_length)
                if self.keep is None or self.keep[a:b].all():
                    yield table
                elif self.keep[a:b].any():
                    yield table.filter(pa.array(self.keep[a:b]))

    def _format(self, lo: int, hi: int, instances: pa.Table, tokenizer: Any,
                max_source_length: int | None) -> pa.Table:
        task_ids = self.index.task_ids[lo:hi]
        positions = np.arange(lo, hi, dtype=np.int64)
        ids, inputs = instances.column("id").combine_chunks(), instances.column("input").combine_chunks()
        outputs = instances.column("output").combine_chunks()
        counts = reference_counts(outputs)
        if len(counts) and not counts.all():
            i = int(np.argmin(counts))
            raise DataError(f"instance {ids[i].as_py()!r} of task {self.tasks[task_ids[i]].name!r} has no output",
                            field="output")
        if tokenizer is None or max_source_length is None:
            prompts = instance_prompts(self._prefixes(task_ids, positions), inputs)
        else:  # demonstrations are dropped per example to fit the token budget
            prompts = pa.array([
                encode_prompt(t.info, x, t.encoding, seed=self._encoding_seed(t, p), tokenizer=tokenizer,
                              max_source_length=max_source_length)
                for t, x, p in zip([self.tasks[k] for k in task_ids.tolist()], inputs.to_pylist(),
                                   positions.tolist(), strict=True)], pa.string())
        names, categories, sources, _ = self._task_columns()
        take = pa.array(task_ids)
        return pa.Table.from_arrays([
            prompts, picked_references(outputs, position_seeds(self.seed, positions), counts),
            names.take(take), categories.take(take), sources.take(take), pa.array(positions), ids,
            outputs.cast(EXAMPLE_SCHEMA.field("references").type)], schema=EXAMPLE_SCHEMA)

    def _instances(self, task_ids: np.ndarray, rows: np.ndarray) -> pa.Table:
        """The instances (id, input, output) at these (task, row) pairs, in the given order."""
        if not len(task_ids):
            return INSTANCE_SCHEMA.empty_table()
        # read each task's rows with one `take`, then put them back in position order
        by_task = np.argsort(task_ids, kind="stable")
        grouped = task_ids[by_task]
        bounds = np.flatnonzero(np.diff(grouped)) + 1
        parts = [self.tasks[int(grouped[a])].table().take(pa.array(rows[by_task[a:b]]))
                 for a, b in zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(grouped)].tolist(), strict=True)]
        inverse = np.empty_like(by_task)
        inverse[by_task] = np.arange(len(by_task))
        return pa.concat_tables(parts).combine_chunks().take(pa.array(inverse))  # one chunk: a fast take

    def _encoding_seed(self, task: PlanTask, position: int) -> int | None:
        return position_seed(self.seed ^ _ENCODING_STREAM, position) if task.encoding.tk_instruct else None

    def _prefixes(self, task_ids: np.ndarray, positions: np.ndarray) -> pa.Array:
        """Each row's fixed prompt part (`prompt_prefix`), computed once per (task, encoding) and cached."""
        variants = np.full(len(task_ids), -1, dtype=np.int64)  # -1: the task's own encoding
        tk = self._task_columns()[3][task_ids]
        if tk.any():
            seeds = position_seeds(self.seed ^ _ENCODING_STREAM, positions[tk])
            spec = EncodingSpec(tk_instruct=True)
            picked = [resolve_encoding(spec, s) for s in seeds.tolist()]
            variants[tk] = [next(i for i, e in enumerate(TK_INSTRUCT_ENCODINGS) if e is p) for p in picked]
        keys, inverse = np.unique(task_ids.astype(np.int64) * 8 + variants + 1, return_inverse=True)
        texts = []
        for key in keys.tolist():
            if key not in self._prefix_cache:
                task = self.tasks[key // 8]
                variant = key % 8 - 1
                spec = task.encoding if variant < 0 else TK_INSTRUCT_ENCODINGS[variant]
                self._prefix_cache[key] = prompt_prefix(task.info, spec)
            texts.append(self._prefix_cache[key])
        return pa.array(texts, pa.string()).take(pa.array(inverse.reshape(-1)))

    def _task_columns(self) -> tuple[pa.Array, pa.Array, pa.Array, np.ndarray]:
        """Name, category and source of every task (to `take` per example), and which use tk_instruct."""
        if self._task_arrays is None:
            self._task_arrays = (*(pa.array([getattr(t, key) for t in self.tasks], pa.string())
                                   for key in ("name", "category", "source")),
                                 np.array([t.encoding.tk_instruct for t in self.tasks], dtype=bool))
        return self._task_arrays


def plan_mixture(spec: MixtureSpec, *, cache_dir: str | None = None) -> MixturePlan:
    """Resolve `spec`: open its collections, select tasks, compute rates, build the sample index.

    Raises HeldOutError when a task the evaluation holds out is in the mixture, unless the spec sets
    `held_out.allow: true`.
    """
    from mixtune.tasks.collection import open_collection

    opened: dict[tuple, TaskCollection] = {}

    def open_source(source: SourceSpec) -> TaskCollection:
        key = (source.type, source.path, json.dumps(source.columns, sort_keys=True))
        if key not in opened:
            opened[key] = open_collection(source.type, source.path, name=source.name, columns=source.columns,
                                          cache_dir=cache_dir)
        return opened[key]

    tasks: list[PlanTask] = []
    collections: dict[str, TaskCollection] = {}
    held_out: set[str] = set()
    stage_tasks: list[tuple[list[PlanTask], np.ndarray]] = []
    for sub in spec.stage_specs:  # a staged mixture: each stage resolved as a mixture of its own
        own: list[PlanTask] = []
        labels: dict[str, TaskCollection] = {}
        stage_tasks.append((own, _resolve(sub, "", spec.seed, open_source, own, labels, held_out)))
        for label, collection in labels.items():
            collections.setdefault(label, collection)
        seen = {(u.source, u.name, u.cap) for u in tasks}
        tasks.extend(t for t in own if (t.source, t.name, t.cap) not in seen)
    if not stage_tasks:
        rates = _resolve(spec, "", spec.seed, open_source, tasks, collections, held_out)
        for task, rate in zip(tasks, rates.tolist(), strict=True):
            task.rate = rate
    held = frozenset(held_out)
    violations = sorted({t.name for t in tasks} & held)
    if violations and not spec.held_out.allow:
        shown = ", ".join(violations[:20]) + (f" and {len(violations) - 20} more" if len(violations) > 20 else "")
        raise HeldOutError(f"the mixture contains {len(violations)} held-out task(s): {shown}", path=spec.path,
                           field="held_out",
                           hint="exclude them (tasks.exclude), use `split:`, or set `held_out.allow: true`")
    if spec.total_examples is not None:
        total = spec.total_examples
    elif spec.epochs is not None:
        total = float(spec.epochs) * sum(len(t.pool) for t in tasks)
    else:  # stages of given lengths
        total = sum(stage_lengths(spec, None))
    if total > MAX_EXAMPLES:  # the index holds 12 bytes per example in memory
        field = "total_examples" if spec.total_examples is not None else "epochs"
        raise ConfigError(f"the mixture would have {total:.3g} examples, more than the {MAX_EXAMPLES:,} a plan holds",
                          path=spec.path, field=field, hint="lower it; train for several runs if you need more")
    total = int(round(total))
    if stage_tasks:
        tasks, index, stages = plan_stages(spec, stage_tasks, total)
        plan = MixturePlan(spec, tasks, index, held, collections)
        plan.stages = stages
        return plan
    index = build_index(rates, [t.pool for t in tasks], total, spec.seed,
                        [stable_key(f"{t.source}\0{t.name}") for t in tasks])
    return MixturePlan(spec, tasks, index, held, collections)


def _resolve(spec: MixtureSpec, prefix: str, seed: int, open_source: Any, tasks: list[PlanTask],
             collections: dict[str, TaskCollection], held_out: set[str]) -> np.ndarray:
    """Append `spec`'s tasks (own sources, then nested mixtures) and return their rates (sum 1)."""
    components: list[tuple[float, np.ndarray]] = []
    own: list[PlanTask] = []
    by_index: dict[int, TaskCollection] = {}
    cap = spec.max_instances_per_task
    for i, source in enumerate(spec.sources):
        if source.type != "hf" and source.path != "bundled" and not Path(source.path).expanduser().exists():
            raise ConfigError(f"source {source.name!r}: collection path {source.path!r} does not exist",
                              path=spec.path, field=f"sources[{i}].path",
                              hint="fix the path or pass `--collection PATH` (a SuperNI checkout, or `bundled`)")
        collection = by_index[i] = open_source(source)
        label = _unique(prefix + source.name, collections)
        collections[label] = collection
        for sel in select_tasks(spec, i, collection):
            n = sel.info.num_instances or collection.instances(sel.task).num_rows
            if n == 0:
                raise DataError(f"task {sel.task!r} has no instances", path=collection.path)
            own.append(PlanTask(name=sel.task, source=label, info=sel.info, collection=collection,
                                encoding=sel.encoding, num_instances=n, cap=cap,
                                pool=capped_pool(n, cap, seed, sel.task), weight=sel.weight))
    held_out |= held_out_tasks(spec, by_index)
    if own:
        components.append((spec.sources_weight, mixing_rates([t.num_instances for t in own], cap=cap,
                                                             temperature=spec.temperature,
                                                             weights=[t.weight for t in own])))
        tasks.extend(own)
    for weight, child in spec.children:
        components.append((weight, _resolve(child, f"{prefix}{child.name}/", seed, open_source, tasks,
                                            collections, held_out)))
    return nest(components)


def _online_summary(plan: MixturePlan) -> dict[str, Any]:
    from mixtune.mixtures.online import mixing_summary

    return mixing_summary(plan)


def _unique(label: str, taken: dict[str, Any]) -> str:
    if label not in taken:
        return label
    n = 2
    while f"{label}#{n}" in taken:
        n += 1
    return f"{label}#{n}"


def _totals(tasks: list[dict], key: str) -> list[dict]:
    groups: dict[str, dict] = {}
    for t in tasks:
        g = groups.setdefault(t[key], {"name": t[key], "num_tasks": 0, "num_instances": 0, "rate": 0.0,
                                       "expected_examples": 0.0, "realised_examples": 0})
        g["num_tasks"] += 1
        g["num_instances"] += t["num_instances"]
        g["rate"] += t["rate"]
        g["expected_examples"] += t["expected_examples"]
        g["realised_examples"] += t["realised_examples"]
    return sorted(groups.values(), key=lambda g: (-g["rate"], g["name"]))


def _content_key(task: PlanTask) -> str:
    """The task's content hash when the collection exposes one (its cache key), else ''."""
    getter = getattr(task.collection, "content_key", None)
    return str(getter(task.name)) if callable(getter) else ""


def _task_identity(task: PlanTask) -> list:
    return [task.source, task.name, task.num_instances, _content_key(task), task.info.definition]


def _plan_hash(spec: MixtureSpec, tasks: list[PlanTask], total: int) -> str:
    """A stable hash of the resolved spec (paths left out) and the tasks' identity and sizes."""
    resolved = spec.resolved()

    def strip(node: dict) -> dict:
        node = dict(node)
        node["sources"] = [{k: v for k, v in s.items() if k != "path"} for s in node.get("sources", [])]
        node["mixtures"] = [{"weight": m["weight"], "mixture": strip(m["mixture"])} for m in node.get("mixtures", [])]
        return node

    payload = {"sampler": SAMPLER_VERSION, "spec": strip(resolved), "total": total,
               "tasks": [_task_identity(t) for t in tasks]}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
