"""`mixtune eval run`: generate on the held-out tasks, score, compare with baselines, write a report.

Output folder (`out_dir`):

- `predictions.jsonl`: the first (primary) setting's predictions in the official SuperNI format
  (one JSON per line: Task, Categories, Definition, Instance {id, input, output: [all references]},
  setting, prompt, prediction); every further setting goes to `predictions.<setting>.jsonl`. One
  file per setting keeps each file scoreable by the official script and `mixtune eval score`.
- `rank_classification.<setting>.jsonl` (with `rank_classification: true`): label-ranking predictions.
- `metrics.json`, `report.md`, `categories.png` (the report writer of `mixtune.eval.report`).
- `run.json`: what produced the predictions (model folder, its weight files, the spec's prompt and
  generation fields); a rerun that differs in these is refused (`--overwrite` discards the old ones).

Resumable: while generating, each process appends finished predictions to
`partial/predictions.<setting>.rank<r>.jsonl`; a rerun into the same folder reuses every prediction
found there or in a finished predictions file (by task and instance id) and generates only the
rest. Finished files are written atomically and the partial files removed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mixtune.errors import ConfigError
from mixtune.eval.spec import EvalSpec
from mixtune.io import atomic_write_json
from mixtune.secrets import redact

log = logging.getLogger(__name__)

PARTIAL_DIR = "partial"


def predictions_path(out_dir: str | Path, setting: str, primary: bool) -> Path:
    """`predictions.jsonl` for the primary setting, `predictions.<setting>.jsonl` for the others."""
    return Path(out_dir) / ("predictions.jsonl" if primary else f"predictions.{setting}.jsonl")


def _key(record: dict[str, Any]) -> tuple[str, str]:
    return record["Task"], str(record["Instance"].get("id", record["Instance"]["input"]))


def _read_lines(path: Path) -> Iterable[dict[str, Any]]:
    """JSON objects of a JSONL file; a line cut short by an interruption is skipped."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as handle:
        for text in handle:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "Task" in obj and isinstance(obj.get("Instance"), dict) \
                    and isinstance(obj.get("prediction"), str):
                yield obj


def existing_predictions(out_dir: str | Path, setting: str) -> dict[tuple[str, str], str]:
    """(task, instance id) -> prediction already made for `setting` in `out_dir` (finished or partial files)."""
    out_dir = Path(out_dir)
    files = [*out_dir.glob("predictions*.jsonl"), *sorted((out_dir / PARTIAL_DIR).glob(f"predictions.{setting}.rank*.jsonl"))]
    found: dict[tuple[str, str], str] = {}
    for file in files:
        for obj in _read_lines(file):
            if obj.get("setting", setting) == setting and (file.parent.name == PARTIAL_DIR or "setting" in obj):
                found[_key(obj)] = obj["prediction"]
    return found


def _check_run_file(out_dir: Path, fingerprint: dict[str, Any], overwrite: bool) -> None:
    run_file = out_dir / "run.json"
    if overwrite or not run_file.is_file():
        return
    try:
        before = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    fingerprint = redact(fingerprint)  # as written to run.json
    if before.get("fingerprint") != fingerprint:
        changed = sorted(k for k in fingerprint if before.get("fingerprint", {}).get(k) != fingerprint[k])
        raise ConfigError(
            f"the output folder holds predictions of a different evaluation (differs in: {', '.join(changed)})",
            path=out_dir, hint="choose another --out, or pass --overwrite to discard them")


def _clear_outputs(out_dir: Path) -> None:
    for file in [*out_dir.glob("predictions*.jsonl"), *(out_dir / PARTIAL_DIR).glob("*.jsonl")]:
        file.unlink(missing_ok=True)


