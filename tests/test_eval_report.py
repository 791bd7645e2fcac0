"""Evaluation reports (metrics.json, report.md, categories.png) and the side-by-side comparison."""

from __future__ import annotations

import json

import pytest
from matplotlib import image as mpimg

from mixtune.cli import main
from mixtune.errors import DataError
from mixtune.eval.baselines import iter_baseline_records
from mixtune.eval.metrics import Scores, compute_scores, primary_metric
from mixtune.eval.predictions import resolve_collection, task_categories
from mixtune.eval.report import compare, load_metrics, write_report


@pytest.fixture(scope="module")
def runs():
    """Scores of a 'model' (references with every other one garbled) and of the two baselines."""
    collection = resolve_collection("bundled")
    records = list(iter_baseline_records(collection, "copy_input", max_instances=8))
    cats = task_categories(collection, {r["Task"] for r in records})
    model = [{**r, "prediction": r["Instance"]["output"][0] if i % 2 else "zzz " + r["Instance"]["output"][0]}
             for i, r in enumerate(records)]
    untrained = [{**r, "prediction": "zzz"} for r in records]
    baselines = {m: compute_scores(iter_baseline_records(collection, m, max_instances=8), cats)
                 for m in ("copy_demo", "copy_input")}
    return compute_scores(model, cats), compute_scores(untrained, cats), baselines


def test_write_report(tmp_path, runs) -> None:
    model, untrained, baselines = runs
    out = tmp_path / "eval"
    paths = write_report(model, out, name="tiny-model", baselines=baselines, others={"untrained": untrained},
                         meta={"setting": "def_pos2"})
    assert {p.name for p in out.iterdir()} == {"metrics.json", "report.md", "categories.png"}
    assert not list(out.glob(".*"))  # no temporary files left behind

    data = json.loads(paths["metrics"].read_text())
    assert data["overall"] == model.overall and data["per_task"] == model.per_task
    assert data["baselines"]["copy_input"]["overall"] == baselines["copy_input"].overall
    assert data["others"]["untrained"]["overall"] == untrained.overall
    assert data["rouge_tokenizer"] == "default" and data["num_instances"]["overall"] == 96
    assert data["primary_metric"]["Word Analogy"] == "exact_match"
    assert Scores.from_json(data).per_category == model.per_category

    text = paths["report"].read_text()
    assert "# Held-out evaluation: tiny-model" in text
    assert "ROUGE tokenizer: default" in text and "Instances: 96 over 12 tasks" in text
    assert "not comparable with published" in text  # 8 instances per task, not 100
    assert "copy_demo (baseline)" in text and "| untrained |" in text
    for cat, row in model.per_category.items():
        prim = primary_metric(cat)
        assert f"| {cat} | {'EM' if prim == 'exact_match' else 'ROUGE-L'} | 8 |" in text
        assert f"**{row[prim]:.2f}**" in text
    assert "## Worst tasks" in text and "## Best tasks" in text
    assert "setting: def_pos2" in text
    ours = model.overall["rougeL"]
    for label, base in baselines.items():  # one sentence says where the run stands against each baseline
        theirs = base.overall["rougeL"]
        side = "above" if ours > theirs else "below"
        assert f"{side} {label} ({theirs:.2f}) by {abs(ours - theirs):.2f}" in text
    assert f"Against the baselines, tiny-model's overall ROUGE-L ({ours:.2f}) is " in text

    png = paths["plot"].read_bytes()
    assert png.startswith(b"\x89PNG")
    pixels = mpimg.imread(paths["plot"])
    assert pixels.shape[0] > 100 and pixels.shape[1] > 400


def _png_pixels(data: bytes):
    import io

    return mpimg.imread(io.BytesIO(data), format="png")


def test_plot_shows_a_zero_bar_apart_from_a_missing_one_and_a_chance_line(runs) -> None:
    import numpy as np

    from mixtune.eval.report import plot_categories

    model, untrained, _ = runs
    assert untrained.per_category["Textual Entailment"]["exact_match"] == 0.0
    lacking = Scores.from_json({**untrained.to_json(),
                                "per_category": {c: v for c, v in untrained.per_category.items()
                                                 if c != "Textual Entailment"}})
    zero = _png_pixels(plot_categories(model, others={"untrained": untrained}))
    missing = _png_pixels(plot_categories(model, others={"untrained": lacking}))
    assert zero.shape == missing.shape and not np.array_equal(zero, missing)  # '0' is drawn, 'n/a' differs
    with_chance = _png_pixels(plot_categories(model, chance={"Textual Entailment": 33.33}))
    assert not np.array_equal(with_chance, _png_pixels(plot_categories(model)))


