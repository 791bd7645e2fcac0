"""No lost runs, with real processes and real kills (issue 12): a kill during checkpoint rotation or while
`final/` is written, a second run on the same output_dir, a corrupt or malicious pickle in a checkpoint,
a finished run rerun, and bit-exact resume with dropout (causal and seq2seq, one and two processes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_RECIPE
from safetensors.torch import load_file

from mixtune.train.checkpoint import MARKER

pytestmark = pytest.mark.integration

CAUSAL = str(TINY_RECIPE)
SEQ2SEQ = str(REPO / "recipes" / "tiny_seq2seq.yaml")
FAST = ["training.per_device_batch_size=2", "data.max_length=64", "data.max_source_length=48",
        "training.logging_steps=1"]
SIX = [*FAST, "training.max_steps=6", "training.save_steps=2"]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}


def _train(recipe: str, *args: str, patch: str = "", processes: int = 1) -> subprocess.CompletedProcess:
    """`mixtune train` in a child process (`patch`, Python source, runs first in a single process)."""
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(port), "-m", "mixtune", "train", recipe, *args]
    else:
        script = f"import os, sys\n{patch}\nfrom mixtune.cli import main\nsys.exit(main(sys.argv[1:]))"
        cmd = [sys.executable, "-c", script, "train", recipe, *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=420)


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(got: Path, expected: Path) -> None:
    a, b = _weights(got), _weights(expected)
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def _run_info(out: Path) -> dict:
    return json.loads((out / "final" / "mixtune_run.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 6-step causal run, checkpoints every 2 steps, all kept."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _ok(_train(CAUSAL, f"output_dir={out}", *SIX, "training.save_total_limit=null"))
    return out


# -- 1. a kill during checkpoint rotation ---------------------------------------------------------------

KILL_IN_ROTATION = """
import shutil
from pathlib import Path
_rmtree = shutil.rmtree
def _rmtree_then_die(path, *a, **k):
    path = Path(path)
    if "checkpoint-2" in path.name and path.is_dir():
        {what}
        os._exit(9)
    return _rmtree(path, *a, **k)
shutil.rmtree = _rmtree_then_die
"""
BEFORE_DELETE = KILL_IN_ROTATION.format(what="pass  # killed as checkpoint-2's deletion begins")
HALF_DELETED = KILL_IN_ROTATION.format(
    what="(path / 'model.safetensors').unlink(); (path / 'optimizer.pt').unlink()  # weights gone, marker kept")


@pytest.mark.parametrize("patch", [BEFORE_DELETE, HALF_DELETED], ids=["delete-begins", "half-deleted"])
def test_kill_during_checkpoint_rotation_resumes_from_the_new_checkpoint(reference: Path, tmp_path: Path,
                                                                         patch: str) -> None:
    """save_total_limit=1: killed while checkpoint-2 is deleted for checkpoint-4. Before the fix the
    Trainer deleted it before checkpoint-4 was marked complete (the rerun started fresh, or resumed from the
    half-deleted folder and failed with a raw ValueError)."""
    out = tmp_path / "run"
    done = _train(CAUSAL, f"output_dir={out}", *SIX, "training.save_total_limit=1", patch=patch)
    assert done.returncode == 9, done.stderr[-3000:]
    assert (out / "checkpoint-4" / MARKER).is_file()
    assert not (out / "checkpoint-2").exists()  # out of the checkpoint namespace before any file goes
    rerun = _ok(_train(CAUSAL, f"output_dir={out}", *SIX, "training.save_total_limit=1"))
    assert _run_info(out)["resumed_from"] == str(out / "checkpoint-4"), rerun.stderr[-2000:]
    _assert_same_weights(out / "final", reference / "final")
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-6"]


# -- 3. a kill while final/ is written; rerunning a finished run; resume=never -----------------------------

KILL_IN_FINAL_SAVE = """
import os as _os
_replace = _os.replace
def _replace_then_die(src, dst, *a, **k):
    if str(src).endswith(".final.partial"):
        _os._exit(9)  # final/ is complete in .final.partial, not yet renamed into place
    return _replace(src, dst, *a, **k)
_os.replace = _replace_then_die
"""


def test_kill_during_final_save_then_rerun_writes_final_and_a_finished_run_says_where(reference: Path,
                                                                                       tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [f"output_dir={out}", *SIX, "training.save_total_limit=null"]
    assert _train(CAUSAL, *args, patch=KILL_IN_FINAL_SAVE).returncode == 9
    assert (out / ".final.partial").is_dir() and not (out / "final").exists()
    rerun = _ok(_train(CAUSAL, *args))  # before the fix: exit 2, "checkpoint-6 is already at step 6 of 6"
    assert "writing final/ from it" in rerun.stderr
    assert not (out / ".final.partial").exists()
    _assert_same_weights(out / "final", out / "checkpoint-6")
    _assert_same_weights(out / "final", reference / "final")

    stamp = (out / "final" / "model.safetensors").stat().st_mtime_ns
    again = _ok(_train(CAUSAL, *args))
    assert "already holds this finished run (6 steps)" in again.stderr
    assert f"final model {out / 'final'}" in again.stderr and "resume=never" in again.stderr
    assert (out / "final" / "model.safetensors").stat().st_mtime_ns == stamp

    fresh = _ok(_train(CAUSAL, *args, "resume=never"))
    assert "resume=never: starting over" in fresh.stderr and "deleted 3 checkpoint(s)" in fresh.stderr
    assert _run_info(out)["resumed_from"] is None
    _assert_same_weights(out / "final", reference / "final")


# -- 4. two runs on one output_dir -------------------------------------------------------------------------

HANG_AFTER_CHECKPOINT_2 = """
import time
import mixtune.train.checkpoint as ckpt
_mark = ckpt.mark_complete
def _mark_then_hang(path, state):
    _mark(path, state)
    if state.global_step == 2:
        time.sleep(600)
