"""`build_mixture` and the `mixtune mixture show|build` commands, on the bundled sample."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pyarrow as pa
import pytest

import mixtune.mixtures.build as build
from mixtune.cli import main
from mixtune.encodings import encode_prompt, pick_reference
from mixtune.errors import DataError
from mixtune.io import remove_stale_siblings
from mixtune.mixtures import COLUMNS, build_mixture, load_mixture, plan_mixture
from mixtune.mixtures.sampler import position_seed

GOLDEN = Path(__file__).parent / "golden" / "mixture_build_sha256.json"
#: Built with the shipped mixtures in tests/golden/mixture_build_sha256.json: every per-example choice at once.
VARIANTS = """
name: variants
seed: 11
total_examples: 1500
temperature: 2.0
max_instances_per_task: 30
sources:
  - name: tk
    path: bundled
    split: default
    missing_tasks: skip
    encoding: {tk_instruct: true}
  - name: full
    path: bundled
    split: default
    missing_tasks: skip
    encoding: {task_name: true, definition: true, pos_examples: 3, neg_examples: 2, explanation: true}
  - name: pos
    path: bundled
    split: default
    missing_tasks: skip
    encoding: {definition: false, pos_examples: 1}
"""

MIX = """
name: small
seed: 5
total_examples: 400
temperature: 2.0
max_instances_per_task: 20
sources:
  - name: superni
    path: {path}
    split: default
    missing_tasks: skip
    encoding: {{pos_examples: 2}}