def test_chance_is_a_uniform_guess_among_the_labels() -> None:
    from mixtune.eval.evalsets import chance_exact_match

    collection = resolve_collection("bundled")
    task = "task199_mnli_classification"
    raw = json.loads((collection.path / "tasks" / f"{task}.json").read_text(encoding="utf-8"))
    labels = {o.strip() for inst in raw["Instances"] for o in inst["output"]}
    labels |= {ex["output"].strip() for ex in raw["Positive Examples"]}
    chance = chance_exact_match(collection, task_categories(collection, [task, "task288_gigaword_summarization"]))
    assert chance == {"Textual Entailment": round(100 / len(labels), 2)}  # Title Generation is scored by ROUGE-L


def test_report_from_runner_metrics(tmp_path, runs) -> None:
    """`mixtune eval run`'s metrics.json layout: one score table per setting, baselines beside them."""
    model, untrained, baselines = runs
    metrics = {
        "schema_version": 1, "name": "checkpoint-10 [def_pos2]", **model.to_json(), "primary": 50.0,
        "model": "/runs/tiny/checkpoint-10", "step": 10, "split": "default", "primary_setting": "def_pos2",
        "settings": {"def_pos2": {**model.to_json(), "primary": 50.0}, "zero_shot": untrained.to_json()},
        "baselines": {k: v.to_json() for k, v in baselines.items()}, "rank_classification": {},
    }
    write_report(metrics, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics  # kept as given
    text = (tmp_path / "report.md").read_text()
    assert "checkpoint-10 [def_pos2]" in text and "checkpoint-10 [zero_shot]" in text
    assert "copy_input (baseline)" in text and "step: 10" in text
    table = compare([tmp_path])
    assert f"{model.overall['rougeL']:.2f}" in table


def test_compare_two_runs(tmp_path, runs, capsys) -> None:
    model, untrained, baselines = runs
    write_report(model, tmp_path / "trained", baselines=baselines)
    write_report(untrained, tmp_path / "untrained")
    table = compare([tmp_path / "trained", tmp_path / "untrained"], baselines=True)
    header = table.splitlines()[0]
    assert "trained" in header and "untrained" in header and "copy_demo (baseline)" in header
    overall_rouge = next(line for line in table.splitlines() if line.startswith("| overall ROUGE-L"))
    assert f"{model.overall['rougeL']:.2f}" in overall_rouge and f"{untrained.overall['rougeL']:.2f}" in overall_rouge
    assert "| Textual Entailment (EM) |" in table and "| Title Generation (ROUGE-L) |" in table
    assert main(["eval", "compare", str(tmp_path / "trained"), str(tmp_path / "untrained")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "| Metric | trained | untrained |"


def test_compare_baselines_when_the_first_folder_has_none(tmp_path, runs) -> None:
    model, untrained, baselines = runs
    write_report(untrained, tmp_path / "untrained")  # e.g. `eval run --no-baselines`
    write_report(model, tmp_path / "trained", baselines=baselines)
    header = compare([tmp_path / "untrained", tmp_path / "trained"], baselines=True).splitlines()[0]
    assert "copy_demo (baseline of trained)" in header and "copy_input (baseline of trained)" in header
    with pytest.raises(DataError, match="none of these folders holds baselines"):
        compare([tmp_path / "untrained"], baselines=True)


def test_compare_missing_metrics(tmp_path) -> None:
    with pytest.raises(DataError, match="no metrics.json"):
        load_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(DataError, match="no 'overall' table"):
        compare([tmp_path])


def test_metrics_json_is_validated_when_written_and_read(tmp_path, runs) -> None:
    """metrics.json has one schema (mixtune.eval.schema.EvalMetrics): a bad field is refused on the way out,
    and `eval compare` refuses a file of another shape or version, naming the field."""
    model, _, _ = runs
    with pytest.raises(DataError, match=r"settings\.def_pos2\.overall"):
        write_report({"schema_version": 1, "name": "x", **model.to_json(), "settings": {"def_pos2": {"overall": 3}}},
                     tmp_path / "bad")
    assert not (tmp_path / "bad" / "metrics.json").exists()
    write_report(model, tmp_path / "good")
    data = json.loads((tmp_path / "good" / "metrics.json").read_text())
    assert data["schema_version"] == 1
    for change, field in (({"schema_version": None}, "schema_version"), ({"per_task": {"t": {"rougeL": "high"}}},
                                                                           "per_task.t.rougeL")):
        (tmp_path / "good" / "metrics.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(DataError, match=field.replace(".", r"\.")):
            load_metrics(tmp_path / "good")
        assert main(["eval", "compare", str(tmp_path / "good")]) == 2
