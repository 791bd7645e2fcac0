"""Scoring predictions files: agreement with the official formula, file errors, CLI, baselines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import REPO
from official_scorer import assert_same_scores, items_from_file, official_scores

from mixtune.cli import main
from mixtune.errors import DataError
from mixtune.eval.baselines import write_baseline
from mixtune.eval.metrics import compute_scores, score_file_details
from mixtune.eval.predictions import read_predictions, write_predictions
from mixtune.eval.predictions import resolve_collection as open_collection_arg

MAX_PER_TASK = 20


@pytest.fixture(scope="module")
def collection():
    return open_collection_arg("bundled")


def _held_out_tasks(bundled_dir: Path) -> list[str]:
    test = (bundled_dir / "splits" / "default" / "test_tasks.txt").read_text().split()
    return [t for t in test if (bundled_dir / "tasks" / f"{t}.json").is_file()]


def _prediction(i: int, inst: dict, task: dict) -> str:
    """Known predictions of every kind: exact, exact after normalisation, partial, other reference, empty."""
    out = inst["output"]
    kind = i % 6
    if kind == 0:
        return out[0]
    if kind == 1:
        return "  " + out[-1].upper() + " !"
    if kind == 2:
        return " ".join(inst["input"].split()[:12])
    if kind == 3:
        return task["Positive Examples"][0]["output"]
    if kind == 4:
        return ""
    return " ".join(out[0].split()[: max(1, len(out[0].split()) // 2)]) + " running dogs"


@pytest.fixture(scope="module")
def predictions_file(tmp_path_factory, bundled_dir) -> Path:
    """A predictions file over the bundled sample's held-out tasks, built from the task files directly."""
    records = []
    for task_name in _held_out_tasks(bundled_dir):
        task = json.loads((bundled_dir / "tasks" / f"{task_name}.json").read_text(encoding="utf-8"))
        for i, inst in enumerate(task["Instances"][:MAX_PER_TASK]):
            records.append({"Task": task_name, "Definition": task["Definition"],
                            "Instance": {"id": inst["id"], "input": inst["input"], "output": inst["output"]},
                            "prediction": _prediction(i, inst, task)})
    path = tmp_path_factory.mktemp("preds") / "predictions.jsonl"
    write_predictions(path, records)
    return path


def _official(path: Path, bundled_dir: Path) -> dict:
    """The official formula over the file's own lines."""
    return official_scores(items_from_file(path, bundled_dir / "tasks"))


def _official_against_references(path: Path, bundled_dir: Path, max_per_task: int = 100) -> tuple[dict, int]:
    """The official script's loop: over the REFERENCE instances (the split's test tasks read from their
    JSON files, first `max_per_task` each), predictions looked up by id, a missing one scored as ""."""
    predictions = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        e = json.loads(line)
        predictions[e["Instance"]["id"]] = e["prediction"]
    items, missing = [], 0
    for task_name in _held_out_tasks(bundled_dir):
        task = json.loads((bundled_dir / "tasks" / f"{task_name}.json").read_text(encoding="utf-8"))
        for inst in task["Instances"][:max_per_task]:
            if inst["id"] not in predictions:
                missing += 1
            items.append((task_name, task["Categories"][0], predictions.get(inst["id"], ""), inst["output"]))
    return official_scores(items), missing


def test_score_agrees_with_official_formula(predictions_file, bundled_dir, collection) -> None:
    ours = score_file_details(predictions_file, collection, max_instances=MAX_PER_TASK).as_dict()
    official = _official(predictions_file, bundled_dir)
    assert set(ours) == {"overall", "per_category", "per_task"}
    assert len(ours["per_task"]) == 12 and len(ours["per_category"]) == 12
    assert_same_scores(ours, official)
    # the predictions are a mixture: neither all right nor all wrong
    assert 20 < ours["overall"]["exact_match"] < 60
    assert ours["overall"]["rougeL"] > ours["overall"]["exact_match"]
    # without a collection the file's own lines are scored: the same here, where they are complete
    assert_same_scores(score_file_details(predictions_file).as_dict(),
                       {"overall": official["overall"], "per_task": official["per_task"],
                        "per_category": {"Uncategorized": official["overall"]}})


