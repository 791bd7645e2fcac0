"""`mixtune eval run`: generate on the held-out tasks, score, compare with baselines, write a report.

Output folder (`out_dir`):

- `predictions.jsonl`: the first (primary) setting's predictions in the official SuperNI format
  (one JSON per line: Task, Categories, Definition, Instance {id, input, output: [all references]},
  setting, prompt, prediction); every further setting goes to `predictions.<setting>.jsonl`. One
  file per setting keeps each file scoreable by the official script and `mixtune eval score`.
- `predictions.unseen_instance.jsonl` (when the training mixture is known): the primary setting on
  instances of the training tasks outside the mixture's pools (generalisation level 3, `eval.levels`).
- `rank_classification.<setting>.jsonl` (with `rank_classification: true`): label-ranking predictions.
- `metrics.json`, `report.md`, `categories.png` (the report writer of `mixtune.eval.report`).
- `run.json`: what produced the predictions (model folder, its weight files, the spec's prompt and
  generation fields); a rerun that differs in these is refused (`--overwrite` discards the old ones).

Resumable: while generating, each process appends finished predictions to
`partial/predictions.<setting>.rank<r>.jsonl`; a rerun into the same folder reuses every prediction
found there or in a finished predictions file (by task and instance id) and generates only the
rest; under several processes the main process reads the folder and decides (`eval.collective`).
Finished files are written atomically and the partial files removed.
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
from mixtune.limits import json_loads
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
                obj = json_loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "Task" in obj and isinstance(obj.get("Instance"), dict) \
                    and isinstance(obj.get("prediction"), str):
                yield obj


def existing_predictions(out_dir: str | Path, setting: str, *, label: str | None = None) -> dict[tuple[str, str], str]:
    """(task, instance id) -> prediction already made for `setting` in `out_dir` (finished or partial files;
    `label` names the partial files when it is not the setting, e.g. "unseen_instance")."""
    out_dir = Path(out_dir)
    files = [*out_dir.glob("predictions*.jsonl"),
             *sorted((out_dir / PARTIAL_DIR).glob(f"predictions.{label or setting}.rank*.jsonl"))]
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
        before = json_loads(run_file.read_text(encoding="utf-8"))
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
    from mixtune.models.kind import model_kind

    if isinstance(model, (str, Path)):
        from mixtune.models.load import load_model_and_tokenizer
        from mixtune.models.spec import ModelConfig

        loaded, loaded_tok, kind = load_model_and_tokenizer(ModelConfig(name_or_path=str(model)))
        return loaded, tokenizer or loaded_tok, kind
    if tokenizer is None:
        raise ConfigError("run_eval got a model object but no tokenizer", hint="pass tokenizer=")
    return model, tokenizer, model_kind(model)


def prompt_budget(spec: EvalSpec, model: Any, kind: str) -> int | None:
    """The prompt budget in tokens: `spec.max_source_length`, never more than the model's context (less
    `max_new_tokens` for a causal model, whose answer shares it); the context when the spec sets none."""
    from mixtune.models.load import context_length

    context = context_length(getattr(model, "config", None))
    if context is not None and kind == "causal":
        context = max(context - spec.max_new_tokens, 1)
    if spec.max_source_length is None:
        return context
    return spec.max_source_length if context is None else min(spec.max_source_length, context)


def _open_collection(spec: EvalSpec) -> Any:
    from mixtune.tasks import open_collection

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

    Under several accelerate processes every process generates its share; the main process decides what
    is left to generate and writes the files, and a check failing on any process fails them all with the
    same error (`mixtune.eval.collective`). The main process returns the metrics, the others {}.
    """
    from mixtune.eval.collective import on_every_rank, on_main
    from mixtune.eval.evalsets import chance_exact_match
    from mixtune.eval.predictions import task_categories
    from mixtune.eval.sharding import process_state
    from mixtune.tasks.matching import resolve_tasks

    state = process_state()
    out_dir = Path(out_dir)
    model_dir = Path(model) if isinstance(model, (str, Path)) else None
    if model_dir is not None:
        model_name = str(model_dir.resolve()) if model_dir.exists() else str(model)
    else:
        # an in-memory model (the training callback): name it by its training step when there is one
        model_name = (f"model at step {step}" if step is not None else
                      getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
    model, tokenizer, kind = _load_model(model, tokenizer)

    def setup() -> tuple[Any, list[str], Any]:
        from mixtune.eval.levels import training_mixture

        opened = collection if collection is not None else _open_collection(spec)
        return opened, resolve_tasks(opened, spec.split, spec.tasks), training_mixture(model_dir, spec.mixture)

    collection, tasks, mixture = on_every_rank(state, setup)
    categories = task_categories(collection, tasks)
    # what a reused prediction depends on (tasks and instance counts may change: reuse is per instance)
    fingerprint = {**spec.generation_fingerprint(), "model": model_name, "weights": _weights_stamp(model_name)}

    def prepare() -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        _check_run_file(out_dir, fingerprint, overwrite)
        if overwrite:
            _clear_outputs(out_dir)
        atomic_write_json(out_dir / "run.json", redact({"fingerprint": fingerprint, "spec": spec.model_dump()}))

    on_main(state, prepare)

    metrics: dict[str, Any] = {
        "model": model_name, "kind": kind, "step": step,
        "collection": str(getattr(collection, "path", spec.collection)),
        "split": spec.split, "tasks": tasks, "max_instances_per_task": spec.max_instances_per_task,
        "primary_setting": spec.settings[0], "settings": {}, "levels": {}, "baselines": {}, "rank_classification": {},
        "rouge_tokenizer": "default", "others": dict(others or {}),
        "chance_exact_match": chance_exact_match(collection, categories, spec.max_labels),
    }
    budget = prompt_budget(spec, model, kind)
    metrics["max_source_length"] = budget
    run = _Run(state, model, tokenizer, kind, spec, out_dir, collection, categories, progress, step, budget)
    primary_records: list[dict[str, Any]] = []
    for number, setting in enumerate(spec.settings):
        records = run.build(setting, tasks=tasks)
        predictions = run.generate(setting, records, predictions_path(out_dir, setting, number == 0).name)
        if state.is_main_process:
            metrics["settings"][setting] = run.scores
            if number == 0:
                primary_records = predictions
        if spec.rank_classification:
            run.rank(setting, records, tasks, metrics)

    if mixture is not None:
        from mixtune.eval.levels import unseen_instances

        unseen = on_every_rank(state, lambda: unseen_instances(mixture, collection, spec.unseen_instances_per_task))
        predictions = []
        if unseen:
            records = run.build(spec.settings[0], instances=unseen)
            predictions = run.generate(spec.settings[0], records, "predictions.unseen_instance.jsonl",
                                       label="unseen_instance")
        if state.is_main_process:
            metrics["levels"] = _levels(mixture, collection, tasks, primary_records, predictions)
            metrics["mixture"] = {"name": mixture.name, "source": mixture.source, "num_tasks": len(mixture.tasks),
                                  "seed": mixture.seed,
                                  "unseen_instances_per_task": spec.unseen_instances_per_task}

    def finish() -> dict[str, Any]:
        _add_controls(metrics, primary_records, categories)
        if baselines:
            _add_baselines(metrics, collection, spec, tasks, categories, primary_records)
        from mixtune.console import phase

        with phase(f"writing the report into {out_dir}", enabled=progress and report):
            return _write_metrics(metrics, out_dir, report=report)

    written = on_main(state, finish)
    return written if state.is_main_process else {}


class _Run:
    """One evaluation's shared state: builds a setting's records, generates what is left, writes and scores."""

    def __init__(self, state: Any, model: Any, tokenizer: Any, kind: str, spec: EvalSpec, out_dir: Path,
                 collection: Any, categories: dict[str, str], progress: bool, step: int | None,
                 budget: int) -> None:
        self.state, self.model, self.tokenizer, self.kind, self.spec = state, model, tokenizer, kind, spec
        self.out_dir, self.collection, self.categories, self.progress = out_dir, collection, categories, progress
        self.step, self.budget = step, budget
        self.scores: dict[str, Any] = {}

    def build(self, setting: str, **selection: Any) -> list[dict[str, Any]]:
        """The setting's records, built on every process (a failure on any fails all)."""
        from mixtune.eval.collective import on_every_rank
        from mixtune.eval.evalsets import build_eval_set

        spec = self.spec
        return on_every_rank(self.state, lambda: build_eval_set(
            self.collection, spec.split, spec.max_instances_per_task, setting, tokenizer=self.tokenizer,
            chat=spec.chat, seed=spec.seed, max_labels=spec.max_labels,
            **selection))  # whole prompts: cut in token space

    def generate(self, setting: str, records: list[dict[str, Any]], file_name: str,
                 label: str | None = None) -> list[dict[str, Any]]:
        """Generate the records' predictions not made yet (the main process decides which), write the
        predictions file and score it (main process: `self.scores`); returns the predictions (main) or []."""
        from mixtune.eval.collective import on_main
        from mixtune.eval.generation import generate

        state, spec, label = self.state, self.spec, label or setting
        done: dict[tuple[str, str], str] = {}

        def decide() -> list[int]:
            done.update(existing_predictions(self.out_dir, setting, label=label))
            return [i for i, r in enumerate(records) if _key(r) in done]

        skip = on_main(state, decide)
        writer = _PartialWriter(self.out_dir / PARTIAL_DIR / f"predictions.{label}.rank{state.process_index}.jsonl",
                                records)
        started = time.perf_counter()
        try:
            texts = generate(self.model, self.tokenizer, [r["prompt"] for r in records], batch_size=spec.batch_size,
                             max_new_tokens=spec.max_new_tokens, kind=self.kind, skip=skip, on_batch=writer,
                             progress=self.progress, max_source_length=self.budget,
                             desc=f"eval {label}" + (f" (step {self.step})" if self.step is not None else ""))
        finally:
            writer.close()
        seconds = time.perf_counter() - started
        state.wait_for_everyone()

        predictions: list[dict[str, Any]] = []

        def write() -> None:  # returns nothing: the predictions stay on the main process, not broadcast
            from mixtune.eval.metrics import compute_scores
            from mixtune.eval.predictions import write_predictions

            reused = set(skip)
            predictions.extend({**r, "prediction": done[_key(r)] if i in reused else texts[i]}
                               for i, r in enumerate(records))
            write_predictions(self.out_dir / file_name, predictions)
            for file in (self.out_dir / PARTIAL_DIR).glob(f"predictions.{label}.rank*.jsonl"):
                file.unlink(missing_ok=True)
            scores = compute_scores(predictions, self.categories).to_json()
            scores.update(primary=_primary(scores), generated=len(records) - len(skip), reused=len(skip),
                          seconds=round(seconds, 3), predictions_file=file_name)
            self.scores = scores

        on_main(state, write)
        return predictions

    def rank(self, setting: str, records: list[dict[str, Any]], tasks: list[str], metrics: dict[str, Any]) -> None:
        from mixtune.eval.collective import on_main
        from mixtune.eval.evalsets import label_set
        from mixtune.eval.metrics import compute_scores
        from mixtune.eval.predictions import write_predictions
        from mixtune.eval.rank import rank_classify

        spec = self.spec
        labels = {t: lab for t in tasks if (lab := label_set(self.collection, t, spec.max_labels))}
        ranked = rank_classify(self.model, self.tokenizer, records, labels, batch_size=spec.batch_size, kind=self.kind,
                               max_source_length=self.budget)

        def write() -> None:
            if ranked:
                write_predictions(self.out_dir / f"rank_classification.{setting}.jsonl", ranked)
                scores = compute_scores(ranked, self.categories).to_json()
                scores["tasks"] = sorted(labels)
                metrics["rank_classification"][setting] = scores

        on_main(self.state, write)


def _subset_scores(records: list[dict[str, Any]], tasks: Iterable[str], categories: Mapping[str, str]) -> dict:
    """overall {exact_match, rougeL} and instance count of the records of `tasks` (None scores when empty)."""
    from mixtune.eval.metrics import compute_scores

    chosen = set(tasks)
    subset = [r for r in records if r["Task"] in chosen]
    if not subset:
        return {"num_instances": 0, "exact_match": None, "rougeL": None}
    overall = compute_scores(subset, categories).overall
    return {"num_instances": len(subset), **overall}


def _levels(mixture: Any, collection: Any, tasks: list[str], primary: list[dict[str, Any]],
            unseen: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json "levels": the primary setting's scores at each generalisation level."""
    from mixtune.eval.levels import level_tasks

    out = {}
    for level, names in level_tasks(mixture, collection, tasks).items():
        out[level] = {"tasks": names, **_subset_scores(primary, names, {})}
    names = sorted({r["Task"] for r in unseen})
    out["unseen_instance"] = {"tasks": names, **_subset_scores(unseen, names, {})}
    return out


def _add_controls(metrics: dict[str, Any], primary: list[dict[str, Any]], categories: Mapping[str, str]) -> None:
    """Each control setting's description, tasks, and the primary setting's scores on those same tasks."""
    from mixtune.eval.controls import CONTROL_SETTINGS

    for setting, scores in metrics["settings"].items():
        if setting in CONTROL_SETTINGS and setting != metrics["primary_setting"]:
            covered = sorted(scores["per_task"])
            scores["control"] = {"changes": CONTROL_SETTINGS[setting][1], "shape": CONTROL_SETTINGS[setting][0],
                                 "tasks": covered,
                                 "primary_on_same_tasks": _subset_scores(primary, covered, categories)}


def _add_baselines(metrics: dict[str, Any], collection: Any, spec: EvalSpec, tasks: list[str],
                   categories: Mapping[str, str], primary: list[dict[str, Any]]) -> None:
    from mixtune.eval.baselines import BASELINE_METHODS, RANDOM_LABEL_TEXT, iter_baseline_records
    from mixtune.eval.metrics import compute_scores

    for method in BASELINE_METHODS:
        records = list(iter_baseline_records(collection, method, split=spec.split,
                                             max_instances=spec.max_instances_per_task, tasks=tasks, seed=spec.seed,
                                             max_labels=spec.max_labels))
        scores = compute_scores(records, categories).to_json()
        scores["primary"] = _primary(scores)
        if method == "random_label":
            scores["control"] = {"changes": RANDOM_LABEL_TEXT, "shape": None, "tasks": sorted(scores["per_task"]),
                                 "primary_on_same_tasks": _subset_scores(primary, scores["per_task"], categories)}
        metrics["baselines"][method] = scores


def _write_metrics(metrics: dict[str, Any], out_dir: Path, *, report: bool) -> dict[str, Any]:
    """metrics.json plus report.md / categories.png (mixtune.eval.report.write_report).

    metrics.json (`mixtune.eval.schema.EvalMetrics`) holds the primary setting's tables at the top level
    (`overall`, `per_category`, `per_task`, ...: what `eval compare` and `Scores.from_json` read), every
    setting's under `settings`, the generalisation levels under `levels`, the baselines under `baselines`,
    rank classification under `rank_classification`.
    """
    from mixtune.eval.schema import SCHEMA_VERSION, validate_metrics

    setting = metrics["primary_setting"]
    first = metrics["settings"][setting]
    name = f"{Path(str(metrics['model'])).name or metrics['model']} [{setting}]"
    # paths and settings could carry a token
    payload = redact({"schema_version": SCHEMA_VERSION, "name": name, **first, **metrics})
    validate_metrics(payload, out_dir / "metrics.json")
    if report:
        from mixtune.eval.report import write_report

        write_report(payload, out_dir)  # writes metrics.json unchanged, renders the report from it
    else:
        atomic_write_json(out_dir / "metrics.json", payload, ensure_ascii=False)
    partial = out_dir / PARTIAL_DIR
    if partial.is_dir() and not any(partial.iterdir()):
        partial.rmdir()
    return payload


def run_eval_command(model_dir: str | Path, out: str | Path, *, eval_file: str | Path | None = None,
                     overrides: Iterable[str] = (), baselines: bool = True, overwrite: bool = False) -> int:
    """`mixtune eval run MODEL_DIR [KEY=VALUE ...] [--eval EVAL.yaml] --out DIR`: the eval spec from
    `eval_file` (or the defaults) with `overrides` applied, run on `model_dir`, the overall scores printed."""
    from mixtune.eval.spec import load_eval_spec

    spec = load_eval_spec(eval_file if eval_file else {}, overrides)
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise ConfigError("model folder not found", path=model_dir,
                          hint="give a folder written by save_pretrained (e.g. a training output_dir)")
    from mixtune.tasks.matching import resolve_tasks

    collection = _open_collection(spec)
    resolve_tasks(collection, spec.split, spec.tasks)  # a misspelt task or split fails before the model loads
    metrics = run_eval(model_dir, spec, out, baselines=baselines, collection=collection, overwrite=overwrite)
    if metrics:
        from mixtune.eval.report import print_overall

        overall = metrics["overall"]
        print(f"{metrics['primary_setting']}: exact_match {overall['exact_match']:.2f}  rougeL "
              f"{overall['rougeL']:.2f}  ({Path(out) / 'metrics.json'})")
        print(f"report: {print_overall(out)}")
    return 0
