"""Leftovers and unusable output folders (issue 12, item 6): what a killed `mixture build` leaves beside
`--out` is removed by the next build of it; an empty or non-folder `output_dir` is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixtune.cli import main

REPO = Path(__file__).resolve().parents[1]
MIXTURE = str(REPO / "data_mixtures" / "superni_sample.yaml")
SMALL = ["--set", "epochs=null", "--set", "total_examples=300"]
CAUSAL = str(REPO / "recipes" / "tiny_causal.yaml")

KILL_WHILE_SAVING = """
import datasets
def _die(self, *a, **k):
    os._exit(9)  # the Arrow staging file is written, the dataset folder is being filled
datasets.Dataset.save_to_disk = _die
"""
KILL_IN_SWAP = """
_real_replace = os.replace
def _replace_then_die(src, dst, *a, **k):
    _real_replace(src, dst, *a, **k)
    if ".old-" in str(dst):
        os._exit(9)  # the previous build was moved aside, the new one not yet moved into place
os.replace = _replace_then_die
"""


def _build(out: Path, patch: str = "") -> subprocess.CompletedProcess:
    script = f"import os, sys\n{patch}\nfrom mixtune.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", script, "mixture", "build", MIXTURE, "--out", str(out), *SMALL],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.integration
def test_next_build_removes_what_killed_builds_left(tmp_path: Path) -> None:
    out = tmp_path / "mix"
    assert _build(out, KILL_WHILE_SAVING).returncode == 9
    left = _hidden(tmp_path)
    assert any(n.endswith(".staging") for n in left) and any(n.endswith(".partial") for n in left), left
    assert _build(out).returncode == 0
    assert _hidden(tmp_path) == [] and (out / "mixture_manifest.json").is_file()

    assert _build(out, KILL_IN_SWAP).returncode == 9
    left = _hidden(tmp_path)
    assert any(n.startswith(".mix.old-") for n in left) and not out.exists(), left  # between the two renames
    done = _build(out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _hidden(tmp_path) == [] and (out / "mixture_manifest.json").is_file()


def test_a_running_builds_staging_folder_is_left_alone(tmp_path: Path) -> None:
    from mixtune.io import remove_leftovers

    mine = tmp_path / f".mix.{os.getppid()}.abc.staging"  # a live process's (our parent's) build
    dead = tmp_path / ".mix.999999999.abc.staging"
    other = tmp_path / ".mixture.1.abc.staging"  # another output's
    for folder in (mine, dead, other):
        folder.mkdir()
    assert remove_leftovers(tmp_path / "mix") == [dead]
    assert mine.is_dir() and other.is_dir()


@pytest.mark.parametrize("value", ["''", "'  '"])
def test_empty_output_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                     value: str) -> None:
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", CAUSAL, f"output_dir={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mixtune: error: ") and "field 'output_dir'" in err and "empty" in err
    assert list(tmp_path.iterdir()) == []  # no train.log in the working directory


def test_output_dir_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "run"
    target.write_text("not a folder")
    capsys.readouterr()
    assert main(["train", CAUSAL, f"output_dir={target}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "field 'output_dir'" in err and "exists and is not a folder" in err
    assert target.read_text() == "not a folder"
