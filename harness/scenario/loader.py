"""Load scenario files: YAML with source marks -> JSON Schema validation -> semantic checks -> frozen models.

Every problem in a file is a ScenarioError pointing at the offending node (``file:line:col: message``);
nothing here lets a YAML, jsonschema or OS exception escape. The only I/O is reading the scenario file,
reading the message files it names and checking that role configuration directories exist.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harness.errors import ScenarioError, UsageError
from harness.scenario.model import (
    DeliveryStep,
    DnsRecord,
    HeaderCheck,
    Mark,
    Message,
    NoDeliveryStep,
    ReplyExpectation,
    RoleOverride,
    Scenario,
    SmtpSessionStep,
    Stage,
    Step,
)
from harness.scenario.validate import JsonPath, SourceMap, load_schema, schema_path, validate_document

__all__ = [
    "DEFAULT_BODY",
    "DEFAULT_EHLO",
    "STANDARD_ROLES",
    "load_scenario",
    "load_scenarios",
    "load_schema",
    "scenario_files",
    "schema_path",
]

# Roles every scenario can use without declaring them (the dns container is infrastructure, not a host).
STANDARD_ROLES: tuple[str, ...] = ("mx", "relay", "nomail")
SCENARIO_SUFFIXES = (".yaml", ".yml")

DEFAULT_EHLO = "client.origin.test"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_DELIVERY_WITHIN_S = 10.0
DEFAULT_NO_DELIVERY_WITHIN_S = 3.0
DEFAULT_TTL = 300
DEFAULT_BODY = "This message was sent by mailflow-harness.\n"

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_HEADER_NAME = re.compile(r"[!-9;-~]+")


def scenario_files(paths: Sequence[Path]) -> list[Path]:
    """The scenario files named by ``paths``: files as given, directories as their ``*.yaml``/``*.yml``
    files sorted by name (dotfiles skipped: editors leave them behind)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            in_dir = sorted(
                p for p in path.iterdir()
                if p.suffix in SCENARIO_SUFFIXES and not p.name.startswith(".") and p.is_file()
            )
            if not in_dir:
                # A run that silently checks nothing would look like a pass.
                raise UsageError(f"no scenario files (*.yaml, *.yml) in directory {path}")
            found.extend(in_dir)
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"no such scenario file or directory: {path}")
    return found


def load_scenarios(paths: Sequence[Path]) -> list[Scenario]:
    """Load every scenario named by ``paths`` (see ``scenario_files``), stopping at the first bad file."""
    return [load_scenario(path) for path in scenario_files(paths)]


def load_scenario(path: Path) -> Scenario:
    """Load and check one scenario file. Marks and messages name the file as ``path`` was given."""
    data, source = _read_yaml(path)
    validate_document(data, source)
    return _Builder(path, source).scenario(cast(dict[str, Any], data))


# --- YAML with marks -----------------------------------------------------------------------------


def _read_yaml(path: Path) -> tuple[object, SourceMap]:
    display = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no such scenario file: {display}") from None
    except IsADirectoryError:
        raise UsageError(f"{display} is a directory, not a scenario file") from None
    except OSError as exc:
        raise UsageError(f"cannot read scenario file {display}: {exc.strerror or exc}") from None
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
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        if root is None:
            raise ScenarioError(display, 1, 1, "empty scenario file: expected a mapping with name, "
                                "description and steps")
        walker = _Walker(loader, source)
        walker.check_duplicates(root, set())
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


