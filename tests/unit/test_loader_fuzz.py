"""Property-based fuzzing of the loader (hypothesis): whatever a scenario file holds, loading it either
builds a scenario or raises a ScenarioError (exit 2, ``file:line:col: message`` naming the file); never a
traceback, never another exception, never a hang.

Five generators: scenarios shaped like real ones (the schema's own keys, step kinds and each kind's keys,
values that are names, paths, codes and regexes the loader cares about) dumped as YAML; the valid fixture
scenarios with a few values replaced, removed or added (deep enough to reach every builder); YAML-like token
soup (anchors, aliases, merge keys, tags, directives, quotes, control characters); arbitrary text; and
arbitrary bytes. Deterministic: derandomized, no example database. About 10 s in all (CPU)."""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harness.errors import EXIT_USAGE, HarnessError, ScenarioError
from harness.mta import NAMES, ROLES
from harness.scenario.loader import load_scenario, load_schema

SCHEMA = load_schema()
DEFS: dict[str, Any] = SCHEMA["$defs"]


def _keys(node: object) -> set[str]:
    """Every property name anywhere in the schema."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                found.update(value)
            found |= _keys(value)
    elif isinstance(node, list):
        for value in node:
            found |= _keys(value)
    return found


def _properties(schema: dict[str, Any]) -> list[str]:
    while "$ref" in schema:
        schema = DEFS[schema["$ref"].rsplit("/", 1)[-1]]
    return sorted(schema.get("properties", {}))


VOCABULARY = sorted(_keys(SCHEMA))
STEP_KINDS: dict[str, list[str]] = {kind: _properties(sub) for kind, sub in DEFS["step"]["properties"].items()}
ROLE_KEYS = _properties(DEFS["roleOverride"])
DNS_KEYS = _properties(DEFS["dnsRecord"])
ROLE_NAMES = [*ROLES, "dns", "client", "unreachable", "backup", "b-2", "Bad_Role"]

# Values the loader gives meaning to: names, paths (inside, outside, odd), codes, regexes, addresses.
MEANINGFUL = [
    *NAMES, *ROLES, "dns", "unreachable", "backup", "relay->mx", "mx->relay", "relay->192.0.2.7", "x->",
    "a@origin.test", "bob@example.test", "no/such@example.test", "<a@b>", "a b@c", '"a b"@example.test', "",
    "250", "354", "521", 556, 250, 999, -1, 0, 600, 601, "5.1.10", 5.1, "2.0.0", "^5\\.", "(", "[", "*",
    "MX", "A", "AAAA", "TXT", "10 mx.example.test.", "0 .", "192.0.2.1", "not-an-ip", "nullmx.test",
    ".", "..", "../..", "../../../../../../etc", "/", "/etc", "/etc/passwd", "/dev/zero", "relay-config",
    "m.eml", "messages", "loop", "missing", "a\0b", "SIZE=auto", "SIZE=104857600", "BODY=8BITMIME",
    "NOTIFY=FAILURE", "deferred", "absent", "queued", "active", "message", "bounce", "refused", "no-answer",
    "yes", "no", "on", "~", "2024-01-01", "1e400", "0x1F", "\t", "line\nbreak", "\x01", "\u2028", "é",
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(MEANINGFUL),
)
keys = st.one_of(st.sampled_from(VOCABULARY + ROLE_NAMES + list(NAMES)), st.text(max_size=6))
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=12,
)


def _mapping_of(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A mapping with some of ``names`` (and now and then a stray key), each with any value."""
    return st.dictionaries(st.sampled_from(names) | keys if names else keys, values, max_size=6)


step = st.one_of(
    st.sampled_from(sorted(STEP_KINDS)).flatmap(lambda kind: _mapping_of(STEP_KINDS[kind]).map(lambda v: {kind: v})),
    values,
)
role = _mapping_of(ROLE_KEYS) | values
dns_record = _mapping_of(DNS_KEYS) | values
scenario = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=10) | scalars,
        "description": st.text(max_size=10) | scalars,
        "mta": st.sampled_from(NAMES) | st.lists(st.sampled_from([*NAMES, "sendmail"]), max_size=3) | scalars,
        "dns": st.lists(dns_record, max_size=3) | values,
        "roles": st.dictionaries(st.sampled_from(ROLE_NAMES) | keys, role, max_size=3) | values,
        "steps": st.lists(step, min_size=1, max_size=4) | values,
        "extra": values,
    },
)

# Valid scenarios (the loader tests' fixtures), mutated: deep enough to reach every builder and check.
FIXTURES = Path(__file__).parent / "fixtures" / "scenarios"
VALID_DOCS = [yaml.safe_load((FIXTURES / name).read_text(encoding="utf-8")) for name in ("full.yaml", "flows.yaml")]


