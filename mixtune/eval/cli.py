"""`mixtune eval` subcommands: score, baseline, compare, run.

    mixtune eval score PRED.jsonl [--collection PATH|bundled] [--collection-type superni|hf|jsonl]
                                  [--split default] [--tasks a,b*] [--max-instances 100]
                                  [--rouge-tokenizer default|multilingual] [--workers N] [--json]
    mixtune eval baseline --method copy_demo|copy_input|random_label [--collection PATH|bundled]
                          [--split default] [--tasks a,b*] [--max-instances 100] [--seed 0] --out PRED.jsonl
    mixtune eval compare DIR1 DIR2 ... [--baselines]
    mixtune eval run MODEL_DIR [KEY=VALUE ...] [--eval EVAL.yaml] --out DIR [--collection PATH|bundled]
                     [--collection-type T] [--split NAME] [--tasks a,b*] [--settings zero_shot,def_pos2,pos2]
                     [--max-instances N] [--batch-size N] [--max-new-tokens N] [--max-source-length N]
                     [--chat] [--rank-classification] [--mixture PATH] [--no-baselines] [--overwrite]

`eval run`'s flags become eval-spec overrides (the KEY=VALUE ones first, the named flags after, so they
win), and `mixtune.eval.runner.run_eval_command` does the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixtune.cli_args import CommandArgs, add_collection, add_json, add_overrides
from mixtune.errors import ConfigError

ROUGE_TOKENIZER_HELP = ("ROUGE tokenizer: default (rouge-score's, English, Porter stemmer; as the official script) "
                        "or multilingual (offline Unicode tokenizer for non-English outputs)")


@dataclass(frozen=True, kw_only=True)
class CollectionArgs(CommandArgs):
    """--collection and --collection-type."""

    collection: str | None
    collection_type: str | None


@dataclass(frozen=True, kw_only=True)
class SelectionArgs(CollectionArgs):
    """--split, --tasks, --max-instances: which instances are evaluated."""

    split: str | None
    tasks: list[str] | None
    max_instances: int | None


@dataclass(frozen=True, kw_only=True)
class ScoreArgs(SelectionArgs):
    """`mixtune eval score PRED.jsonl`."""

    predictions: str
    rouge_tokenizer: str
    workers: int | None
    json: bool


@dataclass(frozen=True, kw_only=True)
class BaselineArgs(SelectionArgs):
    """`mixtune eval baseline --method M --out PRED.jsonl`."""

    method: str
    seed: int
    max_labels: int
    out: str


@dataclass(frozen=True, kw_only=True)
class CompareArgs(CommandArgs):
    """`mixtune eval compare DIR...`."""

    dirs: list[str]
    baselines: bool


@dataclass(frozen=True, kw_only=True)
class EvalRunArgs(SelectionArgs):
    """`mixtune eval run MODEL_DIR [KEY=VALUE ...] --out DIR`."""

    model_dir: str
    overrides: list[str]
    eval: str | None
    out: str
    settings: list[str] | None
    batch_size: int | None
    max_new_tokens: int | None
    max_source_length: int | None
    chat: bool | None
    rank_classification: bool | None
    mixture: str | None
    no_baselines: bool
    overwrite: bool


def _collection_args(parser: argparse.ArgumentParser, default: str | None) -> None:
    add_collection(parser, "task collection: a SuperNI folder, an HF dataset path, a JSONL file, or 'bundled' "
                   "(the sample shipped with mixtune)", default=default)
    parser.add_argument("--collection-type", choices=("superni", "hf", "jsonl"), default=None,
                        help="format of --collection (default: jsonl for a .jsonl file, else superni)")


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _selection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="default", help="split whose test tasks are evaluated (default: default)")
    parser.add_argument("--tasks", type=_comma_list, default=None, metavar="A,B*",
                        help="comma-separated task names or globs instead of the split's test tasks")
    parser.add_argument("--max-instances", type=int, default=100,
                        help="first N instances of each task, in file order (default: 100, as the official)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mixtune eval ...` to the `mixtune` parser."""
    ev = subparsers.add_parser("eval", help="held-out evaluation: score, baselines, compare, run",
                               description=__doc__.splitlines()[0])
    sub = ev.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND")

    score = sub.add_parser("score", help="score a predictions JSONL with the official SuperNI metrics",
                           description="Exact match and ROUGE-L (max over references, x100) per task, per "
                           "category and overall, for a predictions file in the official SuperNI format. With "
                           "--collection, the collection's evaluated instances (--split/--tasks/--max-instances, "
                           "as `eval run`) are scored against its references, a missing prediction as the empty "
                           "string (as the official script); without it, the file's own references are used.")
    score.add_argument("predictions", metavar="PRED.jsonl", help="predictions file (one JSON object per line)")
    _collection_args(score, None)
    _selection_args(score)
    score.add_argument("--rouge-tokenizer", choices=("default", "multilingual"), default="default",
                       help=ROUGE_TOKENIZER_HELP)
    score.add_argument("--workers", type=int, default=None,
                       help="processes to score with (default: 1; one process scores ~10,000 predictions/s)")
    add_json(score, '{"overall", "per_category", "per_task", "num_instances", "missing", "references"}')
    score.set_defaults(func=_score, arguments=ScoreArgs)

    base = sub.add_parser("baseline", help="write a baseline's predictions (copy_demo, copy_input, random_label)",
                          description="The SuperNI paper's heuristic baselines as a predictions file: copy_demo "
                          "(the first positive example's output) or copy_input (the instance input); and "
                          "random_label, the random-guess control of Kung & Peng (2023): a seeded uniform choice "
                          "among the task's observed outputs for tasks with a small label set, else copy_input.")
    base.add_argument("--method", required=True, choices=("copy_demo", "copy_input", "random_label"))
    _collection_args(base, "bundled")
    _selection_args(base)
    base.add_argument("--seed", type=int, default=0, help="seed of random_label's draws (default: 0)")
    base.add_argument("--max-labels", type=int, default=10,
                      help="random_label: a task with at most this many distinct outputs has a label set (default: 10)")
    base.add_argument("--out", required=True, metavar="PRED.jsonl", help="predictions file to write")
    base.set_defaults(func=_baseline, arguments=BaselineArgs)

    cmp = sub.add_parser("compare", help="side-by-side table of several evaluation output folders",
                         description="Overall EM / ROUGE-L and each category's primary metric for several "
                         "evaluation folders (each holding a metrics.json).")
    cmp.add_argument("dirs", nargs="+", metavar="DIR")
    cmp.add_argument("--baselines", action="store_true", help="add the first folder's baselines as columns")
    cmp.set_defaults(func=_compare, arguments=CompareArgs)

    run = sub.add_parser("run", help="generate on the held-out tasks, score and write a report",
                         description="Evaluate a saved model on the held-out tasks: predictions.jsonl, "
                         "metrics.json, report.md, categories.png in --out. KEY=VALUE and the flags override "
                         "the eval YAML (the flags win).",
                         epilog="example: mixtune eval run runs/tiny_causal/final max_new_tokens=64 --out runs/eval")
    run.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by save_pretrained (e.g. a checkpoint)")
    add_overrides(run, "model_dir", what="eval-spec fields", example="max_new_tokens=64 seed=1", legacy_set=True)
    run.add_argument("--eval", metavar="EVAL.yaml", default=None,
                     help="eval spec: a standalone eval YAML or a recipe with an `eval:` section")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _collection_args(run, None)
    run.add_argument("--split", default=None, help="split whose test tasks are held out")
    run.add_argument("--tasks", type=_comma_list, default=None, metavar="A,B*", help="task names or globs")
    run.add_argument("--settings", type=_comma_list, default=None, metavar="S1,S2",
                     help="encodings to evaluate, e.g. zero_shot,def_pos2,pos2 (the first is the primary)")
    run.add_argument("--max-instances", type=int, default=None, help="first N instances per task (official: 100)")
    run.add_argument("--batch-size", type=int, default=None, help="prompts per generation batch")
    run.add_argument("--max-new-tokens", type=int, default=None, help="generation length limit")
    run.add_argument("--max-source-length", type=int, default=None, help="prompt budget in tokens")
    run.add_argument("--chat", action="store_true", default=None, help="render prompts with the chat template")
    run.add_argument("--rank-classification", action="store_true", default=None,
                     help="also rank the labels of small-label-set tasks by log-likelihood")
    run.add_argument("--mixture", default=None, metavar="PATH",
                     help="training mixture for the generalisation levels: a mixture YAML or a mixtune_run.json "
                     "(default: the model folder's mixtune_run.json)")
    run.add_argument("--no-baselines", action="store_true",
                     help="skip the copy_demo / copy_input / random_label baselines")
    run.add_argument("--overwrite", action="store_true", help="discard predictions already in --out")
    run.set_defaults(func=_run, arguments=EvalRunArgs)