@pytest.fixture(scope="module")
def partial_file(tmp_path_factory, bundled_dir, collection) -> Path:
    """copy_demo over the first 100 instances of each held-out task, a seeded random ~half of the lines kept,
    in shuffled order."""
    import random

    from mixtune.eval.baselines import iter_baseline_records

    records = list(iter_baseline_records(collection, "copy_demo"))
    rng = random.Random(11)
    kept = [r for r in records if rng.random() < 0.5]
    rng.shuffle(kept)
    path = tmp_path_factory.mktemp("partial") / "partial.jsonl"
    write_predictions(path, kept)
    return path


def test_partial_file_scores_as_the_official_script(partial_file, bundled_dir, collection, capsys) -> None:
    """With --collection the reference instances decide: a missing prediction is "" (official semantics)."""
    details = score_file_details(partial_file, collection)
    official, missing = _official_against_references(partial_file, bundled_dir)
    assert 150 < missing < 350 and details.missing == missing
    assert details.num_instances["overall"] == 494 and details.references == "collection"
    assert_same_scores(details.as_dict(), official)
    # the file's lines alone (no collection) score much higher: the semantics matter
    assert score_file_details(partial_file).as_dict()["overall"]["rougeL"] > official["overall"]["rougeL"] + 5
    assert main(["eval", "score", str(partial_file), "--collection", "bundled", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["missing"] == missing and out["num_instances"] == 494 and out["references"] == "collection"
    assert f"{missing} missing prediction(s) scored as empty" in captured.err
    assert main(["eval", "score", str(partial_file)]) == 0
    assert "references from the predictions file" in capsys.readouterr().out


def test_references_in_the_file_do_not_change_a_collection_score(partial_file, collection, tmp_path) -> None:
    forged = tmp_path / "forged.jsonl"
    lines = [json.loads(x) for x in partial_file.read_text().splitlines()]
    for r in lines:
        r["Instance"]["output"] = [r["prediction"]]  # every prediction made "right" by its own line
    write_predictions(forged, lines)
    assert score_file_details(forged).as_dict()["overall"] == {"exact_match": 100.0, "rougeL": 100.0}
    assert score_file_details(forged, collection).as_dict() == score_file_details(partial_file, collection).as_dict()


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_duplicated_and_unknown_instances_are_refused(partial_file, collection, tmp_path) -> None:
    lines = _lines(partial_file)
    twice = tmp_path / "twice.jsonl"
    write_predictions(twice, [*lines[:3], {**lines[1], "prediction": lines[1]["Instance"]["output"][0]}])
    for coll in (collection, None):
        with pytest.raises(DataError, match=r"line 4: duplicate instance id .* \(first on line 2\)"):
            score_file_details(twice, coll).as_dict()
    invented = tmp_path / "invented.jsonl"
    write_predictions(invented, [*lines[:2], {**lines[2], "Instance": {**lines[2]["Instance"], "id": "made-up-1"}}])
    with pytest.raises(DataError, match=r"line 3: unknown instance id 'made-up-1'"):
        score_file_details(invented, collection).as_dict()
    # an instance past the first N, or a task outside the evaluated ones, is not evaluated either
    with pytest.raises(DataError, match=r"unknown instance id .* not among the first 1 instances"):
        score_file_details(partial_file, collection, max_instances=1).as_dict()
    train_task = next(t for t in collection.task_names() if t in collection.split("default").train)
    other = tmp_path / "train_task.jsonl"
    write_predictions(other, [{**lines[0], "Task": train_task}])
    with pytest.raises(DataError, match=rf"line 1: task '{train_task}' is not evaluated"):
        score_file_details(other, collection).as_dict()
    assert main(["eval", "score", str(twice), "--collection", "bundled"]) == 2


def test_hand_computed_file(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    lines = [
        {"Task": "t1", "Categories": ["Textual Entailment"], "Instance": {"input": "x", "output": ["Yes"]},
         "prediction": "yes."},                                          # EM 1, ROUGE 1
        {"Task": "t1", "Categories": ["Textual Entailment"], "Instance": {"input": "x", "output": ["No"]},
         "Prediction": "yes"},                                           # EM 0, ROUGE 0 ('Prediction' key)
        {"Task": "t2", "Instance": {"input": "x", "output": ["the cat sat on the mat", "a dog"]},
         "prediction": "the cat sat"},                                   # EM 0, ROUGE 2/3
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")  # trailing blank line is fine
    scores = score_file_details(path)
    assert scores.overall == {"exact_match": round(100 / 3, 4), "rougeL": round(100 * (1 + 2 / 3) / 3, 4)}
    assert scores.per_task["t1"] == {"exact_match": 50.0, "rougeL": 50.0}
    assert scores.per_task["t2"] == {"exact_match": 0.0, "rougeL": round(200 / 3, 4)}
    assert scores.per_category == {"Textual Entailment": {"exact_match": 50.0, "rougeL": 50.0},
                                   "Uncategorized": {"exact_match": 0.0, "rougeL": round(200 / 3, 4)}}
    assert scores.num_instances["per_task"] == {"t1": 2, "t2": 1}
    # categories given explicitly win over the line's field
    explicit = compute_scores(read_predictions(path), {"t1": "Word Analogy", "t2": "Data to Text"}).as_dict()
    assert set(explicit["per_category"]) == {"Word Analogy", "Data to Text"}


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"Task": "t", "Instance": {"input": "x", "output": ["a"]}, "prediction": "a"', "invalid JSON"),
        ('{"Instance": {"input": "x", "output": ["a"]}, "prediction": "a"}', "field 'Task'"),
        ('{"Task": "t", "Instance": {"input": "x", "output": ["a"]}}', "field 'prediction'"),
        ('{"Task": "t", "Instance": {"input": "x", "output": "a"}, "prediction": "a"}', "field 'Instance.output'"),
        ('{"Task": "t", "Instance": {"input": "x", "output": []}, "prediction": "a"}', "non-empty list"),
        ('{"Task": "t", "Instance": {"input": "x", "output": ["a", 3]}, "prediction": "a"}', "Instance.output"),
        ('{"Task": "t", "Instance": {"output": ["a"]}, "prediction": "a"}', "field 'Instance.input'"),
        ('{"Task": "t", "Instance": {"input": "x", "output": ["a"]}, "prediction": null}', "must be a string"),
        ('["not", "an", "object"]', "expected a JSON object"),
    ],
)
def test_malformed_file_names_the_line(tmp_path, line: str, needle: str) -> None:
    good = '{"Task": "t", "Instance": {"input": "x", "output": ["a"]}, "prediction": "a"}'
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n\n{line}\n{good}\n")  # the bad record is on line 3 (a blank line 2)
    with pytest.raises(DataError) as info:
        read_predictions(path)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and needle in message


def test_unknown_task_suggests_a_name(tmp_path, collection) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"Task": "task199_mnli_clasification", "Instance": {"input": "x", "output": ["a"]},
                                "prediction": "a"}) + "\n")
    with pytest.raises(DataError, match=r"line 1: unknown task .*did you mean 'task199_mnli_classification'"):
        score_file_details(path, collection).as_dict()
    assert (score_file_details(path).as_dict()["per_task"]["task199_mnli_clasification"]["exact_match"]
            == 100.0)  # no collection