class _Walker:
    """Turns the composed node tree into plain JSON-like data, recording marks by JSON path.

    Working on nodes rather than on constructed objects is what makes marks for every value, key
    and list item available, and what lets duplicate keys be caught (PyYAML keeps the last one).
    """

    def __init__(self, loader: yaml.SafeLoader, source: SourceMap) -> None:
        self.loader = loader
        self.source = source

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
                # Flatten a copy so the shared (anchored) node keeps its own entries for other aliases.
                flat = MappingNode(node.tag, list(node.value), node.start_mark, node.end_mark,
                                   node.flow_style)
                self.loader.flatten_mapping(flat)
                result: dict[str, object] = {}
                # Merged entries come first, so the mapping's own keys override them, as YAML specifies.
                for key_node, value_node in flat.value:
                    key = self.key_text(key_node)
                    self.source.keys[(*path, key)] = self.mark(key_node)
                    result[key] = self.convert(value_node, (*path, key), active)
                return result
            raise self.error(node, "unsupported YAML node")
        finally:
            active.discard(id(node))

    def scalar(self, node: ScalarNode, path: JsonPath) -> object:
        if node.style is None:
            self.source.raw[path] = node.value
        value = self.loader.construct_object(node)
        if isinstance(value, datetime.date):
            # Nothing in the format is a date; `Date: 2024-01-01` means the text.
            return node.value
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(node, f"expected a finite number, got {node.value}")
        if value is None or isinstance(value, str | int | float | bool):
            return value
        raise self.error(node, f"unsupported YAML value of type {type(value).__name__}")


# --- Models --------------------------------------------------------------------------------------


