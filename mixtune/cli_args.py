"""What every `mixtune` command line shares: the argument helpers each command module uses, the
`KEY=VALUE` override rules, and typed arguments built from argparse's Namespace in one place.

Overrides are positional everywhere: `mixtune COMMAND FILE [KEY=VALUE ...]` (torchtune's convention).
An argument is an override when it reads `key=value` or `section.key=value` (a key of letters, digits,
`_` and `-`, sections joined by dots, then `=`); anything else (`runs/a=b`, `./seed=7`) is a path.
`recipe check`, which takes several recipes, refuses an argument that is both an override and an
existing file instead of guessing. `--set KEY=VALUE` is the old spelling of `mixture`, `eval run` and
`recipe check`: still accepted, with a deprecation note, until the next release.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from mixtune.errors import ConfigError

#: `key=value` or `a.b.c=value`: the shape of an override (what precedes the first `=`)
OVERRIDE_KEY = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")

COLLECTION_HELP = "use this SuperNI folder (or `bundled`) as the path of every superni source of the mixture"
DEPRECATED_SET = "--set KEY=VALUE is deprecated and will be removed in the next release"

# Namespace attributes the helpers set for `command_arguments` (not user-visible)
_TARGET = "_overrides_follow"  # dest of the positional the overrides follow
_SET = "_set_overrides"  # the deprecated --set ones
_NAME = "_overrides_follow_name"  # what errors call that positional (RECIPE, MIXTURE, MODEL_DIR)


# ------------------------------------------------------------------------------------------ argument helpers


VERBOSE_HELP = "debug logging, and a traceback with each error (also after the subcommand)"
REINDEX_HELP = ("read every task file again instead of trusting the task cache (which re-reads a file only when "
                "its size or modification time changed)")


def add_top_flags(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """`-v/--verbose` and `--reindex` on `parser`. On a subcommand (`top=False`) they default to unset, so a
    flag given before the subcommand is not overwritten by the subcommand's default."""
    default: Any = False if top else argparse.SUPPRESS
    names = {o for a in parser._actions for o in a.option_strings}
    if "-v" not in names:
        parser.add_argument("-v", "--verbose", action="store_true", default=default, help=VERBOSE_HELP)
    if "--reindex" not in names:
        parser.add_argument("--reindex", action="store_true", default=default, help=REINDEX_HELP)


def add_collection(parser: Any, help: str = COLLECTION_HELP, *, default: str | None = None) -> None:
    """`--collection PATH` (a parser or an argument group)."""
    parser.add_argument("--collection", metavar="PATH", default=default,
                        help=help + (f" (default: {default})" if default else ""))


def add_json(parser: Any, what: str = "the summary") -> None:
    """`--json`: print `what` as JSON on stdout instead of a table."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON instead of a table")


def add_overrides(parser: argparse.ArgumentParser, follows: str, *, what: str, example: str,
                  positional: bool = True, legacy_set: bool = False, name: str | None = None) -> None:
    """Positional `KEY=VALUE ...` after the positional `follows` (the file or folder argument). With
    `positional=False` the overrides are picked out of `follows`'s own list (a command taking several
    files: `recipe check RECIPE... [KEY=VALUE ...]`). `legacy_set`: accept the deprecated `--set KEY=VALUE`
    too (the commands that had it). `name`: how errors call `follows` (default: its upper-case dest)."""
    text = f"override {what}, e.g. {example} (values read as YAML; sections joined by dots)"
    if positional:
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=text)
    else:
        parser.set_defaults(overrides=[])
    if legacy_set:
        parser.add_argument("--set", dest=_SET, action="append", default=[], metavar="KEY=VALUE",
                            help=argparse.SUPPRESS)  # deprecated: KEY=VALUE after the file instead
    parser.set_defaults(**{_TARGET: follows, _NAME: name or follows.upper()})


def add_common_to_all(parser: argparse.ArgumentParser) -> None:
    """`-v` and `--reindex` on `parser` and every subcommand parser below it, so that they work before or
    after a subcommand."""
    add_top_flags(parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                add_common_to_all(sub)


# ------------------------------------------------------------------------------------------ overrides


def is_override(text: str) -> bool:
    """Whether `text` has the shape of a `key=value` override."""
    return bool(OVERRIDE_KEY.match(text))


def collect_overrides(ns: argparse.Namespace, extra: Iterable[str]) -> list[str]:
    """Gather the command's overrides into `ns.overrides`: the deprecated --set ones (with a note on
    stderr), the positional ones, and those argparse left over because they followed a flag
    (`train R --collection X a.b=1`). Returns the leftovers that are not overrides (unknown flags).
    A positional that is neither an override nor where a file belongs is a ConfigError."""
    target = getattr(ns, _TARGET, None)
    extra = list(extra)
    if target is None:
        return extra
    leftover = [e for e in extra if e.startswith("-") or not is_override(e)]
    trailing = [e for e in extra if e not in leftover]
    name = getattr(ns, _NAME)
    legacy = list(getattr(ns, _SET, []))
    if legacy:
        print(f"mixtune: note: {DEPRECATED_SET}: write {' '.join(legacy)} after {name} instead",
              file=sys.stderr)
    files = getattr(ns, target)
    if isinstance(files, list):  # several files, overrides among them
        paths = [f for f in files if not is_override(f)]
        given = [f for f in files if is_override(f)]
        for text in [*given, *trailing]:
            if Path(text).exists():
                raise ConfigError(f"{text!r} is both an existing file and a KEY=VALUE override",
                                  hint=f"write ./{text} to mean the file, or rename the file")
        if not paths:
            raise ConfigError(f"no {name} given, only KEY=VALUE overrides ({' '.join(given)})",
                              hint=f"give the {name} first, then KEY=VALUE")
        setattr(ns, target, paths)
        positional = given
    else:
        if is_override(files) and not Path(files).exists():
            raise ConfigError(f"{files!r} is a KEY=VALUE override where the {name} belongs",
                              hint=f"give the {name} first, then KEY=VALUE")
        positional = list(ns.overrides)
        for text in positional:
            if not is_override(text):
                raise ConfigError(f"{text!r} is not a KEY=VALUE override, and the command takes one "
                                  f"{name}", hint="an override reads key=value or section.key=value, "
                                  "e.g. seed=7 or training.learning_rate=1e-4")
    ns.overrides = [*legacy, *positional, *trailing]
    return leftover


# ------------------------------------------------------------------------------------------ typed arguments

A = TypeVar("A", bound="CommandArgs")


@dataclass(frozen=True, kw_only=True)
class CommandArgs:
    """Base of each command's typed arguments (one dataclass per command, beside its handler)."""

    verbose: bool = False

    @classmethod
    def from_namespace(cls: type[A], ns: argparse.Namespace) -> A:
        """The dataclass's fields read from the parsed Namespace (a missing one is a programming error)."""
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if f.name != "verbose"},
                   verbose=bool(getattr(ns, "verbose", False)))


def command_arguments(ns: argparse.Namespace, extra: Iterable[str],
                      parser: argparse.ArgumentParser) -> Any:
    """The chosen command's typed arguments (its `arguments` dataclass; the Namespace for a command
    without one), overrides collected; an unknown flag is a usage error (exit 2)."""
    leftover = collect_overrides(ns, extra)
    if leftover:
        parser.error(f"unrecognized arguments: {' '.join(leftover)}")
    kind = getattr(ns, "arguments", None)
    return kind.from_namespace(ns) if kind is not None else ns
