"""The `mixtune` entry point: subcommands registered, overrides after flags, errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import TINY_RECIPE

from mixtune.cli import build_parser, main

#: The command tree the README and docs/ document (an independent list, not read from the parser).
DOCUMENTED_COMMANDS = [
    ("mixture", "show"), ("mixture", "build"), ("mixture", "decontaminate"), ("mixture", "select"),
    ("train",), ("report",),
    ("eval", "score"), ("eval", "baseline"), ("eval", "compare"), ("eval", "run"),
    ("recipe", "check"), ("recipe", "preview"),
]


@pytest.mark.parametrize("command", DOCUMENTED_COMMANDS, ids=" ".join)
def test_every_subcommand_is_registered(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    """Each documented command parses: its own `--help` exits 0 with its own usage line."""
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: mixtune {' '.join(command)} ")


@pytest.mark.parametrize("argv", [["nosuch"], ["mixture", "nosuch"], ["eval", "nosuch"], ["recipe", "nosuch"]])
def test_unknown_subcommand_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "invalid choice: 'nosuch'" in capsys.readouterr().err


def test_overrides_may_follow_flags(monkeypatch: pytest.MonkeyPatch, repo_root) -> None:
    seen = {}

    def fake_train(args):
        seen["overrides"] = args.overrides
        seen["collection"] = args.collection
        return 0

    parser = build_parser()
    args, extra = parser.parse_known_args(
        ["train", str(TINY_RECIPE), "seed=1", "--collection", "bundled",
         "training.max_steps=3"])
    assert extra == ["training.max_steps=3"]
    monkeypatch.setattr("mixtune.train.cli._train", fake_train)
    # main() folds the trailing overrides back into args.overrides
    import mixtune.cli as cli

    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser, fake_train))
    assert main(["train", "r.yaml", "seed=1", "--collection", "bundled", "training.max_steps=3"]) == 0
    assert seen == {"overrides": ["seed=1", "training.max_steps=3"], "collection": "bundled"}


def _with_func(parser, func):
    for action in parser._subparsers._group_actions:
        action.choices["train"].set_defaults(func=func)
    return parser


def test_unknown_trailing_argument_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["mixture", "show", "x.yaml", "--nope"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --nope" in capsys.readouterr().err


def test_mixtune_error_is_one_line_without_traceback(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseed: 1\ntotal_examples: 10\ntemperature: -1\nsources: []\n")
    proc = subprocess.run([sys.executable, "-m", "mixtune", "mixture", "show", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr and "temperature" in proc.stderr


def test_disk_errors_are_reported_without_traceback(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    import mixtune.cli as cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/out/metrics.json")

    parser = build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser, full))
    assert main(["train", "r.yaml"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "/out/metrics.json" in err and "Traceback" not in err
