"""YAML with source marks: the composed node tree turned into plain JSON-like data, with the mark of
every value and key recorded by JSON path in a SourceMap. Duplicate keys, recursive aliases, tags and
values outside JSON's types are ScenarioErrors at their node; nothing from PyYAML escapes.

The file is hostile input (see ``inputs``): it is read through ``read_limited`` (at most
MAX_SCENARIO_BYTES, never a FIFO or a device), and the document may hold at most MAX_YAML_NODES values,
counted while composing, then with every alias expanded before anything is converted (once per node, so
a "billion laughs" file of a few hundred bytes is refused in milliseconds instead of expanding for
minutes). Merge keys (``<<``) are resolved here, each merged mapping once, for the same reason (PyYAML's
own flattening copies every merged entry again, for every mapping that merges it).
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harness.errors import ScenarioError, UsageError
from harness.scenario.inputs import MAX_SCENARIO_BYTES, MAX_YAML_NODES, InputRefused, read_limited
from harness.scenario.model import Mark
from harness.scenario.validate import JsonPath, SourceMap

__all__ = ["read_yaml"]

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_yaml(path: Path) -> tuple[object, SourceMap]:
    """The document in ``path`` as plain data, and the marks of its nodes. Marks name the file as
    ``path`` was given."""
    display = str(path)
    try:
        raw = read_limited(path, MAX_SCENARIO_BYTES, "a scenario file")
    except FileNotFoundError:
        raise UsageError(f"no such scenario file: {display}") from None
    except InputRefused as exc:
        raise ScenarioError(display, 1, 1, f"the scenario file {exc.problem}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ScenarioError(display, line, col, "the file is not UTF-8 text") from None

    source = SourceMap(display)
    loader: yaml.SafeLoader | None = None
    try:
        # The constructor already scans the text for characters YAML forbids.
        loader = _BoundedLoader(text, display)
        root = loader.get_single_node()
        if root is None:
            raise ScenarioError(display, 1, 1, "empty scenario file: expected a mapping with name, "
                                "description and steps")
        walker = _Walker(loader, source)
        walker.check_duplicates(root, set())
        walker.check_size(root)
        return walker.convert(root, (), set()), source
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = "unsupported YAML" if isinstance(exc, ConstructorError) else "invalid YAML"
        raise ScenarioError(display, line, col, f"{what}: {_yaml_problem(exc)}") from None
    except yaml.reader.ReaderError as exc:
        position = int(exc.position)
        line = text.count("\n", 0, position) + 1
        col = position - (text.rfind("\n", 0, position) + 1) + 1
        character = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise ScenarioError(display, line, col, f"invalid YAML: {exc.reason} ({character})") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(display, 1, 1, f"invalid YAML: {exc}") from None
    except RecursionError:
        # PyYAML's composer and the walk recurse per nesting level; no real scenario nests this deep.
        raise ScenarioError(display, 1, 1, "the YAML is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    problem, context = exc.problem, exc.context
    if not problem or not context:
        return problem or context or "syntax error"
    if problem.startswith("but "):
        # PyYAML splits some sentences in two: "expected a single document", "but found another document".
        return f"{context}, {problem}"
    if exc.context_mark is None:
        return f"{problem} ({context})"
    return f"{problem} ({context} at line {exc.context_mark.line + 1})"


def _too_many(display: str, line: int, col: int, expanded: int | None = None) -> ScenarioError:
    if expanded is not None:
        return ScenarioError(display, line, col, f"this expands to {expanded} values once its aliases are expanded, "
                             f"more than the {MAX_YAML_NODES} a scenario may hold (each alias repeats what its "
                             "anchor holds)")
    return ScenarioError(display, line, col, f"the YAML holds more than the {MAX_YAML_NODES} values a scenario "
                         "may hold")


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader counting the nodes it composes (an alias counts once here; the walk counts
    what it expands to)."""

    def __init__(self, stream: str, display: str) -> None:
        super().__init__(stream)
        self.display = display
        self.composed = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self.composed += 1
        if self.composed > MAX_YAML_NODES:
            event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
            mark = event.start_mark
            line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            raise _too_many(self.display, line, col)
        return super().compose_node(parent, index)


