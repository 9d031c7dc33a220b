"""JSON Schema validation of a scenario document, with errors turned into ``file:line:col: message``.

The schema (``schema.json``, shipped as package data) is the single description of the format: editors
use it for completion and help, and the loader checks every file against it before building models.
Besides the standard keywords, its subschemas carry annotations used only for messages here:
``title`` names a mapping ("smtp step"), ``x-expected`` says in words what a value must be,
``x-key-noun`` replaces "key" in unknown-key messages ("unknown step kind ...") and ``x-missing`` maps a
required key to the whole message given when it is absent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from harness.errors import ScenarioError
from harness.scenario.model import Mark

SCHEMA_RESOURCE = "schema.json"

# Where a value sits in the document: mapping keys and list indices from the top.
JsonPath = tuple[str | int, ...]


@dataclass
class SourceMap:
    """Marks of the nodes of one loaded YAML document, by JSON path.

    ``values`` holds the mark of every value (the node itself), ``keys`` the mark of the key under which
    a mapping entry sits, ``raw`` the source text of plain (unquoted) scalars, so a message can show
    ``5.10`` rather than the float YAML made of it.
    """

    file: str
    values: dict[JsonPath, Mark] = field(default_factory=dict)
    keys: dict[JsonPath, Mark] = field(default_factory=dict)
    raw: dict[JsonPath, str] = field(default_factory=dict)

    def value(self, path: JsonPath) -> Mark:
        # Every node converted from YAML has a mark; the walk up only guards against a path
        # jsonschema invents (it does not today).
        while path not in self.values and path:
            path = path[:-1]
        return self.values.get(path, Mark(self.file, 1, 1))

    def key(self, path: JsonPath) -> Mark:
        return self.keys.get(path) or self.value(path)

    def error(self, mark: Mark, message: str) -> ScenarioError:
        return ScenarioError(mark.file, mark.line, mark.col, message)


def schema_path() -> Path:
    """The schema file inside the installed package (a plain file for any non-zipped install)."""
    return Path(str(files("harness.scenario").joinpath(SCHEMA_RESOURCE)))


def load_schema() -> dict[str, Any]:
    """A fresh copy of the scenario JSON Schema."""
    text = files("harness.scenario").joinpath(SCHEMA_RESOURCE).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(load_schema())


def validate_document(data: object, source: SourceMap) -> None:
    """Raise a ScenarioError for the first schema violation in document order."""
    errors = list(_leaf_errors(_validator().iter_errors(data)))
    if not errors:
        return
    first = min(errors, key=lambda e: _sort_key(e, source))
    mark, message = _explain(first, source)
    raise source.error(mark, message)


def _leaf_errors(errors: Iterator[ValidationError]) -> Iterator[ValidationError]:
    # The schema avoids oneOf/anyOf on values so that every error is already the precise one; an error
    # with context (from the anyOf inside an ``if``) never surfaces, but flatten defensively.
    for error in errors:
        if error.context:
            yield from _leaf_errors(iter(error.context))
        else:
            yield error


# On the same mapping, an unknown key explains more than the missing key it was probably meant to be
# (``rcpt:`` for ``rcpt_to:``), and a wrong type more than a detail of the value.
_RANK = {"additionalProperties": 0, "propertyNames": 0, "type": 1, "required": 3}


def _sort_key(error: ValidationError, source: SourceMap) -> tuple[int, int, int]:
    mark = source.value(tuple(error.absolute_path))
    return (mark.line, mark.col, _RANK.get(str(error.validator), 2))


def _explain(error: ValidationError, source: SourceMap) -> tuple[Mark, str]:
    path: JsonPath = tuple(error.absolute_path)
    schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    keyword = str(error.validator)
    title = schema.get("title", "mapping")

    if keyword == "required":
        required: list[str] = error.validator_value  # type: ignore[assignment]
        present: dict[str, Any] = error.instance  # type: ignore[assignment]
        missing = [key for key in required if key not in present]
        custom: dict[str, str] = schema.get("x-missing", {})
        if missing[0] in custom:
            return source.value(path), custom[missing[0]]
        return source.value(path), f"missing required key {_quote(missing[0])} in {title}"

    if keyword == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        instance: dict[str, Any] = error.instance  # type: ignore[assignment]
        unknown = next(key for key in instance if key not in allowed)
        noun = schema.get("x-key-noun")
        what = f"unknown {noun} {_quote(unknown)}" if noun else f"unknown key {_quote(unknown)} in {title}"
        return source.key((*path, unknown)), f"{what} (expected one of: {', '.join(allowed)})"

    if "propertyNames" in error.relative_schema_path:
        # jsonschema reports a bad key at its mapping's path, with the key as the instance.
        key = str(error.instance)
        expected = schema.get("x-expected", "a valid key")
        return source.key((*path, key)), f"expected {expected} as key, got {_quote(key)}"

    expected = schema.get("x-expected")
    if expected is None:
        return source.value(path), error.message
    got = _describe(error.instance, source.raw.get(path))
    message = f"expected {expected}, got {got}"
    if schema.get("type") == "string" and isinstance(error.instance, int | float):
        message += ": write it in quotes to make it a string"
    elif schema.get("type") in ("integer", "number") and _is_number(error.instance):
        message += ": write it without quotes"
    return source.value(path), message


def _is_number(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[+-]?\d+(\.\d*)?", value.strip()) is not None


def _quote(text: object) -> str:
    return repr(str(text))


def _describe(value: object, raw: str | None) -> str:
    """The offending value as the user wrote it, briefly."""
    if value is None:
        return raw or "an empty value"
    if isinstance(value, bool):
        return f"{raw or str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        return f"{raw or value} (a number)"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return "an empty string" if not value else repr(shown)
    if isinstance(value, dict):
        if not value:
            return "an empty mapping"
        keys = list(value)
        listed = ", ".join(str(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
        return f"a mapping with key{'s' if len(keys) > 1 else ''} {listed}"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return type(value).__name__
