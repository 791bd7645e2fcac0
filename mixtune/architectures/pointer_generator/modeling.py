"""The pointer-generator's config and model classes (see the package docstring).

The next-token distribution mixes the decoder's vocabulary softmax with a copy distribution over the
source tokens (See et al., 2017, "Get To The Point"):

    p(w) = g * softmax(lm_logits)[w] + (1 - g) * sum_{j : source_j = w} a_j

where `a = softmax(q(h) . k(e)^T / sqrt(d))` is one attention of the decoder's last hidden state `h`
over the encoder's last hidden states `e` (padding masked out) and `g = sigmoid(w . [h; a e] + b)` is
the generate-vs-copy gate, which starts at 0.5. The model returns `log p` as its `logits`, so greedy
and beam search, sampling, rank classification and cross-entropy work unchanged (log_softmax of
`log p` is `log p`); its loss is the NLL of the mixture.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import EncoderDecoderConfig, EncoderDecoderModel
from transformers.modeling_outputs import Seq2SeqLMOutput
from transformers.models.encoder_decoder.modeling_encoder_decoder import shift_tokens_right

from mixtune.architectures import POINTER_GENERATOR as MODEL_TYPE


class PointerGeneratorConfig(EncoderDecoderConfig):
    """`EncoderDecoderConfig` of a `PointerGeneratorModel` (encoder and decoder share one vocabulary)."""

    model_type = MODEL_TYPE


class PointerGeneratorModel(EncoderDecoderModel):
    """`EncoderDecoderModel` whose output distribution can copy source tokens (see the module docstring)."""

    config_class = PointerGeneratorConfig

    def __init__(self, config: PointerGeneratorConfig | None = None, encoder: Any = None, decoder: Any = None):
        if config is None and encoder is not None and decoder is not None:
            config = PointerGeneratorConfig.from_encoder_decoder_configs(encoder.config, decoder.config)
        super().__init__(config, encoder, decoder)
        enc, dec = self.config.encoder, self.config.decoder
        if enc.vocab_size != dec.vocab_size:
            raise ValueError(f"a pointer-generator copies source tokens into the output, so encoder and decoder "
                             f"need one vocabulary (got {enc.vocab_size} and {dec.vocab_size} tokens)")
        dtype = self.decoder.get_input_embeddings().weight.dtype  # a bf16 decoder gets a bf16 copy head
        self.copy_query = nn.Linear(dec.hidden_size, dec.hidden_size, dtype=dtype)
        self.copy_key = nn.Linear(enc.hidden_size, dec.hidden_size, dtype=dtype)
        self.copy_gate = nn.Linear(dec.hidden_size + enc.hidden_size, 1, dtype=dtype)
        for module in (self.copy_query, self.copy_key, self.copy_gate):
            self._init_weights(module)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "copy_gate", None):
            nn.init.zeros_(module.weight)  # g = 0.5: generate and copy start equally likely
            nn.init.zeros_(module.bias)
        elif module is getattr(self, "copy_query", None) or module is getattr(self, "copy_key", None):
            nn.init.normal_(module.weight, std=self.config.decoder.initializer_range)
            nn.init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def copy_log_probs(self, lm_logits: torch.Tensor, hidden: torch.Tensor, encoder_hidden: torch.Tensor,
                       source_ids: torch.Tensor, source_mask: torch.Tensor | None) -> torch.Tensor:
        """log p(w) of the generate/copy mixture, shape (batch, target length, vocab), float32."""
        scores = self.copy_query(hidden) @ self.copy_key(encoder_hidden).transpose(1, 2)
        scores = scores.float() / math.sqrt(hidden.shape[-1])
        if source_mask is not None:
            scores = scores.masked_fill(source_mask[:, None, :] == 0, float("-inf"))
        attention = scores.softmax(-1)
        context = attention.to(encoder_hidden.dtype) @ encoder_hidden
        gate = torch.sigmoid(self.copy_gate(torch.cat([hidden, context], -1)).float())
        probs = gate * lm_logits.float().softmax(-1)
        index = source_ids[:, None, :].expand(-1, hidden.shape[1], -1)
        probs = probs.scatter_add(-1, index, (1 - gate) * attention)
        return probs.clamp_min(1e-30).log()

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.LongTensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None, encoder_outputs: Any = None,
                labels: torch.LongTensor | None = None, num_items_in_batch: Any = None,
                decoder_source_ids: torch.LongTensor | None = None, **kwargs: Any) -> Seq2SeqLMOutput:
        """As `EncoderDecoderModel.forward`; `logits` are the mixture's log-probabilities.

        The copy head needs the source token ids: `input_ids`, or `decoder_source_ids` when the encoder
        already ran (`encoder_outputs`, as in generation's decoding steps).
        """
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=kwargs.pop("inputs_embeds", None), return_dict=True)
        source_ids = input_ids if input_ids is not None else decoder_source_ids
        if source_ids is None:
            raise ValueError("the pointer-generator copies source tokens, so it needs input_ids (inputs_embeds "
                             "alone give no token ids to copy)")
        if labels is not None and decoder_input_ids is None and kwargs.get("decoder_inputs_embeds") is None:
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
            if decoder_attention_mask is None:
                decoder_attention_mask = (decoder_input_ids != self.config.pad_token_id).long()
        want_hidden = kwargs.pop("output_hidden_states", False)
        out = super().forward(attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                              decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs,
                              output_hidden_states=True, **kwargs)
        log_probs = self.copy_log_probs(out.logits, out.decoder_hidden_states[-1], encoder_outputs[0],
                                        source_ids, attention_mask)
        loss = None
        if labels is not None:
            labels = labels.to(log_probs.device)
            nll = F.nll_loss(log_probs.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
            loss = nll / torch.as_tensor(count, device=nll.device).clamp_min(1)
        # the decoder's outputs as they are (the cache among them, under this transformers version's name)
        fields = {**out, "loss": loss, "logits": log_probs}
        if not want_hidden:
            fields.pop("decoder_hidden_states", None)
        return Seq2SeqLMOutput(**fields)

    def generate(self, inputs: torch.Tensor | None = None, generation_config: Any = None, **kwargs: Any) -> Any:
        """As `GenerationMixin.generate`; the source ids go to every decoding step as `decoder_source_ids`.

        (generate passes model keyword arguments on to `forward` and expands them for beams; the `decoder_`
        prefix keeps them out of the encoder's arguments.)
        """
        source = inputs if inputs is not None else kwargs.get("input_ids")
        if source is not None:
            kwargs.setdefault("decoder_source_ids", source)
        return super().generate(inputs, generation_config, **kwargs)
