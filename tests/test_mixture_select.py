"""`mixtune mixture select`: three methods on SuperNI, HF and JSONL collections, its YAML, its errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from conftest import TINY_RECIPE

from mixtune.cli import main
from mixtune.mixtures.task_select import collection_pool, select_for_targets, task_targets
from mixtune.mixtures.task_select.methods import ngram_scores, retrieval_scores, semb_scores

# Six tasks in three topics; each topic's two tasks share words and meaning, the topics share little.
TASKS = {
    "sent_movies": ("Sentiment Analysis", [
        "I loved this movie, the acting was wonderful and the story was great.",
        "The film was terrible, I hated the boring plot and the awful acting.",
        "A great movie with a wonderful cast, I really enjoyed it.",
        "The movie was awful and far too long, I was bored.",
        "What a wonderful film, the story made me happy.",
        "I really disliked this boring movie, the actors were terrible.",
    ]),
    "sent_restaurants": ("Sentiment Analysis", [
        "I loved this restaurant, the food was wonderful and the service was great.",
        "The dinner was terrible, I hated the cold soup and the awful service.",
        "A great restaurant with wonderful staff, I really enjoyed the meal.",
        "The food was awful and the wait far too long, I was annoyed.",
        "What a wonderful place, the dessert made me happy.",
        "I really disliked this restaurant, the waiters were terrible.",
    ]),
    "math_add": ("Arithmetic", [
        "What is 12 plus 7?", "Add 35 and 18.", "Compute the sum of 4 and 9.", "What is 120 plus 45?",
        "Add 3 to 16.", "What is the sum of 27 and 14?",
    ]),
    "math_mul": ("Arithmetic", [
        "What is 6 times 9?", "Multiply 12 by 4.", "Compute the product of 7 and 8.", "What is 15 times 3?",
        "Multiply 2 by 31.", "What is the product of 11 and 5?",
    ]),
    "geo_capital": ("Geography", [
        "Which city is the capital of France?", "Name the capital city of Japan.",
        "What is the capital of Kenya?", "Which city is the capital of Canada?",
        "Name the capital city of Peru.", "What is the capital of Norway?",
    ]),
    "geo_river": ("Geography", [
        "Which river flows through the city of Cairo?", "Name the river that flows through Paris.",
        "What river runs through the capital of England?", "Which river flows through Vienna?",
        "Name the longest river of Brazil.", "What river runs through the city of Baghdad?",
    ]),
}
HELD_OUT = "geo_river"  # the collection's test split
METHODS = ("semb", "retrieval", "ngram")


def _write_superni(root: Path) -> Path:
    (root / "tasks").mkdir(parents=True)
    for name, (category, inputs) in TASKS.items():
        task = {"Definition": [f"Answer the {name} question."], "Categories": [category],
                "Positive Examples": [{"input": inputs[0], "output": "x", "explanation": ""}],
                "Negative Examples": [],
                "Instances": [{"id": f"{name}-{i}", "input": x, "output": ["x"]} for i, x in enumerate(inputs)]}
        (root / "tasks" / f"{name}.json").write_text(json.dumps(task), encoding="utf-8")
    _write_split(root)
    return root


def _write_split(root: Path) -> None:
    split = root / "splits" / "default"
    split.mkdir(parents=True)
    (split / "train_tasks.txt").write_text("".join(f"{t}\n" for t in TASKS if t != HELD_OUT))
    (split / "test_tasks.txt").write_text(f"{HELD_OUT}\n")


def _write_jsonl(root: Path) -> Path:
    root.mkdir(parents=True)
    for name, (category, inputs) in TASKS.items():
        lines = [{"task": name, "definition": f"Answer the {name} question.", "category": category}]
        lines += [{"input": x, "output": "x"} for x in inputs]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    _write_split(root)
    return root


def _hf_rows() -> dict[str, list]:
    rows: dict[str, list] = {"task": [], "definition": [], "input": [], "output": [], "category": []}
    for name, (category, inputs) in TASKS.items():
        for x in inputs:
            rows["task"].append(name)
            rows["definition"].append(f"Answer the {name} question.")
            rows["input"].append(x)
            rows["output"].append("x")
            rows["category"].append(category)
    return rows


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Path]]:
    """The same six tasks as a SuperNI folder, a JSONL folder, an HF save_to_disk folder and a parquet file."""
    root = tmp_path_factory.mktemp("select")
    saved = root / "hf_saved"
    datasets.Dataset.from_dict(_hf_rows()).save_to_disk(str(saved))
    parquet = root / "hf.parquet"
    datasets.Dataset.from_dict(_hf_rows()).to_parquet(str(parquet))
    return {"superni": ("superni", _write_superni(root / "superni")), "jsonl": ("jsonl", _write_jsonl(root / "jsonl")),
            "hf_saved": ("hf", saved), "hf_parquet": ("hf", parquet)}


def _select(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, dict | None, str]:
    code = main(["mixture", "select", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in argv else None), err


@pytest.mark.parametrize("kind", ["superni", "jsonl", "hf_saved", "hf_parquet"])
@pytest.mark.parametrize("method", METHODS)
def test_each_method_picks_the_same_topic_and_never_a_target_or_held_out_task(
        collections: dict, kind: str, method: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ctype, path = collections[kind]
    out = tmp_path / "sel.yaml"
    code, report, err = _select(capsys, "--collection", str(path), "--type", ctype, "--target", "sent_movies",
                                "--k", "4", "--method", method, "--out", str(out), "--json")
    assert code == 0, err
    names = [s["task"] for s in report["selected"]]
    assert report["method"] == method and report["targets"] == ["sent_movies"]
    assert names[0] == "sent_restaurants"  # the only other review task: by construction of TASKS
    assert report["selected"][0]["category"] == "Sentiment Analysis"
    assert "sent_movies" not in names
    if kind in ("superni", "jsonl"):  # collections with split files: the test task is held out
        assert HELD_OUT not in names and len(names) == 4
    scores = [s["score"] for s in report["selected"]]
    assert scores == sorted(scores, reverse=True)
    spec = yaml.safe_load(out.read_text())
    assert sorted(spec["sources"][0]["tasks"]["include"]) == sorted(names)
    assert "sent_movies" in spec["held_out"]["tasks"]


def test_k_equal_to_the_pool_takes_every_candidate_and_never_the_held_out_one(
        collections: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, path = collections["superni"]
    code, report, err = _select(capsys, "--collection", str(path), "--target", "math_add", "--k", "4",
                                "--method", "ngram", "--out", str(tmp_path / "a.yaml"), "--json")
    assert code == 0, err
    assert sorted(s["task"] for s in report["selected"]) == ["geo_capital", "math_mul", "sent_movies",
                                                             "sent_restaurants"]
    code, _, err = _select(capsys, "--collection", str(path), "--target", "math_add", "--k", "5",
                           "--method", "ngram", "--out", str(tmp_path / "b.yaml"))
    assert code == 2 and "--k 5 is larger than the 4 candidate tasks" in err and "use --k 4" in err
    assert not (tmp_path / "b.yaml").exists()


def test_yaml_is_accepted_by_show_and_build_and_is_deterministic(
        collections: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, path = collections["jsonl"]
    args = ["--collection", str(path), "--type", "jsonl", "--target", "sent_movies,math_add", "--k", "3",
            "--method", "semb", "--weights", "score"]
    first, second = tmp_path / "one.yaml", tmp_path / "two.yaml"
    assert _select(capsys, *args, "--out", str(first), "--plot", str(tmp_path / "p.png"))[0] == 0
    assert _select(capsys, *args, "--out", str(second))[0] == 0
    assert first.read_bytes() == second.read_bytes()
    text = first.read_text()
    assert text.startswith("# Chosen by `mixtune mixture select`: method semb (encoder sentence-transformers/")
    assert "# target(s): sent_movies (Sentiment Analysis), math_add (Arithmetic)" in text
    weights = yaml.safe_load(text)["sources"][0]["tasks"]["weights"]
    assert max(weights.values()) == 1.0 and all(0 < w <= 1 for w in weights.values())
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["mixture", "show", str(first), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {t["name"] for t in summary["tasks"]} == set(weights)
    assert summary["held_out"]["in_mixture"] == []
    assert main(["mixture", "build", str(first), "--out", str(tmp_path / "built")]) == 0
    built = datasets.load_from_disk(str(tmp_path / "built"))
    realised = {t["name"]: t["realised_examples"] for t in summary["tasks"] if t["realised_examples"]}
    assert Counter(built["task"]) == realised and len(built) == summary["total_examples"]
    best = max(weights, key=weights.get)
    assert realised[best] == max(realised.values())  # weight 1 (the best score) gets the most examples


def test_scores_of_each_method_against_hand_computed_values() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # task A: two instances
    b = np.array([[0.6, 0.8]], np.float32)               # task B: one instance
    target = np.array([[1.0, 0.0], [0.8, 0.6]], np.float32)
    semb = semb_scores([a, b], [target])
    # mean(A) = (.5, .5) -> unit (.7071, .7071); mean(target) = (.9, .3) -> unit (.9487, .3162)
    assert semb[:, 0] == pytest.approx([0.7071 * 0.9487 + 0.7071 * 0.3162, 0.6 * 0.9487 + 0.8 * 0.3162], abs=1e-3)
    # nearest instance of (1,0) is A[0] (1.0 > .6 > 0); of (.8,.6) is B[0] (.96 > .8 > .6)
    assert retrieval_scores([a, b], [target], neighbors=1)[:, 0].tolist() == [0.5, 0.5]
    # 2 neighbours: (1,0) -> A[0], B[0]; (.8,.6) -> B[0], A[0]: A gets 2 of 4 votes
    assert retrieval_scores([a, b], [target], neighbors=2)[:, 0].tolist() == [0.5, 0.5]
    scores = ngram_scores([["red apple"], ["blue sky"]], [["red apple pie"]])
    assert scores[0, 0] > 0 > scores[1, 0]  # shared unigrams and bigram raise A, B's n-grams are not in the target


def test_target_file_of_unlabeled_inputs(collections: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, path = collections["superni"]
    target = tmp_path / "mine.jsonl"
    target.write_text('{"input": "How many is 8 plus 5?"}\n\n{"input": "Add 40 and 2."}\n')
    for method in ("retrieval", "ngram"):
        code, report, err = _select(capsys, "--collection", str(path), "--target-file", str(target), "--k", "2",
                                    "--method", method, "--out", str(tmp_path / f"{method}.yaml"), "--json")
        assert code == 0, err
        assert report["targets"] == ["mine"] and report["selected"][0]["task"] == "math_add"
    assert "held_out:\n  split: default\n" in (tmp_path / "ngram.yaml").read_text()


def test_embedding_cache_embeds_each_text_once_and_only_changed_texts(tmp_path: Path) -> None:
    root = _write_jsonl(tmp_path / "coll")
    pool = collection_pool(str(root), type="jsonl", cache_dir=tmp_path / "cache")
    targets = task_targets(pool, ["sent_movies"])
    cold = select_for_targets(pool, targets, "semb", 2, cache_dir=tmp_path / "cache")
    assert cold.embedded == 6 * 5  # the five candidates (six inputs each) and the target's six inputs
    warm = select_for_targets(pool, targets, "semb", 2, cache_dir=tmp_path / "cache")
    assert warm.embedded == 0 and np.array_equal(warm.scores, cold.scores)
    lines = (root / "math_mul.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"input": "What is 6 multiplied by 9?", "output": "54"})
    (root / "math_mul.jsonl").write_text("\n".join(lines) + "\n")
    pool = collection_pool(str(root), type="jsonl", cache_dir=tmp_path / "cache")
    assert select_for_targets(pool, targets, "retrieval", 2, cache_dir=tmp_path / "cache").embedded == 1


@pytest.mark.integration
def test_sentence_vectors_match_sentence_transformers(tmp_path: Path) -> None:
    """Mean pooling + L2 norm as the checkpoint defines it: sentence-transformers computes the same vectors."""
    st = pytest.importorskip("sentence_transformers")
    from mixtune.minilm import minilm_path
    from mixtune.mixtures.task_select.encoder import SentenceEncoder

    texts = ["What is the capital of Kenya?", "I loved this movie.", "word " * 400, ""]
    ours = SentenceEncoder(progress=False, batch_size=2).encode(texts)
    reference = st.SentenceTransformer(minilm_path(), device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (4, 384)
    np.testing.assert_allclose(ours, reference, atol=2e-5)


def test_from_mixture_keeps_its_sources_and_drops_held_out_tasks(
        repo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "q.yaml"
    code, report, err = _select(capsys, "--from", str(repo_root / "data_mixtures" / "quickstart.yaml"),
                                "--target", "task199_mnli_classification", "--k", "5", "--method", "ngram",
                                "--out", str(out), "--json")
    assert code == 0, err
    test_tasks = set((repo_root / "mixtune/data/superni/splits/default/test_tasks.txt").read_text().split())
    assert len(report["selected"]) == 5 and not {s["task"] for s in report["selected"]} & test_tasks
    spec = yaml.safe_load(out.read_text())
    assert [s["name"] for s in spec["sources"]] == ["superni_definition", "superni_def_pos2"]
    assert spec["sources"][1]["encoding"]["pos_examples"] == 2 and spec["seed"] == 0 and spec["epochs"] == 1
    assert main(["mixture", "show", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_tasks"] == 10 and {t["name"] for t in summary["tasks"]} == {s["task"] for s in
                                                                                    report["selected"]}


def test_bad_input_gets_one_line_errors(collections: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, path = collections["superni"]
    base = ["--collection", str(path), "--k", "2", "--method", "ngram", "--out", str(tmp_path / "x.yaml")]
    code, _, err = _select(capsys, *base, "--target", "sent_movie")
    assert code == 2 and err.count("\n") == 1
    assert "unknown target task 'sent_movie'" in err and "did you mean 'sent_movies'" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, _, err = _select(capsys, *base, "--target-file", str(empty))
    assert code == 2 and err.count("\n") == 1 and "the target file has no instances" in err and str(empty) in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "fine"}\n{"text": "no input key"}\n')
    code, _, err = _select(capsys, *base, "--target-file", str(bad))
    assert code == 2 and 'line 2 has no string "input"' in err
    blank = tmp_path / "blank_target"
    (blank / "tasks").mkdir(parents=True)
    for name, inputs in (("blank", ["  ", ""]), ("other", ["a", "b"]), ("third", ["c", "d"])):
        (blank / "tasks" / f"{name}.json").write_text(json.dumps(
            {"Definition": ["d"], "Positive Examples": [], "Negative Examples": [],
             "Instances": [{"id": f"{name}{i}", "input": x, "output": ["o"]} for i, x in enumerate(inputs)]}))
    code, _, err = _select(capsys, "--collection", str(blank), "--target", "blank", "--k", "1", "--method",
                           "ngram", "--out", str(tmp_path / "x.yaml"))
    assert code == 2 and "target task 'blank' has no instances with a non-empty input" in err
    assert "--target-file" in err and err.count("\n") == 1
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.integration
def test_selected_mixture_trains(collections: dict, repo_root: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    """A tiny causal model trains a few steps on the mixture `select` wrote, used as the recipe's data.mixture."""
    _, path = collections["superni"]
    mixture = tmp_path / "chosen.yaml"
    code, _, err = _select(capsys, "--collection", str(path), "--target", "sent_movies", "--k", "3",
                           "--method", "retrieval", "--out", str(mixture))
    assert code == 0, err
    out = tmp_path / "run"
    assert main(["train", str(TINY_RECIPE), f"data.mixture={mixture}",
                 "training.max_steps=2", "training.save_steps=2", "training.per_device_batch_size=2",
                 "data.max_length=64", "data.max_source_length=48", f"output_dir={out}"]) == 0
    info = json.loads((out / "final" / "mixtune_run.json").read_text())
    chosen = set(yaml.safe_load(mixture.read_text())["sources"][0]["tasks"]["include"])
    assert info["global_steps"] == 2 and set(info["trained_task_counts"]) <= chosen
    assert sum(info["trained_task_counts"].values()) == info["trained_examples"] == 4


