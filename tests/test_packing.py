"""Packing: a packed batch computes exactly what the same examples compute one by one."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_LLAMA

from mixtune.errors import DataError
from mixtune.models.load import load_model_and_tokenizer
from mixtune.models.spec import ModelConfig
from mixtune.train.collators import IGNORE_INDEX, prompt_ids, tokenize_example
from mixtune.train.packing import (
    PackingCollator,
    block_causal_mask,
    flex_block_mask,
    pack_lengths,
    packing_layout,
)

LLAMA = {**TINY_LLAMA, "hidden_size": 64, "intermediate_size": 128}  # wider: logits compared to 1e-5


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


def _model(attn: str, tokenizer: str | None = None):
    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(ModelConfig(config=LLAMA, attn_implementation=attn, tokenizer=tokenizer))
    return model.eval(), tok


@pytest.mark.integration
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_logits_equal_separate_runs(examples, attn, tokenizer_source) -> None:
    model, tok = _model(attn, tokenizer_source)
    singles = [tokenize_example(tok, e["prompt"], e["completion"]) for e in examples]
    max_length = max(len(s["input_ids"]) for s in singles) * 2
    # sdpa takes the boolean mask; eager adds the mask to its scores, so it gets the additive one
    coll = PackingCollator(tok, max_length=max_length, mask_dtype=torch.bool if attn == "sdpa" else torch.float32)
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


def test_boundaries_positions_and_mask(examples, real_tokenizer) -> None:
    tok = real_tokenizer
    coll = PackingCollator(tok, max_length=400)
    batch = coll(examples)
    singles = [tokenize_example(tok, e["prompt"], e["completion"]) for e in examples]
    mask = batch["attention_mask"]
    rows, length = batch["input_ids"].shape
    assert mask.shape == (rows, 1, length, length) and mask.dtype == torch.bool  # boolean: sdpa's own form
    blocked = False
    for r in range(rows):
        pos = batch["position_ids"][r].tolist()
        n_real = int((batch["labels"][r] != IGNORE_INDEX).nonzero().max()) + 1  # the last trained token (EOS)
        starts = [i for i in range(n_real) if pos[i] == 0]
        ends = [*starts[1:], n_real]
        for start, end in zip(starts, ends, strict=True):
            assert pos[start:end] == list(range(end - start))  # positions restart per example
            assert batch["labels"][r, start].item() == IGNORE_INDEX  # no target across the boundary
            block = mask[r, 0, start:end, start:end]
            assert torch.equal(block, torch.ones_like(block, dtype=torch.bool).tril())
            assert (mask[r, 0, start:end, :start] == blocked).all()  # never attends to earlier examples
            assert (mask[r, 0, start:end, end:] == blocked).all()
        for i in range(n_real, length):  # padding attends to itself only
            assert mask[r, 0, i].nonzero().flatten().tolist() == [i]
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


def test_boolean_mask_runs_under_sdpa_in_bf16(examples) -> None:
    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(ModelConfig(config=LLAMA, dtype="bf16"))
    batch = PackingCollator(tok, max_length=400)(examples[:3])
    assert batch["attention_mask"].dtype == torch.bool
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_layout_follows_the_attention_kernel() -> None:
    assert packing_layout("flash_attention_2") == packing_layout("flash_attention_3") == "padding_free"
    assert packing_layout("kernels-community/flash-attn") == "padding_free"
    assert packing_layout("flex_attention") == "block_mask"
    assert packing_layout("sdpa") == packing_layout("eager") == packing_layout(None) == "mask4d"


def test_padding_free_layout_is_transformers_flattening(examples, real_tokenizer) -> None:
    """One row, no padding: positions restart, cu_seq_lens mark each example, no mask (FlashAttention varlen)."""
    tok = real_tokenizer
    singles = [tokenize_example(tok, e["prompt"], e["completion"]) for e in examples]
    batch = PackingCollator(tok, max_length=400, layout="padding_free")(examples)
    lengths = [len(s["input_ids"]) for s in singles]
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, sum(lengths))
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == bounds
    assert batch["max_length_q"] == batch["max_length_k"] == max(lengths)
    for s, lo, hi in zip(singles, bounds, bounds[1:], strict=False):
        assert batch["input_ids"][0, lo:hi].tolist() == s["input_ids"]
        assert batch["position_ids"][0, lo:hi].tolist() == list(range(hi - lo))
        assert batch["labels"][0, lo].item() == IGNORE_INDEX  # no target across the boundary
        assert batch["labels"][0, lo + 1:hi].tolist() == s["labels"][1:]


def test_block_mask_layout_for_flex(examples, real_tokenizer) -> None:
    """Segment ids per row, turned into a flex BlockMask whose dense form is the 4D block-causal mask."""
    from torch.nn.attention.flex_attention import create_mask

    tok = real_tokenizer
    kwargs = {"max_length": 400}
    flex = PackingCollator(tok, layout="block_mask", **kwargs)(examples)
    dense = PackingCollator(tok, **kwargs)(examples)
    assert "attention_mask" not in flex and torch.equal(flex["input_ids"], dense["input_ids"])
    assert torch.equal(flex["position_ids"], dense["position_ids"]) and torch.equal(flex["labels"], dense["labels"])
    segments = flex["packed_segment_ids"]
    n_tokens = sum(len(tokenize_example(tok, e["prompt"], e["completion"])["input_ids"]) for e in examples)
    assert int((segments >= 0).sum()) == n_tokens  # every real token in a segment, padding -1
    block = flex_block_mask(segments)
    rows, length = segments.shape
    materialised = create_mask(block.mask_mod, rows, 1, length, length, device="cpu")
    assert torch.equal(materialised, dense["attention_mask"])


def test_block_causal_mask_small() -> None:
    mask = block_causal_mask(torch.tensor([[0, 0, 1, 1, 1, -1]]), torch.float32)
    assert torch.equal(mask == 0, block_causal_mask(torch.tensor([[0, 0, 1, 1, 1, -1]])))  # bool: the same rule
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


def test_trainer_turns_segment_ids_into_a_flex_block_mask(examples, tmp_path) -> None:
    """The block-mask layout's segment ids become flex's BlockMask on the device, inside the trainer."""
    from torch.nn.attention.flex_attention import BlockMask, create_mask
    from transformers import TrainingArguments

    from mixtune.train.trainer import build_trainer

    model, tok = _model("sdpa")
    batch = PackingCollator(tok, max_length=400, layout="block_mask")(examples)
    dense = PackingCollator(tok, max_length=400)(examples)["attention_mask"]
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], max_steps=1)
    trainer = build_trainer(model=model, tokenizer=tok, kind="causal", args=args, train_dataset=[],
                            data_collator=None, callbacks=[])
    inputs = trainer._prepare_inputs(dict(batch))
    assert "packed_segment_ids" not in inputs and isinstance(inputs["attention_mask"], BlockMask)
    rows, length = batch["input_ids"].shape
    assert torch.equal(create_mask(inputs["attention_mask"].mask_mod, rows, 1, length, length, device="cpu"), dense)
