"""Model building from the recipe's `model:` section: tiny real models, real MiniLM tokenizer."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import TINY_LLAMA, TINY_T5

from mixtune.config import validate
from mixtune.errors import ConfigError
from mixtune.models.load import load_model_and_tokenizer
from mixtune.models.spec import ModelConfig
from mixtune.models.tokenizer import load_tokenizer


def test_minilm_tokenizer_special_ids() -> None:
    tok = load_tokenizer("minilm")
    assert tok.pad_token_id == 0
    assert tok.eos_token_id == tok.convert_tokens_to_ids("[SEP]")
    assert tok.bos_token_id == tok.convert_tokens_to_ids("[CLS]")


def test_tiny_causal_from_config() -> None:
    torch.manual_seed(0)
    model, tok, kind = load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA))
    assert kind == "causal"
    assert model.config.vocab_size == len(tok) == model.get_input_embeddings().num_embeddings
    assert model.config.pad_token_id == tok.pad_token_id == 0
    assert model.generation_config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("[SEP]")
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"


def test_generate_stops_at_eos() -> None:
    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA))
    # Make the head always prefer EOS: zero weights, a bias towards EOS.
    head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 10.0
    model.lm_head = head
    ids = torch.tensor([tok("hello world", add_special_tokens=False)["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 1
    assert out[0, -1].item() == tok.eos_token_id


def test_tiny_seq2seq_from_config() -> None:
    torch.manual_seed(0)
    model, tok, kind = load_model_and_tokenizer(ModelConfig(config=TINY_T5, dtype="bf16"))
    assert kind == "seq2seq"
    assert model.dtype == torch.bfloat16
    assert model.config.decoder_start_token_id == tok.pad_token_id == 0
    assert model.generation_config.eos_token_id == tok.eos_token_id
    src = tok(["a question"], return_tensors="pt")
    labels = torch.tensor([[2054, tok.eos_token_id]])
    out = model(input_ids=src["input_ids"], attention_mask=src["attention_mask"], labels=labels)
    assert torch.isfinite(out.loss)


def test_kind_mismatch_and_source_errors() -> None:
    with pytest.raises(ConfigError, match="model.kind"):
        load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA, kind="seq2seq"))
    with pytest.raises(ConfigError, match="exactly one"):
        validate(ModelConfig, {"name_or_path": "x", "config": TINY_LLAMA}, "r.yaml")
    with pytest.raises(ConfigError, match="exactly one"):
        validate(ModelConfig, {}, "r.yaml")
    with pytest.raises(ConfigError, match="unknown key"):
        validate(ModelConfig, {"config": TINY_LLAMA, "loar": {"r": 4}}, "r.yaml")
    with pytest.raises(ConfigError, match="model.name_or_path"):
        load_model_and_tokenizer(ModelConfig(name_or_path="/nonexistent/model-dir"))


def test_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA, chat_template="default"))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    again, tok2, kind = load_model_and_tokenizer(ModelConfig(name_or_path=str(tmp_path)))
    assert kind == "causal"
    assert len(tok2) == len(tok) and tok2.eos_token_id == tok.eos_token_id and tok2.pad_token_id == 0
    assert tok2.chat_template == tok.chat_template
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == again.generation_config.eos_token_id == [tok.eos_token_id, eot]
    ids = torch.tensor([[101, 2054, 2003, 102]])
    model.eval()
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits)


def test_lora_only_adapters_trainable() -> None:
    model, _, _ = load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA, lora={"r": 4, "alpha": 8}))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # every linear projection of the layers got an adapter ('all-linear'), the head did not
    assert any("q_proj.lora_A" in n for n in trainable) and any("down_proj.lora_B" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)


@pytest.mark.integration
@pytest.mark.parametrize("tied", [False, True])
def test_lora_trains_the_rows_of_added_chat_markers(tied: bool, tokenizer_source: str) -> None:
    """LoRA freezes the embeddings; the default chat template's new markers must not keep random rows."""
    from mixtune.models.tokenizer import chat_marker_ids

    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(ModelConfig(config={**TINY_LLAMA, "tie_word_embeddings": tied},
                                                         chat_template="default", lora={"r": 4, "alpha": 8},
                                                         tokenizer=tokenizer_source))
    markers = chat_marker_ids(tok)
    assert markers == tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    extra = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert extra and all("trainable_tokens" in n for n in extra)
    assert len(extra) == (1 if tied else 2)  # an untied LM head gets its own rows
    base = model.get_base_model()
    before_in = base.get_input_embeddings().weight.detach().clone()
    before_out = base.get_output_embeddings().weight.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    words = tok("this is", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[markers[0], *words, markers[1], *words[:1]]])
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    merged = model.merge_and_unload()
    for after, before in ((merged.get_input_embeddings().weight, before_in),
                          (merged.get_output_embeddings().weight, before_out)):
        changed = (after - before).abs().sum(-1) > 0
        assert changed[markers].all() and changed.sum() == len(markers)
    plain, _, _ = load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA, lora={"r": 4, "alpha": 8},
                                                        tokenizer=tokenizer_source))
    assert all("lora_" in n for n, p in plain.named_parameters() if p.requires_grad)  # no markers, no extra rows