"""


def _mixture(tmp_path, path="bundled"):
    file = tmp_path / "small.yaml"
    file.write_text(MIX.format(path=path))
    return file


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_build_is_byte_for_byte_reproducible(tmp_path):
    mixture = _mixture(tmp_path)
    one = build_mixture(plan_mixture(load_mixture(mixture)), tmp_path / "one")
    two = build_mixture(plan_mixture(load_mixture(mixture)), tmp_path / "two")
    files = _files(one)
    assert {"state.json", "dataset_info.json", "mixture_manifest.json"} <= set(files)
    assert files == _files(two)
    other = build_mixture(plan_mixture(load_mixture(mixture, overrides=["seed=6"])), tmp_path / "other")
    ds, ds_other = datasets.load_from_disk(str(one)), datasets.load_from_disk(str(other))
    assert ds.column_names == list(COLUMNS) and len(ds) == 400
    assert ds["task"] != ds_other["task"]
    assert sorted(ds["task"]) == sorted(ds_other["task"])  # same realised counts, another order
    plan = plan_mixture(load_mixture(mixture))
    assert ds.to_list() == list(plan.iter_examples())
    manifest = json.loads(files["mixture_manifest.json"])
    assert manifest["hash"] == plan.hash and manifest["total_examples"] == 400
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or partial folders


def test_failure_leaves_no_output_folder(tmp_path):
    collection = tmp_path / "superni"
    shutil.copytree(_bundled(), collection)
    cache = tmp_path / "cache"
    plan = plan_mixture(load_mixture(_mixture(tmp_path, path=str(collection))), cache_dir=str(cache))
    # after planning, one task file turns into bad JSON and its cached instances are gone
    victim = plan.tasks[len(plan.tasks) // 2].name
    (collection / "tasks" / f"{victim}.json").write_text('{"Definition": ["x"], "Instances": [')
    shutil.rmtree(cache)
    out = tmp_path / "out"
    with pytest.raises(DataError):
        build_mixture(plan, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or partial folders


def _bundled():
    from mixtune.tasks.collection import bundled_path

    return bundled_path()


def test_show_json_schema(tmp_path, capsys):
    assert main(["mixture", "show", str(_mixture(tmp_path)), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total_examples"] == 400 and len(summary["hash"]) == 16
    task_keys = {"name", "source", "category", "num_instances", "cap", "rate", "expected_examples"}
    assert all(task_keys <= set(t) for t in summary["tasks"])
    assert sum(t["rate"] for t in summary["tasks"]) == pytest.approx(1.0)
    assert sum(t["realised_examples"] for t in summary["tasks"]) == 400
    assert all(t["cap"] == 20 for t in summary["tasks"])
    assert {g["name"] for g in summary["sources"]} == {"superni"}
    assert sum(g["expected_examples"] for g in summary["categories"]) == pytest.approx(400)


def test_show_table_and_plot(tmp_path, capsys):
    png = tmp_path / "rates.png"
    assert main(["mixture", "show", str(_mixture(tmp_path)), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "mixture hash" in out and "per category" in out and "per source" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_table_never_cuts_a_task_name_in_a_narrow_pipe(repo_root):
    mixture = str(repo_root / "data_mixtures" / "quickstart.yaml")
    env = {**os.environ, "COLUMNS": "80"}
    shown = subprocess.run([sys.executable, "-m", "mixtune", "mixture", "show", mixture], capture_output=True,
                           text=True, timeout=300, env=env, check=True).stdout
    as_json = subprocess.run([sys.executable, "-m", "mixtune", "mixture", "show", mixture, "--json"],
                             capture_output=True, text=True, timeout=300, env=env, check=True).stdout
    names = {t["name"] for t in json.loads(as_json)["tasks"]}
    assert "…" not in shown and len(names) == 60
    assert all(f"│ {name} " in shown for name in names)
    assert "mixture 'quickstart': 60 tasks × 2 encodings, 5072 examples" in shown  # not "120 tasks"


@pytest.mark.integration
def test_cli_build_and_collection_flag_in_a_real_process(tmp_path, repo_root):
    out = tmp_path / "built"
    copy = tmp_path / "copy"
    shutil.copytree(_bundled(), copy)
    run = subprocess.run([sys.executable, "-m", "mixtune", "mixture", "build",
                          str(repo_root / "data_mixtures" / "temperature_nested.yaml"), "--out", str(out),
                          "--collection", str(copy)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 3000 and set(ds["source"]) == {"superni", "classification/superni"}
    # the default-split mixture on the sample: the split names tasks the sample lacks -> exit 2, clear error
    bad = subprocess.run([sys.executable, "-m", "mixtune", "mixture", "show",
                          str(repo_root / "data_mixtures" / "superni_default.yaml"), "--collection", "bundled"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "missing_tasks" in bad.stderr and "superni_default.yaml" in bad.stderr


def test_build_error_leaves_no_out_folder_via_cli(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MIX.format(path="bundled").replace("split: default\n", ""))  # would train on test tasks
    out = tmp_path / "out"
    assert main(["mixture", "build", str(bad), "--out", str(out)]) == 2
    assert not out.exists()


# ---- streaming build: the same files as before, any size, atomic under a kill ----

def shipped_mixture_yaml(name: str, folder: Path, repo_root: Path) -> Path:
    """A shipped mixture made buildable on the bundled sample (`path: bundled`, `missing_tasks: skip`),
    or VARIANTS; the golden hashes were made from exactly these files."""
    if name == "variants":
        text = VARIANTS
    else:
        text = (repo_root / "data_mixtures" / f"{name}.yaml").read_text()
        text = text.replace("missing_tasks: error", "missing_tasks: skip").replace(
            "path: natural-instructions", "path: bundled")
    file = folder / f"{name}.yaml"
    file.write_text(text)
    for sub in (repo_root / "data_mixtures").glob("*_sub.yaml"):  # nested mixtures are found beside it
        shutil.copy(sub, folder / sub.name)
    return file


def _sha256(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_streaming_build_writes_the_files_of_the_pre_streaming_build(tmp_path, repo_root):
    """Shipped mixtures (and VARIANTS: tk_instruct, negatives, explanations, several references) give the
    sha256 of every file that the pre-streaming build (commit 020360078bca) wrote for them."""
    golden = json.loads(GOLDEN.read_text())
    made_with = {"datasets": datasets.__version__, "pyarrow": pa.__version__}
    if golden["made_with"] != made_with:  # the Arrow/JSON bytes of another version may differ
        pytest.skip(f"golden hashes made with {golden['made_with']}, running {made_with}")
    # every shipped mixture that the pre-streaming build could build (staged and online mixtures came later)
    shipped = {p.stem for p in (repo_root / "data_mixtures").glob("*.yaml")
               if not re.search(r"^(stages|mixing):", p.read_text(), re.MULTILINE)}
    assert set(golden["mixtures"]) >= shipped
    for name, files in golden["mixtures"].items():
        out = build_mixture(plan_mixture(load_mixture(shipped_mixture_yaml(name, tmp_path, repo_root))),
                            tmp_path / f"out-{name}")
        assert _sha256(out) == files, name


def _reference_build(plan, out: Path) -> None:
    """The pre-streaming build (build.py up to commit 020360078bca): every example formatted on its own
    (encode_prompt, pick_reference), an Arrow staging file of 16,384-example batches, memory-mapped, then
    `Dataset.save_to_disk`."""
    records = []
    for p in range(len(plan)):
        task = plan.tasks[int(plan.index.task_ids[p])]
        instance = task.table().slice(int(plan.index.rows[p]), 1).to_pylist()[0]
        seed = position_seed(plan.seed ^ 0x656E63, p) if task.encoding.tk_instruct else None
        records.append({"prompt": encode_prompt(task.info, instance["input"], task.encoding, seed=seed),
                        "completion": pick_reference(instance["output"], position_seed(plan.seed, p)),
                        "task": task.name, "category": task.category, "source": task.source, "position": p,
                        "instance_id": instance["id"], "references": instance["output"]})
    staging = out.parent / f"{out.name}.staging.arrow"
    with pa.OSFile(str(staging), "wb") as sink, pa.ipc.new_stream(sink, build.EXAMPLE_SCHEMA) as writer:
        for lo in range(0, len(records), 16384):
            writer.write_batch(pa.RecordBatch.from_pylist(records[lo:lo + 16384], schema=build.EXAMPLE_SCHEMA))
    table = datasets.table.MemoryMappedTable.from_file(str(staging))
    info = datasets.DatasetInfo(description=f"mixtune mixture {plan.spec.name!r} (hash {plan.hash})")
    datasets.Dataset(table, info=info, fingerprint=f"mixtune-{plan.hash}").save_to_disk(str(out))
    (out / build.MANIFEST).write_text(json.dumps(plan.summary(), indent=2) + "\n")


def test_streaming_build_equals_the_pre_streaming_build_beyond_one_chunk(tmp_path, repo_root, monkeypatch):
    """40,000 examples (record batches across staging batches, one shard): the same bytes as before, in
    chunks of any size."""
    mixture = shipped_mixture_yaml("variants", tmp_path, repo_root)
    plan = plan_mixture(load_mixture(mixture, overrides=["total_examples=40000"]))
    _reference_build(plan, tmp_path / "reference")
    built = build_mixture(plan, tmp_path / "built")
    assert _sha256(built) == _sha256(tmp_path / "reference")
    for chunk_bytes in (1, 7_000_000):  # chunks of 1,000 examples; ~5,000, across staging batches
        monkeypatch.setattr(build, "CHUNK_BYTES", chunk_bytes)
        assert _sha256(build_mixture(plan, tmp_path / f"built-{chunk_bytes}")) == _sha256(built)


def test_large_builds_are_sharded_where_the_examples_say(tmp_path, monkeypatch):
    plan = plan_mixture(load_mixture(_mixture(tmp_path)))  # 400 examples
    plan.index = type(plan.index)(task_ids=plan.index.task_ids.repeat(10), rows=plan.index.rows.repeat(10))
    one = build_mixture(plan, tmp_path / "one")
    sharded = build_mixture(plan, tmp_path / "sharded", shard_bytes=600_000)
    again = build_mixture(plan, tmp_path / "again", shard_bytes=600_000)
    monkeypatch.setattr(build, "STAGING_ROWS", 1000)  # other chunks: other buffer padding, same shards
    rechunked = build_mixture(plan, tmp_path / "rechunked", shard_bytes=600_000)
    names = sorted(p.name for p in sharded.glob("data-*.arrow"))
    assert len(names) > 2 and names == [f"data-{i:05d}-of-{len(names):05d}.arrow" for i in range(len(names))]
    assert _sha256(sharded) == _sha256(again)

    def shard_rows(folder):
        return [sum(b.num_rows for b in pa.ipc.open_stream(str(folder / n))) for n in names]

    assert shard_rows(sharded) == shard_rows(rechunked)
    whole = datasets.load_from_disk(str(one))
    for folder in (sharded, rechunked):
        shards = datasets.load_from_disk(str(folder))
        assert len(shards) == 4000 and shards.to_list() == whole.to_list()
    assert datasets.load_from_disk(str(sharded))[1234]["position"] == 1234
    # whole record batches of 1,000 rows in every shard; every shard but the last reached the size
    for name in names:
        batches = list(pa.ipc.open_stream(str(sharded / name)))
        assert all(b.num_rows == 1000 for b in batches[:-1])
        text = sum(pa.compute.sum(pa.compute.binary_length(b.column(c))).as_py()
                   for b in batches for c in build.SIZED_COLUMNS) + 8 * sum(b.num_rows for b in batches)
        assert text >= 600_000 or name == names[-1]


_KILLED_BUILD = """
import sys, time
from pathlib import Path
from mixtune.mixtures import build, load_mixture, plan_mixture

