"""Prompt -> token ids: the one place training and generation turn a prompt into model input.

Both the training collators and evaluation call `source_ids`, so a prompt is cut the same way and
looks the same at the prompt/completion boundary in both. Everything happens in token space: the
prompt is tokenized once and tokens are dropped, never decoded and re-encoded.

* **seq2seq** keeps Tk-Instruct's rule exactly: demonstrations that do not fit `budget` are dropped
  (`encodings.select_demonstrations`, the reference's check), then the source is cut to its first
  `budget` tokens (the tokenizer's own special tokens, e.g. T5's `</s>`, kept at the end).
* **causal** prompts always keep their end, the instance's `Output:` cue the completion follows.
  Over budget, whole demonstrations go first (the last first, as Tk-Instruct drops them), then the
  definition is cut from its end, then the instance input from its start; a prompt that is not a
  Tk-Instruct prompt (or still too long) loses tokens from its left. The BOS token stays in front.

Tokenizing a text longer than `tokenizer.model_max_length` before cutting it is not an overflow, so
these calls do not let transformers warn about it; a prompt is only reported when it is fed uncut.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from mixtune.errors import ConfigError

logger = logging.getLogger(__name__)

Kind = Literal["causal", "seq2seq"]


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its BOS token in front of a text (Llama, MiniLM's [CLS]; not GPT-2, T5)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    return tokenizer("a")["input_ids"][:1] == [bos]


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a whole causal prompt: text tokens, with BOS in front when the tokenizer puts one
    there (and the text does not already start with it), no EOS after."""
    ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    if adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def completion_ids(tokenizer: Any, completion: str) -> list[int]:
    """Token ids of a completion followed by EOS (not doubled when the text already ends with it)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no EOS token, so the model could not learn to stop",
                          field="model.tokenizer", hint="use a tokenizer with an EOS (or a [SEP]) token")
    ids = tokenizer(completion, add_special_tokens=False, verbose=False)["input_ids"]
    return ids if ids[-1:] == [eos] else [*ids, eos]


def source_ids(tokenizer: Any, prompt: str, *, kind: Kind = "causal",
               budget: int | None = None) -> tuple[list[int], bool]:
    """(ids, truncated): the model input of `prompt` within `budget` tokens (None: no limit).

    See the module docstring for the rules; the result is what training feeds in front of the
    completion and what generation feeds to `generate`.
    """
    if kind == "seq2seq":
        return _seq2seq_ids(tokenizer, prompt, budget)
    if kind != "causal":
        raise ConfigError(f"unknown model kind {kind!r}", field="model.kind", hint="causal or seq2seq")
    if budget is None:
        ids = prompt_ids(tokenizer, prompt)
        _warn_if_too_long(tokenizer, len(ids))
        return ids, False
    return _causal_ids(tokenizer, prompt, budget)


def _warn_if_too_long(tokenizer: Any, n: int) -> None:
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and n > limit:
        logger.warning("a prompt of %d tokens is fed uncut to a model whose context is %d tokens; set a prompt "
                       "budget (data.max_source_length / eval max_source_length)", n, limit)


def _seq2seq_ids(tokenizer: Any, prompt: str, budget: int | None) -> tuple[list[int], bool]:
    from mixtune.encodings import prompt_layout, select_demonstrations

    if budget is None:
        ids = tokenizer(prompt, verbose=False)["input_ids"]
        _warn_if_too_long(tokenizer, len(ids))
        return ids, False
    layout = prompt_layout(prompt)
    source = prompt
    if layout is not None and layout.demonstrations:
        # Tk-Instruct's demonstration check, on the reference's strings
        first = layout.demonstrations[0][1]
        head = prompt[:layout.definition[0]] if layout.definition else prompt[:first]
        definition = prompt[layout.definition[0]:layout.definition[1]] if layout.definition else ""
        texts = {k: [prompt[s:e] for kind, s, e in layout.demonstrations if kind == k]
                 for k in ("positive", "negative")}
        task_input = prompt[layout.query[0]:layout.query[1]]

        def fits(text: str) -> bool:
            return len(tokenizer(text, verbose=False)["input_ids"]) <= budget

        pos, neg = select_demonstrations(definition, texts["positive"], texts["negative"], task_input, fits)
        source = head + definition + "".join(pos) + "".join(neg) + prompt[layout.query[0]:]
    ids = tokenizer(source, verbose=False)["input_ids"]
    if len(ids) <= budget:
        return ids, source != prompt
    cut = tokenizer(source, truncation=True, max_length=budget, verbose=False)["input_ids"]
    return cut, True


def _causal_ids(tokenizer: Any, prompt: str, budget: int) -> tuple[list[int], bool]:
    from mixtune.encodings import prompt_layout

    encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids: list[int] = list(encoded["input_ids"])
    head: list[int] = []
    if adds_bos(tokenizer):
        head = [tokenizer.bos_token_id]
        if ids[:1] == head:  # the text starts with BOS itself (a chat template writes it)
            ids, offsets = ids[1:], list(encoded["offset_mapping"])[1:]
        else:
            offsets = list(encoded["offset_mapping"])
    else:
        offsets = list(encoded["offset_mapping"])
    room = max(budget - len(head), 0)
    excess = len(ids) - room
    if excess <= 0:
        return head + ids, False
    keep = [True] * len(ids)
    layout = prompt_layout(prompt)
    if layout is not None:
        starts = [start for start, _ in offsets]

        def tokens_in(lo: int, hi: int) -> list[int]:
            return [i for i, s in enumerate(starts) if lo <= s < hi and keep[i]]

        for _, lo, hi in reversed(layout.demonstrations):  # whole demonstrations, the last first
            if excess <= 0:
                break
            for i in tokens_in(lo, hi):
                keep[i] = False
                excess -= 1
        partial = [tokens_in(*layout.definition)[::-1]] if layout.definition else []  # its end first
        partial.append(tokens_in(*layout.input))  # its start first
        for group in partial:
            for i in group:
                if excess <= 0:
                    break
                keep[i] = False
                excess -= 1
    for i in range(len(ids)):  # not a Tk-Instruct prompt, or its fixed parts alone are too long
        if excess <= 0:
            break
        if keep[i]:
            keep[i] = False
            excess -= 1
    return head + [t for t, k in zip(ids, keep, strict=True) if k], True