class _Builder:
    """Builds the models from schema-valid data, with the checks the schema cannot express."""

    def __init__(self, path: Path, source: SourceMap) -> None:
        self.path = path
        self.base = path.parent
        self.source = source
        self.roles: tuple[str, ...] = STANDARD_ROLES

    def at(self, *path: str | int) -> Mark:
        return self.source.value(path)

    def at_key(self, *path: str | int) -> Mark:
        return self.source.key(path)

    def fail(self, mark: Mark, message: str) -> ScenarioError:
        return self.source.error(mark, message)

    def scenario(self, data: dict[str, Any]) -> Scenario:
        name: str = data["name"]
        roles = self.role_overrides(data.get("roles", {}))
        self.roles = STANDARD_ROLES + tuple(r for r in roles if r not in STANDARD_ROLES)
        dns = tuple(self.dns_record(i, rec) for i, rec in enumerate(data.get("dns", [])))
        return Scenario(
            path=self.path,
            name=name,
            description=data["description"],
            dns=dns,
            roles=roles,
            steps=self.steps(data["steps"], name),
            mark=self.at(),
        )

    def role_overrides(self, roles: dict[str, Any]) -> dict[str, RoleOverride]:
        result: dict[str, RoleOverride] = {}
        for role, spec in roles.items():
            if role not in STANDARD_ROLES:
                raise self.fail(self.at_key("roles", role), f"custom role {role!r} is not supported yet: "
                                f"roles can only override {_one_of(STANDARD_ROLES)}")
            config: str = spec["config"]
            directory = (self.base / config).resolve()
            if not directory.is_dir():
                problem = "is not a directory" if directory.exists() else "does not exist"
                raise self.fail(self.at("roles", role, "config"),
                                f"role config directory {config!r} {problem} (resolved to {directory})")
            result[role] = RoleOverride(role=role, config_dir=directory, mark=self.at_key("roles", role))
        return result

    def known_role(self, role: str, *path: str | int) -> str:
        if role not in self.roles:
            raise self.fail(self.at(*path), f"unknown role {role!r} in {path[-1]} "
                            f"(expected one of: {', '.join(self.roles)})")
        return role

    def dns_record(self, index: int, rec: dict[str, Any]) -> DnsRecord:
        here = ("dns", index)
        rtype: str = rec["type"]
        value: str | None = rec.get("value")
        address_of: str | None = rec.get("address_of")
        if value is None and address_of is None:
            raise self.fail(self.at(*here), "missing required key 'value' (or 'address_of') in DNS record")
        if value is not None and address_of is not None:
            raise self.fail(self.at_key(*here, "address_of"),
                            "a DNS record takes either 'value' or 'address_of', not both")
        if address_of is not None:
            if rtype not in ("A", "AAAA"):
                raise self.fail(self.at_key(*here, "address_of"),
                                f"'address_of' is only for A and AAAA records, not {rtype} records")
            self.known_role(address_of, *here, "address_of")
        return DnsRecord(
            name=rec["name"],
            rtype=rtype,
            value=value,
            address_of=address_of,
            ttl=rec.get("ttl", DEFAULT_TTL),
            mark=self.at(*here),
        )

    def steps(self, raw_steps: list[dict[str, Any]], scenario_name: str) -> tuple[Step, ...]:
        # Every smtp id with its step index, to tell "later step" from "no such step" for message_of.
        all_ids: dict[str, int] = {}
        for index, raw in enumerate(raw_steps):
            if "smtp" in raw and "id" in raw["smtp"]:
                all_ids.setdefault(raw["smtp"]["id"], index)
        ids_so_far: dict[str, Mark] = {}
        any_smtp = False
        steps: list[Step] = []
        for index, raw in enumerate(raw_steps):
            kind, body = next(iter(raw.items()))
            here = ("steps", index, kind)
            if kind == "smtp":
                step_id: str | None = body.get("id")
                if step_id is not None:
                    if step_id in ids_so_far:
                        raise self.fail(self.at(*here, "id"), f"duplicate step id {step_id!r} "
                                        f"(already used at line {ids_so_far[step_id].line})")
                    ids_so_far[step_id] = self.at(*here, "id")
                steps.append(self.smtp_step(here, body, scenario_name))
                any_smtp = True
                continue
            message_of: str | None = body.get("message_of")
            if message_of is not None and message_of not in ids_so_far:
                if message_of in all_ids:
                    problem = (f"message_of {message_of!r} refers to a later step "
                               f"(step {all_ids[message_of] + 1}): only a message sent before this step "
                               "can be checked")
                else:
                    known = (f"known ids: {', '.join(ids_so_far)}" if ids_so_far
                             else "no earlier smtp step has an id")
                    problem = f"unknown step id {message_of!r} in message_of ({known})"
                raise self.fail(self.at(*here, "message_of"), problem)
            if message_of is None and not any_smtp:
                raise self.fail(self.at("steps", index), f"{kind} step before any smtp step: "
                                "there is no message to look for")
            if kind == "delivery":
                steps.append(self.delivery_step(here, body, message_of))
            else:
                steps.append(self.no_delivery_step(here, body, message_of))
        return tuple(steps)

    def smtp_step(self, here: JsonPath, body: dict[str, Any], scenario_name: str) -> SmtpSessionStep:
        rcpt_raw: str | list[str] = body["rcpt_to"]
        rcpt_to = (rcpt_raw,) if isinstance(rcpt_raw, str) else tuple(rcpt_raw)
        expect: dict[Stage, ReplyExpectation] = {}
        expect_rcpt: dict[str, ReplyExpectation] = {}
        raw_expect: dict[str, Any] = body.get("expect", {})
        for stage in Stage:
            if stage.yaml_key not in raw_expect:
                continue
            spec = raw_expect[stage.yaml_key]
            spec_path = (*here, "expect", stage.yaml_key)
            # The schema tells the two mapping forms of rcpt apart the same way.
            per_recipient = isinstance(spec, dict) and not {"code", "enhanced", "text"} & spec.keys()
            if stage is Stage.RCPT and per_recipient:
                for recipient, rcpt_spec in spec.items():
                    if recipient not in rcpt_to:
                        raise self.fail(self.at_key(*spec_path, recipient),
                                        f"recipient {recipient!r} in expect.rcpt is not in rcpt_to "
                                        f"({', '.join(rcpt_to)})")
                    expect_rcpt[recipient] = self.reply(rcpt_spec, (*spec_path, recipient))
            else:
                expect[stage] = self.reply(spec, spec_path)
        return SmtpSessionStep(
            host=self.known_role(body["host"], *here, "host"),
            ehlo=body.get("ehlo", DEFAULT_EHLO),
            mail_from=body["mail_from"],
            rcpt_to=rcpt_to,
            message=self.message(here, body.get("message"), scenario_name),
            expect=expect,
            expect_rcpt=expect_rcpt,
            mark=self.at(*here[:-1]),
            id=body.get("id"),
            timeout_s=float(body.get("timeout", DEFAULT_TIMEOUT_S)),
        )

    def reply(self, spec: int | dict[str, Any], path: JsonPath) -> ReplyExpectation:
        mark = self.at(*path)
        if isinstance(spec, int):
            return ReplyExpectation(code=spec, mark=mark)
        text: str | None = spec.get("text")
        if text is not None:
            self.regex(text, *path, "text")
        return ReplyExpectation(code=spec["code"], enhanced=spec.get("enhanced"), text=text, mark=mark)

    def regex(self, pattern: str, *path: str | int) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise self.fail(self.at(*path), f"invalid regular expression {pattern!r}: {exc.msg} "
                            f"at position {exc.pos}") from None
        return pattern

    def message(self, here: JsonPath, spec: dict[str, Any] | None, scenario_name: str) -> Message:
        default_headers = (("Subject", f"mailflow-harness: {scenario_name}"),)
        if spec is None:
            return Message(headers=default_headers, body=DEFAULT_BODY)
        path = (*here, "message")
        if "file" in spec:
            if "headers" in spec or "body" in spec:
                raise self.fail(self.at_key(*path, "file"),
                                "'file' cannot be combined with 'headers' or 'body' in a message")
            return self.message_file(spec["file"], (*path, "file"))
        headers: tuple[tuple[str, str], ...] = default_headers
        if "headers" in spec:
            headers = tuple(
                (name, self.header_value(value, (*path, "headers", name)))
                for name, value in spec["headers"].items()
            )
        return Message(headers=headers, body=_normalise_body(spec.get("body", DEFAULT_BODY)))

    def header_value(self, value: str | float | bool | None, path: JsonPath) -> str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        # `X-Test: yes` or `X-Version: 1.10` mean the text, not YAML's boolean or float.
        return self.source.raw.get(path, str(value))

    def message_file(self, name: str, path: JsonPath) -> Message:
        file = (self.base / name).resolve()
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise self.fail(self.at(*path), f"message file {name!r} {_os_problem(exc, file)}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(self.at(*path), f"message file {name!r} is not UTF-8 text "
                            f"(invalid byte at offset {exc.start})") from None
        lines = text.replace("\r\n", "\n").split("\n")
        blank = lines.index("") if "" in lines else len(lines)
        headers: list[list[str]] = []
        for number, line in enumerate(lines[:blank], start=1):
            if line[:1] in (" ", "\t") and headers:
                # Unfolding (RFC 5322 2.2.3) removes only the line break.
                headers[-1][1] += line
                continue
            field_name, colon, value = line.partition(":")
            if not colon or not _HEADER_NAME.fullmatch(field_name):
                raise self.fail(self.at(*path), f"message file {name!r} line {number}: expected a header "
                                f"field 'Name: value' or the blank line before the body, got {line[:60]!r}")
            headers.append([field_name, value])
        body = "\n".join(lines[blank + 1:])
        return Message(
            headers=tuple((n, v.strip(" \t")) for n, v in headers),
            body=_normalise_body(body),
            source_file=file,
        )

    def delivery_step(self, here: JsonPath, body: dict[str, Any], message_of: str | None) -> DeliveryStep:
        checks = tuple(
            HeaderCheck(name=name, pattern=self.regex(pattern, *here, "headers", name))
            for name, pattern in body.get("headers", {}).items()
        )
        return DeliveryStep(
            host=self.known_role(body["host"], *here, "host"),
            mailbox=body["mailbox"],
            within_s=float(body.get("within", DEFAULT_DELIVERY_WITHIN_S)),
            headers=checks,
            body_intact=body.get("body_intact", True),
            mark=self.at(*here[:-1]),
            message_of=message_of,
        )

    def no_delivery_step(
        self, here: JsonPath, body: dict[str, Any], message_of: str | None
    ) -> NoDeliveryStep:
        return NoDeliveryStep(
            host=self.known_role(body["host"], *here, "host"),
            mailbox=body.get("mailbox"),
            within_s=float(body.get("within", DEFAULT_NO_DELIVERY_WITHIN_S)),
            mark=self.at(*here[:-1]),
            message_of=message_of,
        )


def _os_problem(exc: OSError, file: Path) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"does not exist (resolved to {file})"
    if isinstance(exc, IsADirectoryError):
        return f"is a directory ({file})"
    return f"cannot be read: {exc.strerror or exc}"


def _normalise_body(body: str) -> str:
    # Line ends are "\n" in the model (the SMTP client writes CRLF); a last line is always terminated.
    body = body.replace("\r\n", "\n")
    return body if not body or body.endswith("\n") else body + "\n"


def _one_of(names: Sequence[str]) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
