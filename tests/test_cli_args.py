"""One command-line dialect: positional KEY=VALUE overrides for every command (the deprecated --set still
accepted, with a note), typed arguments for every command, -v before or after the subcommand, and
tracebacks with -v."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mixtune.cli import build_parser, main, parse_arguments
from mixtune.cli_args import CommandArgs

REPO = Path(__file__).resolve().parents[1]
SAMPLE = str(REPO / "data_mixtures" / "superni_sample.yaml")
TINY = str(REPO / "recipes" / "tiny_causal.yaml")
SMALL = ["epochs=null", "total_examples=60"]


def _mixtune(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixtune", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _bad_mixture(tmp_path: Path) -> Path:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nseed: 1\ntotal_examples: 10\ntemperature: -1\nsources: []\n")
    return bad


def _show_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict, str]:
    capsys.readouterr()
    assert main(["mixture", "show", SAMPLE, *args, "--json"]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


# ------------------------------------------------------------------------------------------ -v and tracebacks


@pytest.mark.parametrize("where", ["before", "between", "after"])
def test_verbose_anywhere_shows_the_traceback_of_a_mixtune_error(tmp_path: Path, where: str) -> None:
    bad = str(_bad_mixture(tmp_path))
    argv = {"before": ["-v", "mixture", "show", bad], "between": ["mixture", "-v", "show", bad],
            "after": ["mixture", "show", bad, "-v"]}[where]
    proc = _mixtune(*argv)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr and "ConfigError" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mixtune: error: ") and "temperature" in last


def test_without_verbose_an_error_is_one_line(tmp_path: Path) -> None:
    proc = _mixtune("mixture", "show", str(_bad_mixture(tmp_path)))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "mixtune: error:" in line] == \
        [proc.stderr.strip().splitlines()[-1]]


def test_verbose_shows_where_a_library_io_error_came_from(tmp_path: Path) -> None:
    """A real OSError from deep inside the build (a file where the output's parent folder should be):
    one `mixtune: error:` line and exit 1 either way; with -v the traceback down to the failing call."""
    (tmp_path / "afile").write_text("not a folder")
    out = str(tmp_path / "afile" / "built")
    quiet = _mixtune("mixture", "build", SAMPLE, *SMALL, "--out", out)
    assert quiet.returncode == 1
    assert "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines()[-1].startswith("mixtune: error: [Errno")
    loud = _mixtune("mixture", "build", SAMPLE, *SMALL, "--out", out, "-v")
    assert loud.returncode == 1
    assert "Traceback (most recent call last)" in loud.stderr
    assert re.search(r"(FileExistsError|NotADirectoryError)", loud.stderr)
    assert "mkdir" in loud.stderr  # the frame that failed, not only the message
    assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "afile").is_dir()


# ------------------------------------------------------------------------------------------ positional overrides


def test_mixture_show_takes_positional_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    from mixtune.mixtures.plan import plan_mixture
    from mixtune.mixtures.spec import load_mixture

    default, _ = _show_json(capsys)
    shown, err = _show_json(capsys, "seed=7", "epochs=1")
    assert "deprecated" not in err
    expected = plan_mixture(load_mixture(SAMPLE, overrides=["seed=7", "epochs=1"])).summary()
    assert shown["seed"] == 7 != default["seed"]
    assert (shown["hash"], shown["total_examples"]) == (expected["hash"], expected["total_examples"])
    assert shown["total_examples"] < default["total_examples"]  # epochs 1 instead of the file's 2
    # overrides may also follow the flags
    capsys.readouterr()
    assert main(["mixture", "show", SAMPLE, "--json", "seed=7", "epochs=1"]) == 0
    assert json.loads(capsys.readouterr().out)["hash"] == expected["hash"]


def test_deprecated_set_still_works_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    positional, _ = _show_json(capsys, "seed=7", "epochs=1")
    legacy, err = _show_json(capsys, "--set", "seed=7", "--set", "epochs=1")
    assert legacy == positional
    notes = [line for line in err.splitlines() if "deprecated" in line]
    assert len(notes) == 1
    assert notes[0].startswith("mixtune: note: --set") and "seed=7 epochs=1 after MIXTURE" in notes[0]


def test_recipe_check_takes_positional_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    for steps in (3, 5):
        capsys.readouterr()
        assert main(["recipe", "check", TINY, f"training.max_steps={steps}"]) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith("OK") and f", {steps} steps of " in line
    # a bad override fails the check, naming the override
    assert main(["recipe", "check", TINY, "training.max_stepz=3", "--no-plan"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL") and "training.max_stepz=3" in out


def test_eval_run_overrides_reach_the_eval_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The spec is built and its tasks resolved before any model loads: an override naming a task the
    collection lacks must fail there, and a misspelt spec key must be named as the override."""
    out = str(tmp_path / "eval")
    assert main(["eval", "run", str(tmp_path), "tasks=[task_nobody_has]", "--collection", "bundled",
                 "--out", out]) == 2
    assert "unknown task 'task_nobody_has'" in capsys.readouterr().err
    assert main(["eval", "run", str(tmp_path), "--out", out, "max_new_tokenz=4"]) == 2
    assert "command-line override 'max_new_tokenz=4'" in capsys.readouterr().err
    args = parse_arguments(["eval", "run", str(tmp_path), "max_new_tokens=4", "--out", out, "seed=3"])
    assert args.overrides == ["max_new_tokens=4", "seed=3"]


# ------------------------------------------------------------------------------------------ what is not an override


def test_a_file_named_like_an_override_is_refused_not_guessed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "seed=1").write_text(Path(TINY).read_text())
    monkeypatch.chdir(tmp_path)
    assert main(["recipe", "check", "seed=1", "--no-plan"]) == 2
    assert capsys.readouterr().err == ("mixtune: error: 'seed=1' is both an existing file and a KEY=VALUE "
                                       "override (write ./seed=1 to mean the file, or rename the file)\n")
    assert main(["recipe", "check", TINY, "--no-plan", "seed=1"]) == 2  # after a flag too
    assert "'seed=1' is both an existing file" in capsys.readouterr().err
    assert main(["recipe", "check", "./seed=1", "--no-plan"]) == 0
    assert capsys.readouterr().out.startswith("OK    ./seed=1:")


