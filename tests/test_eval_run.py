"""`mixtune eval run` end to end on a tiny saved model, resume, spec errors, evaluation sets, the callback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_LLAMA
from official_scorer import assert_same_scores, items_from_file, official_scores

from mixtune.errors import ConfigError, DataError
from mixtune.eval.evalsets import build_eval_set, label_set
from mixtune.eval.runner import PARTIAL_DIR, run_eval
from mixtune.eval.spec import EvalSpec, load_eval_spec
from mixtune.tasks.collection import open_collection
from mixtune.tasks.matching import resolve_tasks

TASKS = ["task199_mnli_classification", "task1390_wscfixed_coreference", "task288_gigaword_summarization"]


@pytest.fixture(scope="module")
def collection(bundled_dir):
    return open_collection(path=bundled_dir)


def small_spec(**changes) -> EvalSpec:
    values = {"tasks": TASKS, "max_instances_per_task": 3, "settings": ["def_pos2", "zero_shot"],
              "max_new_tokens": 6, "batch_size": 4, "max_source_length": 192}
    return EvalSpec(**{**values, **changes})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- spec --------------------------------------------------------------------------------------------
def test_spec_defaults_and_overrides(tmp_path):
    spec = EvalSpec()
    assert (spec.split, spec.max_instances_per_task, spec.settings, spec.max_new_tokens) == ("default", 100,
                                                                                              ["def_pos2"], 128)
    path = tmp_path / "eval.yaml"
    path.write_text("settings: [zero_shot, def_pos2]\nmax_new_tokens: 32\n")
    spec = load_eval_spec(path, ["batch_size=4", "tasks=[task199*]"])
    assert (spec.settings, spec.max_new_tokens, spec.batch_size, spec.tasks) == (["zero_shot", "def_pos2"], 32, 4,
                                                                                  ["task199*"])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {config: {model_type: llama}}\neval:\n  settings: [pos2]\n  every_n_steps: 5\n")
    assert load_eval_spec(recipe).settings == ["pos2"]
    assert all(EvalSpec.model_fields[name].description for name in EvalSpec.model_fields)


@pytest.mark.parametrize(("text", "field", "words"), [
    ("setings: [zero_shot]\n", "setings", "did you mean 'settings'"),
    ("settings: [zero_shot, def_pos3]\n", "settings", "unknown setting 'def_pos3'"),
    ("settings: []\n", "settings", "at least 1"),
    ("max_instances_per_task: 0\n", "max_instances_per_task", "greater than or equal to 1"),
    ("metric_for_best: rouge\n", "metric_for_best", "unknown metric 'rouge'"),
    ("type: csv\n", "type", "superni"),
])
def test_spec_errors_name_file_and_field(tmp_path, text, field, words):
    path = tmp_path / "eval.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_eval_spec(path)
    assert err.value.path == str(path) and err.value.field == field
    assert words in str(err.value)


def test_spec_collection_relative_to_the_yaml(tmp_path, bundled_dir):
    import shutil as sh

    sh.copytree(bundled_dir / "splits", tmp_path / "evals" / "data" / "splits")
    (tmp_path / "evals" / "eval.yaml").write_text("collection: data\n")
    assert load_eval_spec(tmp_path / "evals" / "eval.yaml").collection == str((tmp_path / "evals" / "data").resolve())
    (tmp_path / "evals" / "other.yaml").write_text("collection: not-here\n")
    assert load_eval_spec(tmp_path / "evals" / "other.yaml").collection == "not-here"


def test_spec_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_eval_spec(tmp_path / "nope.yaml")


# -- evaluation sets ---------------------------------------------------------------------------------
def test_resolve_tasks(collection):
    held_out = resolve_tasks(collection)
    assert held_out == sorted(t for t in collection.split("default").test if t in collection.task_names())
    assert set(held_out).isdisjoint(collection.split("default").train)
    assert resolve_tasks(collection, tasks=["task199*", "task1390_wscfixed_coreference"]) == [
        "task1390_wscfixed_coreference", "task199_mnli_classification"]
    with pytest.raises(DataError, match="did you mean 'task199_mnli_classification'"):
        resolve_tasks(collection, tasks=["task199_mnli_clasification"])
    with pytest.raises(DataError, match="matches no task"):
        resolve_tasks(collection, tasks=["nothing*"])
    with pytest.raises(DataError, match="no split 'other'"):
        resolve_tasks(collection, split="other")


def test_build_eval_set_records(collection):
    records = build_eval_set(collection, max_instances=4, setting="def_pos2", tasks=TASKS)
    assert len(records) == 12
    first = collection.instances(TASKS[0]).slice(0, 4).to_pylist()
    mnli = [r for r in records if r["Task"] == TASKS[0]]
    assert [r["Instance"]["id"] for r in mnli] == [row["id"] for row in first]  # first N, file order
    assert [r["Instance"]["output"] for r in mnli] == [row["output"] for row in first]  # all references
    info = collection.info(TASKS[0])
    assert mnli[0]["Categories"] == list(info.categories) and mnli[0]["setting"] == "def_pos2"
    assert "Positive Example 2" in mnli[0]["prompt"] and mnli[0]["prompt"].endswith("Output: ")
    zero = build_eval_set(collection, max_instances=4, setting="zero_shot", tasks=TASKS)
    assert "Positive Example" not in zero[0]["prompt"] and zero[0]["prompt"].startswith("Definition: ")
    pos = build_eval_set(collection, max_instances=1, setting="pos2", tasks=TASKS)
    assert "Definition" not in pos[0]["prompt"] and "Positive Example 1" in pos[0]["prompt"]


def test_build_eval_set_truncates_and_renders_chat(collection):
    from mixtune.encodings import DEFAULT_CHAT_TEMPLATE
    from mixtune.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    cut = build_eval_set(collection, max_instances=2, setting="def_pos2", tasks=TASKS, tokenizer=tokenizer,
                         max_source_length=64)
    assert all(len(tokenizer(r["prompt"])["input_ids"]) <= 64 + 2 for r in cut)
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    chat = build_eval_set(collection, max_instances=1, setting="zero_shot", tasks=TASKS, tokenizer=tokenizer,
                          chat=True)
    assert chat[0]["prompt"].startswith("<|im_start|>user\nDefinition:")
    assert chat[0]["prompt"].endswith("<|im_start|>assistant\n")


def test_label_set(collection):
    assert label_set(collection, "task199_mnli_classification") == ["no", "yes"]
    assert label_set(collection, "task288_gigaword_summarization") is None


# -- eval run ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tiny_llama_dir, collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    metrics = run_eval(tiny_llama_dir, small_spec(rank_classification=True), out, collection=collection, progress=False)
    return out, metrics


@pytest.mark.integration
def test_eval_run_writes_everything(finished_run, collection, bundled_dir):
    out, metrics = finished_run
    for name in ("predictions.jsonl", "predictions.zero_shot.jsonl", "metrics.json", "report.md",
                 "categories.png", "run.json", "rank_classification.def_pos2.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / PARTIAL_DIR).exists()
    lines = read_jsonl(out / "predictions.jsonl")
    assert len(lines) == 9 and {r["setting"] for r in lines} == {"def_pos2"}
    assert [r["Task"] for r in lines] == [t for t in sorted(TASKS) for _ in range(3)]
    assert all(isinstance(r["prediction"], str) and r["Instance"]["output"] for r in lines)
    assert len(read_jsonl(out / "predictions.zero_shot.jsonl")) == 9

    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved["overall"]) == {"exact_match", "rougeL"}
    assert set(saved["per_task"]) == set(TASKS)
    assert set(saved["settings"]) == {"def_pos2", "zero_shot"}
    assert set(saved["baselines"]) == {"copy_demo", "copy_input", "random_label"}
    assert saved["num_instances"]["overall"] == 9 and saved["settings"]["zero_shot"]["generated"] == 9
    # the metrics are the official SuperNI formula's (an independent re-implementation, references from the task
    # files) on the written predictions, for each setting
    assert_same_scores(saved, official_scores(items_from_file(out / "predictions.jsonl", bundled_dir / "tasks")))
    assert_same_scores(saved["settings"]["zero_shot"],
                       official_scores(items_from_file(out / "predictions.zero_shot.jsonl", bundled_dir / "tasks")))
    # rank classification covers exactly the two label-set tasks, reported on its own
    ranked = saved["rank_classification"]["def_pos2"]
    assert ranked["tasks"] == ["task1390_wscfixed_coreference", "task199_mnli_classification"]
    assert set(ranked["per_task"]) == set(ranked["tasks"])
    for r in read_jsonl(out / "rank_classification.def_pos2.jsonl"):
        assert r["prediction"] in label_set(collection, r["Task"])
    assert_same_scores(ranked, official_scores(items_from_file(out / "rank_classification.def_pos2.jsonl",
                                                               bundled_dir / "tasks")))
    report = (out / "report.md").read_text()
    assert "copy_demo (baseline)" in report and "Rank classification" in report
    assert (out / "categories.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_eval_run_resumes_from_partial_predictions(finished_run, tiny_llama_dir, collection, tmp_path):
    out, metrics = finished_run
    lines = read_jsonl(out / "predictions.jsonl")
    # an interrupted run: rank 0 had written 5 of the 9 def_pos2 predictions, the last one cut mid-line
    resumed = tmp_path / "resumed"
    (resumed / PARTIAL_DIR).mkdir(parents=True)
    shutil.copy(out / "run.json", resumed / "run.json")
    partial = "".join(json.dumps(r) + "\n" for r in lines[:5]) + json.dumps(lines[5])[:40]
    (resumed / PARTIAL_DIR / "predictions.def_pos2.rank0.jsonl").write_text(partial)
    again = run_eval(tiny_llama_dir, small_spec(rank_classification=True), resumed, collection=collection,
                     progress=False)
    assert again["settings"]["def_pos2"]["reused"] == 5 and again["settings"]["def_pos2"]["generated"] == 4
    assert read_jsonl(resumed / "predictions.jsonl") == lines
    for key in ("overall", "per_category", "per_task", "baselines", "rank_classification"):
        assert again[key] == metrics[key]
    assert not (resumed / PARTIAL_DIR).exists()


@pytest.mark.integration
def test_eval_run_reuses_rather_than_regenerates(finished_run, tiny_llama_dir, collection, tmp_path):
    out, _ = finished_run
    lines = read_jsonl(out / "predictions.jsonl")
    marked = {**lines[0], "prediction": "a prediction the model would not write"}
    target = tmp_path / "marked"
    (target / PARTIAL_DIR).mkdir(parents=True)
    (target / PARTIAL_DIR / "predictions.def_pos2.rank1.jsonl").write_text(json.dumps(marked) + "\n")
    run_eval(tiny_llama_dir, small_spec(settings=["def_pos2"]), target, collection=collection, baselines=False,
             progress=False)
    assert read_jsonl(target / "predictions.jsonl") == [marked, *lines[1:]]


def test_eval_run_refuses_a_folder_of_another_evaluation(finished_run, tiny_llama_dir, collection):
    out, _ = finished_run
    with pytest.raises(ConfigError, match="max_new_tokens"):
        run_eval(tiny_llama_dir, small_spec(max_new_tokens=7), out, collection=collection, progress=False)


def test_eval_run_cli(tiny_llama_dir, tmp_path):
    from mixtune.cli import main

    eval_yaml = tmp_path / "eval.yaml"
    eval_yaml.write_text("max_instances_per_task: 2\nmax_new_tokens: 4\nmax_source_length: 128\n")
    out = tmp_path / "cli-run"
    code = main(["eval", "run", str(tiny_llama_dir), "--eval", str(eval_yaml), "--out", str(out),
                 "--tasks", "task199*,task1390*", "--settings", "zero_shot", "--no-baselines"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_instances"]["overall"] == 4 and metrics["baselines"] == {}
    assert metrics["primary_setting"] == "zero_shot"
    assert main(["eval", "run", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_eval_run_rejects_a_task_typo_before_loading_the_model(tmp_path, capsys):
    from mixtune.cli import main

    not_a_model = tmp_path / "not-a-model"  # loading it would fail with another error
    not_a_model.mkdir()
    code = main(["eval", "run", str(not_a_model), "--out", str(tmp_path / "out"),
                 "--tasks", "task199_mnli_clasification"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown task 'task199_mnli_clasification'" in err
    assert "did you mean 'task199_mnli_classification'" in err and "cannot load" not in err
    assert not (tmp_path / "out").exists()


# -- periodic evaluation during training --------------------------------------------------------------
@pytest.mark.integration
def test_callback_evaluates_every_n_steps_and_records_best(collection, tmp_path):
    from transformers import Trainer, TrainingArguments

    from mixtune.eval.callback import BEST_FILE, EVAL_DIR, HeldOutEvalCallback
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig

    torch.manual_seed(0)
    model, tokenizer, _ = load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA))
    ids = tokenizer("Definition: say yes. Output: yes")["input_ids"]
    data = [{"input_ids": ids, "labels": ids}] * 8
    spec = small_spec(tasks=TASKS[:2], max_instances_per_task=2, settings=["zero_shot"], every_n_steps=2,
                      metric_for_best="exact_match", max_new_tokens=3)
    args = TrainingArguments(output_dir=str(tmp_path / "train"), max_steps=5, per_device_train_batch_size=4,
                             learning_rate=1e-3, logging_steps=1, save_strategy="steps", save_steps=2,
                             save_total_limit=1, report_to=[], use_cpu=True, disable_tqdm=True)
    callback = HeldOutEvalCallback(spec, tokenizer, collection=collection)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    callback.bind(trainer)
    trainer.train()

    root = Path(args.output_dir)
    assert sorted(p.name for p in (root / EVAL_DIR).iterdir()) == ["step-2", "step-4", "step-5"]
    final = json.loads((root / EVAL_DIR / "step-5" / "metrics.json").read_text())
    assert final["step"] == 5 and set(final["baselines"]) == {"copy_demo", "copy_input", "random_label"}
    logged = [h for h in trainer.state.log_history if "heldout/zero_shot/exact_match" in h]
    assert [h["step"] for h in logged] == [2, 4, 5]
    best = json.loads((root / BEST_FILE).read_text())
    values = {h["step"]: h["heldout/zero_shot/exact_match"] for h in logged}
    assert best["value"] == max(values.values()) and values[best["step"]] == best["value"]
    assert min(s for s, v in values.items() if v == best["value"]) == best["step"]  # ties keep the earliest
    assert [h["step"] for h in best["history"]] == [2, 4, 5]
    assert best["checkpoint"].endswith(f"checkpoint-{best['step']}")
    assert trainer.state.best_global_step == best["step"]
    # save_total_limit=1: rotation spares the best checkpoint, and the Trainer keeps only it at the end
    kept = sorted(p.name for p in root.glob("checkpoint-*"))
    if best["step"] in (2, 4):  # checkpoints are saved at steps 2 and 4
        assert kept == [f"checkpoint-{best['step']}"]
        assert best["checkpoint_saved"] is True


def test_callback_at_start_puts_the_model_before_training_beside_the_trained_one(collection, tmp_path):
    from transformers import Trainer, TrainingArguments

    from mixtune.eval.callback import EVAL_DIR, HeldOutEvalCallback
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig

    torch.manual_seed(0)
    model, tokenizer, _ = load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA))
    ids = tokenizer("Definition: say yes. Output: yes")["input_ids"]
    spec = small_spec(tasks=TASKS[:2], max_instances_per_task=2, settings=["zero_shot", "def_pos2"],
                      at_start=True, max_new_tokens=3)
    args = TrainingArguments(output_dir=str(tmp_path / "train"), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-3, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True)
    callback = HeldOutEvalCallback(spec, tokenizer, collection=collection)
    Trainer(model=model, args=args, train_dataset=[{"input_ids": ids, "labels": ids}] * 8,
            callbacks=[callback]).train()

    root = Path(args.output_dir) / EVAL_DIR
    assert sorted(p.name for p in root.iterdir()) == ["step-0", "step-2"]
    before = json.loads((root / "step-0" / "metrics.json").read_text())
    final = json.loads((root / "step-2" / "metrics.json").read_text())
    assert set(final["others"]) == {"before training [zero_shot]", "before training [def_pos2]"}
    assert final["others"]["before training [zero_shot]"]["overall"] == before["settings"]["zero_shot"]["overall"]
    report = (root / "step-2" / "report.md").read_text()
    assert "before training [zero_shot]" in report and "copy_input" in report


def test_eval_run_outputs_hold_no_secret(tiny_llama_dir, collection, tmp_path, monkeypatch):
    """A token that ends up in a path (here the model folder's name) is masked in run.json, metrics.json and
    report.md, and a rerun still recognises the folder as the same evaluation."""
    import shutil

    from mixtune.secrets import MASK

    token = "hf_" + "k3y" * 8
    monkeypatch.setenv("HF_TOKEN", token)
    model = tmp_path / f"model-{token}"
    shutil.copytree(tiny_llama_dir, model)
    out = tmp_path / "eval"
    spec = small_spec(settings=["zero_shot"], max_instances_per_task=1)
    run_eval(model, spec, out, collection=collection, baselines=False, progress=False)
    for name in ("run.json", "metrics.json", "report.md"):
        text = (out / name).read_text(encoding="utf-8")
        assert token not in text and MASK in text, name
    run_eval(model, spec, out, collection=collection, baselines=False, progress=False)  # no "different evaluation"


def test_prompt_budget_follows_the_model_context() -> None:
    """A 256-token causal model gets a 256 - max_new_tokens budget, not the 1024 an eval spec might say."""
    from mixtune.eval.runner import prompt_budget
    from mixtune.eval.spec import EvalSpec
    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig

    small = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "max_position_embeddings": 256}
    model, tokenizer, kind = load_model_and_tokenizer(ModelConfig(config=small))
    assert tokenizer.model_max_length == 256  # the model's context, not MiniLM's 512
    assert prompt_budget(EvalSpec(max_new_tokens=32), model, kind) == 224
    assert prompt_budget(EvalSpec(max_new_tokens=32, max_source_length=1024), model, kind) == 224
    assert prompt_budget(EvalSpec(max_new_tokens=32, max_source_length=100), model, kind) == 100
    assert prompt_budget(EvalSpec(max_new_tokens=32), model, "seq2seq") == 256