mixture, out, signal_file = sys.argv[1:]
plan = plan_mixture(load_mixture(mixture, overrides=["epochs=null", "total_examples=40000"]))
build.CHUNK_BYTES = 1  # chunks of 1,000 examples
tables = plan.iter_tables

def slow(*args, **kwargs):
    for i, table in enumerate(tables(*args, **kwargs)):
        yield table
        if i == 20:  # the first 16,384 examples are written into the new output's temporary folder
            Path(signal_file).write_text("writing")
            time.sleep(120)

plan.iter_tables = slow
build.build_mixture(plan, out)
"""


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.integration
def test_killed_build_keeps_the_old_output_and_the_next_build_clears_its_leftovers(tmp_path, repo_root):
    mixture = shipped_mixture_yaml("superni_sample", tmp_path, repo_root)
    out = tmp_path / "out" / "mix"
    assert main(["mixture", "build", str(mixture), "--out", str(out), "seed=1"]) == 0
    before, rows = _sha256(out), datasets.load_from_disk(str(out))["prompt"]
    signal_file = tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(mixture), str(out), str(signal_file)])
    deadline = time.monotonic() + 240
    while not signal_file.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert signal_file.exists(), "the build did not reach its 21st chunk"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert _sha256(out) == before and datasets.load_from_disk(str(out))["prompt"] == rows
    partial = _leftovers(out.parent)
    assert partial == [p for p in partial if p.startswith(f".mix.{child.pid}-") and p.endswith(".partial")]
    assert len(partial) == 1 and list((out.parent / partial[0]).glob("shard-*.arrow.tmp"))
    # the next build of the same --out removes them (a real process, as a user runs it)
    run = subprocess.run([sys.executable, "-m", "mixtune", "mixture", "build", str(mixture), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert _leftovers(out.parent) == []
    assert json.loads((out / "mixture_manifest.json").read_text())["seed"] == 1234


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_dead_writers_are_removed_and_a_previous_output_is_put_back(tmp_path):
    out = tmp_path / "mix"
    dead = _dead_pid()
    old = tmp_path / f".mix.old-{dead}"  # a build killed between its two renames: no `mix`, the old one aside
    old.mkdir()
    (old / "state.json").write_text("{}")
    stale = [tmp_path / f".mix.{dead}-abcd1234.partial", tmp_path / ".mix.k2j4h5g6.staging",
             tmp_path / ".mix.x9y8z7w6.partial"]  # the last two: names of earlier versions (no pid)
    live = [tmp_path / f".mix.{os.getpid()}-abcd1234.partial", tmp_path / f".mix.old-{os.getpid()}"]
    others = [tmp_path / f".mix2.{dead}-abcd1234.partial", tmp_path / f".mix.v2.{dead}-abcd1234.partial"]
    for folder in stale + live + others:
        folder.mkdir()
    removed = remove_stale_siblings(out)
    assert sorted(removed) == sorted(stale)
    assert (out / "state.json").read_text() == "{}" and not old.exists()
    assert all(p.exists() for p in live + others) and not any(p.exists() for p in stale)
    # with `mix` present, a dead writer's previous output is simply removed
    old.mkdir()
    assert remove_stale_siblings(out) == [old] and not old.exists()
