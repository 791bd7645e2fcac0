"""Batched, length-sorted greedy generation equals one-by-one generation; rank classification scores."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_LLAMA, TINY_T5

from mixtune.eval.generation import generate, pad_batch
from mixtune.eval.rank import label_ids, rank_classify, score_candidates
from mixtune.eval.sharding import length_sorted, shard_for_process
from mixtune.models.load import load_model_and_tokenizer
from mixtune.models.spec import ModelConfig

# A larger init spread makes the random T5's greedy outputs differ from prompt to prompt.
T5 = {**TINY_T5, "initializer_factor": 5.0}


def tiny(config: dict, tokenizer: str | None = None):
    torch.manual_seed(0)
    model, tokenizer, kind = load_model_and_tokenizer(ModelConfig(config=config, dtype="fp32", tokenizer=tokenizer))
    return model.eval(), tokenizer, kind


@pytest.fixture(scope="module")
def prompts(bundled_dir) -> list[str]:
    """SuperNI prompts of different lengths (definition + the instance input), cut to 160 tokens."""
    from mixtune.encodings import encode_prompt, encoding_for_setting
    from mixtune.tasks.collection import open_collection
    from mixtune.tasks.matching import resolve_tasks

    collection = open_collection(path=bundled_dir)
    tasks = resolve_tasks(collection)[:6]
    spec = encoding_for_setting("zero_shot")
    out = []
    for task in tasks:
        info = collection.info(task)
        for row in collection.instances(task).slice(0, 2).to_pylist():
            out.append(encode_prompt(info, row["input"], spec))
    out += ["Input: yes.\nOutput: ",
            "Definition: Answer.\n\nNow complete the following example -\nInput: a b c.\nOutput: "]
    return [p[:400] for p in out]


@pytest.mark.integration
@pytest.mark.parametrize("config", [TINY_LLAMA, T5], ids=["causal-llama", "seq2seq-t5"])
def test_batched_length_sorted_equals_one_by_one(config, prompts, tokenizer_source):
    model, tokenizer, kind = tiny(config, tokenizer_source)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    assert max(lengths) > 3 * min(lengths)  # batches really mix lengths, so padding is exercised

    batched = generate(model, tokenizer, prompts, batch_size=5, max_new_tokens=8, kind=kind, progress=False)
    single = [generate(model, tokenizer, [p], batch_size=1, max_new_tokens=8, kind=kind, progress=False)[0]
              for p in prompts]
    assert batched == single
    assert len(set(batched)) > len(prompts) // 2  # not a degenerate model that says the same thing everywhere


def test_causal_decodes_only_new_tokens(prompts):
    model, tokenizer, kind = tiny(TINY_LLAMA)
    out = generate(model, tokenizer, prompts[:3], batch_size=3, max_new_tokens=4, kind=kind, progress=False)
    for prompt, text in zip(prompts[:3], out, strict=True):
        assert not text.startswith(tokenizer.decode(tokenizer(prompt)["input_ids"][1:6], skip_special_tokens=True))


def test_prompt_tokens_are_the_training_ones(prompts, tokenizer_source):
    """Generation sees a prompt exactly as the training collators built it (no EOS/[SEP] after a causal prompt)."""
    from mixtune.eval.generation import encode_prompts
    from mixtune.train.collators import tokenize_example

    _, tokenizer, _ = tiny(TINY_LLAMA, tokenizer_source)
    for kind in ("causal", "seq2seq"):
        [ids] = encode_prompts(tokenizer, [prompts[0]], kind)
        example = tokenize_example(tokenizer, prompts[0], "yes", kind=kind)
        prompt_len = sum(1 for label in example["labels"] if label == -100) if kind == "causal" else None
        assert ids == (example["input_ids"][:prompt_len] if kind == "causal" else example["input_ids"])
    [causal] = encode_prompts(tokenizer, [prompts[0]], "causal")
    assert causal[-1] != tokenizer.eos_token_id
    assert (causal[0] == tokenizer.bos_token_id) == (tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id)


def test_seq2seq_whose_pad_is_its_eos_predicts_text(prompts, bpe_tokenizer_dir):
    """A seq2seq model whose pad (so its decoder start) is its EOS: EOS trimming must not eat the start."""
    model, tokenizer, kind = tiny(T5, str(bpe_tokenizer_dir))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == model.config.decoder_start_token_id
    eos = tokenizer.eos_token_id
    bias = torch.full((model.get_output_embeddings().out_features,), -10.0)
    word = tokenizer("Paris", add_special_tokens=False)["input_ids"]
    bias[word[0]] = 10.0  # the first new token is certainly not EOS
    _biased_head(model, bias)
    out = generate(model, tokenizer, prompts[:3], batch_size=3, max_new_tokens=2, kind=kind, progress=False)
    assert out == [tokenizer.decode([word[0]] * 2).strip()] * 3 and eos not in word[:1]


def test_skip_and_on_batch(prompts):
    model, tokenizer, kind = tiny(TINY_LLAMA)
    seen: list[int] = []
    full = generate(model, tokenizer, prompts, batch_size=4, max_new_tokens=5, progress=False)
    part = generate(model, tokenizer, prompts, batch_size=4, max_new_tokens=5, skip=[0, 3], progress=False,
                    on_batch=lambda idx, texts: seen.extend(idx))
    assert sorted(seen) == [i for i in range(len(prompts)) if i not in (0, 3)]
    assert part[0] == part[3] == ""
    assert [p for i, p in enumerate(part) if i not in (0, 3)] == [p for i, p in enumerate(full) if i not in (0, 3)]


def test_helpers():
    ids, mask = pad_batch([[5, 6, 7], [8]], 0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[5, 6, 7], [8]], 0, left=False)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert length_sorted([2, 5, 1, 5]) == [1, 3, 0, 2]
    order = [4, 2, 0, 1, 3]
    shares = [shard_for_process(order, r, 2) for r in range(2)]
    assert shares == [[4, 0, 3], [2, 1, 1]]  # equal sizes, the short share padded with a repeat
    assert set(shares[0]) | set(shares[1]) == set(order)


def _biased_head(model, bias: torch.Tensor) -> None:
    """Replace the LM head by zero weights + `bias`: every position predicts softmax(bias)."""
    old = model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(bias)
    model.config.tie_word_embeddings = False
    model.set_output_embeddings(head)


@pytest.mark.parametrize("config", [TINY_LLAMA, T5], ids=["causal-llama", "seq2seq-t5"])
def test_rank_classification_picks_the_more_likely_label(config):
    model, tokenizer, kind = tiny(config)
    vocab = model.get_output_embeddings().out_features
    yes, no = (tokenizer.convert_tokens_to_ids(t) for t in ("yes", "no"))
    eos = tokenizer.eos_token_id
    records = [{"Task": "t", "prompt": "Is the sky blue? Output: ",
                "Instance": {"id": "1", "input": "", "output": ["yes"]}}]
    for favoured, expected in ((yes, "yes"), (no, "no")):
        bias = torch.zeros(vocab)
        bias[favoured] = 4.0
        _biased_head(model, bias)
        [out] = rank_classify(model, tokenizer, records, {"t": ["no", "yes"]}, kind=kind)
        assert out["prediction"] == expected
        # every position predicts softmax(bias), so a label's score is a sum of known log-probabilities
        logp = torch.log_softmax(bias, dim=0)
        for label in ("no", "yes"):
            assert label_ids(tokenizer, label, [eos]) == [tokenizer.convert_tokens_to_ids(label), eos]
            want = float(logp[tokenizer.convert_tokens_to_ids(label)] + logp[eos])
            assert math.isclose(out["label_scores"][label], want, abs_tol=1e-3)


@pytest.mark.integration
@pytest.mark.parametrize("config", [TINY_LLAMA, T5], ids=["causal-llama", "seq2seq-t5"])
def test_rank_scores_do_not_depend_on_batching(config, prompts, tokenizer_source):
    model, tokenizer, kind = tiny(config, tokenizer_source)
    pairs = [(p, label) for p in prompts[:5] for label in ("yes", "no", "maybe not")]
    batched = score_candidates(model, tokenizer, pairs, batch_size=6, kind=kind)
    single = [score_candidates(model, tokenizer, [pair], batch_size=1, kind=kind)[0] for pair in pairs]
    assert batched == pytest.approx(single, rel=5e-5, abs=1e-4)  # long BPE prompts: sums of ~500
    assert len({round(s, 3) for s in batched}) > 3