def test_requests_sharing_a_group_keep_each_others_vectors(tmp_path: Path) -> None:
    """A target that is also a candidate asks twice for one group (two samples): both samples stay cached."""
    from mixtune.mixtures.task_select.embedding_cache import EmbeddingRequest, cached_embeddings

    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:  # a stand-in encoder: the cache's bookkeeping is under test
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], np.float32)

    def request(group: str, rows: list[int], texts: list[str]) -> EmbeddingRequest:
        return EmbeddingRequest(group, "v1", np.array(rows), lambda: texts)

    requests = [request("g", [0, 1], ["a", "bb"]), request("g", [1, 2], ["bb", "ccc"]), request("h", [0], ["a"])]
    vectors, embedded = cached_embeddings(tmp_path, requests, encode)
    assert embedded == 3 and calls == [["a", "bb", "ccc"]]
    assert [v[:, 0].tolist() for v in vectors] == [[1, 2], [2, 3], [1]]
    again, embedded = cached_embeddings(tmp_path, requests, encode)
    assert embedded == 0 and len(calls) == 1
    assert all(np.array_equal(x, y) for x, y in zip(vectors, again, strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.arrow", "h.arrow"]
    # a cached text asked for at another row (a larger sample): no embedding, and found by row next time
    calls.clear()
    moved = [request("g", [7], ["ccc"])]
    assert cached_embeddings(tmp_path, moved, encode)[1] == 0
    moved[0].texts = lambda: pytest.fail("a warm request by row must not read its texts")
    assert cached_embeddings(tmp_path, moved, encode)[0][0][:, 0].tolist() == [3] and calls == []
    # the task changed (new content key) and row 1 now holds another text: only that text is embedded
    changed, embedded = cached_embeddings(tmp_path, [EmbeddingRequest("g", "v2", np.array([0, 1]),
                                                                      lambda: ["a", "dddd"])], encode)
    assert embedded == 1 and calls == [["dddd"]] and changed[0][:, 0].tolist() == [1, 4]
