"""The official Super-NaturalInstructions metrics: exact match and ROUGE-L, per task, category and overall.

Definitions follow the SuperNI / Tk-Instruct evaluation (Wang et al., 2022):

- `normalize_answer` (`mixtune.text`): lower-case, ASCII punctuation removed, whitespace collapsed; articles are
  KEPT.
- exact match: 1 when the normalised prediction equals a normalised reference, else 0.
- ROUGE-L: the F-measure of rouge-score's `RougeScorer(['rougeL'], use_stemmer=True)` (Porter stemmer).
- each metric is the maximum over an instance's references, averaged over instances, scaled to 0-100 and
  rounded to 4 decimals; reported overall, per task and per category (a task's first `Categories` entry).

The ROUGE tokenizers (rouge-score's default, or "multilingual") are in `mixtune.eval.rouge_tokenizers`, the
normalisation in `mixtune.text`, the process pool in `mixtune.eval.scoring_pool`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixtune.eval.rouge_tokenizers import ROUGE_TOKENIZERS, rouge_scorer
from mixtune.eval.scoring_pool import score_in_chunks
from mixtune.text import normalize_answer

METRICS = ("exact_match", "rougeL")
UNCATEGORIZED = "Uncategorized"  # as mixtune.tasks.schema (not imported: it pulls in the collection readers)
DECIMALS = 4

# The 12 evaluation categories of the SuperNI test split and the metric the Tk-Instruct paper reports for
# each: exact match for the classification-type categories, ROUGE-L for the generation-type ones.
EXACT_MATCH_CATEGORIES = frozenset({
    "Textual Entailment",
    "Cause Effect Classification",
    "Coreference Resolution",
    "Dialogue Act Recognition",
    "Answerability Classification",
    "Word Analogy",
})
ROUGE_L_CATEGORIES = frozenset({
    "Overlap Extraction",
    "Keyword Tagging",
    "Question Rewriting",
    "Title Generation",
    "Data to Text",
    "Grammar Error Correction",
})


class _PrimaryMetric(dict):
    """Category -> primary metric; any category not listed (e.g. a training category) gets ROUGE-L."""

    def __missing__(self, category: str) -> str:
        return "rougeL"


PRIMARY_METRIC: dict[str, str] = _PrimaryMetric(
    {c: "exact_match" for c in sorted(EXACT_MATCH_CATEGORIES)} | {c: "rougeL" for c in sorted(ROUGE_L_CATEGORIES)}
)


def primary_metric(category: str) -> str:
    """The metric the paper reports for `category`: exact_match or rougeL (the default)."""
    return PRIMARY_METRIC[category]


# ----------------------------------------------------------------------------------------------- per instance

def _as_references(references: str | Sequence[str]) -> Sequence[str]:
    refs = [references] if isinstance(references, str) else references
    if len(refs) == 0:
        raise ValueError("an instance needs at least one reference output")
    return refs


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in _as_references(references)))


def rouge_l(prediction: str, references: str | Sequence[str], *, tokenizer: str = "default") -> float:
    """ROUGE-L F-measure (0-1) of `prediction`, the maximum over `references`."""
    scorer = rouge_scorer(tokenizer)
    return float(max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in _as_references(references)))


def score_instances(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    rouge_tokenizer: str = "default",
    workers: int | None = None,
) -> tuple[list[float], list[float]]:
    """Per-instance exact match (0/1) and ROUGE-L F (0-1), each the maximum over the references.

    `workers`: processes to score with (default 1; `mixtune.eval.scoring_pool`). Scoring runs at ~10,000
    instances/s in one process, so extra processes only pay off for very large files on an idle multi-core
    machine (bench/bench_eval.py).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if rouge_tokenizer not in ROUGE_TOKENIZERS:
        raise ValueError(f"unknown ROUGE tokenizer {rouge_tokenizer!r}; choose one of {', '.join(ROUGE_TOKENIZERS)}")
    return score_in_chunks(_score_chunk, predictions, references, rouge_tokenizer, workers=workers,
                           prepare=lambda: rouge_scorer(rouge_tokenizer))


def _score_chunk(args: tuple[list[str], list[list[str]], str]) -> tuple[list[float], list[float]]:
    predictions, references, tokenizer = args
    em = [exact_match(p, refs) for p, refs in zip(predictions, references, strict=True)]
    rl = [rouge_l(p, refs, tokenizer=tokenizer) for p, refs in zip(predictions, references, strict=True)]
    return em, rl


# ----------------------------------------------------------------------------------------------- aggregates


def _mean100(values: Sequence[float]) -> float:
    return round(100.0 * sum(values) / len(values), DECIMALS) if values else 0.0


