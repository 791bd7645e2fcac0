"""The model layer that train and eval share: from a recipe's `model:` section to (model, tokenizer, kind).

Three ways to get a model (`spec.ModelConfig`):

* `name_or_path`: a hub name or a local `save_pretrained` folder (safetensors only), loaded with
  `AutoModelForCausalLM` / `AutoModelForSeq2SeqLM`; a checkpoint of a model type mixtune defines
  (`mixtune.architectures`) registers that type first.
* `encoder_decoder`: an encoder-decoder warm-started from two BERT-style checkpoints (`encoder_decoder`),
  optionally with the pointer-generator copy head: the CPU quickstart's model.
* `config`: a config dict that builds a randomly initialised model (tests, the CPU quickstart), optionally
  warm-started from matching tensors (`warm_start`).

Special ids are made consistent on tokenizer, model config and generation config (`tokenizer`): MiniLM has
no EOS or BOS, so `[SEP]` becomes EOS (generation stops there) and `[CLS]` BOS; `[PAD]` is the pad id. An
encoder-decoder's decoder starts with `[CLS]` (a checkpoint's own `decoder_start_token_id` is kept, and a
T5-style model without one starts with pad). Gradient checkpointing and LoRA (`lora`) are applied last
(`load`), so the trainer receives a model ready to train.

Modules: `spec` (the schema), `kind` (causal or seq2seq), `tokenizer`, `encoder_decoder`, `warm_start`,
`lora`, `load`.
"""
