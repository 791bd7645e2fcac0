"""Model building from the recipe's `model:` section: tiny real models, real MiniLM tokenizer."""

from __future__ import annotations

import pytest
import torch

from mixtune.config import validate
from mixtune.errors import ConfigError
from mixtune.train.modeling import ModelConfig, load_model_and_tokenizer, load_tokenizer

LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}
T5 = {"model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 2, "num_heads": 4}


def test_minilm_tokenizer_special_ids() -> None:
    tok = load_tokenizer("minilm")
    assert tok.pad_token_id == 0
    assert tok.eos_token_id == tok.convert_tokens_to_ids("[SEP]")
    assert tok.bos_token_id == tok.convert_tokens_to_ids("[CLS]")


def test_tiny_causal_from_config() -> None:
    torch.manual_seed(0)
    model, tok, kind = load_model_and_tokenizer(ModelConfig(config=LLAMA))
    assert kind == "causal"
    assert model.config.vocab_size == len(tok) == model.get_input_embeddings().num_embeddings
    assert model.config.pad_token_id == tok.pad_token_id == 0
    assert model.generation_config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("[SEP]")
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"


def test_generate_stops_at_eos() -> None:
    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(ModelConfig(config=LLAMA))
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
    model, tok, kind = load_model_and_tokenizer(ModelConfig(config=T5, dtype="bf16"))
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
        load_model_and_tokenizer(ModelConfig(config=LLAMA, kind="seq2seq"))
    with pytest.raises(ConfigError, match="exactly one"):
        validate(ModelConfig, {"name_or_path": "x", "config": LLAMA}, "r.yaml")
    with pytest.raises(ConfigError, match="exactly one"):
        validate(ModelConfig, {}, "r.yaml")
    with pytest.raises(ConfigError, match="unknown key"):
        validate(ModelConfig, {"config": LLAMA, "loar": {"r": 4}}, "r.yaml")
    with pytest.raises(ConfigError, match="model.name_or_path"):
        load_model_and_tokenizer(ModelConfig(name_or_path="/nonexistent/model-dir"))


def test_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model, tok, _ = load_model_and_tokenizer(ModelConfig(config=LLAMA, chat_template="default"))
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
    model, _, _ = load_model_and_tokenizer(ModelConfig(config=LLAMA, lora={"r": 4, "alpha": 8}))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # every linear projection of the layers got an adapter ('all-linear'), the head did not
    assert any("q_proj.lora_A" in n for n in trainable) and any("down_proj.lora_B" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)


def test_lora_bad_targets() -> None:
    with pytest.raises(ConfigError, match="target_modules"):
        load_model_and_tokenizer(ModelConfig(config=LLAMA, lora={"target_modules": ["no_such_proj"]}))


def test_gradient_checkpointing_enabled_and_trains() -> None:
    model, _, _ = load_model_and_tokenizer(ModelConfig(config=LLAMA, gradient_checkpointing=True))
    assert model.is_activation_checkpointing
    model.train()
    ids = torch.tensor([[101, 2054, 2003, 102]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.get_input_embeddings().weight.grad is not None


def test_chat_template_default_adds_markers() -> None:
    _, tok, _ = load_model_and_tokenizer(ModelConfig(config=LLAMA, chat_template="default"))
    from mixtune.encodings import DEFAULT_END_OF_TURN

    eot = tok.convert_tokens_to_ids(DEFAULT_END_OF_TURN)
    assert eot != tok.unk_token_id
    assert tok(DEFAULT_END_OF_TURN, add_special_tokens=False)["input_ids"] == [eot]


def test_trust_remote_code_warns(tmp_path) -> None:
    model, tok, _ = load_model_and_tokenizer(ModelConfig(config=LLAMA))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="trust_remote_code"):
        load_model_and_tokenizer(ModelConfig(name_or_path=str(tmp_path), trust_remote_code=True))


def test_init_from_warm_starts_matching_tensors() -> None:
    from safetensors.torch import load_file

    from mixtune.train.modeling import _minilm_path

    bert = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 1, "num_attention_heads": 12,
            "intermediate_size": 1536, "is_decoder": True}
    model, tok, kind = load_model_and_tokenizer(ModelConfig(config=bert, init_from="minilm"))
    assert kind == "causal"
    minilm = load_file(f"{_minilm_path()}/model.safetensors")
    name = "embeddings.word_embeddings.weight"
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, minilm[name])
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight,
                       minilm["encoder.layer.0.attention.self.query.weight"])
    with pytest.raises(ConfigError, match="model.init_from"):
        load_model_and_tokenizer(ModelConfig(config=LLAMA, init_from="minilm"))  # nothing matches
    with pytest.raises(ConfigError, match="init_from"):
        validate(ModelConfig, {"name_or_path": "x", "init_from": "minilm"}, "r.yaml")
