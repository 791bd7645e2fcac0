"""`mixtune recipe preview`: the first training examples as the model sees them, without loading weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, TINY_RECIPE

from mixtune.cli import main

SEQ2SEQ = REPO / "recipes" / "tiny_seq2seq.yaml"


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if a model (weights) is built or loaded."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("recipe preview loaded a model")

    for name in ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM"):
        cls = getattr(transformers, name)
        monkeypatch.setattr(cls, "from_config", refuse)
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def _preview(capsys, recipe: Path, *args: str) -> list[dict]:
    assert main(["recipe", "preview", str(recipe), *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _squash(text: str) -> str:
    return "".join(text.lower().split())


def test_causal_prompts_end_with_the_cue_and_labels_hold_the_completion(capsys, no_weights, tokenizer_source):
    from mixtune.models.tokenizer import load_tokenizer
    from mixtune.recipe import load_recipe
    from mixtune.train.run import plan_for

    overrides = ["data.max_source_length=40", f"model.tokenizer={tokenizer_source}"]
    previews = _preview(capsys, TINY_RECIPE, *overrides, "--n", "6")
    assert [set(p) for p in previews] == [{"task", "input_text", "label_text", "num_tokens", "num_label_tokens",
                                           "truncated"}] * 6
    tok = load_tokenizer(tokenizer_source)
    plan = plan_for(load_recipe(TINY_RECIPE, overrides))
    for i, p in enumerate(previews):
        example = plan.example(i)
        assert p["task"] == example["task"]
        assert _squash(tok.decode(tok(p["input_text"], add_special_tokens=False)["input_ids"],
                                  skip_special_tokens=True)).endswith("output:")  # the cue ends every prompt
        completion = tok(example["completion"], add_special_tokens=False)["input_ids"]
        assert p["num_label_tokens"] == len(completion) + 1  # the whole completion and EOS
        assert p["num_tokens"] - p["num_label_tokens"] <= 40
    assert any(p["truncated"] == "prompt" for p in previews)


def test_seq2seq_preview_follows_the_tk_instruct_rule(capsys, no_weights):
    previews = _preview(capsys, SEQ2SEQ, "data.max_source_length=40", "--n", "3")
    for p in previews:
        assert p["num_tokens"] - p["num_label_tokens"] <= 40
        assert p["truncated"] in (None, "prompt", "completion")
    assert any(p["truncated"] == "prompt" for p in previews)


def test_text_view_marks_trained_tokens_and_packed_rows(capsys, no_weights):
    assert main(["recipe", "preview", str(TINY_RECIPE), "data.packing=true", "data.max_length=400",
                 "training.per_device_batch_size=4", "--n", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("⟦") == 4 and out.count("⟧") == 4
    assert "batch 0 row 0" in out and "tokens" in out and "trained" in out
