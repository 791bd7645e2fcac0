"""Completion-only causal batches and seq2seq batches, with the real MiniLM tokenizer and tiny models."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_LLAMA, TINY_T5

from mixtune.errors import DataError
from mixtune.models.load import load_model_and_tokenizer
from mixtune.models.spec import ModelConfig
from mixtune.models.tokenizer import load_tokenizer
from mixtune.train.collators import (
    IGNORE_INDEX,
    CompletionOnlyCollator,
    Seq2SeqCollator,
    chat_end_of_turn_id,
    check_chat_eot_in_mask,
    prompt_ids,
    tokenize_example,
)

PROMPT = "Definition: answer the question. Now complete the following example - Input: capital of France? Output: "


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("minilm")


@pytest.fixture(params=["wordpiece", "bpe", "sentencepiece"])
def chat_tok(request, tokenizer_dirs):
    """Each tokenizer kind with a chat template: BPE its own (Llama-3 style), the others mixtune's default."""
    template = "tokenizer" if request.param == "bpe" else "default"
    return load_tokenizer(ModelConfig(config=TINY_LLAMA, tokenizer=tokenizer_dirs[request.param],
                                      chat_template=template))


def test_labels_mask_prompt_exactly_and_train_eos(real_tokenizer) -> None:
    tok = real_tokenizer
    p = tok(PROMPT, add_special_tokens=False)["input_ids"]
    c = tok("Paris is it", add_special_tokens=False)["input_ids"]
    ex = tokenize_example(tok, PROMPT, "Paris is it")
    # BOS in front when the tokenizer puts one there ([CLS], <|begin_of_text|>; none for TINY_T5)
    bos = [tok.bos_token_id] if tok(PROMPT)["input_ids"][0] == tok.bos_token_id else []
    assert ex["input_ids"] == [*bos, *p, *c, tok.eos_token_id]
    n_prompt = len(bos) + len(p)
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == [*c, tok.eos_token_id]
    assert ex["truncated"] is None
    assert prompt_ids(tok, PROMPT) == ex["input_ids"][:n_prompt]


def test_truncation_keeps_completion_and_prompt_end(real_tokenizer) -> None:
    tok = real_tokenizer
    full = tokenize_example(tok, PROMPT, "Paris")
    ex = tokenize_example(tok, PROMPT, "Paris", max_length=8)
    assert len(ex["input_ids"]) == 8 and ex["truncated"] == "prompt"
    trained = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert trained == [t for t in full["labels"] if t != IGNORE_INDEX]  # whole completion + EOS
    # BOS kept (when the tokenizer has one in front), then the end of the prompt (the answer cue)
    n_bos = int(full["input_ids"][0] == tok.bos_token_id)
    assert ex["input_ids"][:n_bos] == full["input_ids"][:n_bos]
    n_c, n = len(trained), len(full["input_ids"])
    assert ex["input_ids"][n_bos:8 - n_c] == full["input_ids"][n - 8 + n_bos:n - n_c]


def test_overlong_completion_is_cut_not_dropped(real_tokenizer) -> None:
    tok = real_tokenizer
    ex = tokenize_example(tok, PROMPT, "a very long answer " * 10, max_length=12)
    assert len(ex["input_ids"]) == 12 and ex["truncated"] == "completion"
    assert sum(t != IGNORE_INDEX for t in ex["labels"]) == 12 - 6  # half the room kept for the prompt


