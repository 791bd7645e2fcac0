"""`mixtune.train.run_log`: train.log has one writer and one format, and the handler lives only as long as the run."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from mixtune.train.run_log import NOTES, note, run_log

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING) ")


def _handlers() -> int:
    import transformers

    loggers = [logging.getLogger(NOTES), logging.getLogger("mixtune"),
               transformers.utils.logging.get_logger("transformers")]
    return sum(isinstance(h, logging.FileHandler) for lg in loggers for h in lg.handlers)


def test_notes_and_log_records_share_one_format(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import transformers

    path = tmp_path / "train.log"
    before = _handlers()
    with run_log(path):
        note('step 3: {"loss": 1.5}')
        logging.getLogger("mixtune.train.somewhere").warning("the schedule changed")
        transformers.utils.logging.get_logger("transformers.trainer").warning("a transformers warning")
    note("after the run")  # the handler is gone: not written
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(LINE.match(line) for line in lines), lines
    assert lines[0].endswith('INFO step 3: {"loss": 1.5}')
    assert lines[1].endswith("WARNING the schedule changed")
    assert lines[2].endswith("WARNING a transformers warning")
    assert "step 3" not in capsys.readouterr().err  # notes go to the file only
    assert _handlers() == before


def test_handler_is_removed_when_the_run_fails(tmp_path: Path) -> None:
    before = _handlers()
    with pytest.raises(RuntimeError), run_log(tmp_path / "train.log"):
        note("started")
        raise RuntimeError("training failed")
    assert _handlers() == before
    assert (tmp_path / "train.log").read_text().count("\n") == 1


def test_disabled_writes_nothing(tmp_path: Path) -> None:
    with run_log(tmp_path / "train.log", enabled=False):
        note("on another process")
    assert not (tmp_path / "train.log").exists()
