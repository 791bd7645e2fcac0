"""Completion-only causal batches and seq2seq batches, with the real MiniLM tokenizer and tiny models."""

from __future__ import annotations

import pytest
import torch

from mixtune.errors import DataError
from mixtune.train.collators import (
    IGNORE_INDEX,
    CompletionOnlyCollator,
    Seq2SeqCollator,
    chat_end_of_turn_id,
    check_chat_eot_in_mask,
    prompt_ids,
    tokenize_example,
)
from mixtune.train.modeling import ModelConfig, load_model_and_tokenizer, load_tokenizer

LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
         "num_attention_heads": 2}
T5 = {"model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 16, "num_layers": 1, "num_heads": 2}
PROMPT = "Definition: answer the question. Now complete the following example - Input: capital of France? Output: "


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("minilm")


@pytest.fixture(scope="module")
def chat_tok():
    return load_tokenizer(ModelConfig(config=LLAMA, chat_template="default"))


def test_labels_mask_prompt_exactly_and_train_eos(tok) -> None:
    p = tok(PROMPT, add_special_tokens=False)["input_ids"]
    c = tok("Paris is it", add_special_tokens=False)["input_ids"]
    ex = tokenize_example(tok, PROMPT, "Paris is it")
    # [CLS] prompt completion [SEP]: BOS in front because the tokenizer puts [CLS] there
    assert ex["input_ids"] == [tok.bos_token_id, *p, *c, tok.eos_token_id]
    n_prompt = 1 + len(p)
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == [*c, tok.eos_token_id]
    assert ex["truncated"] is None
    assert prompt_ids(tok, PROMPT) == ex["input_ids"][:n_prompt]


def test_truncation_keeps_completion_and_prompt_end(tok) -> None:
    full = tokenize_example(tok, PROMPT, "Paris")
    ex = tokenize_example(tok, PROMPT, "Paris", max_length=8)
    assert len(ex["input_ids"]) == 8 and ex["truncated"] == "prompt"
    trained = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert trained == [t for t in full["labels"] if t != IGNORE_INDEX]  # whole completion + EOS
    # BOS kept, then the end of the prompt (the answer cue right before the completion)
    assert ex["input_ids"][0] == tok.bos_token_id
    n_c = len(trained)
    assert ex["input_ids"][1:8 - n_c] == full["input_ids"][len(full["input_ids"]) - 7:len(full["input_ids"]) - n_c]


def test_overlong_completion_is_cut_not_dropped(tok) -> None:
    ex = tokenize_example(tok, PROMPT, "a very long answer " * 10, max_length=12)
    assert len(ex["input_ids"]) == 12 and ex["truncated"] == "completion"
    assert sum(t != IGNORE_INDEX for t in ex["labels"]) == 12 - 6  # half the room kept for the prompt


def test_completion_only_collator_pads_and_masks(tok) -> None:
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


def test_seq2seq_collator_decoder_start(tok) -> None:
    model, t5tok, kind = load_model_and_tokenizer(ModelConfig(config=T5))
    assert kind == "seq2seq"
    coll = Seq2SeqCollator(t5tok, model, max_source_length=10, max_target_length=4)
    batch = coll([{"prompt": PROMPT, "completion": "Paris"}, {"prompt": "q", "completion": "a long answer here"}])
    src0 = t5tok(PROMPT, truncation=True, max_length=10)["input_ids"]
    assert batch["input_ids"][0].tolist() == src0 and src0[-1] == t5tok.sep_token_id  # tokenizer's own specials
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
    assert eot == chat_tok.convert_tokens_to_ids("<|im_end|>")
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
