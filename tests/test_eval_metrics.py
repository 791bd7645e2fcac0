"""SuperNI metrics against hand-computed cases: normalisation, exact match, ROUGE-L, tokenizers, primary metrics."""

from __future__ import annotations

import json

import pytest
from rouge_score import rouge_scorer as rs
from rouge_score import tokenizers

from mixtune.eval.metrics import (
    EXACT_MATCH_CATEGORIES,
    PRIMARY_METRIC,
    ROUGE_L_CATEGORIES,
    exact_match,
    normalize_answer,
    primary_metric,
    rouge_l,
    rouge_scorer,
    score_instances,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Cat, sat!", "the cat sat"),
        ("  a  b\tc\n", "a b c"),  # articles kept, whitespace collapsed
        ("An apple.", "an apple"),
        ("don't-stop", "dontstop"),  # punctuation removed, not replaced by a space
        ("¿Qué?", "¿qué"),  # only ASCII punctuation (string.punctuation) is removed, as the official
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_normalises_and_keeps_articles() -> None:
    assert exact_match("Yes.", ["yes"]) == 1.0
    assert exact_match("  THE answer ", "the answer") == 1.0
    assert exact_match("a cat", ["cat"]) == 0.0  # articles are not removed
    assert exact_match("no", ["yes", "No!"]) == 1.0  # max over references
    assert exact_match("maybe", ["yes", "no"]) == 0.0


def test_rouge_l_hand_computed() -> None:
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3
    assert rouge_l("the cat sat", ["the cat sat on the mat"]) == pytest.approx(2 / 3)
    # max over references: the second reference matches fully
    assert rouge_l("the cat sat", ["a dog barked", "The cat sat."]) == pytest.approx(1.0)
    # LCS("a b c d", "a x c y") = 2 ("a c"): P = R = 2/4, F = 0.5
    assert rouge_l("a b c d", "a x c y") == pytest.approx(0.5)


def test_rouge_l_uses_the_porter_stemmer() -> None:
    assert rouge_l("running", ["run"]) == pytest.approx(1.0)
    # dogs->dog, running->run, runs->run: LCS("the dog were run", "the dog run") = 3, P = 3/4, R = 1
    assert rouge_l("the dogs were running", ["the dog runs"]) == pytest.approx(2 * 0.75 / 1.75)
    assert exact_match("running", ["run"]) == 0.0  # exact match does not stem


def test_empty_prediction_and_empty_reference() -> None:
    assert exact_match("", ["something"]) == 0.0
    assert rouge_l("", ["something"]) == 0.0
    assert exact_match("", [""]) == 1.0  # both normalise to ""
    assert rouge_l("", [""]) == 0.0  # rouge-score: no tokens on either side -> 0
    assert rouge_l("anything", [""]) == 0.0
    assert exact_match("...", [""]) == 1.0  # punctuation only normalises to ""
    with pytest.raises(ValueError, match="at least one reference"):
        exact_match("x", [])
    with pytest.raises(ValueError, match="at least one reference"):
        rouge_l("x", [])


def test_default_tokenizer_is_rouge_scores_own(bundled_dir) -> None:
    """The memoised tokenizer yields exactly rouge-score's DefaultTokenizer(use_stemmer=True) tokens."""
    reference = tokenizers.DefaultTokenizer(use_stemmer=True)
    ours = rouge_scorer("default")._tokenizer
    task = json.loads((bundled_dir / "tasks" / "task1557_jfleg_answer_generation.json").read_text())
    texts = [t for inst in task["Instances"] for t in [inst["input"], *inst["output"]]]
    texts += ["Running RUNS ran, 3.14 e-mail ÉCOLE naïve 東京", ""]
    for text in texts:
        assert list(ours.tokenize(text)) == reference.tokenize(text)
    official = rs.RougeScorer(["rougeL"], use_stemmer=True)
    for a, b in zip(texts[:-1], texts[1:], strict=True):
        assert rouge_l(a, [b]) == pytest.approx(official.score(b, a)["rougeL"].fmeasure, abs=1e-12)


def test_multilingual_tokenizer() -> None:
    tok = rouge_scorer("multilingual")._tokenizer
    assert list(tok.tokenize("東京は大きい")) == ["東", "京", "は", "大", "き", "い"]
    assert list(tok.tokenize("abc中文, Déjà-vu!")) == ["abc", "中", "文", "déjà", "vu"]
    assert list(tok.tokenize("हिंदी भाषा")) == ["हिंदी", "भाषा"]  # combining vowel signs stay in the word
    # The default tokenizer drops everything outside [a-z0-9]: non-English outputs score 0 with it.
    assert rouge_l("東京は大きい", ["東京は小さい"]) == 0.0
    # multilingual: LCS = 東京は + い = 4 of 6 tokens on each side -> F = 4/6
    assert rouge_l("東京は大きい", ["東京は小さい"], tokenizer="multilingual") == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="unknown ROUGE tokenizer"):
        rouge_l("a", ["a"], tokenizer="gpt2")


def test_primary_metric_by_category() -> None:
    assert len(EXACT_MATCH_CATEGORIES) == 6 and len(ROUGE_L_CATEGORIES) == 6
    for cat in ("Textual Entailment", "Cause Effect Classification", "Coreference Resolution",
                "Dialogue Act Recognition", "Answerability Classification", "Word Analogy"):
        assert primary_metric(cat) == "exact_match" == PRIMARY_METRIC[cat]
    for cat in ("Overlap Extraction", "Keyword Tagging", "Question Rewriting", "Title Generation",
                "Data to Text", "Grammar Error Correction"):
        assert primary_metric(cat) == "rougeL"
    assert primary_metric("Sentiment Analysis") == "rougeL"  # any other category


def test_parallel_scoring_equals_serial() -> None:
    preds = [f"answer number {i} is running" if i % 3 else "yes" for i in range(2400)]
    refs = [[f"answer {i} runs", "Yes."] for i in range(2400)]
    serial = score_instances(preds, refs, workers=1)
    parallel = score_instances(preds, refs, workers=2)
    assert parallel == serial
    assert sum(serial[0]) == 800  # every third prediction is "yes"
