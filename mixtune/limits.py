"""Bounds on untrusted YAML and JSON: nesting depth and alias expansion.

A deeply nested document makes recursive code (parsers, validators, `repr`) fail with RecursionError,
and a YAML "alias bomb" (each level referring to the previous one several times) stays a few lines of
text while the value it describes grows exponentially. Every YAML and JSON input mixtune reads goes
through `BoundedSafeLoader` / `json_loads`, which refuse both as ordinary syntax errors.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, Node, SequenceNode

#: Nesting levels a YAML or JSON document may have (mixtune's own files use fewer than 10).
MAX_DEPTH = 100
#: Nodes that YAML aliases may add in total, counting each alias as a copy of what it refers to.
MAX_ALIAS_NODES = 10_000


class BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting bound and a bound on what aliases expand to."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._alias_nodes = 0
        self._open_anchors: set[str] = set()
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise ComposerError(None, None, f"alias *{event.anchor} refers to a node that contains it",
                                    event.start_mark)
            node = super().compose_node(parent, index)
            self._alias_nodes += self._size(node)
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise ComposerError(None, None, f"aliases expand to more than {MAX_ALIAS_NODES} values "
                                    "(an alias bomb?); write the values out or use fewer aliases", event.start_mark)
            return node
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if anchor:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.discard(anchor)

    def _size(self, node: Node) -> int:
        """Values in `node` with aliases expanded (memoised: shared nodes are counted once per use)."""
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        size = 1
        if isinstance(node, SequenceNode):
            size += sum(self._size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            size += sum(self._size(k) + self._size(v) for k, v in node.value)
        self._sizes[id(node)] = size
        return size


def yaml_load(text: str) -> Any:
    """`yaml.safe_load` within the bounds above (a violation raises yaml.YAMLError with its line)."""
    return yaml.load(text, Loader=BoundedSafeLoader)  # noqa: S506 - a SafeLoader subclass


_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_loads(data: str | bytes) -> Any:
    """`json.loads` that raises json.JSONDecodeError (a ValueError) for nesting deeper than MAX_DEPTH."""
    try:
        obj = json.loads(data)
    except RecursionError:
        obj = None
    else:
        if _depth(obj) <= MAX_DEPTH:
            return obj
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    text = raw.decode("utf-8", "replace")
    raise json.JSONDecodeError(f"nested deeper than {MAX_DEPTH} levels", text, _too_deep_at(raw))


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _too_deep_at(raw: bytes) -> int:
    """Byte offset of the first bracket beyond MAX_DEPTH (0 when none is found)."""
    depth = 0
    for m in _JSON_TOKEN.finditer(raw):
        token = m.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                return m.start()
        elif token in (b"]", b"}"):
            depth -= 1
    return 0