def test_cli_score_json(predictions_file, bundled_dir, capsys) -> None:
    assert main(["eval", "score", str(predictions_file), "--collection", "bundled", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # the official script's loop over the reference instances (first 100 of each held-out task), not score_file
    official, missing = _official_against_references(predictions_file, bundled_dir)
    assert_same_scores(out, official)
    assert out["missing"] == missing > 0 and out["num_instances"] == 494 and out["references"] == "collection"
    assert set(out) == {"overall", "per_category", "per_task", "num_instances", "missing", "references"}
    assert set(out["overall"]) == {"exact_match", "rougeL"}
    for table in ("per_category", "per_task"):
        assert all(set(row) == {"exact_match", "rougeL"} for row in out[table].values())
    assert main(["eval", "score", str(predictions_file), "--collection", "bundled"]) == 0  # readable table
    text = capsys.readouterr().out
    assert "Textual Entailment" in text and "task199_mnli_classification" in text and "ROUGE tokenizer: default" in text
    # without a collection and without a Categories field, every task is uncategorised (and the user is told)
    assert main(["eval", "score", str(predictions_file)]) == 0
    captured = capsys.readouterr()
    assert "Uncategorized" in captured.out and "Textual Entailment" not in captured.out
    assert "--collection" in captured.err


def test_cli_reports_bad_file_with_exit_code_2(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"Task": "t", "Instance": {"input": "x", "output": ["a"]}, "prediction": "a"}\n{oops\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "mixtune", "eval", "score", str(path), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "line 2" in proc.stderr and "invalid JSON" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_baselines(tmp_path, collection, bundled_dir, capsys) -> None:
    held_out = _held_out_tasks(bundled_dir)
    sizes = {t: collection.instances(t).num_rows for t in held_out}
    demo, copy = tmp_path / "copy_demo.jsonl", tmp_path / "copy_input.jsonl"
    assert main(["eval", "baseline", "--method", "copy_demo", "--collection", "bundled", "--out", str(demo)]) == 0
    assert main(["eval", "baseline", "--method", "copy_input", "--collection", "bundled", "--max-instances", "10",
                 "--out", str(copy)]) == 0
    capsys.readouterr()
    demo_records, copy_records = read_predictions(demo, collection=collection), read_predictions(copy)
    assert len(demo_records) == sum(min(100, n) for n in sizes.values())
    assert len(copy_records) == sum(min(10, n) for n in sizes.values()) == 120
    per_task = defaultdict(list)
    for r in copy_records:
        per_task[r["Task"]].append(r)
        assert r["prediction"] == r["Instance"]["input"]
    assert set(per_task) == set(held_out)
    for task, rows in per_task.items():  # the first instances in file order, all references kept
        assert [r["Instance"]["id"] for r in rows] == collection.instances(task).column("id").to_pylist()[:10]
    for r in demo_records:
        assert r["prediction"] == collection.info(r["Task"]).positive_examples[0].output
        assert r["Categories"] == list(collection.info(r["Task"]).categories)
    copy_scores, demo_scores = (score_file_details(copy, collection, max_instances=10).as_dict(),
                                score_file_details(demo, collection).as_dict())
    assert copy_scores["overall"]["exact_match"] < 5.0  # copying the input is (almost) never the answer
    assert 0 < copy_scores["overall"]["rougeL"] < 50
    # copy_demo wins exact match on classification tasks, where the demo's label is often right
    assert demo_scores["per_category"]["Textual Entailment"]["exact_match"] > 20
    assert demo_scores["overall"]["exact_match"] > copy_scores["overall"]["exact_match"]


def test_baseline_unknown_split(tmp_path) -> None:
    with pytest.raises(DataError, match="no split 'nope'"):
        write_baseline(open_collection_arg("bundled"), "copy_input", tmp_path / "x.jsonl", split="nope")
    assert not (tmp_path / "x.jsonl").exists()


def test_eval_run_flags_become_spec_overrides(tmp_path) -> None:
    """`eval run`'s named flags reach the eval spec (after --set, so they win)."""
    from mixtune.cli import build_parser
    from mixtune.eval.cli import spec_overrides
    from mixtune.eval.spec import load_eval_spec

    args = build_parser().parse_args([
        "eval", "run", str(tmp_path), "--out", str(tmp_path / "out"), "--collection", "bundled",
        "--tasks", "task199_*,task1390_wscfixed_coreference", "--settings", "zero_shot,def_pos2",
        "--max-instances", "7", "--batch-size", "4", "--max-new-tokens", "9", "--chat",
        "--set", "max_new_tokens=1", "--set", "split=default", "--mixture", "mix.yaml",
    ])
    spec = load_eval_spec({}, spec_overrides(args))
    assert spec.collection == "bundled" and spec.split == "default" and spec.chat is True
    assert spec.tasks == ["task199_*", "task1390_wscfixed_coreference"]
    assert spec.settings == ["zero_shot", "def_pos2"]
    assert (spec.max_instances_per_task, spec.batch_size, spec.max_new_tokens) == (7, 4, 9)
    assert spec.rank_classification is False  # not given: the spec's default stays
    assert spec.mixture == str(Path("mix.yaml").resolve())


def test_multilingual_tokenizer_from_the_cli(tmp_path, capsys) -> None:
    path = tmp_path / "zh.jsonl"
    path.write_text(json.dumps({"Task": "t_zh", "Categories": ["Translation"],
                                "Instance": {"input": "Tokyo is big", "output": ["东京很大"]},
                                "prediction": "东京很小"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["eval", "score", str(path), "--json"]) == 0
    default = capsys.readouterr()
    assert json.loads(default.out)["overall"]["rougeL"] == 0.0  # rouge-score's tokenizer drops Han characters
    assert "ROUGE tokenizer: default" in default.err
    assert main(["eval", "score", str(path), "--json", "--rouge-tokenizer", "multilingual"]) == 0
    multi = capsys.readouterr()
    assert json.loads(multi.out)["overall"]["rougeL"] == 75.0  # 3 of 4 characters in common: P = R = 3/4
    assert "ROUGE tokenizer: multilingual" in multi.err
    assert score_file_details(path, rouge_tokenizer="multilingual").to_json()["rouge_tokenizer"] == "multilingual"
