"""The pointer-generator encoder-decoder (model.encoder_decoder.pointer_generator): a real MiniLM warm start."""

from __future__ import annotations

import pytest
import torch

from mixtune.architectures.pointer_generator import PointerGeneratorModel
from mixtune.models.load import load_model_and_tokenizer
from mixtune.models.spec import ModelConfig

SMALL = {"encoder_layers": 1, "decoder_layers": 1, "freeze_encoder": True}
PROMPTS = ["Definition: copy the input. Input: red apple pie. Output:", "Input: hello"]


def _model(pointer: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    return load_model_and_tokenizer(ModelConfig(encoder_decoder={**SMALL, "pointer_generator": pointer}))


def _labels(tok, texts: list[str]) -> torch.Tensor:
    ids = tok(texts, return_tensors="pt", padding=True)["input_ids"][:, 1:].clone()  # drop [CLS], keep [SEP]
    ids[ids == tok.pad_token_id] = -100
    return ids


def test_output_is_a_distribution_that_can_only_copy_when_the_gate_says_copy() -> None:
    model, tok, kind = _model()
    assert kind == "seq2seq" and isinstance(model, PointerGeneratorModel)
    assert model.config.model_type == "mixtune-pointer-generator"
    src = tok(PROMPTS, return_tensors="pt", padding=True)
    labels = _labels(tok, ["red apple pie", "hello"])
    out = model(**src, labels=labels)
    torch.testing.assert_close(out.logits.exp().sum(-1), torch.ones(labels.shape))
    # the loss is the mean NLL of the label tokens, or their sum over num_items_in_batch (Trainer's convention)
    picked = out.logits.gather(-1, labels.clamp(min=0)[..., None])[..., 0][labels != -100]
    torch.testing.assert_close(out.loss, -picked.mean())
    torch.testing.assert_close(model(**src, labels=labels, num_items_in_batch=20).loss, -picked.sum() / 20)

    with torch.no_grad():
        model.copy_gate.bias.fill_(-1e4)  # g = 0: all mass on tokens of the own (unpadded) source
    probs = model(**src, labels=labels).logits.exp()
    for row, (ids, mask) in enumerate(zip(src["input_ids"], src["attention_mask"], strict=True)):
        own = ids[mask.bool()].unique()
        torch.testing.assert_close(probs[row][:, own].sum(-1), torch.ones(labels.shape[1]))
    assert tok.pad_token_id not in src["input_ids"][1][src["attention_mask"][1].bool()]
    assert probs[1][:, tok.pad_token_id].max() < 1e-20  # the second prompt's padding is never copied


@pytest.mark.integration
def test_learns_to_copy_far_sooner_than_the_plain_softmax_head() -> None:
    """Same warm start, same data, same steps: a copy task whose words the model has never seen as outputs."""
    import random

    rng = random.Random(0)
    words = ["river", "candle", "orbit", "mosaic", "lantern", "harbor", "velvet", "quartz", "meadow", "falcon",
             "ember", "glacier"]
    data = [" ".join(rng.sample(words, 4)) for _ in range(64)]
    final = {}
    for pointer in (False, True):
        model, tok, _ = _model(pointer)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        for step in range(40):
            batch = data[(step * 8) % 64:][:8]
            src = tok([f"Copy: {x}" for x in batch], return_tensors="pt", padding=True)
            loss = model(**src, labels=_labels(tok, batch)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            held = [" ".join(rng.sample(words, 4)) for _ in range(16)]
            src = tok([f"Copy: {x}" for x in held], return_tensors="pt", padding=True)
            final[pointer] = model(**src, labels=_labels(tok, held)).loss.item()
    assert final[True] < 0.5 * final[False], final


@pytest.mark.integration
def test_trains_saves_reloads_and_generates_the_same(tmp_path) -> None:
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    from mixtune.eval.generation import generate
    from mixtune.train.collators import Seq2SeqCollator

    model, tok, _ = _model()
    examples = [{"prompt": "Definition: answer yes or no. Input: is the sky blue? Output:", "completion": "yes"},
                {"prompt": "Definition: copy the input. Input: red apple. Output:", "completion": "red apple"}] * 2
    gate_before = model.copy_gate.weight.detach().clone()
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                                    learning_rate=1e-3, report_to=[], use_cpu=True, remove_unused_columns=False,
                                    save_strategy="no", disable_tqdm=True)
    collator = Seq2SeqCollator(tok, model, max_source_length=64, max_target_length=8)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=examples, data_collator=collator,
                             processing_class=tok)
    trainer.train()
    assert not torch.equal(model.copy_gate.weight, gate_before)

    final = tmp_path / "final"
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    again, _, kind = load_model_and_tokenizer(ModelConfig(name_or_path=str(final)))
    assert kind == "seq2seq" and isinstance(again, PointerGeneratorModel)
    state, state2 = model.state_dict(), again.state_dict()
    assert state.keys() == state2.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, state2[name]), name

    model.eval()
    again.eval()
    src = tok(PROMPTS, return_tensors="pt", padding=True)
    kw = {"max_new_tokens": 6, "do_sample": False}
    cached = model.generate(**src, **kw)
    assert torch.equal(again.generate(**src, **kw), cached)
    assert torch.equal(model.generate(**src, use_cache=False, **kw), cached)
    batched = generate(model, tok, PROMPTS, batch_size=2, max_new_tokens=6, kind="seq2seq")
    assert batched == [generate(model, tok, [p], batch_size=1, max_new_tokens=6, kind="seq2seq")[0] for p in PROMPTS]


