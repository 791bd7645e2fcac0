"""Hypothesis strategies and the 'result or MixtuneError' check shared by the tests/test_fuzz_*.py files."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from mixtune.errors import MixtuneError

#: Bounded runs in CI; MIXTUNE_FUZZ_EXAMPLES raises the count for a longer local search.
FUZZ = settings(
    max_examples=int(os.environ.get("MIXTUNE_FUZZ_EXAMPLES", "120")),
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    derandomize=os.environ.get("MIXTUNE_FUZZ_RANDOM") is None,  # reproducible in CI unless asked otherwise
)

# Text with the awkward cases mixed in: lone surrogates, NUL, newlines, RTL marks, long runs, path parts.
SPECIALS = ["\ud800", "\udfff", "\x00", "\n", "\r\n", "\u202e", "\ufeff", "../", "/etc/passwd", "~", "*", "%s",
            "{0}", "!!python/object:os.system", "NaN", "-1", "1e309", " ", ""]
texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from(SPECIALS),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=10), st.sampled_from(SPECIALS), st.text(max_size=10)),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)),
    max_leaves=12,
)


def maybe(strategy: st.SearchStrategy, other: st.SearchStrategy = json_values) -> st.SearchStrategy:
    """Mostly `strategy` (7 in 8), sometimes any JSON value."""
    return st.one_of(*[strategy] * 7, other)


@pytest.fixture(scope="module")
def no_fsync() -> Iterator[None]:
    """Skip fsync in fuzz runs: durability is not under test here, and each fsync costs ~10 ms."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        yield


def result_or_mixtune_error(fn: Callable[[], Any]) -> Any:
    """Run `fn`; a MixtuneError is a fine answer (it must say something), any other exception fails the test."""
    try:
        return fn()
    except MixtuneError as e:
        assert str(e).strip(), "a MixtuneError without a message"
        return e