class _Walker:
    """Turns the composed node tree into plain JSON-like data, recording marks by JSON path.

    Working on nodes rather than on constructed objects is what makes marks for every value, key
    and list item available, and what lets duplicate keys be caught (PyYAML keeps the last one).
    """

    def __init__(self, loader: yaml.SafeLoader, source: SourceMap) -> None:
        self.loader = loader
        self.source = source
        self.merged: dict[int, list[tuple[Node, Node]]] = {}  # a mapping's entries with merges resolved
        self.sizes: dict[int, int] = {}  # values under a node, aliases expanded

    def mark(self, node: Node) -> Mark:
        return Mark(self.source.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def error(self, node: Node, message: str) -> ScenarioError:
        return self.source.error(self.mark(node), message)

    def key_text(self, node: Node) -> str:
        # Keys in this format are always names, so take the text as written: `yes:` or `200:` would
        # otherwise become True or 200.
        if not isinstance(node, ScalarNode):
            raise self.error(node, "a mapping key must be a plain string, not a list or mapping")
        return str(node.value)

    def check_duplicates(self, node: Node, seen: set[int]) -> None:
        # Done on the whole tree before merge keys are flattened: flattening rewrites nodes in place and
        # would make a legitimate override of a merged key look like a duplicate.
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, MappingNode):
            first: dict[str, Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag != _MERGE_TAG:
                    key = self.key_text(key_node)
                    if key in first:
                        line = first[key].start_mark.line + 1
                        raise self.error(key_node, f"duplicate key {key!r} (first defined at line {line})")
                    first[key] = key_node
                self.check_duplicates(value_node, seen)
        elif isinstance(node, SequenceNode):
            for item in node.value:
                self.check_duplicates(item, seen)

    def check_size(self, root: Node) -> None:
        """Refuse a document that would convert to more than MAX_YAML_NODES values, before converting it:
        sizes are computed once per node (an anchored node however often it is aliased), so a "billion
        laughs" file costs what its text costs. Reported at the smallest collection over the bound."""
        self.size(root, set())

    def size(self, node: Node, active: set[int]) -> int:
        known = self.sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, SequenceNode | MappingNode):
            if id(node) in active:
                raise self.error(node, "recursive YAML alias: a node cannot contain itself")
            active.add(id(node))
            children = node.value if isinstance(node, SequenceNode) else [v for _, v in self.entries(node, set())]
            total += sum(self.size(child, active) for child in children)
            active.discard(id(node))
        if total > MAX_YAML_NODES:
            mark = self.mark(node)
            raise _too_many(mark.file, mark.line, mark.col, total)
        self.sizes[id(node)] = total
        return total

    def convert(self, node: Node, path: JsonPath, active: set[int]) -> object:
        self.source.values[path] = self.mark(node)
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in active:
            raise self.error(node, "recursive YAML alias: a node cannot contain itself")
        active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ_TAG:
                    raise self.error(node, f"unsupported YAML tag {node.tag!r}")
                return [self.convert(item, (*path, i), active) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                if node.tag != _MAP_TAG:
                    raise self.error(node, f"unsupported YAML tag {node.tag!r}")
                result: dict[str, object] = {}
                for key_node, value_node in self.entries(node, set()):
                    key = self.key_text(key_node)
                    self.source.keys[(*path, key)] = self.mark(key_node)
                    result[key] = self.convert(value_node, (*path, key), active)
                return result
            raise self.error(node, "unsupported YAML node")
        finally:
            active.discard(id(node))

    def entries(self, node: MappingNode, merging: set[int]) -> list[tuple[Node, Node]]:
        """The mapping's entries with its merge keys (``<<``) resolved as the merge key type specifies: a
        merged mapping adds the keys the mapping does not have itself, and of a list of mappings the
        earlier one wins. Merged entries come first, in the order merged (as PyYAML 6.0.3 orders them);
        each key once. Nodes are not changed (PyYAML's ``flatten_mapping`` rewrites anchored nodes in
        place), and each mapping is resolved once however many aliases merge it."""
        done = self.merged.get(id(node))
        if done is not None:
            return done
        if id(node) in merging:
            raise self.error(node, "recursive YAML alias: a mapping cannot merge itself")
        merging.add(id(node))
        merged: dict[str, tuple[Node, Node]] = {}
        own: list[tuple[Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                own.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, MappingNode) or source.tag != _MAP_TAG:
                    raise self.error(source, "a merge key (<<) takes a mapping or a list of mappings")
                for entry in self.entries(source, merging):
                    merged.setdefault(self.key_text(entry[0]), entry)
        merging.discard(id(node))
        # The mapping's own keys win, at the place a merged key had.
        for key_node, value_node in own:
            merged[self.key_text(key_node)] = (key_node, value_node)
        result = list(merged.values())
        self.merged[id(node)] = result
        return result

    def scalar(self, node: ScalarNode, path: JsonPath) -> object:
        if node.style is None:
            self.source.raw[path] = node.value
        try:
            value = self.loader.construct_object(node)
        except (ValueError, IndexError, KeyError, AttributeError, TypeError, OverflowError):
            # PyYAML's constructors fail with these on a scalar whose explicit tag does not fit its text
            # (`!!int ''`, `!!bool x`, `!!timestamp x`).
            raise self.error(node, f"{node.value!r} is not a valid value for the YAML tag {node.tag!r}") from None
        if isinstance(value, datetime.date):
            # Nothing in the format is a date; `Date: 2024-01-01` means the text.
            return node.value
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(node, f"expected a finite number, got {node.value}")
        if value is None or isinstance(value, str | int | float | bool):
            return value
        raise self.error(node, f"unsupported YAML value of type {type(value).__name__}")
