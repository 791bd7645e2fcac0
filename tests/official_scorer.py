"""An independent re-implementation of the official SuperNI scorer, for tests to compare mixtune's with.

allenai/natural-instructions, eval/automatic/evaluation.py: `normalize_answer` (lower case, punctuation removed,
whitespace collapsed), exact match and ROUGE-L (a fresh `RougeScorer(['rougeL'], use_stemmer=True)`), each the
max over an instance's references, averaged x 100 and rounded to 4 places, per task, per category (a task's first
category) and overall. Written from the script, sharing no code with mixtune.eval.
"""

from __future__ import annotations

import json
import string
from collections import defaultdict
from pathlib import Path

from rouge_score import rouge_scorer

#: (task, category, prediction, references)
Item = tuple[str, str, str, list[str]]


def normalize_answer(s: str) -> str:
    exclude = set(string.punctuation)
    return " ".join("".join(ch for ch in s.lower() if ch not in exclude).split())


def exact_match(prediction: str, references: list[str]) -> bool:
    return max(normalize_answer(prediction) == normalize_answer(r) for r in references)


def rouge_l(prediction: str, references: list[str]) -> float:
    return max(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(prediction=prediction, target=r)["rougeL"]
               .fmeasure for r in references)


def _aggregate(pairs: list[tuple[str, list[str]]]) -> dict[str, float]:
    return {"exact_match": round(100.0 * sum(exact_match(p, g) for p, g in pairs) / len(pairs), 4),
            "rougeL": round(100.0 * sum(rouge_l(p, g) for p, g in pairs) / len(pairs), 4)}


def official_scores(items: list[Item]) -> dict:
    """{"overall", "per_category", "per_task"} of (task, category, prediction, references) items."""
    by_task, by_cat = defaultdict(list), defaultdict(list)
    for task, category, pred, refs in items:
        by_task[task].append((pred, refs))
        by_cat[category].append((pred, refs))
    return {"overall": _aggregate([(p, g) for _, _, p, g in items]),
            "per_category": {c: _aggregate(v) for c, v in by_cat.items()},
            "per_task": {t: _aggregate(v) for t, v in by_task.items()}}


def items_from_records(records: list[dict], category: str = "all") -> list[Item]:
    """Official-format records ({"Task", "Instance": {"output"}, "prediction"}) as items, references from
    the records."""
    return [(r["Task"], category, r["prediction"], r["Instance"]["output"]) for r in records]


def items_from_file(path: Path, tasks_dir: Path) -> list[Item]:
    """A predictions file's lines as items, each with its category and references read from the task's JSON file
    (`tasks_dir/<task>.json`, looked up by instance id), not from the line."""
    items = []
    cache: dict[str, tuple[str, dict[str, list[str]]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        e = json.loads(line)
        if e["Task"] not in cache:
            task = json.loads((tasks_dir / f"{e['Task']}.json").read_text(encoding="utf-8"))
            cache[e["Task"]] = (task["Categories"][0], {i["id"]: i["output"] for i in task["Instances"]})
        category, references = cache[e["Task"]]
        items.append((e["Task"], category, e["prediction"], references[e["Instance"]["id"]]))
    return items


def assert_same_scores(ours: dict, official: dict, tol: float = 1e-4) -> None:
    """Every task, category and overall figure of `official` is in `ours`, equal within `tol`, and no more rows."""
    import pytest

    assert set(ours["per_task"]) == set(official["per_task"])
    assert set(ours["per_category"]) == set(official["per_category"])
    for table in ("per_category", "per_task"):
        for key, row in official[table].items():
            for metric, value in row.items():
                assert ours[table][key][metric] == pytest.approx(value, abs=tol), (table, key, metric)
    for metric, value in official["overall"].items():
        assert ours["overall"][metric] == pytest.approx(value, abs=tol)
