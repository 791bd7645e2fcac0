"""SuperNI collections: the bundled sample, headers, instance round trip, cache reuse and re-indexing."""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pytest

from mixtune.errors import DataError
from mixtune.tasks import (
    INSTANCE_SCHEMA,
    Demonstration,
    Instance,
    SuperNICollection,
    bundled_path,
    open_collection,
    resolve_collection_path,
)

TASK = "task020_mctaco_span_based_question"
OLD = time.time() - 3600  # an mtime well before any indexing (outside the re-check window)


def _copy_sample(bundled: Path, dest: Path, names: list[str]) -> Path:
    (dest / "tasks").mkdir(parents=True)
    for n in names:
        shutil.copy(bundled / "tasks" / f"{n}.json", dest / "tasks" / f"{n}.json")
        os.utime(dest / "tasks" / f"{n}.json", (OLD, OLD))
    shutil.copytree(bundled / "splits", dest / "splits")
    return dest


def _cache_files(root: Path) -> dict[str, tuple[int, int]]:
    """Cached data files and their (inode, mtime): an atomic rewrite changes the inode even within one mtime
    tick (lock files, touched by every open, are not data)."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and p.suffix != ".lock"}


def test_bundled_path_is_package_data(bundled_dir: Path) -> None:
    assert bundled_path() == bundled_dir.resolve()
    assert Path(str(importlib.resources.files("mixtune") / "data" / "superni")).resolve() == bundled_path()
    assert resolve_collection_path("bundled") == bundled_path()
    assert resolve_collection_path("/x/y") == Path("/x/y")


def test_bundled_sample_tasks_and_split() -> None:
    c = open_collection()
    assert c.name == "superni"
    names = c.task_names()
    assert len(names) == 72 and names == sorted(names)
    split = c.split()
    assert (len(split.train), len(split.test), len(split.excluded)) == (756, 119, 738)
    assert split.name == "default"
    assert all(n == n.strip() and n for n in split.train + split.test + split.excluded)
    assert len(set(names) & set(split.train)) == 60
    assert len(set(names) & set(split.test)) == 12
    assert split.held_out == frozenset(split.test) | frozenset(split.excluded)
    assert len(c.missing(split.train)) == 756 - 60
    assert c.missing([TASK, "task999_nope"]) == ["task999_nope"]
    assert c.split("nonexistent") is None


def test_bundled_header_fields(bundled_dir: Path) -> None:
    c = open_collection("superni", "bundled")
    raw = json.loads((bundled_dir / "tasks" / f"{TASK}.json").read_text())
    info = c.info(TASK)
    assert info.name == TASK and info.source == "superni"
    assert info.definition == raw["Definition"][0]
    assert info.definition.startswith("The answer will be 'yes' if the provided sentence")
    assert info.categories == ("Answerability Classification",)
    assert info.category == "Answerability Classification"
    assert info.input_language == ("English",) == info.output_language == info.instruction_language
    assert info.positive_examples[0] == Demonstration(
        input=raw["Positive Examples"][0]["input"], output="Yes.",
        explanation=raw["Positive Examples"][0]["explanation"])
    assert len(info.positive_examples) == 2 and len(info.negative_examples) == 1
    assert info.negative_examples[0].output == "No."
    assert info.num_instances == len(raw["Instances"]) == 43
    assert info.extra["Source"] == ["mctaco"]


def test_manifest_counts_match_instances(bundled_dir: Path) -> None:
    c = open_collection()
    manifest = (bundled_dir / "MANIFEST.tsv").read_text().splitlines()[1:]
    for line in manifest:
        task, _, _, _, instances, category, language = line.split("\t")
        assert c.info(task).num_instances == int(instances) == c.instances(task).num_rows
        assert c.info(task).category == category
        assert c.info(task).input_language[0] == language


@pytest.mark.parametrize("task", [TASK, "task199_mnli_classification"])
def test_instances_round_trip(bundled_dir: Path, task: str) -> None:
    c = open_collection()
    raw = json.loads((bundled_dir / "tasks" / f"{task}.json").read_text())["Instances"]
    table = c.instances(task)
    assert table.schema.equals(INSTANCE_SCHEMA)
    assert table.to_pylist() == [{"id": r["id"], "input": r["input"], "output": r["output"]} for r in raw]
    last = len(raw) - 1
    assert c.instance(task, last) == Instance(id=raw[last]["id"], input=raw[last]["input"],
                                              output=tuple(raw[last]["output"]))
    with pytest.raises(IndexError):
        c.instance(task, len(raw))


def test_instances_are_memory_mapped(tmp_path: Path, bundled_dir: Path) -> None:
    c = SuperNICollection(bundled_dir, tmp_path / "cache")
    before = pa.total_allocated_bytes()
    tables = [c.instances(t) for t in c.task_names()]
    assert sum(t.nbytes for t in tables) > 500_000
    assert pa.total_allocated_bytes() - before < 10_000  # the data lives in the mapped files


def test_unknown_task_suggests_near_names() -> None:
    c = open_collection()
    with pytest.raises(DataError, match=r"unknown task 'task020_mctaco_span_based_questio'.*did you mean "
                                        r"'task020_mctaco_span_based_question'"):
        c.info("task020_mctaco_span_based_questio")
    with pytest.raises(DataError, match="unknown task"):
        c.instances("nope")


def test_warm_reopen_takes_the_stat_only_path(tmp_path: Path, bundled_dir: Path) -> None:
    names = [TASK, "task036_qasc_topic_word_to_generate_related_fact", "task039_qasc_find_overlapping_words"]
    coll = _copy_sample(bundled_dir, tmp_path / "coll", names)
    cache_dir = tmp_path / "cache"
    first = SuperNICollection(coll, cache_dir)
    assert first.index_stats == {"tasks": 3, "checked": 3, "parsed": 3}
    files = _cache_files(cache_dir)
    assert sum(f.endswith(".arrow") for f in files) == 3
    again = SuperNICollection(coll, cache_dir)
    assert again.index_stats == {"tasks": 3, "checked": 0, "parsed": 0}
    assert _cache_files(cache_dir) == files  # nothing rewritten
    assert again.info(TASK) == first.info(TASK)
    assert again.instances(TASK).equals(first.instances(TASK))


def test_modified_file_is_reindexed(tmp_path: Path, bundled_dir: Path) -> None:
    names = [TASK, "task039_qasc_find_overlapping_words"]
    coll = _copy_sample(bundled_dir, tmp_path / "coll", names)
    cache_dir = tmp_path / "cache"
    SuperNICollection(coll, cache_dir)
    path = coll / "tasks" / f"{TASK}.json"
    data = json.loads(path.read_text())
    data["Instances"][0]["output"] = ["Changed."]
    data["Definition"] = ["A new definition."]
    path.write_text(json.dumps(data))
    c = SuperNICollection(coll, cache_dir)
    assert c.index_stats == {"tasks": 2, "checked": 1, "parsed": 1}
    assert c.info(TASK).definition == "A new definition."
    assert c.instance(TASK, 0).output == ("Changed.",)
    # Only touched (same bytes): hashed again, not parsed again.
    os.utime(path, (OLD, OLD))
    c = SuperNICollection(coll, cache_dir)
    assert c.index_stats == {"tasks": 2, "checked": 1, "parsed": 0}
    assert SuperNICollection(coll, cache_dir).index_stats["checked"] == 0


def test_added_and_removed_files(tmp_path: Path, bundled_dir: Path) -> None:
    coll = _copy_sample(bundled_dir, tmp_path / "coll", [TASK])
    cache_dir = tmp_path / "cache"
    assert SuperNICollection(coll, cache_dir).task_names() == [TASK]
    extra = "task039_qasc_find_overlapping_words"
    shutil.copy(bundled_dir / "tasks" / f"{extra}.json", coll / "tasks")
    assert SuperNICollection(coll, cache_dir).task_names() == [TASK, extra]
    (coll / "tasks" / f"{TASK}.json").unlink()
    c = SuperNICollection(coll, cache_dir)
    assert c.task_names() == [extra]
    assert c.missing([TASK]) == [TASK]


def test_cleaned_cache_entry_is_rebuilt(tmp_path: Path, bundled_dir: Path) -> None:
    coll = _copy_sample(bundled_dir, tmp_path / "coll", [TASK])
    cache_dir = tmp_path / "cache"
    c = SuperNICollection(coll, cache_dir)
    for arrow in cache_dir.rglob("*.arrow"):
        arrow.unlink()
    assert c.instances(TASK).num_rows == 43
    # A corrupt manifest is ignored and rebuilt.
    for manifest in cache_dir.rglob("collections/*.json"):
        manifest.write_text("{not json")
    assert SuperNICollection(coll, cache_dir).index_stats["parsed"] == 0  # instance files reused by hash
    for manifest in cache_dir.rglob("collections/*.json"):  # valid JSON, damaged entries
        data = json.loads(manifest.read_text())
        data["entries"] = {name: {"size": 1} for name in data["entries"]}
        manifest.write_text(json.dumps(data))
    again = SuperNICollection(coll, cache_dir)
    assert again.index_stats == {"tasks": 1, "checked": 1, "parsed": 0}
    assert again.info(TASK).num_instances == 43


def test_same_content_shares_the_instance_file(tmp_path: Path, bundled_dir: Path) -> None:
    a = _copy_sample(bundled_dir, tmp_path / "a", [TASK])
    b = _copy_sample(bundled_dir, tmp_path / "b", [TASK])
    cache_dir = tmp_path / "cache"
    SuperNICollection(a, cache_dir, name="a")
    cb = SuperNICollection(b, cache_dir, name="b")
    assert cb.index_stats["parsed"] == 0
    assert cb.info(TASK).source == "b"
    assert len(list(cache_dir.rglob("*.arrow"))) == 1


def test_worker_pool_matches_single_process(tmp_path: Path, bundled_dir: Path) -> None:
    names = sorted(p.stem for p in (bundled_dir / "tasks").glob("*.json"))[:6]
    coll = _copy_sample(bundled_dir, tmp_path / "coll", names)
    pooled = SuperNICollection(coll, tmp_path / "c1", workers=2)
    single = SuperNICollection(coll, tmp_path / "c2", workers=1)
    assert pooled.index_stats["parsed"] == single.index_stats["parsed"] == 6
    for n in names:
        assert pooled.info(n) == single.info(n)
        assert pooled.instances(n).equals(single.instances(n))


def test_a_second_process_waits_for_the_indexing_one_then_reuses_its_work(tmp_path: Path, bundled_dir: Path) -> None:
    """Ranks of one job open the same unindexed collection: one indexes, the others wait on the manifest
    lock and then take the stat-only path instead of indexing it again."""
    import subprocess
    import sys

    from filelock import FileLock

    from mixtune.tasks import cache

    names = [TASK, "task036_qasc_topic_word_to_generate_related_fact"]
    coll = _copy_sample(bundled_dir, tmp_path / "coll", names)
    cache_dir = tmp_path / "cache"
    manifest = cache.manifest_path(cache.cache_root(cache_dir), "superni", str(coll.resolve()))
    ready = tmp_path / "ready"
    script = (f"import json, pathlib; from mixtune.tasks import SuperNICollection; "
              f"pathlib.Path({str(ready)!r}).touch(); "
              f"print(json.dumps(SuperNICollection({str(coll)!r}, {str(cache_dir)!r}).index_stats))")
    manifest.parent.mkdir(parents=True)
    with FileLock(f"{manifest}.lock", is_singleton=True):  # this process is "indexing"
        other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not ready.exists() and time.time() < deadline:  # the other process has imported mixtune
            time.sleep(0.1)
        time.sleep(2)  # ample time to index two small tasks, were it not waiting
        assert other.poll() is None and not manifest.exists()
        first = SuperNICollection(coll, cache_dir)  # re-enters the lock this process holds
    out, _ = other.communicate(timeout=120)
    assert other.returncode == 0
    assert first.index_stats == {"tasks": 2, "checked": 2, "parsed": 2}
    assert json.loads(out.strip().splitlines()[-1]) == {"tasks": 2, "checked": 0, "parsed": 0}


def test_split_lists_are_stripped(tmp_path: Path, bundled_dir: Path) -> None:
    coll = _copy_sample(bundled_dir, tmp_path / "coll", [TASK])
    folder = coll / "splits" / "mine"
    folder.mkdir()
    (folder / "train_tasks.txt").write_text(f"  {TASK}  \n\n# a comment\ntask_b\r\n")
    (folder / "test_tasks.txt").write_text("task_c\n")
    split = SuperNICollection(coll, tmp_path / "cache").split("mine")
    assert split.train == (TASK, "task_b") and split.test == ("task_c",) and split.excluded == ()


def test_instances_without_ids_get_task_numbered_ids(tmp_path: Path) -> None:
    (tmp_path / "coll" / "tasks").mkdir(parents=True)
    task = {"Definition": "Say it.", "Instances": [{"input": "a", "output": ["x"]},
                                                   {"id": "own", "input": "b", "output": ["y", "z"]},
                                                   {"id": None, "input": "c", "output": ["w"]}]}
    (tmp_path / "coll" / "tasks" / "t1.json").write_text(json.dumps(task))
    c = SuperNICollection(tmp_path / "coll", tmp_path / "cache")
    assert c.instances("t1").column("id").to_pylist() == ["t1-0", "own", "t1-2"]
    assert c.info("t1").definition == "Say it." and c.info("t1").category == "Uncategorized"
    assert c.instance("t1", 1).output == ("y", "z")


def test_an_edit_that_keeps_size_and_mtime_needs_reindex(tmp_path: Path, bundled_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache's documented stat-only rule: same size and mtime -> not read again; `--reindex` reads it."""
    from mixtune.cli import main

    coll = _copy_sample(bundled_dir, tmp_path / "coll", [TASK])
    cache_dir = tmp_path / "cache"
    path = coll / "tasks" / f"{TASK}.json"
    os.utime(path, ns=(int(OLD * 1e9), int(OLD * 1e9)))
    SuperNICollection(coll, cache_dir)
    raw = path.read_bytes()
    output = json.loads(raw)["Instances"][0]["output"][0]
    edited = output[:-1] + ("X" if output[-1] != "X" else "Y")  # same length, same file size
    stat = path.stat()
    at = raw.index(b'"Instances"')
    path.write_bytes(raw[:at] + raw[at:].replace(json.dumps(output).encode(), json.dumps(edited).encode(), 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.read_bytes() != raw
    stale = SuperNICollection(coll, cache_dir)
    assert stale.index_stats["checked"] == 0 and stale.instance(TASK, 0).output == (output,)
    monkeypatch.setenv("MIXTUNE_REINDEX", "1")  # what `mixtune --reindex` sets
    fresh = SuperNICollection(coll, cache_dir)
    assert fresh.index_stats["checked"] == 1 and fresh.instance(TASK, 0).output == (edited,)
    monkeypatch.delenv("MIXTUNE_REINDEX")
    monkeypatch.setenv("MIXTUNE_CACHE", str(cache_dir))
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(f"name: m\ntotal_examples: 4\nheld_out: {{allow: true}}\n"
                       f"sources:\n  - {{name: s, path: {coll}}}\n")
    assert main(["--reindex", "mixture", "show", str(mixture)]) == 0
    assert os.environ.pop("MIXTUNE_REINDEX") == "1"
    assert main(["mixture", "show", str(mixture)]) == 0 and "MIXTUNE_REINDEX" not in os.environ
    assert main(["mixture", "show", str(mixture), "--reindex"]) == 0  # after the subcommand too
    assert os.environ.pop("MIXTUNE_REINDEX") == "1"
