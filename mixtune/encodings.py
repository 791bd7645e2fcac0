"""Instruction encodings: Tk-Instruct's prompt strings, reference picking and chat rendering.

`encode_prompt` writes, character for character, the source string of Tk-Instruct's
`DataCollatorForNI` (yizhongw/Tk-Instruct, src/ni_collator.py):

    [<task name>. ]Definition: <definition>.\\n\\n
     Positive Example 1 -\\nInput: <input>.\\n Output: <output>.\\n[ Explanation: <text>.\\n]\\n
     Negative Example 1 -\\nInput: ...\\n Output: ...\\n[ Explanation: ...\\n]\\n
    Now complete the following example -\\nInput: <input>.\\nOutput:

(the prompt ends in "Output: ", with the space). Every piece is stripped and gets a '.'
unless it already ends in `string.punctuation`. Given a tokenizer and `max_source_length`,
demonstrations that do not fit are dropped (the first that does not fit ends the list) and a
source still too long is cut to its first `max_source_length` tokens.
"""

from __future__ import annotations

import functools
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from mixtune.config import StrictModel, suggest
from mixtune.errors import ConfigError, DataError
from mixtune.tasks.schema import Demonstration, TaskInfo


class EncodingSpec(StrictModel):
    """How a task's instruction is written in front of each instance (Tk-Instruct's options)."""

    definition: bool = Field(True, description="Write the task definition ('Definition: ...').")
    pos_examples: int = Field(0, ge=0, description="Number of positive examples to show (the first k of the task).")
    neg_examples: int = Field(0, ge=0, description="Number of negative examples to show (the first k of the task).")
    explanation: bool = Field(False, description="Add each shown example's explanation.")
    task_name: bool = Field(False, description="Start the prompt with the task name ('task123_name. ').")
    tk_instruct: bool = Field(
        False,
        description="Ignore the other fields and pick, per example, one of Tk-Instruct's five encodings "
        "(definition only; 2 positive examples only; definition + 2 positive; definition + 2 positive + "
        "2 negative; definition + 2 positive with explanations). The pick is a pure function of the seed.",
    )


#: Tk-Instruct's five valid encodings, in the reference's order (the `tk_instruct` choice draws from these).
TK_INSTRUCT_ENCODINGS: tuple[EncodingSpec, ...] = (
    EncodingSpec(definition=True),
    EncodingSpec(definition=False, pos_examples=2),
    EncodingSpec(definition=True, pos_examples=2),
    EncodingSpec(definition=True, pos_examples=2, neg_examples=2),
    EncodingSpec(definition=True, pos_examples=2, explanation=True),
)

# Count-free setting names; `encoding_for_setting(name, k)` fills in k demonstrations.
_SETTING_SHAPES: dict[str, dict[str, Any]] = {
    "zero_shot": {"definition": True},
    "def_pos": {"definition": True, "pos_examples": "k"},
    "pos": {"definition": False, "pos_examples": "k"},
    "def_pos_neg": {"definition": True, "pos_examples": "k", "neg_examples": "k"},
    "def_pos_expl": {"definition": True, "pos_examples": "k", "explanation": True},
    "task_name_def": {"task_name": True, "definition": True},
    "tk_instruct": {"tk_instruct": True},
}


def _shape(name: str, k: int) -> EncodingSpec:
    return EncodingSpec(**{key: (k if v == "k" else v) for key, v in _SETTING_SHAPES[name].items()})


#: Named encodings for evaluation ("def_pos2" = definition + 2 positive examples, as Tk-Instruct evaluates).
SETTINGS: dict[str, EncodingSpec] = {
    "zero_shot": _shape("zero_shot", 0),
    "def_pos2": _shape("def_pos", 2),
    "pos2": _shape("pos", 2),
    "def_pos2_neg2": _shape("def_pos_neg", 2),
    "def_pos2_expl": _shape("def_pos_expl", 2),
    "task_name_def": _shape("task_name_def", 0),
    "tk_instruct": _shape("tk_instruct", 0),
}


def encoding_for_setting(name: str, k: int = 2) -> EncodingSpec:
    """The EncodingSpec of a named setting: a SETTINGS key (e.g. 'def_pos2'), or a count-free
    name ('def_pos', 'pos', 'def_pos_neg', 'def_pos_expl') that shows `k` demonstrations."""
    if name in SETTINGS:
        return SETTINGS[name].model_copy()
    if name in _SETTING_SHAPES:
        return _shape(name, k)
    known = sorted(set(SETTINGS) | set(_SETTING_SHAPES))
    raise ConfigError(f"unknown encoding setting {name!r}", field="setting",
                      hint=suggest(name, known) or f"known settings: {', '.join(known)}")