class _PartialWriter:
    """Appends each finished batch to this process's partial file (flushed, so an interruption keeps it)."""

    def __init__(self, path: Path, records: list[dict[str, Any]]) -> None:
        self.path, self.records, self.handle = path, records, None

    def __call__(self, indices: list[int], texts: list[str]) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.path.open("a", encoding="utf-8")
        for i, text in zip(indices, texts, strict=True):
            self.handle.write(json.dumps({**self.records[i], "prediction": text}, ensure_ascii=False) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _load_model(model: Any, tokenizer: Any) -> tuple[Any, Any, str]:
    from mixtune.eval.generation import model_kind

    if isinstance(model, (str, Path)):
        from mixtune.train.modeling import ModelConfig, load_model_and_tokenizer

        loaded, loaded_tok, kind = load_model_and_tokenizer(ModelConfig(name_or_path=str(model)))
        return loaded, tokenizer or loaded_tok, kind
    if tokenizer is None:
        raise ConfigError("run_eval got a model object but no tokenizer", hint="pass tokenizer=")
    return model, tokenizer, model_kind(model)


def prompt_budget(spec: EvalSpec, model: Any, kind: str) -> int | None:
    """The prompt budget in tokens: `spec.max_source_length`, never more than the model's context (less
    `max_new_tokens` for a causal model, whose answer shares it); the context when the spec sets none."""
    from mixtune.train.modeling import context_length

    context = context_length(getattr(model, "config", None))
    if context is not None and kind == "causal":
        context = max(context - spec.max_new_tokens, 1)
    if spec.max_source_length is None:
        return context
    return spec.max_source_length if context is None else min(spec.max_source_length, context)


def _open_collection(spec: EvalSpec) -> Any:
    try:
        from mixtune.tasks import open_collection
    except ImportError:  # the package re-export may not exist
        from mixtune.tasks.collection import open_collection
    return open_collection(type=spec.type, path=spec.collection)


def _weights_stamp(model_name: str) -> list[list[Any]]:
    """(file, size, mtime) of a model folder's weight files: a retrained model is a different model."""
    folder = Path(model_name)
    if not folder.is_dir():
        return []
    return [[f.name, f.stat().st_size, int(f.stat().st_mtime)]
            for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("adapter_model.*"))]


def _primary(scores: dict[str, Any]) -> float:
    """Mean over categories of each category's primary metric (EM for classification-type, else ROUGE-L)."""
    from mixtune.eval.metrics import primary_metric

    cats = scores.get("per_category", {})
    if not cats:
        return 0.0
    return round(sum(v[primary_metric(c)] for c, v in cats.items()) / len(cats), 4)


