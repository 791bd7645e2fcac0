"""Greedy batched generation for evaluation: length-sorted batches, KV cache, order restored.

Prompts are tokenized once, sorted by length (longest first, so a batch holds prompts of similar
length and little padding), generated greedily batch by batch and put back in the caller's order.
Causal models are padded on the left (the attention mask hides the padding and generate derives
position ids from it), and only the new tokens are decoded; seq2seq models are padded on the right.

Across several processes (accelerate), each process generates a strided share of the sorted
prompts, padded with repeats to the same number of batches (ZeRO-3 needs every rank in every
forward), and the (index, text) pairs are gathered once; repeats are dropped.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mixtune.eval.sharding import evaluate_sharded, length_sorted, shard
from mixtune.models.kind import model_kind

OnBatch = Callable[[list[int], list[str]], None]




def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (works for wrapped/PEFT models too)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token lists padded to the longest, on the left or the right."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if not seq:
            continue
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def special_ids(model: Any, tokenizer: Any) -> tuple[int, list[int]]:
    """(pad id, stop ids): the tokenizer's EOS plus the generation config's (e.g. a chat end-of-turn)."""
    eos_ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for tok in [tokenizer.eos_token_id, *(configured if isinstance(configured, (list, tuple)) else [configured])]:
        if tok is not None and tok not in eos_ids:
            eos_ids.append(int(tok))
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos_ids[0] if eos_ids else 0
    return pad, eos_ids


def _greedy_config(model: Any, max_new_tokens: int, pad_id: int, eos_ids: list[int]) -> Any:
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    config.update(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, use_cache=True,
                  temperature=None, top_p=None, top_k=None, min_new_tokens=None, max_length=None,
                  num_return_sequences=1, pad_token_id=pad_id, eos_token_id=eos_ids or None)
    return config


def _cut_at_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    for pos, tok in enumerate(ids):
        if tok in eos_ids:
            return ids[:pos]
    return ids


def _zero3_enabled() -> bool:
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - transformers without deepspeed integration
        return False
    return bool(is_deepspeed_zero3_enabled())


def encode_prompts(tokenizer: Any, prompts: Sequence[str], kind: str = "causal",
                   budget: int | None = None) -> list[list[int]]:
    """Token ids of each prompt exactly as training feeds it (`mixtune.tokenization.source_ids`, the
    one place a prompt becomes ids): causal prompts with BOS when the tokenizer uses one and no EOS
    after, seq2seq sources with the tokenizer's special tokens; cut to `budget` tokens by the same rules."""
    from mixtune.tokenization import source_ids

    return [source_ids(tokenizer, p, kind=kind, budget=budget)[0] for p in prompts]  # type: ignore[arg-type]


class _TokenTicker:
    """A generate() streamer that shows the batch's decoding step on the progress bar, so a slow batch
    (many prompts, long answers, a busy CPU) still shows progress every step."""

    def __init__(self, bar: Any, max_new_tokens: int, every_s: float = 1.0) -> None:
        self.bar, self.max_new_tokens, self.step = bar, max_new_tokens, -1
        self.every_s, self.shown = every_s, time.monotonic()

    def put(self, value: Any) -> None:  # the prompt first, then one token per sequence per step
        self.step += 1
        if self.step and time.monotonic() - self.shown >= self.every_s:
            self.shown = time.monotonic()
            self.bar.set_postfix_str(f"batch token {self.step}/{self.max_new_tokens}")

    def end(self) -> None:
        self.bar.set_postfix_str("")


@torch.no_grad()  # not inference_mode: ZeRO-3 gathers parameters that training reuses
def generate(model: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int = 16,
             max_new_tokens: int = 128, kind: str | None = None, skip: Sequence[int] = (),
             on_batch: OnBatch | None = None, progress: bool = True, distributed: bool = True,
             desc: str = "generating", max_source_length: int | None = None) -> list[str]:
    """Greedy completions of `prompts`, in the same order (every process gets the full list).

    `skip`: indices not to generate (e.g. already predicted by an interrupted run); their entries
    are ''. `on_batch(indices, texts)` is called in each process after each batch (to save
    progress). With `distributed` and several accelerate processes, the work is split and
    gathered once. `max_source_length` is the prompt budget in tokens (see `encode_prompts`).
    """
    from tqdm.auto import tqdm

    kind = kind or model_kind(model)
    if kind not in ("causal", "seq2seq"):
        raise ValueError(f"kind must be 'causal' or 'seq2seq', got {kind!r}")
    pad_id, eos_ids = special_ids(model, tokenizer)
    config = _greedy_config(model, max_new_tokens, pad_id, eos_ids)
    device = model_device(model)

    skipped = set(skip)
    todo = [i for i in range(len(prompts)) if i not in skipped]
    token_ids = dict(zip(todo, encode_prompts(tokenizer, [prompts[i] for i in todo], kind,
                                                           max_source_length), strict=True))
    order = [todo[j] for j in length_sorted([len(token_ids[i]) for i in todo])]

    work = shard(order, distributed=distributed)
    synced = work.world > 1 and _zero3_enabled()

    with tqdm(total=len(work.indices), unit="ex", desc=desc, disable=not (progress and work.is_main),
              dynamic_ncols=True) as bar:
        def run_batch(batch: list[int]) -> list[str]:
            ids, mask = pad_batch([token_ids[i] for i in batch], pad_id, left=kind == "causal")
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=config, synced_gpus=synced,
                                 streamer=_TokenTicker(bar, max_new_tokens) if not bar.disable else None)
            # causal: only the new tokens; seq2seq: all but the decoder start (which may be EOS)
            new = out[:, ids.shape[1]:] if kind == "causal" else out[:, 1:]
            texts = [tokenizer.decode(_cut_at_eos(row.tolist(), eos_ids), skip_special_tokens=True).strip()
                     for row in new]
            if on_batch is not None:
                on_batch(list(batch), texts)
            bar.update(len(batch))
            return texts

        return evaluate_sharded(model, work, len(prompts), run_batch, batch_size=batch_size, fill="")