def test_lora_bad_targets() -> None:
    with pytest.raises(ConfigError, match="target_modules"):
        load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA, lora={"target_modules": ["no_such_proj"]}))


def test_gradient_checkpointing_enabled_and_trains() -> None:
    model, _, _ = load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA, gradient_checkpointing=True))
    assert model.is_activation_checkpointing
    model.train()
    ids = torch.tensor([[101, 2054, 2003, 102]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.get_input_embeddings().weight.grad is not None


def test_chat_template_default_adds_markers() -> None:
    _, tok, _ = load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA, chat_template="default"))
    from mixtune.encodings import DEFAULT_END_OF_TURN

    eot = tok.convert_tokens_to_ids(DEFAULT_END_OF_TURN)
    assert eot != tok.unk_token_id
    assert tok(DEFAULT_END_OF_TURN, add_special_tokens=False)["input_ids"] == [eot]


def test_trust_remote_code_warns(tmp_path) -> None:
    model, tok, _ = load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="trust_remote_code"):
        load_model_and_tokenizer(ModelConfig(name_or_path=str(tmp_path), trust_remote_code=True))


def test_init_from_warm_starts_matching_tensors() -> None:
    from safetensors.torch import load_file

    from mixtune.minilm import minilm_path

    bert = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 1, "num_attention_heads": 12,
            "intermediate_size": 1536, "is_decoder": True}
    model, tok, kind = load_model_and_tokenizer(ModelConfig(config=bert, init_from="minilm"))
    assert kind == "causal"
    minilm = load_file(f"{minilm_path()}/model.safetensors")
    name = "embeddings.word_embeddings.weight"
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, minilm[name])
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight,
                       minilm["encoder.layer.0.attention.self.query.weight"])
    with pytest.raises(ConfigError, match="model.init_from"):
        load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA, init_from="minilm"))  # nothing matches
    with pytest.raises(ConfigError, match="init_from"):
        validate(ModelConfig, {"name_or_path": "x", "init_from": "minilm"}, "r.yaml")


ENC_DEC = {"encoder_layers": 1, "decoder_layers": 1}


def test_encoder_decoder_warm_started_from_minilm() -> None:
    from safetensors.torch import load_file

    from mixtune.minilm import minilm_path

    model, tok, kind = load_model_and_tokenizer(ModelConfig(encoder_decoder={**ENC_DEC, "freeze_encoder": True}))
    assert kind == "seq2seq" and type(model).__name__ == "EncoderDecoderModel"
    assert model.config.encoder.num_hidden_layers == 1 and model.config.decoder.num_hidden_layers == 1
    assert model.config.decoder.is_decoder and model.config.decoder.add_cross_attention
    cls, sep = tok.convert_tokens_to_ids("[CLS]"), tok.convert_tokens_to_ids("[SEP]")
    for obj in (model.config, model.generation_config):
        assert (obj.decoder_start_token_id, obj.eos_token_id, obj.pad_token_id) == (cls, sep, 0)
    # encoder and decoder self-attention come from MiniLM layer 0; the LM head is tied to the decoder embeddings
    minilm = load_file(f"{minilm_path()}/model.safetensors")
    q = next(k for k in minilm if k.endswith("encoder.layer.0.attention.self.query.weight"))
    torch.testing.assert_close(model.encoder.encoder.layer[0].attention.self.query.weight, minilm[q])
    torch.testing.assert_close(model.decoder.bert.encoder.layer[0].attention.self.query.weight, minilm[q])
    assert model.decoder.cls.predictions.decoder.weight is model.decoder.bert.embeddings.word_embeddings.weight
    # frozen encoder: no encoder parameter trains, every decoder parameter does
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    unfrozen, _, _ = load_model_and_tokenizer(ModelConfig(encoder_decoder=ENC_DEC))
    assert all(p.requires_grad for p in unfrozen.parameters())


