"""`mixtune train RECIPE [key=value ...]`: run a training recipe (or print its launch command);
`mixtune report RUN_DIR`: write a finished run's training report."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mixtune.cli_args import CommandArgs, add_collection, add_overrides


@dataclass(frozen=True, kw_only=True)
class TrainArgs(CommandArgs):
    """`mixtune train RECIPE [KEY=VALUE ...]`."""

    recipe: str
    overrides: list[str]
    collection: str | None
    print_launch: bool
    data_order_log: str | None


@dataclass(frozen=True, kw_only=True)
class ReportArgs(CommandArgs):
    """`mixtune report RUN_DIR`."""

    run_dir: str


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the `mixtune` parser."""
    p = subparsers.add_parser(
        "train", help="train a model from a recipe",
        description="Train a model from a recipe YAML. Runs in one process, or under accelerate launch, "
        "deepspeed or torchrun (see docs/distributed.md).",
        epilog="example: mixtune train recipes/tiny_causal.yaml training.max_steps=20 training.learning_rate=3e-4")
    p.add_argument("recipe", help="recipe YAML file (see docs/recipes.md)")
    add_overrides(p, "recipe", what="recipe fields", example="training.learning_rate=1e-4 resume=never")
    add_collection(p, "a SuperNI-format folder (or `bundled`) for the mixture's superni sources "
                   "(the same as data.collection=PATH)")
    p.add_argument("--print-launch", action="store_true",
                   help="print the launch command for the recipe's distributed.nodes / processes_per_node "
                   "and exit")
    p.add_argument("--data-order-log", metavar="PATH", default=None,
                   help="append the stream positions and tasks of every micro-batch to this JSONL file "
                   "(one line per micro-batch and process; for auditing which data a run trained on)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_train, arguments=TrainArgs)
    r = subparsers.add_parser(
        "report", help="write a finished run's training report",
        description="Write RUN_DIR/training_report.md (loss per category, examples and tokens per task against "
        "the plan, held-out evaluations over the steps) from the run's files. Runs write it when they end.",
        epilog="example: mixtune report runs/tiny_causal")
    r.add_argument("run_dir", metavar="RUN_DIR", help="the output_dir of a finished run")
    r.set_defaults(func=_report, arguments=ReportArgs)


def _report(args: ReportArgs) -> int:
    from mixtune.train.report import write_training_report

    print(f"training report: {write_training_report(args.run_dir)}")
    return 0


def _train(args: TrainArgs) -> int:
    from mixtune.recipe import load_recipe

    overrides = list(args.overrides)
    if args.collection is not None:
        overrides.append(f"data.collection={args.collection}")
    recipe = load_recipe(args.recipe, overrides)
    if args.print_launch:
        from mixtune.train.launch import launch_command

        print(launch_command(recipe, args.recipe, overrides))
        return 0
    if recipe.logging.progress_bar and int(os.environ.get("RANK", "0")) == 0:
        logging.getLogger("mixtune").info("training %s into %s: loading torch and transformers ...",
                                          args.recipe, recipe.output_dir)
    from mixtune.train.run import run_training

    final = run_training(recipe, order_log=args.data_order_log)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final model: {final}")
        report = last_report(final)
        if report is not None:
            from mixtune.eval.report import print_overall

            print_overall(report.parent)
            print(f"report: {report}")
    return 0


def last_report(final: Path) -> Path | None:
    """The report.md of the run's last held-out evaluation (named in final/mixtune_run.json), if any."""
    import json

    from mixtune.eval.callback import EVAL_DIR
    from mixtune.eval.report import REPORT_FILE
    from mixtune.train.final import RUN_FILE

    try:
        history = json.loads((final / RUN_FILE).read_text(encoding="utf-8"))["heldout_eval"]["history"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not history:
        return None
    report = final.parent / EVAL_DIR / f"step-{history[-1]['step']}" / REPORT_FILE
    return report if report.is_file() else None
