"""The `mixtune` command: `mixture`, `train`, `report`, `eval` and `recipe` subcommands.

Each subpackage owns its subcommands in its own `cli.py` (a `register(subparsers)` function), built
with the shared helpers of `mixtune.cli_args` (overrides, --collection, --json, -v) and handing its
handler a typed arguments object; heavy libraries (torch, transformers) are imported only inside the
command that needs them. Every command reads `COMMAND FILE [KEY=VALUE ...]`; `-v` goes anywhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from mixtune import __version__
from mixtune.cli_args import add_common_to_all, add_top_flags, command_arguments
from mixtune.distributed import group_size, shutdown
from mixtune.errors import MixtuneError, clip
from mixtune.secrets import install_log_redaction, redact_text

SUBCOMMAND_MODULES = (
    "mixtune.mixtures.cli",
    "mixtune.train.cli",
    "mixtune.eval.cli",
    "mixtune.recipe_cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subpackage's subcommands registered."""
    import importlib

    parser = argparse.ArgumentParser(prog="mixtune", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mixtune {__version__}")
    add_top_flags(parser, top=True)
    # `deepspeed --module mixtune ...` passes --local_rank=N before the subcommand (LOCAL_RANK is in the env)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    add_common_to_all(parser)
    return parser


def parse_arguments(argv: Sequence[str]) -> Any:
    """The typed arguments `main` would hand the command `argv` names (overrides collected)."""
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    return command_arguments(ns, extra, parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse arguments, run the chosen command, print errors as one `mixtune: error:` line
    (with `-v`, after the traceback)."""
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)  # the typed arguments are built below, where errors are reported
    verbose = bool(ns.verbose)
    if ns.reindex:
        os.environ["MIXTUNE_REINDEX"] = "1"  # also reaches the processes a launcher starts from here
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_log_redaction()  # the console too, not only train.log
    try:
        result = ns.func(command_arguments(ns, extra, parser))
    except MixtuneError as e:
        if not getattr(e, "quiet", False):  # a copy of another process's error (mixtune.eval.collective)
            _traceback(e, verbose)
            print(f"mixtune: error: {redact_text(clip(str(e), 2000))}", file=sys.stderr)
        return _failed(2)
    except BrokenPipeError:  # `mixtune ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # disk full, read-only folder, ...: say which file (-v: and where it came from)
        _traceback(e, verbose)
        print(f"mixtune: error: {redact_text(str(e))}", file=sys.stderr)
        return _failed(1)
    except KeyboardInterrupt:
        print("mixtune: interrupted", file=sys.stderr)
        return 130
    shutdown()  # a multi-process job leaves its process group before the interpreter tears it down
    return int(result or 0)


def _traceback(error: BaseException, verbose: bool) -> None:
    """With -v, the error's traceback on stderr (secrets masked, as in the logs)."""
    if verbose:
        sys.stderr.write(redact_text("".join(traceback.format_exception(error))))


def _failed(code: int) -> int:
    """`code`, or -- in one process of several (torch.distributed) -- exit with it at once: a failing
    rank that unwinds its gloo group while a peer leaves too can abort (SIGABRT, "terminate called
    without an active exception") instead of exiting with the error's code. Output is flushed first."""
    if group_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