def run_eval(model: Any, spec: EvalSpec, out_dir: str | Path, *, baselines: bool = True,
             tokenizer: Any = None, collection: Any = None, overwrite: bool = False, report: bool = True,
             progress: bool = True, step: int | None = None,
             others: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Evaluate `model` (a folder written by save_pretrained, or a model object with `tokenizer=`)
    on the held-out tasks of `spec`; write predictions, metrics.json and the report into `out_dir`.
    `others` (name -> another run's score tables, e.g. the model before training) go beside it in the report.

    Under several accelerate processes every process generates its share; the main process writes
    and returns the metrics (the others return {}).
    """
    from mixtune.eval.evalsets import build_eval_set, label_set, resolve_tasks
    from mixtune.eval.generation import generate, process_state
    from mixtune.eval.metrics import compute_scores
    from mixtune.eval.predictions import task_categories, write_predictions

    state = process_state()
    out_dir = Path(out_dir)
    if isinstance(model, (str, Path)):
        model_name = str(Path(model).resolve()) if Path(model).exists() else str(model)
    else:
        # an in-memory model (the training callback): name it by its training step when there is one
        model_name = (f"model at step {step}" if step is not None else
                      getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
    model, tokenizer, kind = _load_model(model, tokenizer)
    collection = collection if collection is not None else _open_collection(spec)
    tasks = resolve_tasks(collection, spec.split, spec.tasks)
    categories = task_categories(collection, tasks)
    # what a reused prediction depends on (tasks and instance counts may change: reuse is per instance)
    fingerprint = {**spec.generation_fingerprint(), "model": model_name, "weights": _weights_stamp(model_name)}

    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        _check_run_file(out_dir, fingerprint, overwrite)
        if overwrite:
            _clear_outputs(out_dir)
        atomic_write_json(out_dir / "run.json", redact({"fingerprint": fingerprint, "spec": spec.model_dump()}))
    state.wait_for_everyone()

    metrics: dict[str, Any] = {
        "model": model_name, "kind": kind, "step": step, "collection": str(getattr(collection, "path", spec.collection)),
        "split": spec.split, "tasks": tasks, "max_instances_per_task": spec.max_instances_per_task,
        "primary_setting": spec.settings[0], "settings": {}, "baselines": {}, "rank_classification": {},
        "rouge_tokenizer": "default", "others": dict(others or {}),
    }
    budget = prompt_budget(spec, model, kind)
    metrics["max_source_length"] = budget
    for number, setting in enumerate(spec.settings):
        primary = number == 0
        records = build_eval_set(collection, spec.split, spec.max_instances_per_task, setting, tasks=tasks,
                                 tokenizer=tokenizer, chat=spec.chat)  # whole prompts, cut in token space
        done = existing_predictions(out_dir, setting)
        skip = [i for i, r in enumerate(records) if _key(r) in done]
        writer = _PartialWriter(out_dir / PARTIAL_DIR / f"predictions.{setting}.rank{state.process_index}.jsonl",
                                records)
        started = time.perf_counter()
        try:
            texts = generate(model, tokenizer, [r["prompt"] for r in records], batch_size=spec.batch_size,
                             max_new_tokens=spec.max_new_tokens, kind=kind, skip=skip, on_batch=writer,
                             progress=progress, desc=f"eval {setting}", max_source_length=budget)
        finally:
            writer.close()
        seconds = time.perf_counter() - started
        reused = set(skip)
        predictions = [{**r, "prediction": done[_key(r)] if i in reused else texts[i]}
                       for i, r in enumerate(records)]
        state.wait_for_everyone()
        if state.is_main_process:
            write_predictions(predictions_path(out_dir, setting, primary), predictions)
            for file in (out_dir / PARTIAL_DIR).glob(f"predictions.{setting}.rank*.jsonl"):
                file.unlink(missing_ok=True)
            scores = compute_scores(predictions, categories).to_json()
            scores["primary"] = _primary(scores)
            scores["generated"] = len(records) - len(skip)
            scores["reused"] = len(skip)
            scores["seconds"] = round(seconds, 3)
            scores["predictions_file"] = predictions_path(out_dir, setting, primary).name
            metrics["settings"][setting] = scores

        if spec.rank_classification:
            from mixtune.eval.rank import rank_classify

            labels = {t: lab for t in tasks if (lab := label_set(collection, t, spec.max_labels))}
            ranked = rank_classify(model, tokenizer, records, labels, batch_size=spec.batch_size, kind=kind,
                                   max_source_length=budget)
            if state.is_main_process and ranked:
                write_predictions(out_dir / f"rank_classification.{setting}.jsonl", ranked)
                scores = compute_scores(ranked, categories).to_json()
                scores["tasks"] = sorted(labels)
                metrics["rank_classification"][setting] = scores

    if baselines and state.is_main_process:
        from mixtune.eval.baselines import BASELINE_METHODS, iter_baseline_records

        for method in BASELINE_METHODS:
            records = list(iter_baseline_records(collection, method, split=spec.split,
                                                 max_instances=spec.max_instances_per_task, tasks=tasks))
            scores = compute_scores(records, categories).to_json()
            scores["primary"] = _primary(scores)
            metrics["baselines"][method] = scores

    if not state.is_main_process:
        return {}
    return _write_metrics(metrics, out_dir, report=report)


def _write_metrics(metrics: dict[str, Any], out_dir: Path, *, report: bool) -> dict[str, Any]:
    """metrics.json plus report.md / categories.png (mixtune.eval.report.write_report).

    metrics.json holds the primary setting's tables at the top level (`overall`, `per_category`,
    `per_task`, ...: what `eval compare` and `Scores.from_json` read), and every setting's under
    `settings`, the baselines under `baselines`, rank classification under `rank_classification`.
    """
    setting = metrics["primary_setting"]
    first = metrics["settings"][setting]
    name = f"{Path(str(metrics['model'])).name or metrics['model']} [{setting}]"
    payload = redact({"name": name, **first, **metrics})  # paths and settings could carry a token
    if report:
        from mixtune.eval.report import write_report

        write_report(payload, out_dir)  # writes metrics.json unchanged, renders the report from it
    else:
        atomic_write_json(out_dir / "metrics.json", payload, ensure_ascii=False)
    partial = out_dir / PARTIAL_DIR
    if partial.is_dir() and not any(partial.iterdir()):
        partial.rmdir()
    return payload


def run_eval_from_args(args: Any) -> int:
    """`mixtune eval run MODEL_DIR --eval EVAL.yaml --out DIR [--set key=value ...] [--no-baselines]`."""
    from mixtune.eval.spec import EvalSpec, load_eval_spec

    eval_file = getattr(args, "eval", None)
    overrides = list(getattr(args, "set", None) or getattr(args, "overrides", None) or [])
    spec = load_eval_spec(eval_file, overrides) if eval_file else load_eval_spec({}, overrides)
    assert isinstance(spec, EvalSpec)
    model_dir = Path(args.model_dir if hasattr(args, "model_dir") else args.model)
    if not model_dir.exists():
        raise ConfigError("model folder not found", path=model_dir,
                          hint="give a folder written by save_pretrained (e.g. a training output_dir)")
    metrics = run_eval(model_dir, spec, args.out, baselines=not getattr(args, "no_baselines", False),
                       overwrite=getattr(args, "overwrite", False))
    if metrics:
        overall = metrics["overall"]
        print(f"{metrics['primary_setting']}: exact_match {overall['exact_match']:.2f}  rougeL "
              f"{overall['rougeL']:.2f}  ({Path(args.out) / 'metrics.json'})")
    return 0