def test_completion_only_collator_pads_and_masks(real_tokenizer) -> None:
    tok = real_tokenizer
    coll = CompletionOnlyCollator(tok, max_length=64, pad_to_multiple_of=8)
    feats = [{"prompt": "short q", "completion": "yes", "task": "t1", "position": 0},
             {"prompt": PROMPT, "completion": "Paris", "task": "t2", "position": 1}]
    batch = coll(feats)
    singles = [tokenize_example(tok, f["prompt"], f["completion"]) for f in feats]
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].shape[1] % 8 == 0
    for row, ex in enumerate(singles):
        n = len(ex["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == ex["input_ids"]
        assert batch["labels"][row, :n].tolist() == ex["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()


def test_all_masked_batch_is_an_error(tok) -> None:
    coll = CompletionOnlyCollator(tok)
    # a completion truncated away by naive right-truncation: only prompt tokens left
    ids = prompt_ids(tok, PROMPT)
    with pytest.raises(DataError, match="every label of this batch is -100") as e:
        coll([{"input_ids": ids, "labels": [IGNORE_INDEX] * len(ids), "task": "task1", "position": 7}])
    assert "task1#7" in str(e.value) and "max_length" in str(e.value)


def test_missing_key_is_a_data_error(tok) -> None:
    with pytest.raises(DataError, match="'completion'"):
        CompletionOnlyCollator(tok)([{"prompt": "q", "output": "a"}])


def test_seq2seq_collator_decoder_start(tokenizer_source) -> None:
    model, t5tok, kind = load_model_and_tokenizer(ModelConfig(config=TINY_T5, tokenizer=tokenizer_source))
    assert kind == "seq2seq"
    coll = Seq2SeqCollator(t5tok, model, max_source_length=10, max_target_length=4)
    batch = coll([{"prompt": PROMPT, "completion": "Paris"}, {"prompt": "q", "completion": "a long answer here"}])
    src0 = t5tok(PROMPT, truncation=True, max_length=10)["input_ids"]
    assert batch["input_ids"][0].tolist() == src0  # the tokenizer's own special tokens ([SEP], </s>; BPE: BOS)
    paris = t5tok("Paris", add_special_tokens=False)["input_ids"]
    assert batch["labels"][0].tolist()[: len(paris) + 1] == [*paris, t5tok.eos_token_id]
    assert batch["labels"][1, -1].item() == t5tok.eos_token_id and batch["labels"].shape[1] == 4
    start = model.config.decoder_start_token_id
    assert start == t5tok.pad_token_id
    assert (batch["decoder_input_ids"][:, 0] == start).all()
    assert batch["decoder_input_ids"][1, 1:].tolist() == batch["labels"][1, :-1].tolist()
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    # without a model, the collator shifts itself, to the same result
    alone = Seq2SeqCollator(t5tok, max_source_length=10, max_target_length=4)(
        [{"prompt": PROMPT, "completion": "Paris"}, {"prompt": "q", "completion": "a long answer here"}])
    assert torch.equal(alone["decoder_input_ids"], batch["decoder_input_ids"])


def test_chat_collator_trains_end_of_turn(chat_tok) -> None:
    eot = chat_end_of_turn_id(chat_tok)
    assert chat_tok.convert_ids_to_tokens(eot) in ("<|im_end|>", "<|eot_id|>")
    batch = CompletionOnlyCollator(chat_tok, chat=True)([{"prompt": "capital of France?", "completion": "Paris"}])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    last_eot = max(i for i, t in enumerate(ids) if t == eot)
    assert labels[last_eot] == eot
    assert labels[-1] == chat_tok.eos_token_id
    check_chat_eot_in_mask(chat_tok, ids, labels)


def test_chat_eot_outside_mask_is_an_error(chat_tok) -> None:
    batch = CompletionOnlyCollator(chat_tok, chat=True)([{"prompt": "capital of France?", "completion": "Paris"}])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    eot = chat_end_of_turn_id(chat_tok)
    # what a trainer that masks everything but the answer text would do
    bad = [IGNORE_INDEX if t in (eot, chat_tok.eos_token_id) else lab for t, lab in zip(ids, labels, strict=True)]
    with pytest.raises(DataError, match="outside the loss mask"):
        check_chat_eot_in_mask(chat_tok, ids, bad)
    # and one whose answer lacks the end-of-turn token altogether
    cut = len(ids) - 2
    with pytest.raises(DataError, match="not in the answer part"):
        check_chat_eot_in_mask(chat_tok, ids[:cut], labels[:cut])
