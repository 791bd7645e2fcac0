"""Unusable output folders (issue 12, item 6): an empty or non-folder `output_dir` is refused. (What a killed
`mixture build` leaves beside `--out` is removed by the next build: tests/test_mixture_build.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_RECIPE

from mixtune.cli import main

CAUSAL = str(TINY_RECIPE)

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
