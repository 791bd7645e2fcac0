"""The path real users take, end to end: train -> eval run with a byte-level BPE chat model (tiny Llama)
and a SentencePiece seq2seq model (tiny T5). Real tokenizers, real processes of work, few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, TINY_RECIPE

from mixtune.cli import main

SMALL = ["data.mixture.total_examples=16", "training.max_steps=3", "training.per_device_batch_size=2",
         "training.save_steps=100", "training.logging_steps=1"]


def _eval(final: Path, out: Path, *extra: str) -> dict:
    assert main(["eval", "run", str(final), "--out", str(out), "--tasks", "task1146*,task020*",
                 "--max-instances", "2", "--max-new-tokens", "6", "--no-baselines", *extra]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["tasks"] == ["task020_mctaco_span_based_question", "task1146_country_capital"]
    lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and all("prediction" in json.loads(line) for line in lines)
    return metrics


@pytest.mark.integration
def test_tiny_llama_with_bpe_and_its_chat_template(tmp_path, bpe_tokenizer_dir) -> None:
    run = tmp_path / "run"
    assert main(["train", str(TINY_RECIPE), *SMALL, f"model.tokenizer={bpe_tokenizer_dir}",
                 "model.chat_template=tokenizer", "data.packing=true", "data.max_length=256",
                 "data.max_source_length=200", "model.config.max_position_embeddings=512",
                 f"output_dir={run}"]) == 0
    final = run / "final"
    saved = json.loads((final / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "<|eot_id|>" in json.dumps(saved) and (final / "tokenizer.json").is_file()
    metrics = _eval(final, tmp_path / "eval", "--chat")
    assert metrics["kind"] == "causal"
    assert metrics["max_source_length"] == 512 - 6  # the model's context less the answer's room
    record = json.loads((tmp_path / "eval" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert record["prompt"].startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")


@pytest.mark.integration
def test_tiny_t5_with_sentencepiece(tmp_path, spm_tokenizer_dir) -> None:
    run = tmp_path / "run"
    assert main(["train", str(REPO / "recipes" / "tiny_seq2seq.yaml"), *SMALL, f"model.tokenizer={spm_tokenizer_dir}",
                 f"output_dir={run}"]) == 0
    final = run / "final"
    config = json.loads((final / "config.json").read_text(encoding="utf-8"))
    assert config["decoder_start_token_id"] == config["pad_token_id"] == 0 and config["eos_token_id"] == 1
    metrics = _eval(final, tmp_path / "eval", "--max-source-length", "128")
    assert metrics["kind"] == "seq2seq" and metrics["max_source_length"] == 128
