"""Prompt -> ids (mixtune.tokenization) with WordPiece, byte-level BPE and SentencePiece tokenizers."""

from __future__ import annotations

import logging

import pytest

from mixtune.encodings import SETTINGS, encode_prompt, prompt_layout
from mixtune.tasks.collection import open_collection
from mixtune.tokenization import adds_bos, source_ids
from mixtune.train.collators import IGNORE_INDEX, tokenize_example


@pytest.fixture(scope="module")
def long_prompt(bundled_dir) -> tuple[str, str]:
    """(prompt, instance input) of a bundled task under def_pos2, with a long instance input."""
    collection = open_collection(path=bundled_dir)
    info = collection.info("task1146_country_capital")
    text = "Republic of " + "the long island and " * 30 + "Afghanistan"
    return encode_prompt(info, text, SETTINGS["def_pos2"]), text


def _text(tok, ids) -> str:
    """Decoded text, lower case and with single spaces (WordPiece decodes lower case, 'output :')."""
    return " ".join(tok.decode(ids, skip_special_tokens=True).lower().replace(" :", ":").split())


def test_layout_reads_back_the_parts(long_prompt) -> None:
    prompt, text = long_prompt
    layout = prompt_layout(prompt)
    assert prompt[slice(*layout.input)] == text + "."
    assert prompt[slice(*layout.definition)].startswith("Definition: In this task")
    assert [prompt[s:e].split(" -")[0] for _, s, e in layout.demonstrations] == [" Positive Example 1",
                                                                                " Positive Example 2"]
    assert prompt[slice(*layout.query)] == f"Now complete the following example -\nInput: {text}.\nOutput: "
    assert prompt_layout("just a question?") is None


def test_causal_drops_demonstrations_first_and_keeps_the_cue(real_tokenizer, long_prompt) -> None:
    tok, (prompt, _) = real_tokenizer, long_prompt
    full, cut = source_ids(tok, prompt, kind="causal")
    assert not cut
    layout = prompt_layout(prompt)
    without_last = prompt[:layout.demonstrations[1][1]] + prompt[layout.query[0]:]
    budget = len(source_ids(tok, without_last, kind="causal")[0]) + 2
    ids, cut = source_ids(tok, prompt, kind="causal", budget=budget)
    assert cut and len(ids) <= budget
    text = _text(tok, ids)
    assert "positive example 1" in text and "positive example 2" not in text
    assert ids[-6:] == full[-6:]  # the end of the instance and the Output: cue
    assert text.endswith("afghanistan. output:")


def test_causal_then_cuts_definition_end_then_input_start(real_tokenizer, long_prompt) -> None:
    tok, (prompt, _) = real_tokenizer, long_prompt
    full, _ = source_ids(tok, prompt, kind="causal")
    layout = prompt_layout(prompt)
    n_query = len(source_ids(tok, prompt[layout.query[0]:], kind="causal")[0])
    keeps_definition_start, cuts_input = n_query + 12, n_query - 20
    for budget in (keeps_definition_start, cuts_input):
        ids, cut = source_ids(tok, prompt, kind="causal", budget=budget)
        assert cut and len(ids) == budget
        assert ids[-5:] == full[-5:]  # always ends with the cue
        if adds_bos(tok):
            assert ids[0] == tok.bos_token_id
        it = iter(full)
        assert all(t in it for t in ids)  # a subsequence of the full prompt's tokens: nothing re-encoded
        assert "positive example" not in _text(tok, ids)
    first = _text(tok, source_ids(tok, prompt, kind="causal", budget=keeps_definition_start)[0])
    assert first.startswith("def") and "return the capital" not in first  # its start stays, its end goes
    assert "input: republic of the long island" in first  # the input whole
    short = _text(tok, source_ids(tok, prompt, kind="causal", budget=cuts_input)[0])
    assert "def" not in short and "republic" not in short and "afghanistan" in short  # the input lost its start


def test_completion_is_never_cut_before_the_prompt(real_tokenizer, long_prompt) -> None:
    tok, (prompt, _) = real_tokenizer, long_prompt
    ex = tokenize_example(tok, prompt, "Kabul", max_length=40, max_source_length=1000)
    assert len(ex["input_ids"]) == 40 and ex["truncated"] == "prompt"
    trained = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert trained == [*tok("Kabul", add_special_tokens=False)["input_ids"], tok.eos_token_id]
    n_prompt = 40 - len(trained)
    assert ex["input_ids"][:n_prompt] == source_ids(tok, prompt, kind="causal", budget=n_prompt)[0]