@dataclass
class Scores:
    """The scores of a predictions set, with the instance counts and the ROUGE tokenizer used."""

    overall: dict[str, float]
    per_category: dict[str, dict[str, float]]
    per_task: dict[str, dict[str, float]]
    num_instances: dict[str, Any] = field(default_factory=dict)
    task_category: dict[str, str] = field(default_factory=dict)
    rouge_tokenizer: str = "default"
    #: where the references came from: "collection" (its evaluated instances) or "file" (the predictions' own)
    references: str = "file"
    #: evaluated instances the predictions file had no line for (scored as "", as the official script does)
    missing: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The `eval score --json` form: {"overall", "per_category", "per_task"}."""
        return {"overall": self.overall, "per_category": self.per_category, "per_task": self.per_task}

    def to_json(self) -> dict[str, Any]:
        """Everything, for metrics.json: the three tables plus counts, categories, primary metrics, tokenizer."""
        return {
            **self.as_dict(),
            "num_instances": self.num_instances,
            "task_category": self.task_category,
            "primary_metric": {c: primary_metric(c) for c in self.per_category},
            "rouge_tokenizer": self.rouge_tokenizer,
            "references": self.references,
            "missing": self.missing,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Scores:
        """Read back `to_json()` (or the bare three-table form)."""
        return cls(
            overall=dict(data["overall"]),
            per_category={k: dict(v) for k, v in data.get("per_category", {}).items()},
            per_task={k: dict(v) for k, v in data.get("per_task", {}).items()},
            num_instances=dict(data.get("num_instances", {})),
            task_category=dict(data.get("task_category", {})),
            rouge_tokenizer=data.get("rouge_tokenizer", "default"),
            references=data.get("references", "file"),
            missing=int(data.get("missing", 0)),
        )


def record_prediction(record: Mapping[str, Any]) -> str:
    """A record's prediction: the `prediction` field (official output) or `Prediction` (official script input)."""
    return record["prediction"] if "prediction" in record else record["Prediction"]


def record_category(record: Mapping[str, Any], categories: Mapping[str, str] | None) -> str:
    """The record's category: from `categories` (task -> category), else its `Categories` field's first entry."""
    task = record["Task"]
    if categories and task in categories:
        return categories[task]
    cats = record.get("Categories") or ()
    return cats[0] if cats else UNCATEGORIZED


def compute_scores(
    records: Iterable[Mapping[str, Any]],
    categories: Mapping[str, str] | None = None,
    *,
    rouge_tokenizer: str = "default",
    workers: int | None = None,
) -> Scores:
    """Score official-format records ({"Task", "Instance": {"output": [...]}, "prediction"}).

    `categories` maps task -> category (e.g. from a collection); tasks missing from it use the record's
    `Categories` field, else "Uncategorized".
    """
    records = list(records)
    tasks = [r["Task"] for r in records]
    cats = [record_category(r, categories) for r in records]
    em, rl = score_instances(
        [record_prediction(r) for r in records],
        [r["Instance"]["output"] for r in records],
        rouge_tokenizer=rouge_tokenizer,
        workers=workers,
    )
    by_task: dict[str, list[int]] = defaultdict(list)
    by_cat: dict[str, list[int]] = defaultdict(list)
    task_category: dict[str, str] = {}
    for i, (task, cat) in enumerate(zip(tasks, cats, strict=True)):
        by_task[task].append(i)
        by_cat[cat].append(i)
        task_category.setdefault(task, cat)

    def table(index: Sequence[int]) -> dict[str, float]:
        return {"exact_match": _mean100([em[i] for i in index]), "rougeL": _mean100([rl[i] for i in index])}

    return Scores(
        overall={"exact_match": _mean100(em), "rougeL": _mean100(rl)},
        per_category={c: table(by_cat[c]) for c in sorted(by_cat)},
        per_task={t: table(by_task[t]) for t in sorted(by_task)},
        num_instances={
            "overall": len(records),
            "per_category": {c: len(by_cat[c]) for c in sorted(by_cat)},
            "per_task": {t: len(by_task[t]) for t in sorted(by_task)},
        },
        task_category=dict(sorted(task_category.items())),
        rouge_tokenizer=rouge_tokenizer,
    )


def score_file_details(
    path: str | Path,
    collection: Any = None,
    *,
    rouge_tokenizer: str = "default",
    workers: int | None = None,
    split: str = "default",
    tasks: Sequence[str] | None = None,
    max_instances: int | None = 100,
) -> Scores:
    """Read and score a predictions JSONL.

    With a `collection` (object, path or "bundled"), the collection decides what is scored: its evaluated
    instances (`split`'s test tasks or `tasks`, the first `max_instances` of each: what `eval run`
    evaluates), each once, against the collection's references; an instance without a line scores as ""
    (`Scores.missing` counts them); a line for an instance not evaluated, or a second line for one, is a
    DataError naming the line. Without a collection, the file's own lines and references are scored
    (`Scores.references == "file"`); a repeated (task, instance id) is refused there too.
    """
    from mixtune.eval.predictions import (
        align_to_collection,
        read_prediction_lines,
        refuse_duplicates,
        resolve_collection,
        task_categories,
    )

    collection = resolve_collection(collection)
    lines = read_prediction_lines(path, collection=collection)
    if collection is None:
        refuse_duplicates(lines, path)
        return compute_scores([r for _, r in lines], None, rouge_tokenizer=rouge_tokenizer, workers=workers)
    records, missing = align_to_collection(lines, path, collection, split=split, tasks=tasks,
                                           max_instances=max_instances)
    categories = task_categories(collection, {r["Task"] for r in records})
    scores = compute_scores(records, categories, rouge_tokenizer=rouge_tokenizer, workers=workers)
    scores.references, scores.missing = "collection", missing
    return scores