class _Records(logging.Handler):
    """The messages that reach transformers' model-loading logger (it does not propagate to the root)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _Records:
        logging.getLogger("transformers.modeling_utils").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("transformers.modeling_utils").removeHandler(self)


def test_warm_start_says_in_one_line_what_is_new_instead_of_a_load_report(caplog) -> None:
    caplog.set_level(logging.INFO, logger="mixtune")
    with _Records() as seen:
        load_model_and_tokenizer(ModelConfig(encoder_decoder={**ENC_DEC, "pointer_generator": True}))
    shown = "\n".join(seen.messages)
    assert "LOAD REPORT" not in shown and "corrupted" not in shown
    lines = [r.getMessage() for r in caplog.records if r.name == "mixtune.models.encoder_decoder"]
    assert len(lines) == 1
    # one decoder layer's cross-attention: query, key, value, output dense, output LayerNorm (weight + bias each);
    # the LM head's transform (dense, LayerNorm) and its two bias names
    assert "cross-attention (10 tensors)" in lines[0] and "LM-head transform and bias (6 tensors" in lines[0]
    assert "copy head" in lines[0]


def test_warm_start_passes_on_the_load_report_when_a_checkpoint_differs_unexpectedly(tmp_path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from mixtune.minilm import minilm_path

    folder = tmp_path / "minilm-plus"
    shutil.copytree(minilm_path(), folder)
    weights = load_file(str(folder / "model.safetensors"))
    weights["embeddings.stray.weight"] = torch.zeros(2, 2)  # not a layer, not the pooler: not expected
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with _Records() as seen:
        load_model_and_tokenizer(ModelConfig(encoder_decoder={**ENC_DEC, "encoder": str(folder)}))
    reports = [m for m in seen.messages if "LOAD REPORT" in m]
    assert len(reports) == 1 and "embeddings.stray.weight" in reports[0]  # the encoder's; the decoder's is expected


def test_encoder_decoder_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        validate(ModelConfig, {"config": TINY_T5, "encoder_decoder": ENC_DEC}, "r.yaml")
    with pytest.raises(ConfigError, match="seq2seq"):
        validate(ModelConfig, {"encoder_decoder": ENC_DEC, "kind": "causal"}, "r.yaml")
    with pytest.raises(ConfigError, match="model.encoder_decoder.encoder"):
        load_model_and_tokenizer(ModelConfig(encoder_decoder={**ENC_DEC, "encoder": str(tmp_path / "missing")},
                                             tokenizer="minilm"))


@pytest.mark.integration
def test_encoder_decoder_trains_saves_and_reloads(tmp_path) -> None:
    """Two Seq2SeqTrainer steps through mixtune's collator, saved by the Trainer (safetensors), reloaded by
    name_or_path: same weights (tied head included) and the same greedy generations."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    from mixtune.train.collators import Seq2SeqCollator

    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(ModelConfig(encoder_decoder={**ENC_DEC, "freeze_encoder": True}))
    examples = [{"prompt": "Definition: answer yes or no. Input: is the sky blue? Output:", "completion": "yes"},
                {"prompt": "Definition: copy the input. Input: red apple. Output:", "completion": "red apple"}] * 2
    collator = Seq2SeqCollator(tok, model, max_source_length=64, max_target_length=8)
    batch = collator(examples[:2])
    assert batch["decoder_input_ids"][0, 0].item() == tok.cls_token_id
    assert batch["labels"][0].tolist() == [tok.convert_tokens_to_ids("yes"), tok.sep_token_id, -100]
    encoder_before = model.encoder.encoder.layer[0].output.dense.weight.detach().clone()
    head_before = model.decoder.cls.predictions.transform.dense.weight.detach().clone()
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                                    learning_rate=1e-3, report_to=[], use_cpu=True, remove_unused_columns=False,
                                    save_strategy="no", disable_tqdm=True)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=examples, data_collator=collator,
                             processing_class=tok)
    trainer.train()
    assert torch.equal(model.encoder.encoder.layer[0].output.dense.weight, encoder_before)
    assert not torch.equal(model.decoder.cls.predictions.transform.dense.weight, head_before)

    final = tmp_path / "final"
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))
    assert (final / "model.safetensors").exists() and not list(final.glob("pytorch_model*.bin"))
    again, tok2, kind = load_model_and_tokenizer(ModelConfig(name_or_path=str(final)))
    assert kind == "seq2seq" and type(again).__name__ == "EncoderDecoderModel"
    assert again.decoder.cls.predictions.decoder.weight is again.decoder.bert.embeddings.word_embeddings.weight
    state, state2 = model.state_dict(), again.state_dict()
    assert state.keys() == state2.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, state2[name]), name
    assert again.generation_config.decoder_start_token_id == tok.cls_token_id
    src = tok([e["prompt"] for e in examples[:2]], return_tensors="pt", padding=True)
    model.eval()
    again.eval()
    kw = {"max_new_tokens": 6, "do_sample": False, "num_beams": 1}
    torch.testing.assert_close(again.generate(**src, **kw), model.generate(**src, **kw), rtol=0, atol=0)


def test_encoder_decoder_generate_stops_at_eos() -> None:
    from mixtune.eval.generation import generate

    model, tok, _ = load_model_and_tokenizer(ModelConfig(encoder_decoder=ENC_DEC))
    with torch.no_grad():  # make the LM head prefer EOS ([SEP]) at every step
        model.decoder.cls.predictions.bias.zero_()
        model.decoder.cls.predictions.bias[tok.sep_token_id] = 1e4
    model.eval()
    src = tok(["Definition: say nothing. Input: hello. Output:"], return_tensors="pt")
    out = model.generate(**src, max_new_tokens=8, do_sample=False)
    assert out[0].tolist() == [tok.cls_token_id, tok.sep_token_id]
    assert generate(model, tok, ["a prompt", "another prompt"], batch_size=2, max_new_tokens=8,
                    kind="seq2seq") == ["", ""]


def test_missing_attention_kernel_is_a_config_error() -> None:
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(ConfigError) as e:
        load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA, attn_implementation="flash_attention_2"))
    assert e.value.field == "model.attn_implementation" and "not available" in str(e.value)
