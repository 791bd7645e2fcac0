"""Train/eval decontamination: find training instances whose input overlaps an evaluation instance.

Two tests, on the SuperNI-normalised text (lower-case, punctuation removed, whitespace collapsed):

- exact: the normalised training input equals a normalised evaluation input;
- n-gram: the training input shares at least one word n-gram (n=13 by default, as GPT-3 and FLAN
  decontaminate) with an evaluation input.

The evaluation side becomes a sorted array of 64-bit n-gram hashes; each training task's inputs are
hashed in one vectorised pass (numpy) and looked up with `np.isin` / `np.searchsorted`, so the cost
is linear in the number of words on both sides. Words that never occur on the evaluation side cannot
be part of a shared n-gram and are masked out before the lookup.

`--drop` builds the mixture without the contaminated instances at the same size: each example that
drew one is re-drawn from the clean instances of the same task's pool (seeded), so every task keeps
its count, and every other example keeps its position and content. Only a task whose whole pool is
contaminated loses its examples.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from mixtune.errors import ConfigError, DataError

DEFAULT_NGRAM = 13
_PUNCT = str.maketrans("", "", string.punctuation)
_SPACE = re.compile(r"\s+")
_PRIME = np.uint64(0x100000001B3)


def normalize(text: str) -> str:
    """SuperNI answer normalisation: lower-case, ASCII punctuation removed, whitespace collapsed."""
    return _SPACE.sub(" ", text.lower().translate(_PUNCT)).strip()


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: spread small integer ids over 64 bits (wrapping arithmetic)."""
    z = values.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _ngram_hashes(ids: np.ndarray, owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every word n-gram that lies inside one text and has no unknown word (id 0).

    `ids` are the word ids of all texts concatenated, `owner` the text index of each word. Returns
    (hashes, owner of each n-gram).
    """
    count = len(ids) - n + 1
    if count <= 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    mixed = _mix(ids)
    with np.errstate(over="ignore"):
        hashes = np.zeros(count, dtype=np.uint64)
        for k in range(n):
            hashes = hashes * _PRIME + mixed[k:k + count]
    unknown = np.concatenate([[0], np.cumsum(ids == 0)])
    valid = (owner[:count] == owner[n - 1:]) & (unknown[n:] - unknown[:count] == 0)
    return hashes[valid], owner[:count][valid]


@dataclass(frozen=True)
class EvalRef:
    """An evaluation instance that training text may overlap."""

    task: str
    instance_id: str


@dataclass
class EvalIndex:
    """The evaluation side: normalised inputs for exact match, sorted n-gram hashes for overlap."""

    n: int
    refs: list[EvalRef] = field(default_factory=list)
    exact: dict[str, int] = field(default_factory=dict)
    vocab: dict[str, int] = field(default_factory=dict)
    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    owners: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @property
    def tasks(self) -> list[str]:
        """The evaluation tasks indexed, sorted."""
        return sorted({r.task for r in self.refs})

    def __len__(self) -> int:
        return len(self.refs)


def build_eval_index(items: Iterable[tuple[str, str, str]], n: int = DEFAULT_NGRAM) -> EvalIndex:
    """Index evaluation instances given as (task, instance_id, input)."""
    if n < 1:
        raise ConfigError(f"the n-gram length must be >= 1 (got {n})", field="ngram", hint="the usual value is 13")
    index = EvalIndex(n=n)
    ids: list[int] = []
    owner: list[int] = []
    for task, instance_id, text in items:
        k = len(index.refs)
        index.refs.append(EvalRef(task, str(instance_id)))
        norm = normalize(text)
        if norm:
            index.exact.setdefault(norm, k)
        for word in norm.split():
            ids.append(index.vocab.setdefault(word, len(index.vocab) + 1))
            owner.append(k)
    hashes, owners = _ngram_hashes(np.asarray(ids, np.int64), np.asarray(owner, np.int64), n)
    order = np.argsort(hashes, kind="stable")
    hashes, owners = hashes[order], owners[order]
    first = np.ones(len(hashes), dtype=bool)
    first[1:] = hashes[1:] != hashes[:-1]
    index.hashes, index.owners = hashes[first], owners[first]
    return index


@dataclass(frozen=True)
class Overlap:
    """A training instance that overlaps an evaluation instance."""

    source: str
    task: str
    row: int
    instance_id: str
    kind: str  # "exact" or "ngram"
    eval_task: str
    eval_instance_id: str
    shared_ngrams: int


def find_overlaps(index: EvalIndex, source: str, task: str, ids: Sequence[str],
                  inputs: Sequence[str]) -> list[Overlap]:
    """The instances of one training task (ids and inputs in row order) that overlap the index."""
    found: list[Overlap] = []
    exact_rows: set[int] = set()
    word_ids: list[int] = []
    owner: list[int] = []
    vocab = index.vocab
    for row, text in enumerate(inputs):
        norm = normalize(text)
        hit = index.exact.get(norm) if norm else None
        if hit is not None:
            ref = index.refs[hit]
            found.append(Overlap(source, task, row, str(ids[row]), "exact", ref.task, ref.instance_id,
                                 max(len(norm.split()) - index.n + 1, 0)))
            exact_rows.add(row)
            continue
        words = norm.split()
        word_ids.extend(vocab.get(w, 0) for w in words)
        owner.extend([row] * len(words))
    if len(index.hashes):
        hashes, rows = _ngram_hashes(np.asarray(word_ids, np.int64), np.asarray(owner, np.int64), index.n)
        pos = np.searchsorted(index.hashes, hashes)
        pos = np.minimum(pos, len(index.hashes) - 1)
        match = index.hashes[pos] == hashes
        if match.any():
            hit_rows, hit_eval = rows[match], index.owners[pos[match]]
            counts = np.bincount(hit_rows)
            uniq, first = np.unique(hit_rows, return_index=True)
            for row, at in zip(uniq.tolist(), first.tolist(), strict=True):
                ref = index.refs[int(hit_eval[at])]
                found.append(Overlap(source, task, row, str(ids[row]), "ngram", ref.task, ref.instance_id,
                                     int(counts[row])))
    found.sort(key=lambda o: o.row)
    return found


@dataclass
class TaskCount:
    """Per training task: instances checked and how many overlap (exact, n-gram, either)."""

    source: str
    task: str
    num_instances: int
    exact: int = 0
    ngram: int = 0
    sampled_examples: int = 0

    @property
    def contaminated(self) -> int:
        return self.exact + self.ngram


@dataclass
class DecontaminationReport:
    """The result of checking a mixture's training tasks against evaluation instances."""

    ngram: int
    eval_tasks: list[str]
    num_eval_instances: int
    tasks: list[TaskCount]
    overlaps: list[Overlap]

    @property
    def num_contaminated(self) -> int:
        return len(self.overlaps)

    def contaminated_keys(self) -> set[tuple[str, str, str]]:
        """(source, task, instance_id) of every contaminated training instance."""
        return {(o.source, o.task, o.instance_id) for o in self.overlaps}

    def to_dict(self) -> dict[str, Any]:
        """The `--json` form."""
        return {
            "ngram": self.ngram,
            "eval_tasks": self.eval_tasks,
            "num_eval_instances": self.num_eval_instances,
            "num_train_instances": sum(t.num_instances for t in self.tasks),
            "num_contaminated": self.num_contaminated,
            "tasks": [{**asdict(t), "contaminated": t.contaminated} for t in self.tasks],
            "overlaps": [asdict(o) for o in self.overlaps],
        }


def check_tasks(index: EvalIndex, train_tasks: Iterable[tuple[str, str, Any]]) -> DecontaminationReport:
    """Check training tasks given as (source, task, collection) against the evaluation index."""
    counts: list[TaskCount] = []
    overlaps: list[Overlap] = []
    for source, task, collection in train_tasks:
        table = collection.instances(task)
        ids = table.column("id").to_pylist()
        inputs = table.column("input").to_pylist()
        found = find_overlaps(index, source, task, ids, inputs)
        counts.append(TaskCount(source, task, len(ids), exact=sum(o.kind == "exact" for o in found),
                                ngram=sum(o.kind == "ngram" for o in found)))
        overlaps.extend(found)
    return DecontaminationReport(index.n, index.tasks, len(index), counts, overlaps)


def split_eval_items(collections: dict[str, Any], split: str) -> Iterator[tuple[str, str, str]]:
    """Every instance of the tasks that `split` holds out (test + excluded), in each collection."""
    seen: set[str] = set()
    any_split = False
    for collection in collections.values():
        found = collection.split(split)
        if found is None:
            continue
        any_split = True
        present = set(collection.task_names())
        for task in sorted(found.held_out & present - seen):
            seen.add(task)
            yield from _task_items(collection, task, None)
    if not any_split:
        raise DataError(f"no source collection of the mixture has a split {split!r}", field="eval-split",
                        hint="give the evaluation with --eval EVAL.yaml, or a collection with splits/<name>/")


def spec_eval_items(spec: Any) -> Iterator[tuple[str, str, str]]:
    """The instances an eval spec evaluates: its tasks' first `max_instances_per_task` instances."""
    from mixtune.eval.evalsets import resolve_tasks
    from mixtune.tasks.collection import open_collection

    collection = open_collection(spec.type, spec.collection)
    for task in resolve_tasks(collection, spec.split, spec.tasks):
        yield from _task_items(collection, task, spec.max_instances_per_task)


def _task_items(collection: Any, task: str, limit: int | None) -> Iterator[tuple[str, str, str]]:
    table = collection.instances(task)
    if limit is not None:
        table = table.slice(0, limit)
    for instance_id, text in zip(table.column("id").to_pylist(), table.column("input").to_pylist(), strict=True):
        yield task, str(instance_id), text


def _plan_tasks(plan: Any) -> list[tuple[str, str, Any]]:
    """(source, task, collection) of each task of a MixturePlan, in plan order."""
    return [(t.source, t.name, t.collection) for t in plan.tasks]


def decontaminate_plan(plan: Any, *, eval_split: str = "default", eval_spec: Any = None,
                       ngram: int = DEFAULT_NGRAM) -> DecontaminationReport:
    """Check every instance of the plan's training tasks against the evaluation's instances.

    The evaluation is `eval_spec` (an EvalSpec: its tasks' first N instances) or, without it, every
    instance of the tasks that `eval_split` holds out in the plan's collections. Every instance of a
    training task is checked, not only its capped pool; `sampled_examples` counts the mixture's
    examples that are contaminated.
    """
    items = spec_eval_items(eval_spec) if eval_spec is not None else split_eval_items(plan.collections, eval_split)
    index = build_eval_index(items, ngram)
    if not len(index):
        raise DataError("the evaluation side has no instances", field="eval",
                        hint="check the split's test_tasks.txt or the eval YAML's tasks")
    report = check_tasks(index, _plan_tasks(plan))
    drop = contaminated_positions(plan, report)
    sampled = np.bincount(plan.index.task_ids[drop], minlength=len(plan.tasks)) if len(plan.tasks) else []
    for count, n in zip(report.tasks, np.asarray(sampled).tolist(), strict=True):
        count.sampled_examples = int(n)
    return report


def contaminated_rows(plan: Any, report: DecontaminationReport) -> Iterator[tuple[int, Any, list[int]]]:
    """(task index, plan task, its contaminated rows) for every task of the plan that has some."""
    bad: dict[tuple[str, str], list[int]] = {}
    for o in report.overlaps:
        bad.setdefault((o.source, o.task), []).append(o.row)
    for k, task in enumerate(plan.tasks):
        rows = bad.get((task.source, task.name))
        if rows:
            yield k, task, rows


def contaminated_positions(plan: Any, report: DecontaminationReport) -> np.ndarray:
    """Boolean mask over the plan's positions: True where the example's instance is contaminated."""
    drop = np.zeros(len(plan), dtype=bool)
    for k, _, rows in contaminated_rows(plan, report):
        drop |= (plan.index.task_ids == k) & np.isin(plan.index.rows, rows)
    return drop


_REDRAW = 0x726564726177  # stream tag of the re-drawn rows


class DecontaminatedPlan:
    """A MixturePlan without its contaminated instances, for `build_mixture` (see the module doc).

    `replaced` counts the examples re-drawn from clean instances of their task, `dropped` those of
    tasks with no clean instance left; the hash covers the contaminated instances, so the built
    dataset differs from the full one.
    """

    def __init__(self, plan: Any, report: DecontaminationReport) -> None:
        import copy

        from mixtune.mixtures.sampler import SampleIndex, stable_key

        self.plan = plan
        self.spec = plan.spec
        self.report = report
        rows = plan.index.rows.copy()
        self.keep = np.ones(len(plan), dtype=bool)
        self.replaced = 0
        for k, task, bad in contaminated_rows(plan, report):
            positions = np.flatnonzero((plan.index.task_ids == k) & np.isin(plan.index.rows, bad))
            if not len(positions):
                continue
            clean = task.pool[~np.isin(task.pool, bad)]
            if not len(clean):
                self.keep[positions] = False
                continue
            rng = np.random.default_rng([plan.seed % 2**64, _REDRAW, stable_key(f"{task.source}/{task.name}")])
            rows[positions] = clean[rng.permutation(len(clean))[np.arange(len(positions)) % len(clean)]]
            self.replaced += len(positions)
        self.dropped = int((~self.keep).sum())
        self._redrawn = copy.copy(plan)
        self._redrawn.index = SampleIndex(task_ids=plan.index.task_ids, rows=rows)
        keys = "\n".join("\0".join(k) for k in sorted(report.contaminated_keys()))
        digest = hashlib.blake2b(f"{plan.hash}\n{report.ngram}\n{keys}".encode(), digest_size=8).hexdigest()
        self.hash = f"{plan.hash}-d{digest}"

    def __len__(self) -> int:
        return int(self.keep.sum())

    def iter_batches(self, start: int = 0, stop: int | None = None, **kwargs: Any) -> Iterator[dict[str, list]]:
        """The full plan's batches, contaminated examples re-drawn (or, without clean rows, left out)."""
        for table in self.iter_tables(start, stop, **kwargs):
            yield table.to_pydict()

    def iter_tables(self, start: int = 0, stop: int | None = None, **kwargs: Any) -> Iterator[pa.Table]:
        """`iter_batches` as Arrow tables (what `build_mixture` writes)."""
        for table in self._redrawn.iter_tables(start, stop, **kwargs):
            mask = self.keep[table.column("position").to_numpy()]
            if mask.all():
                yield table
            elif mask.any():
                yield table.filter(pa.array(mask))

    def summary(self) -> dict[str, Any]:
        """The full plan's summary with the decontaminated size, hash and dropped counts."""
        out = self.plan.summary()
        out["hash"] = self.hash
        out["total_examples"] = len(self)
        out["decontamination"] = {
            "ngram": self.report.ngram,
            "eval_tasks": self.report.eval_tasks,
            "dropped_instances": self.report.num_contaminated,
            "replaced_examples": self.replaced,
            "dropped_examples": self.dropped,
            "source_hash": self.plan.hash,
        }
        return out


def add_subcommand(sub: Any) -> None:
    """Add `mixture decontaminate` to the `mixture` subparsers."""
    p = sub.add_parser("decontaminate", help="report (and optionally drop) training instances that overlap "
                                             "evaluation instances")
    from mixtune.cli_args import add_collection, add_json, add_overrides

    p.add_argument("mixture", help="the mixture YAML")
    add_overrides(p, "mixture", what="keys of the mixture YAML", example="seed=7", legacy_set=True)
    add_collection(p)
    side = p.add_mutually_exclusive_group()
    side.add_argument("--eval-split", default="default", metavar="NAME",
                      help="evaluate against every instance of the tasks this split holds out "
                           "(test + excluded; default: default)")
    side.add_argument("--eval", dest="eval_spec", metavar="EVAL.yaml",
                      help="evaluate against the instances this eval YAML (or a recipe's eval section) evaluates")
    p.add_argument("--ngram", type=int, default=DEFAULT_NGRAM, help="word n-gram length (default 13)")
    p.add_argument("--drop", action="store_true",
                   help="build the mixture without the contaminated instances (their examples are re-drawn from "
                        "clean instances of the same task, so the size and the per-task counts stay)")
    p.add_argument("--out", metavar="DIR", help="with --drop: output folder (datasets.load_from_disk)")
    add_json(p, "the report")
    p.set_defaults(func=decontaminate_command)


def decontaminate_command(args: Any) -> int:
    """Run the check, print the report, and with --drop build the decontaminated mixture."""
    import json
    import sys

    from mixtune.mixtures.plan import plan_mixture
    from mixtune.mixtures.spec import load_mixture

    if args.drop and not args.out:
        raise ConfigError("--drop needs --out DIR", field="--out", hint="e.g. --drop --out out/clean")
    if args.out and not args.drop:
        raise ConfigError("--out is only used with --drop", field="--out", hint="add --drop")
    spec = load_mixture(args.mixture, overrides=args.overrides, collection=args.collection)
    eval_spec = None
    if args.eval_spec:
        from mixtune.eval.spec import load_eval_spec

        eval_spec = load_eval_spec(args.eval_spec)
    plan = plan_mixture(spec)
    report = decontaminate_plan(plan, eval_split=args.eval_split, eval_spec=eval_spec, ngram=args.ngram)
    result = report.to_dict()
    if args.drop:
        from mixtune.mixtures.build import build_mixture

        clean = DecontaminatedPlan(plan, report)
        build_mixture(clean, args.out)
        result["out"] = str(args.out)
        result["replaced_examples"] = clean.replaced
        result["dropped_examples"] = clean.dropped
        result["total_examples"] = len(clean)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(result)
    return 0


def print_report(result: dict[str, Any]) -> None:
    """Print the per-task table of contaminated training tasks and the totals."""
    from rich.console import Console
    from rich.table import Table

    from mixtune.console import print_table

    console = Console()
    table = Table(title=f"training instances overlapping {result['num_eval_instances']} evaluation instances of "
                        f"{len(result['eval_tasks'])} task(s) (exact or {result['ngram']}-gram)")
    for col, justify in [("task", "left"), ("source", "left"), ("instances", "right"), ("exact", "right"),
                         ("n-gram", "right"), ("contaminated", "right"), ("sampled examples", "right")]:
        table.add_column(col, justify=justify)
    for t in result["tasks"]:
        if t["contaminated"]:
            table.add_row(t["task"], t["source"], str(t["num_instances"]), str(t["exact"]), str(t["ngram"]),
                          str(t["contaminated"]), str(t["sampled_examples"]))
    print_table(table, console)
    console.print(f"{result['num_contaminated']} of {result['num_train_instances']} training instances overlap "
                  f"the evaluation")
    if "out" in result:
        console.print(f"wrote {result['total_examples']} examples ({result['replaced_examples']} re-drawn from clean "
                      f"instances of their task, {result['dropped_examples']} dropped) to {result['out']}")