@pytest.mark.parametrize("budget", [40, 64, 120])
def test_seq2seq_matches_the_tk_instruct_reference(tokenizer_dirs, long_prompt, bundled_dir, budget) -> None:
    """Token-space seq2seq ids equal the reference pipeline: the cut string re-tokenized with truncation."""
    from mixtune.models.tokenizer import load_tokenizer

    collection = open_collection(path=bundled_dir)
    info = collection.info("task1146_country_capital")
    rows = collection.instances("task1146_country_capital").slice(0, 3).to_pylist()
    inputs = [r["input"] for r in rows] + [long_prompt[1]]
    for kind in ("wordpiece", "bpe"):  # tokenizers whose decode -> encode round trip is exact
        tok = load_tokenizer(tokenizer_dirs[kind])
        for text in inputs:
            prompt = encode_prompt(info, text, SETTINGS["def_pos2"])
            reference = encode_prompt(info, text, SETTINGS["def_pos2"], tokenizer=tok, max_source_length=budget)
            expected = tok(reference, truncation=True, max_length=budget)["input_ids"]
            assert source_ids(tok, prompt, kind="seq2seq", budget=budget)[0] == expected


def test_boundary_is_identical_in_training_and_generation(bpe_tokenizer_dir, long_prompt) -> None:
    """With byte-level BPE the trailing space of 'Output: ' is its own token: both paths keep it."""
    from mixtune.eval.generation import encode_prompts
    from mixtune.models.tokenizer import load_tokenizer

    tok = load_tokenizer(str(bpe_tokenizer_dir))
    prompt = long_prompt[0]
    for budget in (None, 64):
        ex = tokenize_example(tok, prompt, "Kabul", max_source_length=budget)
        n_prompt = ex["labels"].count(IGNORE_INDEX)
        [generation] = encode_prompts(tok, [prompt], "causal", budget)
        assert generation == ex["input_ids"][:n_prompt]
        assert tok.convert_ids_to_tokens(generation[-1]) == "Ġ"  # the space after 'Output:'
        assert ex["input_ids"][n_prompt] == tok("Kabul", add_special_tokens=False)["input_ids"][0]


def test_no_overflow_warning_for_a_prompt_that_is_cut(real_tokenizer, long_prompt, caplog) -> None:
    tok = real_tokenizer
    tok.model_max_length = 64
    with caplog.at_level(logging.WARNING):
        ids, cut = source_ids(tok, long_prompt[0], kind="causal", budget=48)
        source_ids(tok, long_prompt[0], kind="seq2seq", budget=48)
    assert cut and len(ids) == 48
    assert not [r for r in caplog.records if "longer than" in r.getMessage() or "uncut" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        source_ids(tok, long_prompt[0], kind="causal")  # fed uncut: the warning is true
    assert any("uncut" in r.getMessage() for r in caplog.records)


def test_layout_of_a_prompt_without_demonstrations(bundled_dir) -> None:
    info = open_collection(path=bundled_dir).info("task1146_country_capital")
    prompt = encode_prompt(info, "India", SETTINGS["zero_shot"])
    layout = prompt_layout(prompt)
    assert layout.demonstrations == () and prompt[slice(*layout.input)] == "India."
    assert prompt[slice(*layout.definition)].endswith("country.\n\n")


def test_causal_cut_inside_a_chat_rendering(bpe_tokenizer_dir, long_prompt) -> None:
    """A chat-rendered prompt keeps its template around the Tk-Instruct prompt and its generation prompt."""
    from mixtune.encodings import render_chat
    from mixtune.models.spec import ModelConfig
    from mixtune.models.tokenizer import load_tokenizer

    tok = load_tokenizer(ModelConfig(config={"model_type": "llama"}, tokenizer=str(bpe_tokenizer_dir),
                                     chat_template="tokenizer"))
    text, _ = render_chat(tok, long_prompt[0], "Kabul")
    full, _ = source_ids(tok, text, kind="causal")
    ids, cut = source_ids(tok, text, kind="causal", budget=len(full) - 20)
    decoded = tok.decode(ids)
    assert cut and decoded.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    assert decoded.endswith("Output: <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "Positive Example 1" in decoded and "Positive Example 2" not in decoded