ckpt.mark_complete = _mark_then_hang
"""


def test_a_second_run_on_the_same_output_dir_is_refused_until_the_first_dies(reference: Path,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [f"output_dir={out}", *SIX, "training.save_total_limit=null"]
    script = f"import os, sys\n{HANG_AFTER_CHECKPOINT_2}\nfrom mixtune.cli import main\nsys.exit(main(sys.argv[1:]))"
    first = subprocess.Popen([sys.executable, "-c", script, "train", CAUSAL, *args], cwd=REPO, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoint-2" / MARKER).exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        second = _train(CAUSAL, *args)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert lines[-1].startswith("mixtune: error: ") and "in use by another training run" in lines[-1]
        assert f"pid {first.pid} on host {socket.gethostname()}" in lines[-1]
        assert not (out / "checkpoint-4").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    _ok(_train(CAUSAL, *args))  # the dead holder's lock is stale: the rerun resumes from checkpoint-2
    assert _run_info(out)["resumed_from"] == str(out / "checkpoint-2")
    _assert_same_weights(out / "final", reference / "final")


# -- 5. a corrupt or malicious pickle in a checkpoint ------------------------------------------------------

class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling would run `touch marker`
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["rng_state.pth", "optimizer.pt", "scheduler.pt"])
def test_malicious_or_corrupt_pickle_in_a_checkpoint_is_a_one_line_error(reference: Path, tmp_path: Path,
                                                                        name: str) -> None:
    import pickle

    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(reference / "checkpoint-2", out / "checkpoint-2")
    marker = tmp_path / "pwned"
    if name == "optimizer.pt":
        (out / "checkpoint-2" / name).write_bytes(b"PK\x03\x04 truncated zip" + os.urandom(64))
    else:
        (out / "checkpoint-2" / name).write_bytes(pickle.dumps(_Payload(marker)))
    done = _train(CAUSAL, f"output_dir={out}", *SIX)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mixtune: error: ") and "Traceback" not in done.stderr
    assert f"checkpoint-2/{name}" in last and "resume=never" in last
    assert "weights_only=False" not in done.stderr  # torch's advice to unpickle
    assert not marker.exists()


# -- 2. bit-exact resume with dropout ------------------------------------------------------------------------

@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
@pytest.mark.parametrize("recipe,extra", [(CAUSAL, ["model.config.attention_dropout=0.1"]), (SEQ2SEQ, [])],
                         ids=["causal", "seq2seq"])
def test_resume_with_dropout_is_bit_exact(tmp_path: Path, recipe: str, extra: list[str], processes: int) -> None:
    """6 steps straight vs the same run resumed from its checkpoint-3 (mid-epoch: the Trainer itself
    restores no RNG state there, as mixtune sets ignore_data_skip). T5 has dropout 0.1 by default."""
    args = [*FAST, *extra, "training.max_steps=6", "training.save_steps=3", "training.save_total_limit=null"]
    straight = tmp_path / "straight"
    _ok(_train(recipe, f"output_dir={straight}", *args, processes=processes))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    _ok(_train(recipe, f"output_dir={resumed}", *args, processes=processes))
    assert _run_info(resumed)["resumed_from"] == str(resumed / "checkpoint-3")
    _assert_same_weights(resumed / "final", straight / "final")


# -- 8. a changed schedule on resume ---------------------------------------------------------------------------

def test_raising_max_steps_on_resume_warns_with_both_schedules_and_keeps_training(tmp_path: Path) -> None:
    """A linear schedule ends at lr 0.0 at step 4. Before the fix, resuming with max_steps=8 said nothing
    and step 5 ran at lr 0.0 (the optimizer's saved value): checkpoint-5 equalled checkpoint-4."""
    out = tmp_path / "run"
    base = [f"output_dir={out}", *FAST, "training.lr_scheduler=linear", "training.save_total_limit=null"]
    _ok(_train(CAUSAL, *base, "training.max_steps=4", "training.save_steps=1"))
    longer = _ok(_train(CAUSAL, *base, "training.max_steps=8", "training.save_steps=1"))
    warning = next(line for line in longer.stderr.splitlines() if "learning-rate schedule changed" in line)
    assert "max_steps 4 -> 8" in warning and "max_steps=4" in warning and "max_steps=8" in warning
    assert "WARNING the learning-rate schedule changed" in (out / "train.log").read_text()
    changed = [n for n, t in _weights(out / "checkpoint-5").items()
               if not torch.equal(t, _weights(out / "checkpoint-4")[n])]
    assert changed, "step 5 did not change the weights (it ran at learning rate 0)"

    shutil.rmtree(out / "final")  # no final/: the checkpoint past max_steps cannot be finished
    shorter = _train(CAUSAL, *base, "training.max_steps=6")
    assert shorter.returncode == 2
    last = shorter.stderr.strip().splitlines()[-1]
    assert "checkpoint-8 is already at step 8, past this run's 6 steps" in last
    assert "resume=never" in last and "raise training.max_steps" not in last