def _slots(node: object) -> list[tuple[dict[str, Any] | list[Any], str | int]]:
    """Every (container, key or index) in a document, in document order."""
    found: list[tuple[dict[str, Any] | list[Any], str | int]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((node, key))
            found += _slots(value)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.append((node, index))
            found += _slots(value)
    return found


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A valid scenario with one or two values replaced, removed, or given a sibling."""
    doc = copy.deepcopy(draw(st.sampled_from(VALID_DOCS)))
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        slots = _slots(doc)
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            container[key] = draw(st.sampled_from(MEANINGFUL) | values)
        elif action == "delete":
            del container[key]
        elif isinstance(container, dict):
            container[draw(keys)] = draw(values)
        else:
            container.append(draw(values))
    return doc


# Pieces of YAML for the token soup: structure, anchors and aliases, merge keys, tags, directives, quotes.
TOKENS = [
    "name: t\n", "description: d\n", "steps:\n", "  - smtp:\n", "      host: mx\n", "      mail_from: a@x.test\n",
    "      rcpt_to: [b@example.test]\n", "roles:\n", "  relay: {config: relay-config}\n", "mta: [postfix]\n",
    "      message: {file: m.eml}\n", "&a ", "&b ", "*a", "*b", "<<: ", "<<: [*a, *b]", "{", "}", "[", "]",
    ", ", "- ", ": ", "\n", "  ", "    ", "key", "'", '"', "!!str ", "!!int ", "!!python/object:os.system ",
    "!!binary aGk=", "!!set {a}", "!!omap [a: 1]", "!custom ", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "---\n",
    "...\n", "? ", "|\n", ">-\n", "#c\n", "\t", "\x00", "\x7f", "\ufeff", "\u0085", "&a [*a]", "&a {<<: *a}",
    "x", "1e400", ".nan", ".inf", "0x1F", "2024-01-01", "yes", "~", "=", "\\", "\\0", "é", "\r", "\r\n",
]
soup = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scenario directory with what generated paths may name: a role config for every implementation,
    message files, a directory, a symlink loop."""
    root = tmp_path_factory.mktemp("fuzz")
    config = root / "relay-config"
    config.mkdir()
    for main_file in ("main.cf", "exim4.conf", "smtpd.conf"):
        (config / main_file).write_text("# stand-in\n")
    (root / "m.eml").write_text("Subject: hi\n\nbody\n")
    shutil.copytree(FIXTURES / "messages", root / "messages")
    (root / "loop").symlink_to(root / "loop")
    return root


def check_load(path: Path, what: str) -> None:
    """Loads, or a ScenarioError with exit code 2 at ``path:line:col``; anything else fails the test."""
    try:
        load_scenario(path)
    except ScenarioError as exc:
        assert exc.exit_code == EXIT_USAGE
        assert exc.path == str(path) and exc.line >= 1 and exc.col >= 1, str(exc)
        assert re.match(rf"{re.escape(str(path))}:\d+:\d+: \S", str(exc)), str(exc)
        event(f"{what}: refused (exit 2, file:line:col)")
    except HarnessError as exc:  # pragma: no cover - reported as the failure it is
        pytest.fail(f"{what}: a {type(exc).__name__} (exit {exc.exit_code}) without file:line:col: {exc}")
    else:
        event(f"{what}: loaded")


@settings(SETTINGS, max_examples=80)
@given(doc=scenario, flow=st.none() | st.booleans())
def test_structured_scenarios(workdir: Path, doc: dict[str, Any], flow: bool | None) -> None:
    path = workdir / "s.yaml"
    path.write_text(yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True, sort_keys=False),
                    encoding="utf-8")
    check_load(path, "structured")


@settings(SETTINGS, max_examples=80)
@given(doc=mutated(), flow=st.none() | st.booleans())
def test_mutated_valid_scenarios(workdir: Path, doc: Any, flow: bool | None) -> None:
    path = workdir / "s.yaml"
    path.write_text(yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True, sort_keys=False),
                    encoding="utf-8")
    check_load(path, "mutated")


@SETTINGS
@given(text=soup)
def test_yaml_token_soup(workdir: Path, text: str) -> None:
    path = workdir / "s.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    check_load(path, "token soup")


@SETTINGS
@given(text=st.text(max_size=300))
def test_arbitrary_text(workdir: Path, text: str) -> None:
    path = workdir / "s.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    check_load(path, "text")


@settings(SETTINGS, max_examples=50)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(workdir: Path, data: bytes) -> None:
    path = workdir / "s.yaml"
    path.write_bytes(data)
    check_load(path, "bytes")


def test_the_generators_reach_the_loader_proper(workdir: Path) -> None:
    """The structured generator is only worth its time if valid files come out of it too: the workdir's
    paths, step kinds and keys are those of the schema in use."""
    assert "smtp" in STEP_KINDS and "host" in STEP_KINDS["smtp"] and "config" in ROLE_KEYS
    path = workdir / "s.yaml"
    doc = {"name": "t", "description": "d", "mta": ["postfix"],
           "roles": {"relay": {"config": "relay-config"}},
           "steps": [{"smtp": {"host": "mx", "mail_from": "a@origin.test", "rcpt_to": ["b@example.test"],
                               "message": {"file": "m.eml"}}}]}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert load_scenario(path).roles["relay"].config_dirs == {"postfix": (workdir / "relay-config").resolve()}
    assert os.path.islink(workdir / "loop")