def test_clear_errors() -> None:
    model, tok, _ = _model()
    embeds = model.get_input_embeddings()(tok(["hi"], return_tensors="pt")["input_ids"])
    with pytest.raises(ValueError, match="needs input_ids"):
        model(inputs_embeds=embeds, decoder_input_ids=torch.tensor([[tok.cls_token_id]]))
    from transformers import BertConfig, BertLMHeadModel, BertModel

    enc = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64))
    dec = BertLMHeadModel(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, is_decoder=True, add_cross_attention=True))
    with pytest.raises(ValueError, match="one vocabulary"):
        PointerGeneratorModel(encoder=enc, decoder=dec)


@pytest.mark.integration
def test_bf16_weights_and_bf16_autocast() -> None:
    """dtype: bf16 puts the copy head in bf16 with the rest; the mixture itself is computed in float32."""
    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(ModelConfig(encoder_decoder={**SMALL, "pointer_generator": True},
                                                         dtype="bf16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    src = tok(PROMPTS, return_tensors="pt", padding=True)
    labels = _labels(tok, ["red apple pie", "hello"])
    out = model(**src, labels=labels)
    out.loss.backward()
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.loss)
    assert model.copy_gate.weight.grad is not None
    fp32, _, _ = _model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = fp32(**src, labels=labels)
    torch.testing.assert_close(auto.logits.exp().sum(-1), torch.ones(labels.shape), atol=1e-3, rtol=0)


def test_beam_search_scores_are_the_models_own_log_probabilities() -> None:
    """generate() hands every beam its own source ids: each returned beam's score (length_penalty 0: the sum of
    its token log-probs) equals the log-probability a teacher-forced forward pass gives that sequence."""
    model, tok, _ = _model()
    model.eval()
    with torch.no_grad():
        model.copy_gate.bias.fill_(-2.0)  # lean on copying, so wrong source ids would change the scores
    src = tok(PROMPTS, return_tensors="pt", padding=True)
    out = model.generate(**src, num_beams=3, num_return_sequences=3, max_new_tokens=5, length_penalty=0.0,
                         do_sample=False, output_scores=True, return_dict_in_generate=True)
    seqs = out.sequences  # (batch * 3, 1 + new): decoder start, then the beam's tokens
    rows = torch.arange(len(PROMPTS)).repeat_interleave(3)
    with torch.no_grad():
        log_probs = model(input_ids=src["input_ids"][rows], attention_mask=src["attention_mask"][rows],
                          decoder_input_ids=seqs[:, :-1]).logits
    picked = log_probs.gather(-1, seqs[:, 1:, None])[..., 0]
    eos = model.generation_config.eos_token_id
    for row, seq in enumerate(seqs[:, 1:].tolist()):
        length = next((i + 1 for i, t in enumerate(seq) if t == eos), len(seq))  # what follows EOS is filler
        torch.testing.assert_close(picked[row, :length].sum(), out.sequences_scores[row], atol=1e-4, rtol=1e-4)


def test_registered_only_when_a_checkpoint_of_its_type_is_loaded(tmp_path) -> None:
    """A fresh process: loading another model leaves transformers' Auto classes alone; loading a saved
    pointer-generator registers its type and gives the same model back."""
    import subprocess
    import sys

    model, tok, _ = _model()
    model.save_pretrained(tmp_path / "pg")
    tok.save_pretrained(tmp_path / "pg")
    code = f"""
import torch
from transformers import CONFIG_MAPPING
from mixtune.models.load import load_model_and_tokenizer
from mixtune.models.spec import ModelConfig
load_model_and_tokenizer(ModelConfig(config={{"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}}))
print("after llama:", "mixtune-pointer-generator" in CONFIG_MAPPING)
model, tok, kind = load_model_and_tokenizer(ModelConfig(name_or_path={str(tmp_path / "pg")!r}))
print("after checkpoint:", "mixtune-pointer-generator" in CONFIG_MAPPING, type(model).__name__, kind)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "after llama: False" in out.stdout
    assert "after checkpoint: True PointerGeneratorModel seq2seq" in out.stdout
