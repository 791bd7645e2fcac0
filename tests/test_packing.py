"""Packing: a packed batch computes exactly what the same examples compute one by one."""

from __future__ import annotations

import json

import pytest
import torch

from mixtune.errors import DataError
from mixtune.train.collators import IGNORE_INDEX, prompt_ids, tokenize_example
from mixtune.train.modeling import ModelConfig, load_model_and_tokenizer
from mixtune.train.packing import PackingCollator, block_causal_mask, pack_lengths

LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def examples(bundled_dir) -> list[dict]:
    """Real SuperNI instances of two bundled tasks, as short definition + input prompts."""
    out = []
    for name in ("task1146_country_capital", "task063_first_i_elements"):
        task = json.loads((bundled_dir / "tasks" / f"{name}.json").read_text(encoding="utf-8"))
        for inst in task["Instances"][:3]:
            out.append({"prompt": f"Definition: {task['Definition'][0][:120]} Input: {inst['input']} Output: ",
                        "completion": inst["output"][0], "task": name})
    return out


def _model(attn: str):
    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(ModelConfig(config=LLAMA, attn_implementation=attn))
    return model.eval(), tok


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_logits_equal_separate_runs(examples, attn) -> None:
    model, tok = _model(attn)
    singles = [tokenize_example(tok, e["prompt"], e["completion"]) for e in examples]
    max_length = max(len(s["input_ids"]) for s in singles) * 2
    coll = PackingCollator(tok, max_length=max_length)
    batch = coll(examples)
    assert batch["input_ids"].shape[0] < len(examples)  # several examples share rows
    with torch.no_grad():
        packed = model(**batch)
        loss_sum, n_tokens, separate_logits = 0.0, 0, []
        for s in singles:
            ids, labels = torch.tensor([s["input_ids"]]), torch.tensor([s["labels"]])
            out = model(input_ids=ids, labels=labels)  # unpadded, alone
            n = int((labels[:, 1:] != IGNORE_INDEX).sum())
            loss_sum += out.loss.item() * n
            n_tokens += n
            separate_logits.append(out.logits[0])
    assert n_tokens == int((batch["labels"] != IGNORE_INDEX).sum())
    assert abs(packed.loss.item() - loss_sum / n_tokens) < 1e-5
    # every packed segment has the logits of its separate run
    seen = 0
    for r in range(batch["input_ids"].shape[0]):
        starts = (batch["position_ids"][r] == 0).nonzero().flatten().tolist()
        for start in starts:
            ids = batch["input_ids"][r, start:].tolist()
            match = [i for i, s in enumerate(singles) if ids[: len(s["input_ids"])] == s["input_ids"]]
            if not match:
                continue  # padding (position 0 of the padding tail)
            n = len(singles[match[0]]["input_ids"])
            torch.testing.assert_close(packed.logits[r, start:start + n], separate_logits[match[0]],
                                       atol=1e-5, rtol=1e-5)
            seen += 1
    assert seen == len(examples)


def test_position_ids_alone_would_leak(examples) -> None:
    """Control: the 4D mask is what isolates examples (plain causal attention over the row differs)."""
    model, tok = _model("sdpa")
    batch = PackingCollator(tok, max_length=10_000)(examples[:3])
    assert batch["input_ids"].shape[0] == 1
    with torch.no_grad():
        isolated = model(**batch).logits
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    second = batch["position_ids"][0].tolist().index(0, 1)
    assert torch.allclose(isolated[0, :second], leaky[0, :second], atol=1e-5)  # first example: nothing before it
    assert (isolated[0, second:] - leaky[0, second:]).abs().max() > 1e-3


def test_boundaries_positions_and_mask(examples) -> None:
    _, tok = _model("sdpa")
    coll = PackingCollator(tok, max_length=200)
    batch = coll(examples)
    singles = [tokenize_example(tok, e["prompt"], e["completion"]) for e in examples]
    mask = batch["attention_mask"]
    rows, length = batch["input_ids"].shape
    assert mask.shape == (rows, 1, length, length) and mask.dtype == torch.float32
    blocked = torch.finfo(torch.float32).min
    for r in range(rows):
        pos = batch["position_ids"][r].tolist()
        n_real = int((batch["input_ids"][r] != tok.pad_token_id).sum())
        starts = [i for i in range(n_real) if pos[i] == 0]
        ends = [*starts[1:], n_real]
        for start, end in zip(starts, ends, strict=True):
            assert pos[start:end] == list(range(end - start))  # positions restart per example
            assert batch["labels"][r, start].item() == IGNORE_INDEX  # no target across the boundary
            block = mask[r, 0, start:end, start:end]
            assert torch.equal(block == 0, torch.ones_like(block, dtype=torch.bool).tril())
            assert (mask[r, 0, start:end, :start] == blocked).all()  # never attends to earlier examples
            assert (mask[r, 0, start:end, end:] == blocked).all()
        for i in range(n_real, length):  # padding attends to itself only
            assert (mask[r, 0, i] == 0).nonzero().flatten().tolist() == [i]
            assert batch["labels"][r, i].item() == IGNORE_INDEX
    stats = coll.last_stats
    assert stats.useful_tokens == sum(len(s["input_ids"]) for s in singles)
    assert stats.useful_fraction == stats.useful_tokens / (rows * length)
    assert stats.trained_tokens == int((batch["labels"] != IGNORE_INDEX).sum())


@pytest.mark.parametrize("strategy", ["balanced", "bfd"])
def test_pack_lengths_fits_and_is_deterministic(strategy) -> None:
    lengths = [37, 5, 90, 64, 12, 12, 50, 99, 1, 30, 44, 70]
    rows = pack_lengths(lengths, 100, strategy)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert all(row == sorted(row) for row in rows)
    assert rows == pack_lengths(lengths, 100, strategy)
    assert len(rows) <= 6  # 514 tokens: at most one row more than the lower bound
    with pytest.raises(ValueError, match="does not fit"):
        pack_lengths([101], 100, strategy)


def test_bf16_mask_runs_under_sdpa(examples) -> None:
    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(ModelConfig(config=LLAMA, dtype="bf16"))
    batch = PackingCollator(tok, max_length=400, mask_dtype=torch.bfloat16)(examples[:3])
    assert batch["attention_mask"].dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_block_causal_mask_small() -> None:
    mask = block_causal_mask(torch.tensor([[0, 0, 1, 1, 1, -1]]))
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0],
                       [0, 0, 1, 0, 0, 0],
                       [0, 0, 1, 1, 0, 0],
                       [0, 0, 1, 1, 1, 0],
                       [0, 0, 0, 0, 0, 1]]


def test_all_masked_packed_batch_is_an_error(examples) -> None:
    _, tok = _model("sdpa")
    ids = prompt_ids(tok, examples[0]["prompt"])
    with pytest.raises(DataError, match="every label of this batch is -100"):
        PackingCollator(tok, max_length=400)([{"input_ids": ids, "labels": [IGNORE_INDEX] * len(ids)}])
