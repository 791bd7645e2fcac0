"""`mixtune mixture show|build|decontaminate|select`: inspect a mixture YAML, or write its examples as a dataset.

Each reads `MIXTURE [KEY=VALUE ...]` (`select` writes a mixture instead)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from mixtune.cli_args import CommandArgs, add_collection, add_json, add_overrides


@dataclass(frozen=True, kw_only=True)
class MixtureArgs(CommandArgs):
    """What every `mixture ACTION MIXTURE [KEY=VALUE ...]` reads."""

    mixture: str
    overrides: list[str]
    collection: str | None


@dataclass(frozen=True, kw_only=True)
class ShowArgs(MixtureArgs):
    """`mixtune mixture show`."""

    json: bool
    plot: str | None


@dataclass(frozen=True, kw_only=True)
class BuildArgs(MixtureArgs):
    """`mixtune mixture build`."""

    out: str


@dataclass(frozen=True, kw_only=True)
class DecontaminateArgs(MixtureArgs):
    """`mixtune mixture decontaminate` (mixtune/mixtures/decontaminate.py)."""

    eval_split: str
    eval_spec: str | None
    ngram: int
    drop: bool
    out: str | None
    json: bool


def add_mixture_args(parser: argparse.ArgumentParser) -> None:
    """MIXTURE [KEY=VALUE ...] and --collection: what every mixture command takes."""
    parser.add_argument("mixture", help="the mixture YAML (e.g. data_mixtures/superni_sample.yaml)")
    add_overrides(parser, "mixture", what="keys of the mixture YAML", example="seed=7 epochs=1", legacy_set=True)
    add_collection(parser)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `mixture show|build|decontaminate|select` to the `mixtune` parser."""
    mixture = subparsers.add_parser("mixture", help="inspect or build a YAML task mixture")
    sub = mixture.add_subparsers(dest="mixture_command", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="print tasks, rates and expected examples of a mixture",
                          epilog="example: mixtune mixture show data_mixtures/superni_sample.yaml seed=7")
    add_mixture_args(show)
    add_json(show)
    show.add_argument("--plot", metavar="FILE.png", help="also draw the rates per category to this PNG")
    show.set_defaults(func=show_command, arguments=ShowArgs)
    build = sub.add_parser("build", help="write the mixture's formatted examples as a Hugging Face dataset")
    add_mixture_args(build)
    build.add_argument("--out", required=True, metavar="DIR", help="output folder (datasets.load_from_disk)")
    build.set_defaults(func=build_command, arguments=BuildArgs)
    _add_decontaminate(sub)
    from mixtune.mixtures.task_select.cli import add_subcommand as add_select

    add_select(sub)  # `mixture select` (mixtune/mixtures/task_select/)


def _plan(args: MixtureArgs):
    from mixtune.mixtures.plan import plan_mixture
    from mixtune.mixtures.spec import load_mixture

    spec = load_mixture(args.mixture, overrides=args.overrides, collection=args.collection)
    return plan_mixture(spec)


def show_command(args: ShowArgs) -> int:
    """Print the plan's summary (table or JSON) and optionally plot it."""
    from mixtune.mixtures.report import plot_rates, print_summary

    plan = _plan(args)
    summary = plan.summary()
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_summary(summary, spec=plan.spec)
    if args.plot:
        path = plot_rates(summary, args.plot)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def build_command(args: BuildArgs) -> int:
    """Build the mixture dataset into --out."""
    from mixtune.mixtures.build import build_mixture

    plan = _plan(args)
    out = build_mixture(plan, args.out)
    print(f"wrote {len(plan)} examples of mixture {plan.spec.name!r} (hash {plan.hash}) to {out}")
    return 0


def _add_decontaminate(sub: argparse._SubParsersAction) -> None:
    """Add `mixture decontaminate` (mixtune/mixtures/decontaminate.py) to the `mixture` subparsers."""
    from mixtune.mixtures.ngram_overlap import DEFAULT_NGRAM

    p = sub.add_parser("decontaminate", help="report (and optionally drop) training instances that overlap "
                                             "evaluation instances")
    add_mixture_args(p)
    side = p.add_mutually_exclusive_group()
    side.add_argument("--eval-split", default="default", metavar="NAME",
                      help="evaluate against every instance of the tasks this split holds out "
                           "(test + excluded; default: default)")
    side.add_argument("--eval", dest="eval_spec", metavar="EVAL.yaml",
                      help="evaluate against the instances this eval YAML (or a recipe's eval section) evaluates")
    p.add_argument("--ngram", type=int, default=DEFAULT_NGRAM, help="word n-gram length (default 13)")
    p.add_argument("--drop", action="store_true",
                   help="build the mixture without the contaminated instances (their examples are re-drawn from "
                        "clean instances of the same task, so the size and the per-task counts stay)")
    p.add_argument("--out", metavar="DIR", help="with --drop: output folder (datasets.load_from_disk)")
    add_json(p, "the report")
    p.set_defaults(func=decontaminate_command, arguments=DecontaminateArgs)


def decontaminate_command(args: DecontaminateArgs) -> int:
    """Run the check, print the report, and with --drop build the decontaminated mixture."""
    from mixtune.errors import ConfigError
    from mixtune.mixtures.decontaminate import decontaminate_plan, decontaminated
    from mixtune.mixtures.decontamination_report import print_report

    if args.drop and not args.out:
        raise ConfigError("--drop needs --out DIR", field="--out", hint="e.g. --drop --out out/clean")
    if args.out and not args.drop:
        raise ConfigError("--out is only used with --drop", field="--out", hint="add --drop")
    from mixtune.mixtures.plan import plan_mixture
    from mixtune.mixtures.spec import load_mixture

    spec = load_mixture(args.mixture, overrides=args.overrides, collection=args.collection)
    eval_spec = None
    if args.eval_spec:
        from mixtune.eval.spec import load_eval_spec

        eval_spec = load_eval_spec(args.eval_spec)
    plan = plan_mixture(spec)
    report = decontaminate_plan(plan, eval_split=args.eval_split, eval_spec=eval_spec, ngram=args.ngram)
    result = report.to_dict()
    if args.drop:
        from mixtune.mixtures.build import build_mixture

        clean = decontaminated(plan, report)
        build_mixture(clean, args.out)
        result["out"] = str(args.out)
        result["replaced_examples"] = clean.redrawn
        result["dropped_examples"] = clean.dropped
        result["total_examples"] = len(clean)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(result)
    return 0
