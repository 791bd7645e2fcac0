"""Turning prompt/completion examples into training batches (loss on the completion only).

Examples are dicts {"prompt": str, "completion": str, ...}; other keys (task, position, ...) pass
through untouched and are not put in the batch. A collator also accepts examples that are already
tokenized ({"input_ids", "labels"}).

Causal models see `prompt ids + completion ids + EOS`; the prompt gets label -100, the completion
and EOS are trained on. Prompt ids come from `mixtune.tokenization.source_ids` (the same function
generation uses) within the budget min(`max_source_length`, `max_length` - completion): the prompt
is cut before the completion is, and always keeps its end (the instance's `Output:` cue; whole
demonstrations go first, then the definition's end, then the instance input's start; the BOS token
stays). Only a completion that alone takes `max_length` is cut, from its right, after the last
max_length // 2 prompt tokens (it then has no EOS).

Seq2seq models see the source ids of `source_ids` (Tk-Instruct's rule: demonstrations dropped, then
cut on the right to `max_source_length`, the tokenizer's own special tokens kept) and target ids + EOS
(cut to `max_target_length`, EOS kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from mixtune.errors import ConfigError, DataError
from mixtune.tokenization import adds_bos, completion_ids, prompt_ids, source_ids

__all__ = ["completion_ids", "prompt_ids"]  # re-exported: their home is mixtune.tokenization

#: Label of tokens that do not count in the loss (prompt, padding, packing boundaries).
IGNORE_INDEX = -100


def tokenize_example(tokenizer: Any, prompt: str, completion: str, *, max_length: int | None = None,
                     kind: Literal["causal", "seq2seq"] = "causal", max_source_length: int | None = None,
                     max_target_length: int | None = None) -> dict[str, Any]:
    """input_ids and labels of one example (see the module docstring for the truncation policy).

    causal: {"input_ids", "labels", "truncated"} with labels -100 on the prompt; `max_length` bounds
    the whole sequence. seq2seq: {"input_ids", "labels", "truncated"} with source ids and target ids.
    `truncated` is None, "prompt" or "completion".
    """
    if kind == "seq2seq":
        src, cut = source_ids(tokenizer, prompt, kind="seq2seq", budget=max_source_length or max_length)
        truncated = "prompt" if cut else None
        tgt = completion_ids(tokenizer, completion)
        if max_target_length is not None and len(tgt) > max_target_length:
            tgt = [*tgt[: max_target_length - 1], tokenizer.eos_token_id]
            truncated = "completion"
        return {"input_ids": src, "labels": tgt, "truncated": truncated}
    if kind != "causal":
        raise ConfigError(f"unknown model kind {kind!r}", field="model.kind", hint="causal or seq2seq")

    c = completion_ids(tokenizer, completion)
    budget = max_source_length
    cut_completion = False
    if max_length is not None:
        if max_length < 2:
            raise ConfigError(f"max_length {max_length} leaves no room for a prompt and an answer",
                              field="data.max_length", hint="use at least a few dozen tokens")
        n_bos = 1 if adds_bos(tokenizer) else 0
        cut_completion = len(c) + n_bos >= max_length
        room = max(max_length // 2, n_bos) if cut_completion else max_length - len(c)
        budget = room if budget is None else min(budget, room)
    p, cut_prompt = source_ids(tokenizer, prompt, kind="causal", budget=budget)
    if cut_completion:
        c = c[: max_length - len(p)]  # type: ignore[operator]
    truncated = "completion" if cut_completion else "prompt" if cut_prompt else None
    return {"input_ids": p + c, "labels": [IGNORE_INDEX] * len(p) + c, "truncated": truncated}


def _tokenized(features: Sequence[dict[str, Any]], tokenizer: Any, kind: str, chat: bool,
               **limits: int | None) -> list[dict[str, Any]]:
    out = []
    for f in features:
        if "input_ids" in f:
            out.append(f)
            continue
        try:
            prompt, completion = f["prompt"], f["completion"]
        except KeyError as e:
            raise DataError(f"example has no {e.args[0]!r} key (keys: {sorted(f)})", field=str(e.args[0]),
                            hint="examples are {'prompt': ..., 'completion': ...} dicts "
                                 "or tokenized input_ids") from None
        if chat:
            from mixtune.encodings import render_chat

            prompt, completion = render_chat(tokenizer, prompt, completion)
        ex = tokenize_example(tokenizer, prompt, completion, kind=kind, **limits)  # type: ignore[arg-type]
        if chat and ex["truncated"] != "completion":
            check_chat_eot_in_mask(tokenizer, ex["input_ids"], ex["labels"])
        out.append(ex)
    return out


def check_loss_mask(labels: torch.Tensor, features: Sequence[dict[str, Any]] = ()) -> None:
    """Raise DataError when no label of a batch is trained on (loss undefined, nothing learned)."""
    if bool((labels != IGNORE_INDEX).any()):
        return
    where = ", ".join(f"{f.get('task', '?')}#{f.get('position', f.get('instance_id', '?'))}" for f in features[:4])
    raise DataError(
        f"every label of this batch is -100, so its loss is undefined and nothing would be learned "
        f"(examples: {where}); usually the completion was truncated away or the prompt mask covers it",
        field="data.max_length",
        hint="raise data.max_length (or max_target_length), shorten prompts (fewer demonstrations), "
        "or tokenize with mixtune.train.collators.tokenize_example, which keeps the completion",
    )


class CompletionOnlyCollator:
    """Causal batches padded to the batch maximum: input_ids, attention_mask, labels (-100 on prompt
    and padding). Padding is TRL's DataCollatorForLanguageModeling; a batch with no trained token
    raises DataError. With `chat=True` examples are rendered with the tokenizer's chat template and
    each is checked to train on the template's end-of-turn token."""

    def __init__(self, tokenizer: Any, *, max_length: int | None = None, pad_to_multiple_of: int | None = None,
                 chat: bool = False, max_source_length: int | None = None) -> None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_source_length = max_source_length
        self.chat = chat
        self._pad = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id,
                                                    pad_to_multiple_of=pad_to_multiple_of)

    def tokenize(self, features: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Tokenized copies of the examples (already tokenized ones unchanged)."""
        return _tokenized(features, self.tokenizer, "causal", self.chat, max_length=self.max_length,
                          max_source_length=self.max_source_length)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        examples = self.tokenize(features)
        batch = self._pad([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
        check_loss_mask(batch["labels"], features)
        return batch


class Seq2SeqCollator:
    """Encoder-decoder batches: input_ids/attention_mask of the source, labels (target + EOS, -100 on
    padding) and decoder_input_ids (labels shifted right after the model's decoder start). Padding
    and the shift are transformers' DataCollatorForSeq2Seq (model.prepare_decoder_input_ids_from_labels)."""

    def __init__(self, tokenizer: Any, model: Any = None, *, max_source_length: int | None = None,
                 max_target_length: int | None = None, pad_to_multiple_of: int | None = None) -> None:
        from transformers import DataCollatorForSeq2Seq

        self.tokenizer = tokenizer
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.decoder_start_token_id = _decoder_start(model, tokenizer)
        has_prepare = model is not None and hasattr(model, "prepare_decoder_input_ids_from_labels")
        self._pad = DataCollatorForSeq2Seq(tokenizer, model=model if has_prepare else None,
                                           label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=pad_to_multiple_of,
                                           return_tensors="pt")
        self._shift = not has_prepare

    def tokenize(self, features: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Tokenized copies of the examples (already tokenized ones unchanged)."""
        return _tokenized(features, self.tokenizer, "seq2seq", False, max_source_length=self.max_source_length,
                          max_target_length=self.max_target_length)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        examples = self.tokenize(features)
        batch = self._pad([{"input_ids": e["input_ids"], "attention_mask": [1] * len(e["input_ids"]),
                            "labels": e["labels"]} for e in examples])
        check_loss_mask(batch["labels"], features)
        if self._shift:
            batch["decoder_input_ids"] = shift_right(batch["labels"], self.decoder_start_token_id,
                                                     self.tokenizer.pad_token_id)
        return dict(batch)


def _decoder_start(model: Any, tokenizer: Any) -> int:
    config = getattr(model, "config", None)
    start = getattr(config, "decoder_start_token_id", None) if config is not None else None
    return start if start is not None else tokenizer.pad_token_id


def shift_right(labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Decoder inputs of an encoder-decoder: start token, then the labels but the last (-100 -> pad)."""
    out = labels.new_full(labels.shape, pad_token_id)
    out[:, 1:] = labels[:, :-1]
    out[:, 0] = decoder_start_token_id
    return out.masked_fill(out == IGNORE_INDEX, pad_token_id)


def chat_end_of_turn_id(tokenizer: Any) -> int | None:
    """Id of the special token the tokenizer's chat template writes after an assistant answer, or None
    when the template writes no special token there."""
    sentinel = "mixtunesentinelanswer"
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}]
    text = tokenizer.apply_chat_template(conv, tokenize=False)
    tail = text[text.rfind(sentinel) + len(sentinel):]
    special = set(tokenizer.all_special_ids)
    for i in tokenizer(tail, add_special_tokens=False)["input_ids"]:
        if i in special:
            return i
    return None


def check_chat_eot_in_mask(tokenizer: Any, example_ids: Sequence[int], labels: Sequence[int]) -> None:
    """Raise DataError unless the chat template's end-of-turn token after the answer is trained on.

    A model whose loss mask leaves out the end-of-turn token never learns to end its turn and keeps
    generating at inference (a silent failure of completion-only masking in other trainers).
    """
    eot = chat_end_of_turn_id(tokenizer)
    if eot is None:
        return
    labels = list(labels)
    trained = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    if not trained:
        raise DataError("the example has no trained token", field="labels",
                        hint="keep the completion when truncating (tokenize_example does)")
    eots = [i for i in range(trained[0], len(example_ids)) if example_ids[i] == eot]
    name = tokenizer.convert_ids_to_tokens(eot)
    if not eots:
        raise DataError(f"the chat template's end-of-turn token {name!r} is not in the answer part of the "
                        "example, so the model would never learn to end its turn", field="model.chat_template",
                        hint="render completions with mixtune.encodings.render_chat, which includes it")
    if any(labels[i] == IGNORE_INDEX for i in eots):
        raise DataError(f"the chat template's end-of-turn token {name!r} has label -100 (outside the loss "
                        "mask), so the model would never learn to end its turn", field="model.chat_template",
                        hint="label the end-of-turn token like the answer (tokenize_example does)")