def _end(text: str) -> str:
    """Tk-Instruct's punctuation rule: add '.' unless the text already ends in punctuation."""
    return text if text and text[-1] in string.punctuation else text + "."


@functools.lru_cache(maxsize=4096)
def _demonstration(kind: str, number: int, demo: Demonstration, explanation: bool) -> str:
    text = _end(f" {kind} Example {number} -\nInput: {demo.input.strip()}") + "\n"
    text = _end(text + f" Output: {demo.output.strip()}") + "\n"
    # SuperNI examples always carry an explanation; an empty one is treated as absent.
    if explanation and demo.explanation:
        text = _end(text + f" Explanation: {demo.explanation.strip()}") + "\n"
    return text + "\n"


def _resolve(spec: EncodingSpec, seed: int | None) -> EncodingSpec:
    if not spec.tk_instruct:
        return spec
    if seed is None:
        raise ConfigError("the tk_instruct encoding needs a seed", field="encoding.tk_instruct",
                          hint="pass seed= (e.g. the mixture seed combined with the example position)")
    return random.Random(seed).choice(TK_INSTRUCT_ENCODINGS)


#: The fixed text in front of the instance input, and the answer cue after it.
QUERY_HEAD = "Now complete the following example -\nInput: "
OUTPUT_CUE = "\nOutput: "


def encode_prompt(info: TaskInfo, input: str, spec: EncodingSpec, *, seed: int | None = None,
                  tokenizer: Any = None, max_source_length: int | None = None) -> str:
    """The prompt (source) Tk-Instruct writes for `input` of task `info` under `spec`.

    With `spec.tk_instruct`, the encoding is `random.Random(seed).choice(TK_INSTRUCT_ENCODINGS)`:
    a pure function of `seed` (required then). With both `tokenizer` and `max_source_length`,
    lengths are counted in tokens including special tokens, as the reference does; otherwise the
    full string is returned, nothing dropped or cut.
    """
    spec = _resolve(spec, seed)
    budget = tokenizer is not None and max_source_length is not None

    def fits(text: str) -> bool:
        return not budget or len(tokenizer(text)["input_ids"]) <= max_source_length

    task_input = _end(QUERY_HEAD + input.strip()) + OUTPUT_CUE
    task_name = f"{info.name}. " if spec.task_name else ""
    definition = _end(f"Definition: {info.definition.strip()}") + "\n\n" if spec.definition else ""

    positives, negatives = select_demonstrations(
        definition, [_demonstration("Positive", i + 1, d, spec.explanation)
                     for i, d in enumerate(info.positive_examples[: spec.pos_examples])],
        [_demonstration("Negative", i + 1, d, spec.explanation)
         for i, d in enumerate(info.negative_examples[: spec.neg_examples])], task_input, fits)

    source = task_name + definition + "".join(positives) + "".join(negatives) + task_input
    if budget:
        ids = tokenizer(source)["input_ids"]
        if len(ids) > max_source_length:
            source = tokenizer.decode(ids[:max_source_length], skip_special_tokens=True)
    return source


