"""`mixtune mixture select`: choose the training tasks for a target task (or a file of its inputs)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

from mixtune.cli_args import CommandArgs, add_collection, add_json
from mixtune.mixtures.task_select.select import METHODS


@dataclass(frozen=True, kw_only=True)
class SelectArgs(CommandArgs):
    """`mixtune mixture select`."""

    collection: str | None
    from_mixture: str | None
    type: str
    split: str
    target: str | None
    target_file: str | None
    k: int
    method: str
    weights: str
    max_instances: int
    target_instances: int
    neighbors: int
    out: str
    json: bool
    plot: str | None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def add_subcommand(sub: Any) -> None:
    """Add `mixture select` to the `mixture` subparsers."""
    p = sub.add_parser("select", help="choose the k training tasks most similar to a target task "
                                      "and write them as a mixture YAML",
                       description="Rank candidate tasks (a collection's, or a mixture's, minus the targets and "
                                   "every held-out task of the split) by similarity to the target and write the "
                                   "top k as a mixture YAML (see docs/selection.md).")
    where = p.add_mutually_exclusive_group(required=True)
    add_collection(where, "candidates: every task of this collection (a SuperNI folder or `bundled`; "
                          "see --type) not held out by --split")
    where.add_argument("--from", dest="from_mixture", metavar="MIXTURE.yaml",
                       help="candidates: the tasks this mixture's sources take, minus what it holds out")
    p.add_argument("--type", default="superni", choices=("superni", "hf", "jsonl"),
                   help="type of --collection: SuperNI folder, Hugging Face dataset (save_to_disk folder, "
                        "parquet, hub name) or JSONL tasks (default superni)")
    p.add_argument("--split", default="default", metavar="NAME",
                   help="with --collection: leave out the tasks this split holds out (test + excluded; default: "
                        "default; a collection without split files holds out nothing)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", metavar="TASK[,TASK...]",
                        help="target task(s) of the collection; with several, scores are averaged")
    target.add_argument("--target-file", metavar="FILE.jsonl",
                        help='your own task as unlabeled inputs: one {"input": "..."} per line')
    p.add_argument("--k", type=_positive, required=True, help="number of tasks to select")
    p.add_argument("--method", choices=METHODS, default="semb",
                   help="semb: cosine of mean MiniLM sentence embeddings; retrieval: nearest-instance votes; "
                        "ngram: DSIR hashed n-gram importance (no model). Default semb")
    p.add_argument("--weights", choices=("uniform", "score"), default="uniform",
                   help="task weights of the output mixture: uniform (default), or from the scores "
                        "(min-max scaled over the candidates, best 1)")
    p.add_argument("--max-instances", type=_positive, default=100, metavar="N",
                   help="instances per candidate task that describe it (a seeded subset; default 100)")
    p.add_argument("--target-instances", type=_positive, default=32, metavar="N",
                   help="instances per target that describe it (default 32)")
    p.add_argument("--neighbors", type=_positive, default=10, metavar="N",
                   help="retrieval: nearest candidate instances each target instance votes for (default 10)")
    p.add_argument("--out", required=True, metavar="MIXTURE.yaml", help="the mixture YAML to write")
    add_json(p, "the selection")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the scores (and a task × target heat map)")
    p.set_defaults(func=select_command, arguments=SelectArgs)


def select_command(args: SelectArgs) -> int:
    """Score the candidates, print the top k, write the mixture YAML (and the plot)."""
    from mixtune.mixtures.task_select.output import (
        mixture_yaml,
        plot_selection,
        print_table,
        to_json,
        write_mixture,
    )
    from mixtune.mixtures.task_select.pool import collection_pool, file_target, mixture_pool, task_targets
    from mixtune.mixtures.task_select.select import select_for_targets

    if args.from_mixture:
        pool = mixture_pool(args.from_mixture)
    else:
        pool = collection_pool(args.collection, type=args.type, split=args.split)
    if args.target_file:
        targets = [file_target(args.target_file)]
    else:
        names = list(dict.fromkeys(n.strip() for n in args.target.split(",") if n.strip()))
        targets = task_targets(pool, names)
    selection = select_for_targets(pool, targets, args.method, args.k, max_instances=args.max_instances,
                                   target_instances=args.target_instances, neighbors=args.neighbors)
    out = write_mixture(args.out, mixture_yaml(selection, pool, weights=args.weights))
    if args.json:
        json.dump(to_json(selection), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(selection)
    print(f"wrote {out}", file=sys.stderr)
    if args.plot:
        print(f"wrote {plot_selection(selection, args.plot)}", file=sys.stderr)
    return 0
