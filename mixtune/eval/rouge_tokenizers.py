"""The ROUGE-L scorers: rouge-score's own tokenizer (memoised stemming) and an offline multilingual one.

The default ROUGE tokenizer keeps only ``[a-z0-9]`` tokens, so non-English outputs score 0; the official
script switches to GPT-2's tokenizer for its cross-lingual track. "multilingual" is the offline replacement
used here: Unicode words (letters, digits, combining marks), with each character of the scripts written
without spaces (Han, kana, Thai, Lao, Khmer, Myanmar) a token of its own, no stemming.
"""

from __future__ import annotations

import functools
from typing import Any

ROUGE_TOKENIZERS = ("default", "multilingual")


class _CachedStemmer:
    """nltk's Porter stemmer (the one rouge-score uses) with a memo: stemming dominates scoring time."""

    def __init__(self) -> None:
        from nltk.stem import porter

        self.stem = functools.lru_cache(maxsize=1 << 17)(porter.PorterStemmer().stem)


class _DefaultTokenizer:
    """rouge-score's own tokenize() with its Porter stemmer, memoised per text (identical tokens)."""

    name = "default"

    def __init__(self) -> None:
        from rouge_score import tokenize

        self._tokenize = tokenize.tokenize
        self._stemmer = _CachedStemmer()
        self.tokenize = functools.lru_cache(maxsize=1 << 14)(self._uncached)

    def _uncached(self, text: str) -> tuple[str, ...]:
        return tuple(self._tokenize(text, self._stemmer))


# Scripts written without spaces between words: every character is a token.
_CHAR_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"


class _MultilingualTokenizer:
    """Offline tokenizer for any language: Unicode words, one token per Han/kana/Thai/... character."""

    name = "multilingual"

    def __init__(self) -> None:
        import regex

        self._pattern = regex.compile(
            rf"[{_CHAR_SCRIPTS}]|(?:(?![{_CHAR_SCRIPTS}])[\p{{L}}\p{{N}}\p{{M}}])+"
        )
        self.tokenize = functools.lru_cache(maxsize=1 << 14)(self._uncached)

    def _uncached(self, text: str) -> tuple[str, ...]:
        return tuple(self._pattern.findall(text.lower()))


@functools.cache
def rouge_scorer(tokenizer: str = "default"):
    """One shared `rouge_score.rouge_scorer.RougeScorer(['rougeL'])` per tokenizer name (default | multilingual).

    "default" is exactly `RougeScorer(['rougeL'], use_stemmer=True)` (same tokens, memoised stemming).
    """
    from rouge_score import rouge_scorer as rs

    if tokenizer == "default":
        impl: Any = _DefaultTokenizer()
    elif tokenizer == "multilingual":
        impl = _MultilingualTokenizer()
    else:
        raise ValueError(f"unknown ROUGE tokenizer {tokenizer!r}; choose one of {', '.join(ROUGE_TOKENIZERS)}")
    return rs.RougeScorer(["rougeL"], tokenizer=impl)
