"""Load scenario files: YAML with source marks -> JSON Schema validation -> semantic checks -> frozen models.

A step's ``per_mta`` overrides are merged into the step (their keys replace the step's own) and the result
is built and checked like any step, with marks of the replaced keys pointing into the override.

Every problem in a file is a ScenarioError pointing at the offending node (``file:line:col: message``);
nothing here lets a YAML, jsonschema or OS exception escape. The only I/O is reading the scenario file,
reading the message files it names and checking that role configuration directories exist.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harness.errors import ScenarioError, UsageError
from harness.scenario.model import (
    BounceStep,
    DeliveryStep,
    DnsRecord,
    DsnCheck,
    HeaderCheck,
    HopStep,
    Mark,
    Message,
    NoConnectionStep,
    NoDeliveryStep,
    QueueFlushStep,
    QueueStateStep,
    ReplyExpectation,
    RoleOverride,
    Scenario,
    SmtpSessionStep,
    Stage,
    Step,
    StepOverride,
)
from harness.scenario.validate import JsonPath, SourceMap, load_schema, schema_path, validate_document

__all__ = [
    "DEFAULT_BODY",
    "DEFAULT_EHLO",
    "DSN_FIELDS",
    "KNOWN_MTAS",
    "STANDARD_ROLES",
    "load_scenario",
    "load_scenarios",
    "load_schema",
    "scenario_files",
    "schema_path",
]

# Roles every scenario can use without declaring them (the dns container is infrastructure, not a host).
# A scenario can change them under roles, and add roles that copy one of them (like: nomail).
STANDARD_ROLES: tuple[str, ...] = ("mx", "relay", "nomail")
# OpenSMTPD's smtpd.conf has no macro or override mechanism the harness could write settings into.
MTAS_WITHOUT_SETTINGS = ("opensmtpd",)

# The MTA implementations a scenario can name (mta:, per_mta:, per-implementation config and settings);
# the first is the one a plain `config: <path>` configures.
KNOWN_MTAS: tuple[str, ...] = ("postfix", "exim", "opensmtpd")
SCENARIO_SUFFIXES = (".yaml", ".yml")

DEFAULT_EHLO = "client.origin.test"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_DELIVERY_WITHIN_S = 10.0
DEFAULT_NO_DELIVERY_WITHIN_S = 3.0
DEFAULT_HOP_WITHIN_S = 15.0
DEFAULT_NO_CONNECTION_WITHIN_S = 5.0
DEFAULT_BOUNCE_WITHIN_S = 20.0
DEFAULT_QUEUE_STATE_WITHIN_S = 15.0
DEFAULT_TTL = 300
DEFAULT_BODY = "This message was sent by mailflow-harness.\n"

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_HEADER_NAME = re.compile(r"[!-9;-~]+")

# The bounce step's expect keys -> the RFC 3464 per-recipient fields they check.
DSN_FIELDS: dict[str, str] = {
    "action": "Action",
    "status": "Status",
    "diagnostic_code": "Diagnostic-Code",
    "remote_mta": "Remote-MTA",
    "final_recipient": "Final-Recipient",
}

# Names that are not mail roles, with why they cannot appear under roles.
_NOT_ROLES = {
    "dns": "'dns' is the scenario's DNS server, not a mail role: it cannot be changed or added under roles",
    "client": "'client' is the harness's own SMTP client, not a role: it cannot be changed or added "
              "under roles",
}

# An override's key that replaces a step key of another name: in a per_mta entry `reason` is why the
# implementation differs, so a queue_state step's own `reason` is replaced with `queue_reason`.
_OVERRIDE_KEYS = {("queue_state", "queue_reason"): "reason"}

_T = TypeVar("_T")


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


@dataclass
class _Ids:
    """What message_of can name while the steps are built in order."""

    every: dict[str, int]  # id -> index of every smtp step with an id, to tell "later" from "unknown"
    before: dict[str, int] = field(default_factory=dict)  # id -> index, smtp steps before this one
    marks: dict[str, Mark] = field(default_factory=dict)
    latest_smtp: int | None = None


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
        mtas = self.mtas(data.get("mta"))
        roles = self.role_overrides(data.get("roles", {}))
        self.roles = STANDARD_ROLES + tuple(r for r in roles if r not in STANDARD_ROLES)
        dns = tuple(self.dns_record(i, rec) for i, rec in enumerate(data.get("dns", [])))
        steps, overrides = self.steps(data["steps"], name)
        return Scenario(
            path=self.path,
            name=name,
            description=data["description"],
            dns=dns,
            roles=roles,
            steps=steps,
            mark=self.at(),
            mtas=mtas,
            overrides=overrides,
        )

    def mtas(self, raw: str | list[str] | None) -> tuple[str, ...]:
        if raw is None:
            return ()
        if isinstance(raw, str):
            return (raw,)
        for i, mta in enumerate(raw):
            if mta in raw[:i]:
                raise self.fail(self.at("mta", i), f"MTA implementation {mta!r} is listed twice in mta")
        return tuple(raw)

    # --- roles ---

    def role_overrides(self, roles: dict[str, Any]) -> dict[str, RoleOverride]:
        result: dict[str, RoleOverride] = {}
        for role, spec in roles.items():
            here = ("roles", role)
            if role in _NOT_ROLES:
                raise self.fail(self.at_key(*here), _NOT_ROLES[role])
            like: str | None = spec.get("like")
            if role in STANDARD_ROLES and like is not None:
                raise self.fail(self.at_key(*here, "like"), f"'like' is only for a role the scenario adds: "
                                f"{role} is a standard role (change it with config and settings)")
            if role not in STANDARD_ROLES and like is None:
                raise self.fail(self.at_key(*here), f"{role!r} is not a standard role "
                                f"({_one_of(STANDARD_ROLES)}): a role the scenario adds needs "
                                "'like: <standard role>', the role it copies (e.g. like: nomail for a "
                                "second host that answers 521)")
            result[role] = RoleOverride(
                role=role,
                config_dirs=self.config_dirs(here, spec.get("config")),
                settings=self.settings(here, spec.get("settings", {})),
                mark=self.at_key(*here),
                like=like,
                mta=spec.get("mta"),
            )
        return result

    def config_dirs(self, here: JsonPath, config: str | dict[str, str] | None) -> dict[str, Path]:
        if config is None:
            return {}
        if isinstance(config, str):
            # A plain path is the configuration of the default implementation.
            return {KNOWN_MTAS[0]: self.directory(config, (*here, "config"))}
        return {mta: self.directory(name, (*here, "config", mta)) for mta, name in config.items()}

    def directory(self, name: str, path: JsonPath) -> Path:
        directory = (self.base / name).resolve()
        if not directory.is_dir():
            problem = "is not a directory" if directory.exists() else "does not exist"
            raise self.fail(self.at(*path), f"role config directory {name!r} {problem} "
                            f"(resolved to {directory})")
        return directory

    def settings(self, here: JsonPath, raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
        for mta in raw:
            if mta in MTAS_WITHOUT_SETTINGS:
                raise self.fail(self.at_key(*here, "settings", mta),
                                f"{mta} roles take no settings (its configuration has no parameters to lay "
                                f"over): give the role a configuration directory with `config: {{{mta}: DIR}}`")
        return {
            mta: {name: self.as_written(value, (*here, "settings", mta, name)) for name, value in params.items()}
            for mta, params in raw.items()
        }

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

    # --- steps ---

    def steps(
        self, raw_steps: list[dict[str, Any]], scenario_name: str
    ) -> tuple[tuple[Step, ...], dict[int, dict[str, StepOverride]]]:
        ids = _Ids(every={})
        for index, raw in enumerate(raw_steps):
            if "smtp" in raw and "id" in raw["smtp"]:
                ids.every.setdefault(raw["smtp"]["id"], index)
        steps: list[Step] = []
        overrides: dict[int, dict[str, StepOverride]] = {}
        # The smtp step whose message a step checks: for the step itself, and per implementation.
        sources: dict[int, int] = {}
        override_sources: dict[tuple[int, str], int] = {}
        for index, raw in enumerate(raw_steps):
            kind, body = next(iter(raw.items()))
            here = ("steps", index, kind)
            if kind == "smtp" and body.get("id") is not None:
                step_id: str = body["id"]
                if step_id in ids.marks:
                    raise self.fail(self.at(*here, "id"), f"duplicate step id {step_id!r} "
                                    f"(already used at line {ids.marks[step_id].line})")
                ids.marks[step_id] = self.at(*here, "id")
            step, source = self.step(kind, here, body, scenario_name, ids)
            steps.append(step)
            if source is not None:
                sources[index] = source
            for mta, spec in body.get("per_mta", {}).items():
                override, source = self.step_override(kind, here, body, mta, spec, scenario_name, ids)
                overrides.setdefault(index, {})[mta] = override
                if source is not None:
                    override_sources[(index, mta)] = source
            if kind == "smtp":
                if body.get("id") is not None:
                    ids.before[body["id"]] = index
                ids.latest_smtp = index
        self.check_skipped_messages(raw_steps, overrides, sources, override_sources)
        return tuple(steps), overrides

    def step(
        self, kind: str, here: JsonPath, body: dict[str, Any], scenario_name: str, ids: _Ids
    ) -> tuple[Step, int | None]:
        """The step, and for a step that checks a session's message the index of that smtp step."""
        if kind == "smtp":
            return self.smtp_step(here, body, scenario_name), None
        if kind == "hop":
            return self.hop_step(here, body), None
        if kind == "no_connection":
            return self.no_connection_step(here, body), None
        if kind == "queue_flush":
            host = self.known_role(body["host"], *here, "host")
            return QueueFlushStep(host=host, mark=self.at(*here[:-1])), None
        source = self.message_source(kind, here, body, ids)
        message_of: str | None = body.get("message_of")
        if kind == "delivery":
            return self.delivery_step(here, body, message_of), source
        if kind == "no_delivery":
            return self.no_delivery_step(here, body, message_of), source
        if kind == "bounce":
            return self.bounce_step(here, body, message_of), source
        return self.queue_state_step(here, body, message_of), source

    def message_source(self, kind: str, here: JsonPath, body: dict[str, Any], ids: _Ids) -> int:
        message_of: str | None = body.get("message_of")
        if message_of is not None:
            if message_of in ids.before:
                return ids.before[message_of]
            if message_of in ids.every:
                problem = (f"message_of {message_of!r} refers to a later step "
                           f"(step {ids.every[message_of] + 1}): only a message sent before this step "
                           "can be checked")
            else:
                known = (f"known ids: {', '.join(ids.before)}" if ids.before
                         else "no earlier smtp step has an id")
                problem = f"unknown step id {message_of!r} in message_of ({known})"
            raise self.fail(self.at(*here, "message_of"), problem)
        if ids.latest_smtp is None:
            raise self.fail(self.at(*here[:-1]), f"{kind} step before any smtp step: "
                            "there is no message to look for")
        return ids.latest_smtp

    def step_override(
        self, kind: str, here: JsonPath, body: dict[str, Any], mta: str, spec: dict[str, Any],
        scenario_name: str, ids: _Ids,
    ) -> tuple[StepOverride, int | None]:
        at = (*here, "per_mta", mta)
        mark = self.at_key(*at)
        reason: str = spec["reason"].strip()
        # (key in the override, key of the step it replaces)
        keys = [(key, _OVERRIDE_KEYS.get((kind, key), key)) for key in spec if key not in ("reason", "skip")]
        if spec.get("skip", False):
            if keys:
                raise self.fail(self.at_key(*at, keys[0][0]), f"a skipped step takes no keys besides "
                                f"'reason': {keys[0][0]!r} would change a step that does not run on {mta}")
            return StepOverride(mta=mta, reason=reason, mark=mark, skip=True), None
        if not keys:
            raise self.fail(mark, f"the override for {mta} changes nothing: give 'skip: true', or keys "
                            f"of the {kind} step that replace the step's own")
        merged = {key: value for key, value in body.items() if key != "per_mta"}
        merged.update({step_key: spec[key] for key, step_key in keys})
        if kind == "queue_state" and merged.get("state") == "absent" and "queue_reason" not in spec:
            # An override saying "not queued here" drops the step's reason: nothing queued has one.
            merged.pop("reason", None)
        try:
            step, source = self.relocated(here, at, keys).step(kind, here, merged, scenario_name, ids)
        except ScenarioError as exc:
            # The mark may be on a key the override leaves alone: say which variant of the step failed.
            raise ScenarioError(exc.path, exc.line, exc.col, f"{exc.detail} (on {mta}: the step with its "
                                f"per_mta override at line {mark.line})") from None
        return StepOverride(mta=mta, reason=reason, mark=mark, step=step), source

    def relocated(self, here: JsonPath, at: JsonPath, keys: list[tuple[str, str]]) -> _Builder:
        """A builder whose marks for the step's replaced keys are those of the override's keys, so the
        step merged with an override is built and checked like any step, with errors in the override."""
        source = SourceMap(self.source.file, dict(self.source.values), dict(self.source.keys),
                           dict(self.source.raw))
        for key, step_key in keys:
            old, new = (*here, step_key), (*at, key)
            _move(source.values, self.source.values, old, new)
            _move(source.keys, self.source.keys, old, new)
            _move(source.raw, self.source.raw, old, new)
        builder = copy.copy(self)
        builder.source = source
        return builder

    def check_skipped_messages(
        self,
        raw_steps: list[dict[str, Any]],
        overrides: dict[int, dict[str, StepOverride]],
        sources: dict[int, int],
        override_sources: dict[tuple[int, str], int],
    ) -> None:
        """A step that runs on an implementation cannot check the message of a step skipped there."""
        for index, base_source in sources.items():
            kind, body = next(iter(raw_steps[index].items()))
            for mta in KNOWN_MTAS:
                override = overrides.get(index, {}).get(mta)
                if override is not None and override.skip:
                    continue
                source = override_sources.get((index, mta), base_source)
                skipped = overrides.get(source, {}).get(mta)
                if skipped is None or not skipped.skip:
                    continue
                if override is not None and "message_of" in body["per_mta"][mta]:
                    mark = self.at("steps", index, kind, "per_mta", mta, "message_of")
                elif "message_of" in body:
                    mark = self.at("steps", index, kind, "message_of")
                else:
                    mark = self.at("steps", index)
                raise self.fail(mark, f"step {index + 1} ({kind}) checks the message of step {source + 1}, "
                                f"which is skipped on {mta} (per_mta): skip this step on {mta} too, or "
                                "name another message with message_of")

    def smtp_step(self, here: JsonPath, body: dict[str, Any], scenario_name: str) -> SmtpSessionStep:
        rcpt_raw: str | list[str] = body["rcpt_to"]
        rcpt_to = (rcpt_raw,) if isinstance(rcpt_raw, str) else tuple(rcpt_raw)
        expect, expect_rcpt = self.expectations((*here, "expect"), body.get("expect", {}), rcpt_to)
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

    def expectations(
        self, path: JsonPath, raw_expect: dict[str, Any], rcpt_to: tuple[str, ...] | None
    ) -> tuple[dict[Stage, ReplyExpectation], dict[str, ReplyExpectation]]:
        """Per-stage and per-recipient expectations; ``rcpt_to`` (None: any) limits the recipients."""
        expect: dict[Stage, ReplyExpectation] = {}
        expect_rcpt: dict[str, ReplyExpectation] = {}
        for stage in Stage:
            if stage.yaml_key not in raw_expect:
                continue
            spec = raw_expect[stage.yaml_key]
            spec_path = (*path, stage.yaml_key)
            # The schema tells the two mapping forms of rcpt apart the same way.
            per_recipient = isinstance(spec, dict) and not {"code", "enhanced", "text"} & spec.keys()
            if stage is Stage.RCPT and per_recipient:
                for recipient, rcpt_spec in spec.items():
                    if rcpt_to is not None and recipient not in rcpt_to:
                        raise self.fail(self.at_key(*spec_path, recipient),
                                        f"recipient {recipient!r} in expect.rcpt is not in rcpt_to "
                                        f"({', '.join(rcpt_to)})")
                    expect_rcpt[recipient] = self.reply(rcpt_spec, (*spec_path, recipient))
            else:
                expect[stage] = self.reply(spec, spec_path)
        return expect, expect_rcpt

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
                (name, self.as_written(value, (*path, "headers", name)))
                for name, value in spec["headers"].items()
            )
        return Message(headers=headers, body=_normalise_body(spec.get("body", DEFAULT_BODY)))

    def as_written(self, value: str | float | bool | None, path: JsonPath) -> str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        # `X-Test: yes`, `X-Version: 1.10` or `smtp_skip_5xx_greeting: no` mean the text, not YAML's
        # boolean or float.
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

    def hop_step(self, here: JsonPath, body: dict[str, Any]) -> HopStep:
        hop: str = body["hop"]
        sender, _, receiver = hop.partition("->")
        mark = self.at(*here, "hop")
        roles = ", ".join(self.roles)
        if sender == "client":
            raise self.fail(mark, f"hop {hop!r} starts at the client: the client's own sessions are "
                            "checked in smtp steps; a hop step checks a session between two hosts "
                            "(e.g. relay->mx)")
        if sender not in self.roles:
            raise self.fail(mark, f"unknown role {sender!r} on the left of hop {hop!r} "
                            f"(expected one of: {roles})")
        if receiver not in self.roles and not _is_ipv4(receiver):
            raise self.fail(mark, f"{receiver!r} on the right of hop {hop!r} is neither a role "
                            f"({roles}) nor an IPv4 address")
        expect, expect_rcpt = self.expectations((*here, "expect"), body["expect"], None)
        return HopStep(
            hop=hop,
            session=body.get("session", 1),
            expect=expect,
            expect_rcpt=expect_rcpt,
            within_s=float(body.get("within", DEFAULT_HOP_WITHIN_S)),
            mark=self.at(*here[:-1]),
        )

    def no_connection_step(self, here: JsonPath, body: dict[str, Any]) -> NoConnectionStep:
        source = self.known_role(body["from"], *here, "from")
        domain: str | None = body.get("domain")
        target: str | None = body.get("to")
        if domain is not None and target is not None:
            raise self.fail(self.at_key(*here, "to"),
                            "a no_connection step takes either 'domain' or 'to', not both")
        if domain is None and target is None:
            raise self.fail(self.at(*here), "missing required key 'domain' (or 'to') in no_connection step")
        if target is not None:
            self.known_role(target, *here, "to")
        return NoConnectionStep(
            source=source,
            domain=domain.rstrip(".").lower() if domain is not None else None,
            target=target,
            within_s=float(body.get("within", DEFAULT_NO_CONNECTION_WITHIN_S)),
            mark=self.at(*here[:-1]),
        )

    def bounce_step(self, here: JsonPath, body: dict[str, Any], message_of: str | None) -> BounceStep:
        checks = tuple(
            DsnCheck(field=DSN_FIELDS[key], pattern=self.regex(pattern, *here, "expect", key))
            for key, pattern in body.get("expect", {}).items()
        )
        return BounceStep(
            host=self.known_role(body["host"], *here, "host"),
            mailbox=body["mailbox"],
            within_s=float(body.get("within", DEFAULT_BOUNCE_WITHIN_S)),
            checks=checks,
            mark=self.at(*here[:-1]),
            message_of=message_of,
        )

    def queue_state_step(self, here: JsonPath, body: dict[str, Any], message_of: str | None) -> QueueStateStep:
        state: str = body["state"]
        reason: str | None = body.get("reason")
        if reason is not None:
            if state == "absent":
                raise self.fail(self.at_key(*here, "reason"), "'reason' cannot be checked with state "
                                "'absent': a message that is not queued has no reason")
            self.regex(reason, *here, "reason")
        return QueueStateStep(
            host=self.known_role(body["host"], *here, "host"),
            state=state,
            reason=reason,
            within_s=float(body.get("within", DEFAULT_QUEUE_STATE_WITHIN_S)),
            mark=self.at(*here[:-1]),
            message_of=message_of,
        )


def _move(table: dict[JsonPath, _T], original: dict[JsonPath, _T], old: JsonPath, new: JsonPath) -> None:
    """In ``table`` (a copy of ``original``), replace the entries under ``old`` with ``original``'s
    entries under ``new``, re-rooted at ``old``."""
    for path in [p for p in table if p[:len(old)] == old]:
        del table[path]
    for path, value in original.items():
        if path[:len(new)] == new:
            table[(*old, *path[len(new):])] = value


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


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
