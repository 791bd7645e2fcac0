"""Shared constants, helpers and fixtures: the repository, the bundled SuperNI sample, tiny model configs,
real tokenizers made offline, and an isolated mixtune cache per test session.

Test modules import the constants and helpers directly (`from conftest import REPO, TINY_LLAMA`); pytest puts
tests/ on the import path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

#: The repository root.
REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "mixtune" / "data" / "superni"
#: The tiny causal recipe most training tests start from.
TINY_RECIPE = REPO / "recipes" / "tiny_causal.yaml"
#: A 2-layer Llama (MiniLM vocabulary) for evaluation tests; `tiny_llama_dir` is it written with save_pretrained.
TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
#: A 2-layer T5 (encoder and decoder), the seq2seq counterpart of TINY_LLAMA.
TINY_T5 = {"model_type": "t5", "d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 2, "num_heads": 4}


def trainer_logged_losses(output_dir: Path) -> dict[int, float]:
    """step -> the training loss the Trainer logged, read from the run's `train.log` (`step N: {...}` lines)."""
    found = {}
    for text in (Path(output_dir) / "train.log").read_text(encoding="utf-8").splitlines():
        if " step " in text and ": {" in text and '"loss"' in text:
            step = int(text.split(" step ", 1)[1].split(":", 1)[0])
            found[step] = json.loads(text.split(": ", 1)[1])["loss"]
    return found


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point mixtune's cache, wandb and the HF hub at per-session folders, offline."""
    cache = tmp_path_factory.mktemp("mixtune-cache")
    os.environ["MIXTUNE_CACHE"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["WANDB_MODE"] = "disabled"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    """The SuperNI sample shipped with mixtune."""
    return BUNDLED


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TINY_LLAMA (seed 0) with its tokenizer, written with save_pretrained, shared by the tests that
    load a model dir."""
    import torch

    from mixtune.models.load import load_model_and_tokenizer
    from mixtune.models.spec import ModelConfig

    torch.manual_seed(0)
    model, tokenizer, _ = load_model_and_tokenizer(ModelConfig(config=TINY_LLAMA))
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --- Real tokenizers of the kinds users train with, made offline from the bundled sample's text ---------------

#: Llama-3-style chat template (BOS, header markers, end-of-turn `<|eot_id|>`), for the byte-level BPE tokenizer.
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
#: The tokenizer kinds tokenizer-dependent tests run with.
TOKENIZER_KINDS = ("wordpiece", "bpe", "sentencepiece")


def _sample_texts() -> list[str]:
    """Definitions, demonstrations and instances of the bundled SuperNI sample (the tokenizers' corpus)."""
    import json

    texts: list[str] = []
    for file in sorted((BUNDLED / "tasks").glob("*.json")):
        task = json.loads(file.read_text(encoding="utf-8"))
        texts += task["Definition"]
        for demo in task.get("Positive Examples", []) + task.get("Negative Examples", []):
            texts += [demo["input"], demo["output"]]
        for inst in task["Instances"][:200]:
            texts += [inst["input"], *inst["output"]]
    return texts


def build_bpe_tokenizer(path: Path) -> Path:
    """A byte-level BPE tokenizer (GPT-2 / Llama-3 style: BOS added in front, EOS, no pad, chat template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_sample_texts(), trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                   additional_special_tokens=specials[2:], model_max_length=131072)
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    fast.save_pretrained(path)
    return path


def build_sentencepiece_tokenizer(path: Path) -> Path:
    """A SentencePiece unigram tokenizer (T5 style: pad 0, `</s>` 1, unk 2, no BOS; pad is the decoder start)."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    corpus = path / "corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in _sample_texts() if t.strip()), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(path / "spm"), vocab_size=1200,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(path / "spm.model"))
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    fast = T5TokenizerFast(vocab=vocab, extra_ids=10, model_max_length=512)
    out = path / "tokenizer"
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the byte-level BPE tokenizer (trained once per session)."""
    return build_bpe_tokenizer(tmp_path_factory.mktemp("bpe-tokenizer"))


@pytest.fixture(scope="session")
def spm_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the SentencePiece unigram tokenizer (trained once per session)."""
    return build_sentencepiece_tokenizer(tmp_path_factory.mktemp("spm-tokenizer"))


@pytest.fixture(scope="session")
def tokenizer_dirs(request: pytest.FixtureRequest) -> dict[str, str]:
    """Tokenizer kind -> the `model.tokenizer` value that loads it ('minilm' or a folder)."""
    return {"wordpiece": "minilm", "bpe": str(request.getfixturevalue("bpe_tokenizer_dir")),
            "sentencepiece": str(request.getfixturevalue("spm_tokenizer_dir"))}


@pytest.fixture(params=TOKENIZER_KINDS)
def tokenizer_source(request: pytest.FixtureRequest, tokenizer_dirs: dict[str, str]) -> str:
    """Each tokenizer kind in turn, as a `model.tokenizer` value (tests parametrised over WordPiece/BPE/SPM)."""
    return tokenizer_dirs[request.param]


@pytest.fixture
def real_tokenizer(tokenizer_source: str):
    """Each tokenizer kind in turn, loaded as mixtune loads a recipe's tokenizer (special ids repaired)."""
    from mixtune.models.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_source)
