"""What a first run shows on the console: progress throughout, no alarming warnings, the report at the end.

The quickstart recipe runs briefly (two steps, a few instances per held-out task) through the real
`mixtune` command in a subprocess; every stdout/stderr write is timestamped as it arrives (progress bars
redraw with '\r', so both '\r' and '\n' end a piece of output).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

#: the longest the console may stay silent (seconds). Generous because the test machine may be busy; the
#: held-out evaluation of the untrained model below takes several times longer than this on a 2-core CPU,
#: and used to be silent from start to end.
MAX_SILENCE_S = float(os.environ.get("MIXTUNE_TEST_MAX_SILENCE_S", "20"))


def _run_timed(cmd: list[str], cwd: Path, timeout: float) -> tuple[int, list[tuple[float, str]]]:
    """Run `cmd`; return its exit code and (arrival time, text) for each piece of its merged output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "100",
           "PYTHONUNBUFFERED": "1"}  # as on a terminal: each line as it is printed
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pieces: list[tuple[float, str]] = [(time.monotonic(), "<start>")]

    def read() -> None:
        assert proc.stdout is not None
        buffer = b""
        while chunk := proc.stdout.read1(4096):
            buffer += chunk
            *done, buffer = re.split(rb"[\r\n]", buffer)
            now = time.monotonic()
            pieces.extend((now, p.decode("utf-8", "replace")) for p in done if p.strip())
        if buffer.strip():
            pieces.append((time.monotonic(), buffer.decode("utf-8", "replace")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
    pieces.append((time.monotonic(), "<exit>"))
    return code, pieces


@pytest.mark.integration
def test_quickstart_shows_progress_throughout_and_ends_with_the_report(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "quickstart"
    cmd = [sys.executable, "-m", "mixtune", "train", str(repo_root / "recipes" / "quickstart.yaml"),
           "training.max_steps=2", "training.save_steps=2", "training.per_device_batch_size=4",
           "training.logging_steps=1", "eval.settings=[def_pos2]", "eval.max_instances_per_task=6",
           "eval.batch_size=4", "eval.max_new_tokens=16", f"output_dir={out}"]
    code, pieces = _run_timed(cmd, tmp_path, timeout=1200)
    text = "\n".join(p for _, p in pieces)
    assert code == 0, text[-3000:]

    gaps = [(b[0] - a[0], a[1], b[1]) for a, b in itertools.pairwise(pieces)]
    longest = max(gaps)
    assert longest[0] <= MAX_SILENCE_S, f"silent for {longest[0]:.1f} s between {longest[1]!r} and {longest[2]!r}"

    for alarming in ("corrupted", "indexing errors", "LOAD REPORT", "UNEXPECTED", "MISSING", "Traceback"):
        assert alarming not in text, alarming
    # one run header on the console, counting tasks as the README does
    assert re.search(r"run: mixture 'quickstart' .*: 60 tasks × 2 encodings, 5072 examples; world size 1, "
                     r"global batch 4 .*, 2 steps; output " + re.escape(str(out)), text)
    assert "encoder-decoder warm-started" in text  # what was initialised new, in one line
    assert "held-out evaluation at step 0" in text and "held-out evaluation at step 2" in text
    # the end: the overall table with the untrained model and the baselines, then the report's path
    tail = text[text.index("final model:"):]
    assert "before training [def_pos2]" in tail and "copy_demo (baseline)" in tail
    report = out / "heldout_eval" / "step-2" / "report.md"
    assert f"report: {report}" in tail and report.is_file()

    # running the same command again is not an error: it says where the model and the report are
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert again.returncode == 0, again.stderr[-3000:]
    said = again.stdout + again.stderr
    assert "already holds this finished run" in said and str(report) in said