def select_demonstrations(definition: str, positives: Sequence[str], negatives: Sequence[str], task_input: str,
                          fits: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """The demonstrations Tk-Instruct keeps: positives, then negatives, each list ending at the first
    one that does not fit. As in the reference, the length check joins kept demonstrations with " "
    and leaves out the task name, while the source joins them with "" -- both reproduced exactly."""
    kept_pos: list[str] = []
    for text in positives:
        if not fits(definition + " ".join(kept_pos) + text + task_input):
            break
        kept_pos.append(text)
    kept_neg: list[str] = []
    for text in negatives:
        if not fits(definition + " ".join(kept_pos) + " ".join(kept_neg) + text + task_input):
            break
        kept_neg.append(text)
    return kept_pos, kept_neg


_DEMONSTRATION_HEAD = re.compile(r" (Positive|Negative) Example \d+ -\nInput: ")
_DEFINITION_HEAD = "Definition: "


@dataclass(frozen=True)
class PromptLayout:
    """Where the parts of a Tk-Instruct prompt lie in a text, as character spans [start, end).

    `query` is the task-input part ("Now complete ... Output: "), `input` the instance text inside it,
    `demonstrations` (kind, start, end) with kind 'positive' or 'negative'."""

    definition: tuple[int, int] | None
    demonstrations: tuple[tuple[str, int, int], ...]
    input: tuple[int, int]
    query: tuple[int, int]


def prompt_layout(text: str) -> PromptLayout | None:
    """Read the parts of a prompt written by `encode_prompt` (possibly inside a chat rendering) back
    from its text; None for text of another shape. The instance is the last 'Now complete the
    following example' block; demonstrations and the definition come before it."""
    q = text.rfind(QUERY_HEAD)
    if q < 0:
        return None
    cue = text.rfind(OUTPUT_CUE.rstrip(" "))
    if cue < q + len(QUERY_HEAD):
        return None
    query_end = cue + len(OUTPUT_CUE) if text.startswith(OUTPUT_CUE, cue) else cue + len(OUTPUT_CUE) - 1
    starts = [(m.group(1).lower(), m.start()) for m in _DEMONSTRATION_HEAD.finditer(text, 0, q)]
    ends = [s for _, s in starts[1:]] + [q]
    demos = tuple((kind, start, end) for (kind, start), end in zip(starts, ends[:len(starts)], strict=True))
    d = text.find(_DEFINITION_HEAD, 0, starts[0][1] if starts else q)
    definition = (d, starts[0][1] if starts else q) if d >= 0 else None
    return PromptLayout(definition, demos, (q + len(QUERY_HEAD), cue), (q, query_end))


def resolve_encoding(spec: EncodingSpec, seed: int | None) -> EncodingSpec:
    """The encoding `encode_prompt` uses: `spec`, or with `spec.tk_instruct` the one drawn by `seed`."""
    return _resolve(spec, seed)


def prompt_prefix(info: TaskInfo, spec: EncodingSpec) -> str:
    """The fixed part of every prompt of task `info` under `spec` (no token budget): task name, definition,
    demonstrations and QUERY_HEAD, the same for all the task's instances.

    `encode_prompt(info, x, spec)` is this prefix, then `x.strip()`, a '.' unless that ends in
    `string.punctuation` (or is empty: then always), then "\\nOutput: ". A `tk_instruct` spec is
    resolved first (`resolve_encoding`).
    """
    if spec.tk_instruct:
        raise ConfigError("a tk_instruct encoding has no single prefix", field="encoding.tk_instruct",
                          hint="resolve it per example first: resolve_encoding(spec, seed)")
    task_name = f"{info.name}. " if spec.task_name else ""
    definition = _end(f"Definition: {info.definition.strip()}") + "\n\n" if spec.definition else ""
    positives = [_demonstration("Positive", i + 1, demo, spec.explanation)
                 for i, demo in enumerate(info.positive_examples[: spec.pos_examples])]
    negatives = [_demonstration("Negative", i + 1, demo, spec.explanation)
                 for i, demo in enumerate(info.negative_examples[: spec.neg_examples])]
    return task_name + definition + "".join(positives) + "".join(negatives) + QUERY_HEAD


def pick_reference(outputs: Sequence[str], seed: int) -> str:
    """One of an instance's reference outputs, chosen by `seed` (training); evaluation keeps all."""
    if not outputs:
        raise DataError("instance has no reference output", field="output",
                        hint="every instance needs at least one output string")
    return outputs[random.Random(seed).randrange(len(outputs))]


#: A ChatML-style template for tokenizers that ship none (set it as `tokenizer.chat_template`).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: The end-of-turn marker DEFAULT_CHAT_TEMPLATE writes after each message.
DEFAULT_END_OF_TURN = "<|im_end|>"
#: Both markers of DEFAULT_CHAT_TEMPLATE (added as special tokens where a tokenizer lacks them).
DEFAULT_CHAT_MARKERS = ("<|im_start|>", DEFAULT_END_OF_TURN)


def render_chat(tokenizer: Any, prompt: str, completion: str | None = None) -> tuple[str, str]:
    """(prompt_text, completion_text) through the tokenizer's own chat template.

    prompt_text is the user turn plus the generation prompt; completion_text is the rest of the
    [user, assistant] conversation (the answer and the template's end-of-turn), so that
    prompt_text + completion_text is the whole rendered conversation. completion=None gives ''.
    """
    fix = "set model.chat_template in the recipe (e.g. mixtune.encodings.DEFAULT_CHAT_TEMPLATE)"
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template",
                          field="model.chat_template", hint=fix)
    user = [{"role": "user", "content": prompt}]
    prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    if completion is None:
        return prompt_text, ""
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": completion}], tokenize=False)
    if not full.startswith(prompt_text):
        raise ConfigError("the chat template renders the conversation with a different prefix than the "
                          "prompt with its generation prompt, so the answer cannot be split off",
                          field="model.chat_template", hint=fix)
    return prompt_text, full[len(prompt_text):]
