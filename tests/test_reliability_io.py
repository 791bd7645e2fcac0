"""Disk full and interruptions in `mixture build` and `eval run`: a clear error, the previous output
intact, no file that looks complete but is not, and a re-run that finishes the job (eval: resuming)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from conftest import REPO

from mixtune.cli import main

MIXTURE = str(REPO / "data_mixtures" / "superni_sample.yaml")
SMALL = ["epochs=null", "total_examples=300"]


def _enospc(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else str(path))


def _fsync_fails_for(monkeypatch: pytest.MonkeyPatch, name_part: str) -> list[str]:
    """os.fsync raises ENOSPC for files whose path contains `name_part` (the data was written, the disk is full)."""
    real = os.fsync
    hits: list[str] = []

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if name_part in target:
            hits.append(target)
            raise _enospc(target)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return hits


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ---- mixture build ----

@pytest.fixture
def built(tmp_path: Path) -> Path:
    out = tmp_path / "mix"
    assert main(["mixture", "build", MIXTURE, "--out", str(out), *SMALL]) == 0
    return out


def _manifest(out: Path) -> dict:
    return json.loads((out / "mixture_manifest.json").read_text())


@pytest.mark.parametrize("where", ["shard-write", "manifest-fsync", "shard-close"])
def test_disk_full_during_mixture_build(built: Path, monkeypatch: pytest.MonkeyPatch, where: str,
                                       capsys: pytest.CaptureFixture) -> None:
    before = _manifest(built)
    rows = datasets.load_from_disk(str(built))["prompt"]
    from datasets.arrow_writer import ArrowWriter

    if where == "shard-write":  # a record batch of the shard is written, then the disk is full
        real_write = ArrowWriter.write_table

        def write_table(self, table, *args, **kwargs):
            real_write(self, table, *args, **kwargs)
            raise _enospc(self._path)

        monkeypatch.setattr(ArrowWriter, "write_table", write_table)
    elif where == "manifest-fsync":
        _fsync_fails_for(monkeypatch, "mixture_manifest.json")
    else:  # the shard's last bytes do not fit when it is closed
        def finalize(self, *args, **kwargs):
            raise _enospc(self._path)

        monkeypatch.setattr(ArrowWriter, "finalize", finalize)
    capsys.readouterr()
    assert main(["mixture", "build", MIXTURE, "--out", str(built), *SMALL, "seed=7"]) == 1
    err = capsys.readouterr().err
    assert "mixtune: error: [Errno 28] No space left on device" in err and "Traceback" not in err
    # the previous build is untouched and nothing half-written is left beside it
    assert _manifest(built) == before
    assert datasets.load_from_disk(str(built))["prompt"] == rows
    assert _leftovers(built.parent) == []
    monkeypatch.undo()
    assert main(["mixture", "build", MIXTURE, "--out", str(built), *SMALL, "seed=7"]) == 0
    assert _manifest(built)["hash"] != before["hash"]


def test_disk_full_on_first_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fsync_fails_for(monkeypatch, "mixture_manifest.json")
    assert main(["mixture", "build", MIXTURE, "--out", str(tmp_path / "mix"), *SMALL]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---- eval run ----


EVAL_ARGS = ["--tasks", "task199_mnli_classification,task288_gigaword_summarization", "--max-instances", "4",
             "--settings", "def_pos2", "--batch-size", "2", "--max-new-tokens", "5", "--max-source-length", "160",
             "--no-baselines"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "full"
    assert main(["eval", "run", str(tiny_llama_dir), "--out", str(out), *EVAL_ARGS]) == 0
    return out


def _metrics(out: Path) -> dict:
    data = json.loads((out / "metrics.json").read_text())
    return {k: data[k] for k in ("overall", "per_category", "per_task")}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.integration
def test_eval_killed_mid_generation_resumes(tiny_llama_dir: Path, uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    script = "\n".join([
        "import os, sys",
        "import mixtune.eval.runner as runner",
        "_call = runner._PartialWriter.__call__",
        "def call(self, indices, texts):",
        "    _call(self, indices, texts)",
        "    self.calls = getattr(self, 'calls', 0) + 1",
        "    if self.calls == 2:",
        "        os._exit(9)  # killed after two batches were written",
        "runner._PartialWriter.__call__ = call",
        "from mixtune.cli import main",
        f"sys.exit(main(['eval', 'run', {str(tiny_llama_dir)!r}, '--out', {str(out)!r}, *{EVAL_ARGS!r}]))",
    ])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr[-2000:]
    assert not (out / "predictions.jsonl").exists() and not (out / "metrics.json").exists()
    partial = list((out / "partial").glob("*.jsonl"))
    assert len(partial) == 1 and len(_lines(partial[0])) == 4
    assert main(["eval", "run", str(tiny_llama_dir), "--out", str(out), *EVAL_ARGS]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["def_pos2"]["reused"] == 4 and metrics["settings"]["def_pos2"]["generated"] == 4
    assert _metrics(out) == _metrics(uninterrupted)
    assert _lines(out / "predictions.jsonl") == _lines(uninterrupted / "predictions.jsonl")


@pytest.mark.integration
@pytest.mark.parametrize("target", ["predictions.jsonl", "metrics.json"])
def test_disk_full_during_eval_outputs(tiny_llama_dir: Path, uninterrupted: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, target: str,
                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval"
    hits = _fsync_fails_for(monkeypatch, f".{target}.")
    capsys.readouterr()
    assert main(["eval", "run", str(tiny_llama_dir), "--out", str(out), *EVAL_ARGS]) == 1
    err = capsys.readouterr().err
    assert "mixtune: error: [Errno 28] No space left on device" in err and target in err and hits
    assert not (out / target).exists() and not (out / "metrics.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(f".{target}")]  # no temporary file left
    if target == "predictions.jsonl":  # generated predictions are kept for the re-run
        assert len(_lines(next((out / "partial").glob("*.jsonl")))) == 8
    monkeypatch.undo()
    assert main(["eval", "run", str(tiny_llama_dir), "--out", str(out), *EVAL_ARGS]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert _metrics(out) == _metrics(uninterrupted)
    if target == "predictions.jsonl":
        assert metrics["settings"]["def_pos2"]["generated"] == 0
