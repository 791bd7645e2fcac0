"""`mixtune.models.kind.model_kind`: causal vs seq2seq from a recipe section, a config dict, a checkpoint
folder or a loaded model, checked against what transformers' own configs say."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from mixtune.errors import ConfigError
from mixtune.models.kind import model_kind
from mixtune.models.spec import ModelConfig

TINY_T5 = {"model_type": "t5", "d_model": 16, "d_ff": 32, "num_layers": 1, "num_heads": 2, "d_kv": 8}
TINY_LLAMA = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2}


@pytest.mark.parametrize("values", [TINY_T5, TINY_LLAMA, {"model_type": "bart"}, {"model_type": "gpt2"}])
def test_config_dicts_and_configs_agree_with_transformers(values: dict) -> None:
    config = AutoConfig.for_model(**values)
    truth = "seq2seq" if config.is_encoder_decoder else "causal"
    assert model_kind(values) == truth
    assert model_kind(ModelConfig(config=values)) == truth
    assert model_kind(config) == truth


def test_recipe_section_without_loading(tmp_path) -> None:
    assert model_kind(ModelConfig(config=TINY_LLAMA, kind="seq2seq")) == "seq2seq"  # declared wins, unloaded
    assert model_kind(ModelConfig(encoder_decoder={})) == "seq2seq"
    assert model_kind(ModelConfig(name_or_path="org/some-hub-model")) is None  # not downloaded: unknown
    assert model_kind({"model_type": "no-such-type"}) is None
    assert model_kind({"model_type": "llama", "is_encoder_decoder": True}) == "seq2seq"  # the dict's own word
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True}))
    assert model_kind(tmp_path) == model_kind(str(tmp_path)) == "seq2seq"
    assert model_kind(ModelConfig(name_or_path=str(tmp_path))) == "seq2seq"
    assert model_kind(tmp_path / "missing") is None


def test_loaded_models_and_a_declared_kind_that_disagrees(tiny_llama_dir) -> None:
    from mixtune.models.load import load_model_and_tokenizer

    model, _, kind = load_model_and_tokenizer(ModelConfig(name_or_path=str(tiny_llama_dir)))
    assert kind == model_kind(model) == model_kind(tiny_llama_dir) == "causal"
    assert model_kind(object()) == "causal"  # no config: decoder-only, as generation assumes
    with pytest.raises(ConfigError, match="model.kind is 'seq2seq' but the model config is decoder-only"):
        model_kind(model, declared="seq2seq")
    with pytest.raises(ConfigError, match="model.kind"):
        load_model_and_tokenizer(ModelConfig(name_or_path=str(tiny_llama_dir), kind="seq2seq"))
