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
    from mixtune.mixtures.decontaminate import add_subcommand

    add_subcommand(sub)  # `mixture decontaminate` (mixtune/mixtures/decontaminate.py)
    sub.choices["decontaminate"].set_defaults(arguments=DecontaminateArgs)
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
