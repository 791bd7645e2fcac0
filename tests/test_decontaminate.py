"""`mixtune mixture decontaminate`: planted duplicates in a copy of the bundled sample are found and dropped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
import yaml

from mixtune.cli import main
from mixtune.mixtures.ngram_overlap import build_eval_index, find_overlaps
from mixtune.text import normalize_answer as normalize

EVAL_TASK = "task288_gigaword_summarization"
TRAIN_TASK = "task1557_jfleg_answer_generation"  # replaced below by a train task of the split


def test_normalize_is_superni_normalisation() -> None:
    assert normalize("  The CAT, sat;\n\ton the   mat!! ") == "the cat sat on the mat"
    assert normalize("a-b_c") == "abc"
    assert normalize("...") == ""


def _words(k: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i}" for i in range(k)]


def test_ngram_overlap_unit() -> None:
    x, y = " ".join(_words(20, "x")), " ".join(_words(20, "y"))
    index = build_eval_index([("evaltask", "e1", x), ("evaltask", "e2", y), ("evaltask", "e3", "Short text.")], n=13)
    inputs = [
        "SHORT text",                                   # exact after normalisation, fewer than n words
        "intro " + " ".join(_words(13, "x")) + " outro",  # exactly one shared 13-gram
        " ".join(_words(12, "x")) + " new " + " ".join(_words(20, "x")[12:]),  # 12-gram runs only
        " ".join(_words(20, "x")[13:]) + " " + " ".join(_words(6, "y")),  # spans two eval instances
        " ".join(_words(7, "x")),                      # row 4 and 5 together would form a 13-gram ...
        " ".join(_words(13, "x")[7:]),                 # ... but n-grams never cross training instances
        "unrelated words only here " * 4,
    ]
    found = find_overlaps(index, "src", "traintask", [f"i{k}" for k in range(len(inputs))], inputs)
    got = {(o.row, o.kind, o.eval_instance_id, o.shared_ngrams) for o in found}
    assert got == {(0, "exact", "e3", 0), (1, "ngram", "e1", 1)}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, bundled_dir: Path) -> dict:
    """A copy of the bundled sample with a duplicate, a near-duplicate and a clean control planted in a train task."""
    root = tmp_path_factory.mktemp("decon")
    coll = root / "superni"
    shutil.copytree(bundled_dir, coll)
    train = [t.strip() for t in (coll / "splits/default/train_tasks.txt").read_text().splitlines()]
    present = {p.stem for p in (coll / "tasks").glob("*.json")}
    train_tasks = sorted(t for t in train if t in present)
    task = train_tasks[0]
    eval_data = json.loads((coll / "tasks" / f"{EVAL_TASK}.json").read_text())
    pos, target = next((i, inst) for i, inst in enumerate(eval_data["Instances"])
                       if len(normalize(inst["input"]).split()) >= 25)
    words = normalize(target["input"]).split()
    path = coll / "tasks" / f"{task}.json"
    data = json.loads(path.read_text())
    original = len(data["Instances"])
    data["Instances"] += [
        {"id": "planted-dup", "input": "  " + target["input"].upper().replace(" ", "  ") + " !!", "output": ["a"]},
        {"id": "planted-near", "input": "Summarize: " + " ".join(words[2:17]) + ", and then something else.",
         "output": ["b"]},
        {"id": "planted-clean", "input": " ".join(words[:12]) + " zebra " + " ".join(words[12:24]), "output": ["c"]},
    ]
    path.write_text(json.dumps(data))
    mixture = root / "mix.yaml"
    mixture.write_text(yaml.safe_dump({
        "name": "planted", "seed": 3, "epochs": 1,
        "sources": [{"name": "superni", "path": str(coll), "split": "default", "missing_tasks": "skip",
                     "tasks": {"include": train_tasks[:3]}}],
    }))
    return {"root": root, "coll": coll, "mixture": mixture, "task": task, "original": original,
            "eval_id": target["id"], "eval_pos": pos}


def _run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["mixture", "decontaminate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _report(capsys: pytest.CaptureFixture, *args: str) -> dict:
    code, out, err = _run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_planted_overlaps_reported(planted: dict, capsys: pytest.CaptureFixture) -> None:
    report = _report(capsys, str(planted["mixture"]))
    mine = [o for o in report["overlaps"] if o["task"] == planted["task"]]
    assert {(o["instance_id"], o["kind"], o["eval_task"], o["eval_instance_id"]) for o in mine} == {
        ("planted-dup", "exact", EVAL_TASK, planted["eval_id"]),
        ("planted-near", "ngram", EVAL_TASK, planted["eval_id"]),
    }
    near = next(o for o in mine if o["kind"] == "ngram")
    assert near["shared_ngrams"] == 15 - 13 + 1 and near["row"] == planted["original"] + 1
    row = next(t for t in report["tasks"] if t["task"] == planted["task"])
    assert row == {"source": "superni", "task": planted["task"], "num_instances": planted["original"] + 3,
                   "exact": 1, "ngram": 1, "sampled_examples": 2, "contaminated": 2}
    assert report["ngram"] == 13 and EVAL_TASK in report["eval_tasks"]
    assert report["num_contaminated"] == len(report["overlaps"])


def test_ngram_length_is_configurable(planted: dict, capsys: pytest.CaptureFixture) -> None:
    report = _report(capsys, str(planted["mixture"]), "--ngram", "16")  # the near copy shares 15 words
    ids = {o["instance_id"] for o in report["overlaps"] if o["task"] == planted["task"]}
    assert ids == {"planted-dup"}
    report = _report(capsys, str(planted["mixture"]), "--ngram", "10")  # 12-word runs now count
    ids = {o["instance_id"] for o in report["overlaps"] if o["task"] == planted["task"]}
    assert ids == {"planted-dup", "planted-near", "planted-clean"}


def test_eval_yaml_limits_the_evaluation_side(planted: dict, capsys: pytest.CaptureFixture) -> None:
    spec = planted["root"] / "eval.yaml"
    for limit, expected in ((planted["eval_pos"], set()), (planted["eval_pos"] + 1, {"planted-dup", "planted-near"})):
        spec.write_text(yaml.safe_dump({"collection": str(planted["coll"]), "tasks": [EVAL_TASK],
                                        "max_instances_per_task": limit}))
        report = _report(capsys, str(planted["mixture"]), "--eval", str(spec))
        assert report["eval_tasks"] == [EVAL_TASK] and report["num_eval_instances"] == limit
        assert {o["instance_id"] for o in report["overlaps"] if o["task"] == planted["task"]} == expected


def test_drop_builds_mixture_without_them(planted: dict, capsys: pytest.CaptureFixture) -> None:
    """Same size and per-task counts; each contaminated example re-drawn from a clean instance of its task."""
    full_dir, clean_dir = planted["root"] / "full", planted["root"] / "clean"
    assert main(["mixture", "build", str(planted["mixture"]), "--out", str(full_dir)]) == 0
    capsys.readouterr()
    report = _report(capsys, str(planted["mixture"]), "--drop", "--out", str(clean_dir))
    full, clean = datasets.load_from_disk(str(full_dir)), datasets.load_from_disk(str(clean_dir))
    bad = {(o["task"], o["instance_id"]) for o in report["overlaps"]}
    full_keys = list(zip(full["task"], full["instance_id"], strict=True))
    assert {(planted["task"], "planted-dup"), (planted["task"], "planted-near")} <= set(full_keys)
    hits = [k in bad for k in full_keys]
    assert sum(hits) == report["replaced_examples"] > 0 and report["dropped_examples"] == 0
    assert len(clean) == len(full) == report["total_examples"]
    clean_keys = list(zip(clean["task"], clean["instance_id"], strict=True))
    assert not bad & set(clean_keys)
    assert (planted["task"], "planted-clean") in set(clean_keys)
    assert clean["position"] == full["position"] and clean["task"] == full["task"]  # counts and order stay
    for i in range(len(full)):
        if hits[i]:  # re-drawn: the same task, a clean instance of it
            assert clean_keys[i][0] == full_keys[i][0] and clean_keys[i] != full_keys[i]
        elif i % 37 == 0:  # every other example is the full build's, unchanged
            assert clean[i] == full[i]
    manifest = json.loads((clean_dir / "mixture_manifest.json").read_text())
    assert manifest["decontamination"]["replaced_examples"] == sum(hits)
    assert manifest["hash"] != json.loads((full_dir / "mixture_manifest.json").read_text())["hash"]


def test_a_task_without_clean_instances_loses_its_examples(planted: dict) -> None:
    from dataclasses import replace

    from mixtune.mixtures.decontaminate import decontaminate_plan, decontaminated
    from mixtune.mixtures.plan import plan_mixture
    from mixtune.mixtures.spec import load_mixture

    plan = plan_mixture(load_mixture(planted["mixture"]))
    report = decontaminate_plan(plan)
    task = next(t for t in plan.tasks if t.name == planted["task"])
    template = report.overlaps[0]
    report.overlaps = [replace(template, row=int(r), instance_id=f"row{r}") for r in task.pool]  # all of them
    clean = decontaminated(plan, report)
    k = plan.tasks.index(task)
    assert clean.dropped == int((plan.index.task_ids == k).sum()) > 0 and clean.redrawn == 0
    assert len(clean) == len(plan) - clean.dropped
    names = [n for batch in clean.iter_batches() for n in batch["task"]]
    assert len(names) == len(clean) and task.name not in names


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(("args", "words"), [
    (["--drop"], "--drop needs --out DIR"),
    (["--out", "{out}"], "--out is only used with --drop"),
    (["--drop", "--out", "{out}", "--eval-split", "nosuchsplit"], "nosuchsplit"),
    (["--drop", "--out", "{out}", "--ngram", "0"], "n-gram length must be >= 1"),
])
def test_clear_errors(planted: dict, capsys: pytest.CaptureFixture, args: list[str], words: str) -> None:
    """A bad flag is one `mixtune: error:` line naming it (exit 2), and nothing is written: no output folder,
    no temporary beside it."""
    out = planted["root"] / "never"
    before = _entries(planted["root"])
    code, stdout, err = _run(capsys, str(planted["mixture"]), *[a.format(out=out) for a in args])
    assert code == 2 and stdout == ""
    assert err.startswith("mixtune: error: ") and words in err and err.count("\n") == 1, err
    assert _entries(planted["root"]) == before


def test_a_drop_that_fails_while_writing_leaves_nothing(planted: dict, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An error after the shards are written (before the dataset's metadata) leaves neither the output folder
    nor a half-written temporary."""
    import mixtune.mixtures.build as build
    from mixtune.errors import DataError

    written = []

    def fail(folder: Path, *args: object, **kwargs: object) -> None:
        written.extend(p.name for p in Path(folder).glob("data-*.arrow"))
        raise DataError("injected failure while writing the dataset")

    monkeypatch.setattr(build, "_write_dataset_json", fail)
    before = _entries(planted["root"])
    code, _, err = _run(capsys, str(planted["mixture"]), "--drop", "--out", str(planted["root"] / "failed"))
    assert code == 2 and "injected failure" in err
    assert written  # the failure came with shards on disk
    assert _entries(planted["root"]) == before


def test_table_keeps_task_names_whole_in_a_narrow_terminal(planted: dict, capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    code, out, err = _run(capsys, str(planted["mixture"]))
    assert code == 0, err
    assert f"│ {planted['task']} " in out and "…" not in out