# ------------------------------------------------------------------------------------------------- handlers


def _print_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mixtune.console import print_table

    table = Table(title=escape(title), title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    print_table(table)


def _score(args: ScoreArgs) -> int:
    from mixtune.eval.metrics import UNCATEGORIZED, primary_metric, score_file_details
    from mixtune.eval.predictions import resolve_collection

    if args.max_instances is not None and args.max_instances < 1:
        raise ConfigError("must be at least 1", field="--max-instances")
    collection = resolve_collection(args.collection, args.collection_type)
    scores = score_file_details(args.predictions, collection, rouge_tokenizer=args.rouge_tokenizer,
                                workers=args.workers, split=args.split, tasks=args.tasks,
                                max_instances=args.max_instances)
    if set(scores.per_category) == {UNCATEGORIZED}:
        print("mixtune: no task categories (no --collection and no 'Categories' field in the lines); "
              "pass --collection PATH|bundled for per-category scores", file=sys.stderr)
    source = _references_text(scores)
    if args.json:
        payload = {**scores.as_dict(), "num_instances": scores.num_instances["overall"],
                   "missing": scores.missing, "references": scores.references}
        json.dump(payload, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        print(f"mixtune: {scores.num_instances['overall']} instances, {source}, ROUGE tokenizer: "
              f"{scores.rouge_tokenizer}", file=sys.stderr)
        return 0
    counts = scores.num_instances

    def fmt(row: dict[str, float], prim: str | None) -> list[str]:
        return [f"[bold]{row[m]:.2f}*[/bold]" if m == prim else f"{row[m]:.2f}" for m in ("exact_match", "rougeL")]

    print(f"{args.predictions}: {counts['overall']} instances, {len(scores.per_task)} tasks, {source}, "
          f"ROUGE tokenizer: {scores.rouge_tokenizer}")
    _print_table("overall",
                 [("overall", *fmt(scores.overall, None), str(counts["overall"]))],
                 ("", "EM", "ROUGE-L", "instances"))
    _print_table("per category (* primary metric)",
                 [(c, *fmt(r, primary_metric(c)), str(counts["per_category"][c]))
                  for c, r in scores.per_category.items()],
                 ("category", "EM", "ROUGE-L", "instances"))
    _print_table("per task (* primary metric of its category)",
                 [(t, *fmt(r, primary_metric(scores.task_category[t])), str(counts["per_task"][t]))
                  for t, r in scores.per_task.items()],
                 ("task", "EM", "ROUGE-L", "instances"))
    return 0


def _references_text(scores: Any) -> str:
    """How the references were chosen, for the score output: the collection's (and how many were missing)
    or the file's own."""
    if scores.references == "collection":
        return (f"references from the collection, {scores.missing} missing prediction(s) scored as empty"
                if scores.missing else "references from the collection, no missing prediction")
    return "references from the predictions file (no --collection: its lines are trusted as they are)"


def _baseline(args: BaselineArgs) -> int:
    from mixtune.eval.baselines import write_baseline
    from mixtune.eval.predictions import resolve_collection

    if args.max_instances is not None and args.max_instances < 1:
        raise ConfigError("must be at least 1", field="--max-instances")
    collection = resolve_collection(args.collection, args.collection_type)
    n = write_baseline(collection, args.method, args.out, split=args.split, max_instances=args.max_instances,
                       tasks=args.tasks, seed=args.seed, max_labels=args.max_labels)
    print(f"{args.method}: wrote {n} predictions to {args.out}")
    return 0


def _compare(args: CompareArgs) -> int:
    from mixtune.eval.report import compare

    sys.stdout.write(compare(args.dirs, baselines=args.baselines))
    return 0


def spec_overrides(args: EvalRunArgs) -> list[str]:
    """`eval run`'s overrides: the KEY=VALUE ones, then the named flags as `key=value` (so they win)."""
    ctype = args.collection_type
    if ctype is None and args.collection and str(args.collection).endswith((".jsonl", ".json")) \
            and Path(args.collection).is_file():
        ctype = "jsonl"  # as `eval score` / `eval baseline` infer it
    fields: dict[str, Any] = {
        "collection": args.collection,
        "type": ctype,
        "split": args.split,
        "tasks": args.tasks,
        "settings": args.settings,
        "max_instances_per_task": args.max_instances,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "max_source_length": args.max_source_length,
        "chat": args.chat,
        "rank_classification": args.rank_classification,
        "mixture": str(Path(args.mixture).expanduser().resolve()) if args.mixture else None,
    }
    # JSON is valid YAML: strings stay strings (quoted), lists and numbers keep their type.
    return [*args.overrides, *(f"{k}={json.dumps(v)}" for k, v in fields.items() if v is not None)]


def _run(args: EvalRunArgs) -> int:
    from mixtune.eval.runner import run_eval_command

    return run_eval_command(args.model_dir, args.out, eval_file=args.eval, overrides=spec_overrides(args),
                            baselines=not args.no_baselines, overwrite=args.overwrite)
