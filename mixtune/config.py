"""YAML loading, strict pydantic validation with file/field errors, and `key=value` overrides.

Every YAML file mixtune reads (mixtures, recipes, eval specs) goes through `load_yaml` and
`validate`, so all of them share safe loading (no object construction from tags) and the same
error style: the file, the dotted field, what is wrong and how to fix it.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mixtune.errors import ConfigError, clip
from mixtune.limits import yaml_load

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; a syntax error names the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=path, hint="check the path") from None
    except IsADirectoryError:
        raise ConfigError("is a folder, expected a YAML file", path=path, hint="check the path") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text ({e.reason})", path=path) from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{line}invalid YAML: {problem}", path=path) from None
    if _SURROGATE_ESCAPE.search(text):
        _check_no_lone_surrogates(data, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", path=path)
    return data


_SURROGATE_ESCAPE = re.compile(r"\\(u|U0000)[dD][89a-fA-F]")


def _check_no_lone_surrogates(node: Any, path: Path) -> None:
    """A `\\ud800`-style escape decodes to a lone surrogate, which is not text: refuse it here."""
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"the string {clip(repr(node))} holds an unpaired UTF-16 surrogate escape, "
                              "which is not text",
                              path=path, hint="fix or remove the broken \\u escape") from None
    elif isinstance(node, dict):
        for key, value in node.items():
            _check_no_lone_surrogates(key, path)
            _check_no_lone_surrogates(value, path)
    elif isinstance(node, list):
        for value in node:
            _check_no_lone_surrogates(value, path)


def _field_path(loc: Iterable[Any]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _known_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at `loc`, for 'did you mean' hints."""
    current: Any = model
    for item in loc:
        if isinstance(item, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or item not in fields:
            return []
        annotation = fields[item].annotation
        current = _model_in(annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def validate(model: type[M], data: Any, path: str | Path | None = None, overrides: Iterable[str] = ()) -> M:
    """Validate `data` against `model`; the first problem becomes a ConfigError naming file and field.

    When the field was set by one of the command line's `key=value` `overrides`, the error names that
    override instead of the file.
    """
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        field = _field_path(loc)
        where = override_source(field, overrides) or path
        if err["type"] == "extra_forbidden":
            known = _known_fields(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
            raise ConfigError("unknown key", path=where, field=field, hint=hint) from None
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("missing",) and "input" in err:
            msg += f" (got {clip(repr(err['input']))})"
        raise ConfigError(msg, path=where, field=field or None) from None


def override_source(field: str, overrides: Iterable[str]) -> str | None:
    """'command-line override 'a.b=1'' when an override set `field` (or a key inside it), else None."""
    if not field:
        return None
    for text in reversed(list(overrides)):  # the last override of a key wins, so name that one
        key = text.split("=", 1)[0].strip()
        if key == field or key.startswith(field + ".") or field.startswith(key + "."):
            return f"command-line override {text!r}"
    return None


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """'did you mean ...' text for a misspelt name, or '' when nothing is close."""
    close = [repr(c) for c in difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)]
    if not close:
        return ""
    return f"did you mean {close[0] if len(close) == 1 else ', '.join(close[:-1]) + ' or ' + close[-1]}?"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value` (value read as YAML: numbers, booleans, lists) into (keys, value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value", hint="e.g. training.learning_rate=1e-4")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".")]
    if not all(keys):
        raise ConfigError(f"override {text!r} has an empty key", hint="e.g. training.learning_rate=1e-4")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads 1e-4 as a string; accept it as the float a user means.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in "eE.") else value
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b=value` override applied (nested keys created as needed)."""
    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: '{k}' is not a section", field=".".join(keys))
            node = nxt
        node[keys[-1]] = value
    return out