@pytest.mark.parametrize(("argv", "message"), [
    (["mixture", "show", "seed=7"], "'seed=7' is a KEY=VALUE override where the MIXTURE belongs"),
    (["mixture", "show", SAMPLE, "other.yaml"], "'other.yaml' is not a KEY=VALUE override"),
    (["mixture", "show", SAMPLE, "runs/a=b"], "'runs/a=b' is not a KEY=VALUE override"),
    (["recipe", "check", "training.epochs=2"], "no RECIPE given"),
    (["train", TINY, "other.yaml", "--print-launch"], "'other.yaml' is not a KEY=VALUE override"),
])
def test_misplaced_arguments_are_clear_errors(argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixtune: error: ") and message in err and err.count("\n") == 1


def test_a_path_with_an_equals_sign_is_the_file_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "lr=1e-4"
    folder.mkdir()
    (folder / "r.yaml").write_text(Path(TINY).read_text())
    assert main(["train", str(folder / "r.yaml"), "training.max_steps=2", "--print-launch"]) == 0
    assert capsys.readouterr().out.strip() == f"mixtune train {folder / 'r.yaml'} training.max_steps=2"


# ------------------------------------------------------------------------------------------ typed arguments


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaf_parsers(sub, (*path, name))


def test_every_command_has_typed_arguments_and_verbose() -> None:
    """Each command's handler gets a dataclass whose fields are exactly options the parser defines."""
    leaves = dict(_leaf_parsers(build_parser()))
    assert {" ".join(p) for p in leaves} >= {"train", "report", "mixture show", "mixture build",
                                              "mixture decontaminate", "mixture select", "eval score",
                                              "eval baseline", "eval compare", "eval run", "recipe check",
                                              "recipe preview"}
    for path, parser in leaves.items():
        kind = parser.get_default("arguments")
        assert isinstance(kind, type) and issubclass(kind, CommandArgs), path
        dests = {a.dest for a in parser._actions} | {"overrides"}
        missing = {f.name for f in dataclasses.fields(kind)} - dests
        assert not missing, (path, missing)
        assert any("-v" in a.option_strings for a in parser._actions), path


def test_parsed_arguments_are_typed_objects(tmp_path: Path) -> None:
    from mixtune.eval.cli import EvalRunArgs
    from mixtune.train.cli import TrainArgs

    train = parse_arguments(["train", TINY, "seed=1", "--collection", "bundled", "training.max_steps=3", "-v"])
    assert isinstance(train, TrainArgs) and train.verbose is True
    assert (train.recipe, train.overrides, train.collection) == (TINY, ["seed=1", "training.max_steps=3"], "bundled")
    run = parse_arguments(["eval", "run", str(tmp_path), "--out", "o", "--max-new-tokens", "9", "--no-baselines"])
    assert isinstance(run, EvalRunArgs) and run.verbose is False
    assert (run.model_dir, run.max_new_tokens, run.no_baselines, run.overrides) == (str(tmp_path), 9, True, [])
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.out = "elsewhere"  # type: ignore[misc]
