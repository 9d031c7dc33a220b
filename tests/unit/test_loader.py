"""Scenario loading: a valid file builds the expected models; every bad file is a ScenarioError
``path:line:col: message`` pointing at the offending node."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from harness.errors import ScenarioError, UsageError
from harness.scenario.loader import (
    DEFAULT_BODY,
    DEFAULT_EHLO,
    STANDARD_ROLES,
    load_scenario,
    load_scenarios,
    load_schema,
    scenario_files,
    schema_path,
)
from harness.scenario.model import (
    DeliveryStep,
    HeaderCheck,
    Mark,
    NoDeliveryStep,
    ReplyExpectation,
    SmtpSessionStep,
    Stage,
)

FIXTURES = Path(__file__).parent / "fixtures" / "scenarios"
FULL = FIXTURES / "full.yaml"

HEAD = "name: t\ndescription: d\nsteps:\n"
# An smtp step at lines 4-7 of a file starting with HEAD; `extra` lines follow at the same indent.
SMTP = "  - smtp:\n      host: mx\n      mail_from: a@origin.test\n      rcpt_to: [bob@example.test]\n"


def smtp(extra: str = "") -> str:
    return SMTP + extra


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return info.value


# --- a valid file -----------------------------------------------------------------------------------


def test_full_scenario_builds_models() -> None:
    s = load_scenario(FULL)
    f = str(FULL)
    assert s.path == FULL
    assert s.name == "354 through the relay"
    assert s.description == "client -> relay -> (MX lookup) -> mx\n"
    assert s.mark == Mark(f, 1, 1)

    assert [(r.name, r.rtype, r.value, r.address_of, r.ttl) for r in s.dns] == [
        ("twomx.test", "MX", "10 nomail.sendonly.test.", None, 300),
        ("alias.example.test", "A", None, "mx", 300),
        ("foo.test", "TXT", '"hello"', None, 60),
    ]
    assert s.dns[1].mark == Mark(f, 6, 5)

    assert list(s.roles) == ["relay"]
    assert s.roles["relay"].config_dir == (FIXTURES / "relay-config").resolve()
    assert s.roles["relay"].mark == Mark(f, 9, 3)

    first, delivery, second, no_delivery = s.steps
    assert isinstance(first, SmtpSessionStep)
    assert (first.id, first.host, first.ehlo, first.mail_from) == ("first", "relay", DEFAULT_EHLO,
                                                                   "alice@origin.test")
    assert first.rcpt_to == ("bob@example.test", "x@nullmx.test")
    assert first.timeout_s == 20.0
    assert first.mark == Mark(f, 11, 5)
    # Plain scalars keep their text: `yes` is not True, `1.10` is not 1.1.
    assert first.message.headers == (("Subject", "hello"), ("X-Test", "yes"), ("X-Version", "1.10"))
    assert first.message.body == "line one\n.line starting with a dot\n"
    assert first.message.source_file is None
    assert list(first.expect) == [Stage.CONNECT, Stage.EHLO, Stage.MAIL, Stage.DATA, Stage.END_OF_DATA,
                                  Stage.QUIT]
    assert first.expect[Stage.CONNECT] == ReplyExpectation(220)
    assert first.expect[Stage.CONNECT].mark == Mark(f, 23, 18)
    assert first.expect[Stage.END_OF_DATA] == ReplyExpectation(250, "2.0.0", "queued")
    assert first.expect_rcpt == {
        "bob@example.test": ReplyExpectation(250),
        "x@nullmx.test": ReplyExpectation(556, "5.1.10"),
    }
    assert first.expect_rcpt["x@nullmx.test"].mark == Mark(f, 26, 58)

    assert isinstance(delivery, DeliveryStep)
    assert (delivery.host, delivery.mailbox, delivery.within_s, delivery.body_intact) == (
        "mx", "bob@example.test", 10.0, True)
    assert delivery.headers == (HeaderCheck("Subject", "^hello$"),)
    assert delivery.message_of is None
    assert delivery.mark == Mark(f, 30, 5)

    assert isinstance(second, SmtpSessionStep)
    assert (second.ehlo, second.mail_from) == ("other.origin.test", "")
    assert second.rcpt_to == ("carol@example.test",)
    assert second.expect == {Stage.RCPT: ReplyExpectation(550)}
    assert second.expect_rcpt == {}
    # The file has CRLF line ends and a folded header.
    assert second.message.headers == (("Subject", "from a file"), ("X-Folded", "one two"))
    assert second.message.body == "body line\n.dot line\n"
    assert second.message.source_file == (FIXTURES / "messages" / "hello.eml").resolve()

    assert isinstance(no_delivery, NoDeliveryStep)
    assert (no_delivery.host, no_delivery.mailbox, no_delivery.within_s, no_delivery.message_of) == (
        "mx", None, 1.5, "first")


def test_defaults(tmp_path: Path) -> None:
    text = ("name: defaults\ndescription: d\ndns:\n  - {name: a.test, type: A, value: 192.0.2.1}\n"
            "steps:\n" + smtp("      expect: {rcpt: 250}\n")
            + "  - delivery: {host: mx, mailbox: bob@example.test}\n  - no_delivery: {host: mx}\n")
    s = load_scenario(write(tmp_path, text))
    session, delivery, no_delivery = s.steps
    assert isinstance(session, SmtpSessionStep)
    assert (session.id, session.ehlo, session.timeout_s) == (None, DEFAULT_EHLO, 30.0)
    assert session.message.headers == (("Subject", "mailflow-harness: defaults"),)
    assert session.message.body == DEFAULT_BODY
    assert session.expect == {Stage.RCPT: ReplyExpectation(250)}
    assert isinstance(delivery, DeliveryStep)
    assert (delivery.within_s, delivery.body_intact, delivery.headers) == (10.0, True, ())
    assert isinstance(no_delivery, NoDeliveryStep)
    assert (no_delivery.within_s, no_delivery.mailbox) == (3.0, None)
    assert s.dns[0].ttl == 300
    assert s.roles == {}


def test_partial_message_gets_defaults_and_a_final_newline(tmp_path: Path) -> None:
    text = HEAD + smtp("      message: {body: no newline}\n") + smtp("      message: {headers: {}}\n")
    body_only, headers_empty = load_scenario(write(tmp_path, text)).steps
    assert isinstance(body_only, SmtpSessionStep) and isinstance(headers_empty, SmtpSessionStep)
    assert body_only.message.headers == (("Subject", "mailflow-harness: t"),)
    assert body_only.message.body == "no newline\n"
    assert headers_empty.message.headers == ()
    assert headers_empty.message.body == DEFAULT_BODY


def test_merge_keys_override_without_duplicate_error(tmp_path: Path) -> None:
    text = ("name: t\ndescription: d\nsteps:\n"
            "  - smtp: &base {host: mx, mail_from: a@origin.test, rcpt_to: b@example.test}\n"
            "  - smtp:\n      <<: *base\n      host: relay\n")
    first, second = load_scenario(write(tmp_path, text)).steps
    assert isinstance(first, SmtpSessionStep) and isinstance(second, SmtpSessionStep)
    assert (first.host, second.host, second.rcpt_to) == ("mx", "relay", ("b@example.test",))


# --- bad files: (file text, line, col, key phrase) --------------------------------------------------

DNS_HEAD = "name: t\ndescription: d\ndns:\n"
ROLES_HEAD = "name: t\ndescription: d\nroles:\n"

BAD: dict[str, tuple[str, int, int, str]] = {
    "yaml syntax": (
        "name: [unclosed\ndescription: d\n", 2, 12, "invalid YAML: expected ',' or ']'"),
    "yaml tab": (
        "name: t\n\tdescription: d\n", 2, 1, "invalid YAML: found character '\\t'"),
    "empty file": (
        "", 1, 1, "empty scenario file"),
    "only comments": (
        "# nothing here\n", 1, 1, "empty scenario file"),
    "top-level list": (
        "- name: t\n", 1, 1, "expected a mapping with name, description and steps, got a list"),
    "two documents": (
        "name: t\n---\nname: u\n", 2, 1, "expected a single document"),
    "missing name": (
        "description: d\nsteps:\n" + SMTP, 1, 1, "missing required key 'name' in scenario"),
    "name not a string": (
        "name: 42\ndescription: d\nsteps:\n" + SMTP, 1, 7, "write it in quotes"),
    "unknown top-level key": (
        HEAD + SMTP + "extra: 1\n", 8, 1,
        "unknown key 'extra' in scenario (expected one of: name, description, dns,"),
    "empty steps": (
        "name: t\ndescription: d\nsteps: []\n", 3, 8, "expected a non-empty list of steps"),
    "unknown step kind": (
        HEAD + "  - smtpp:\n      host: mx\n", 4, 5,
        "unknown step kind 'smtpp' (expected one of: smtp, delivery, no_delivery)"),
    "step with two keys": (
        HEAD + "  - smtp: {host: mx, mail_from: a, rcpt_to: b}\n    delivery: {host: mx}\n", 4, 5,
        "exactly one key, smtp, delivery or no_delivery, got a mapping with keys smtp, delivery"),
    "empty smtp step": (
        HEAD + "  - smtp:\n", 4, 10, "expected an smtp step mapping"),
    "unknown key in smtp step": (
        HEAD + "  - smtp:\n      host: mx\n      mail_from: a\n      rcpt: [b]\n", 7, 7,
        "unknown key 'rcpt' in smtp step (expected one of: id, host, ehlo, mail_from,"),
    "missing host": (
        HEAD + "  - smtp:\n      mail_from: a\n      rcpt_to: b\n", 5, 7,
        "missing required key 'host' in smtp step"),
    "empty rcpt_to": (
        HEAD + "  - smtp: {host: mx, mail_from: a, rcpt_to: []}\n", 4, 45,
        "expected a non-empty list of recipient addresses, got an empty list"),
    "bad code type": (
        HEAD + smtp("      expect: {connect: abc}\n"), 8, 25,
        "expected an integer reply code between 200 and 599, got 'abc'"),
    "quoted code": (
        HEAD + smtp("      expect: {connect: '220'}\n"), 8, 25, "write it without quotes"),
    "code out of range": (
        HEAD + smtp("      expect: {connect: 600}\n"), 8, 25,
        "expected an integer reply code between 200 and 599, got 600"),
    "code out of range in rcpt map": (
        HEAD + smtp("      expect: {rcpt: {bob@example.test: 199}}\n"), 8, 41,
        "reply code between 200 and 599, got 199"),
    "float enhanced": (
        HEAD + smtp("      expect: {mail: {code: 250, enhanced: 2.0}}\n"), 8, 44,
        "got 2.0 (a number): write it in quotes"),
    "float enhanced keeps its text": (
        HEAD + smtp("      expect: {mail: {code: 250, enhanced: 5.10}}\n"), 8, 44, "got 5.10 (a number)"),
    "bad enhanced": (
        HEAD + smtp("      expect: {mail: {code: 250, enhanced: '6.0.0'}}\n"), 8, 44,
        "expected an enhanced status code such as \"5.1.1\""),
    "reply without code": (
        HEAD + smtp("      expect: {rcpt: {enhanced: '5.1.1'}}\n"), 8, 22,
        "missing required key 'code' in reply expectation"),
    "unknown stage": (
        HEAD + smtp("      expect: {helo: 250}\n"), 8, 16, "unknown key 'helo' in expect"),
    "bad regex": (
        HEAD + smtp("      expect: {mail: {code: 250, text: 'a(b'}}\n"), 8, 40,
        "invalid regular expression 'a(b': missing ), unterminated subpattern"),
    "bad header regex": (
        HEAD + SMTP + "  - delivery: {host: mx, mailbox: b, headers: {Subject: '['}}\n", 8, 57,
        "invalid regular expression '['"),
    "rcpt key not a recipient": (
        HEAD + smtp("      expect: {rcpt: {bob@example.test: 250, c@example.test: 550}}\n"), 8, 46,
        "recipient 'c@example.test' in expect.rcpt is not in rcpt_to (bob@example.test)"),
    "delivery before smtp": (
        HEAD + "  - delivery: {host: mx, mailbox: b}\n" + SMTP, 4, 5, "delivery step before any smtp step"),
    "no_delivery before smtp": (
        HEAD + "  - no_delivery: {host: mx}\n", 4, 5, "no_delivery step before any smtp"),
    "unknown message_of": (
        HEAD + smtp("      id: first\n") + "  - delivery: {host: mx, mailbox: b, message_of: x}\n", 9, 50,
        "unknown step id 'x' in message_of (known ids: first)"),
    "message_of a later step": (
        HEAD + "  - no_delivery: {host: mx, message_of: later}\n" + smtp("      id: later\n"), 4, 41,
        "message_of 'later' refers to a later step"),
    "unknown host role": (
        HEAD + "  - smtp: {host: mxx, mail_from: a, rcpt_to: b}\n", 4, 18,
        "unknown role 'mxx' in host (expected one of: mx, relay, nomail)"),
    "unknown delivery host": (
        HEAD + SMTP + "  - delivery: {host: dns, mailbox: b}\n", 8, 22, "unknown role 'dns' in host"),
    "unknown role in roles": (
        ROLES_HEAD + "  submit: {config: .}\nsteps:\n" + SMTP, 4, 3,
        "custom role 'submit' is not supported yet"),
    "duplicate key": (
        "name: t\ndescription: d\nname: u\nsteps:\n" + SMTP, 3, 1,
        "duplicate key 'name' (first defined at line 1)"),
    "duplicate step id": (
        HEAD + smtp("      id: a\n") + smtp("      id: a\n"), 13, 11,
        "duplicate step id 'a' (already used at line 8)"),
    "file with headers": (
        HEAD + smtp("      message: {file: m.eml, body: x}\n"), 8, 17,
        "'file' cannot be combined with 'headers' or 'body'"),
    "bad header name": (
        HEAD + smtp("      message:\n        headers: {'Bad Name': x}\n"), 9, 19,
        "expected a header field name (printable ASCII, no spaces or ':') as key, got 'Bad Name'"),
    "dns value and address_of": (
        DNS_HEAD + "  - {name: a.test, type: A, value: 192.0.2.1, address_of: mx}\nsteps:\n" + SMTP, 4, 47,
        "either 'value' or 'address_of', not both"),
    "dns without value": (
        DNS_HEAD + "  - {name: a.test, type: A}\nsteps:\n" + SMTP, 4, 5,
        "missing required key 'value' (or 'address_of') in DNS record"),
    "dns address_of on MX": (
        DNS_HEAD + "  - {name: a.test, type: MX, address_of: mx}\nsteps:\n" + SMTP, 4, 30,
        "'address_of' is only for A and AAAA records"),
    "dns lowercase type": (
        DNS_HEAD + "  - {name: a.test, type: mx, value: x}\nsteps:\n" + SMTP, 4, 26,
        "expected a record type: one of A, AAAA"),
    "unsupported tag": (
        "name: !foo t\n", 1, 7, "could not determine a constructor for the tag '!foo'"),
    "recursive alias": (
        "a: &x [*x]\n", 1, 4, "recursive YAML alias"),
    "control character": (
        "name: \x01\n", 1, 7, "special characters are not allowed (U+0001)"),
    "not a finite number": (
        HEAD + smtp("      timeout: .inf\n"), 8, 16, "expected a finite number, got .inf"),
}


@pytest.mark.parametrize(("text", "line", "col", "phrase"), list(BAD.values()), ids=list(BAD))
def test_bad_file(tmp_path: Path, text: str, line: int, col: int, phrase: str) -> None:
    path = write(tmp_path, text)
    error = load_error(path)
    assert str(error).startswith(f"{path}:{line}:{col}: "), str(error)
    assert phrase in error.detail, str(error)
    assert (error.path, error.line, error.col) == (str(path), line, col)


def test_missing_role_config_dir(tmp_path: Path) -> None:
    path = write(tmp_path, ROLES_HEAD + "  relay: {config: nope/relay}\nsteps:\n" + SMTP)
    error = load_error(path)
    assert str(error).startswith(f"{path}:4:19: role config directory 'nope/relay' does not exist")
    assert str(tmp_path / "nope" / "relay") in str(error)


def test_role_config_dir_is_relative_to_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "compose" / "relay").mkdir(parents=True)
    (tmp_path / "scenarios").mkdir()
    text = ROLES_HEAD + "  relay: {config: ../compose/relay}\nsteps:\n" + SMTP
    path = write(tmp_path, text, "scenarios/s.yaml")
    assert load_scenario(path).roles["relay"].config_dir == (tmp_path / "compose" / "relay").resolve()


def test_missing_message_file(tmp_path: Path) -> None:
    path = write(tmp_path, HEAD + smtp("      message:\n        file: messages/nope.eml\n"))
    error = load_error(path)
    assert str(error).startswith(f"{path}:9:15: message file 'messages/nope.eml' does not exist"), str(error)


def test_bad_message_file_header(tmp_path: Path) -> None:
    (tmp_path / "m.eml").write_text("Subject: ok\nnot a header\n\nbody\n")
    path = write(tmp_path, HEAD + smtp("      message: {file: m.eml}\n"))
    error = load_error(path)
    assert str(error).startswith(f"{path}:8:23: message file 'm.eml' line 2: expected a header field")


def test_message_file_without_body(tmp_path: Path) -> None:
    (tmp_path / "m.eml").write_text("Subject: only headers")
    path = write(tmp_path, HEAD + smtp("      message: {file: m.eml}\n"))
    step = load_scenario(path).steps[0]
    assert isinstance(step, SmtpSessionStep)
    assert (step.message.headers, step.message.body) == ((("Subject", "only headers"),), "")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(b"name: t\ndescription: caf\xe9\n")
    assert str(load_error(path)).startswith(f"{path}:2:17: the file is not UTF-8 text")


def test_deep_nesting(tmp_path: Path) -> None:
    path = write(tmp_path, "name: " + "[" * 600 + "]" * 600 + "\n")
    assert str(load_error(path)).startswith(f"{path}:1:1: the YAML is nested too deeply")


def test_file_order_decides_which_error_is_reported(tmp_path: Path) -> None:
    # A typo for a required key reports the typo, not the key it hides.
    text = HEAD + "  - smtp: {host: mx, mail_frm: a, rcpt_to: b}\n" + smtp("      expect: {data: 1}\n")
    path = write(tmp_path, text)
    assert str(load_error(path)).startswith(f"{path}:4:22: unknown key 'mail_frm' in smtp step")


def test_no_traceback_for_any_damaged_copy_of_a_valid_file(tmp_path: Path) -> None:
    # Truncations and single-line deletions of a valid file reach every corner of the pipeline;
    # each must load or raise ScenarioError, never anything else.
    lines = FULL.read_text().splitlines(keepends=True)
    (tmp_path / "relay-config").mkdir()
    (tmp_path / "messages").mkdir()
    (tmp_path / "messages" / "hello.eml").write_bytes((FIXTURES / "messages" / "hello.eml").read_bytes())
    variants = ["".join(lines[:n]) for n in range(len(lines))]
    variants += ["".join(lines[:n] + lines[n + 1:]) for n in range(len(lines))]
    for text in variants:
        with contextlib.suppress(ScenarioError):
            load_scenario(write(tmp_path, text))


# --- several files ----------------------------------------------------------------------------------


def test_load_scenarios_expands_directories_sorted(tmp_path: Path) -> None:
    for name in ("b.yml", "a.yaml", "c.yaml", ".#a.yaml", "notes.txt"):
        write(tmp_path, f"name: {name}\ndescription: d\nsteps:\n" + SMTP, name)
    other = write(tmp_path.parent, "name: other\ndescription: d\nsteps:\n" + SMTP, "other.scenario")
    assert scenario_files([tmp_path]) == [tmp_path / "a.yaml", tmp_path / "b.yml", tmp_path / "c.yaml"]
    names = [s.name for s in load_scenarios([other, tmp_path])]
    assert names == ["other", "a.yaml", "b.yml", "c.yaml"]


def test_load_scenarios_missing_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such scenario file or directory") as info:
        load_scenarios([tmp_path / "nope.yaml"])
    assert not isinstance(info.value, ScenarioError)


def test_load_scenarios_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no scenario files \(\*\.yaml, \*\.yml\) in directory"):
        load_scenarios([tmp_path])


def test_load_scenario_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.yaml")


# --- the schema -------------------------------------------------------------------------------------


def _subschemas(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Every schema that can report an error (conditions under `if`/`not` cannot)."""
    found = [schema]
    for key in ("properties", "$defs"):
        for sub in schema.get(key, {}).values():
            found.extend(_subschemas(sub))
    for key in ("items", "additionalProperties", "propertyNames", "then", "else"):
        if isinstance(schema.get(key), dict):
            found.extend(_subschemas(schema[key]))
    return found


def test_schema_is_valid_and_shipped() -> None:
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert json.loads(schema_path().read_text(encoding="utf-8")) == schema


def test_every_checked_value_has_a_human_description() -> None:
    # Messages are built from `x-expected`; without it a user would see jsonschema's wording.
    for sub in _subschemas(load_schema()):
        checks = {"type", "enum", "pattern", "minimum", "minLength", "minItems", "minProperties"} & sub.keys()
        if checks:
            assert "x-expected" in sub, sub
        if sub.get("type") == "object" and "additionalProperties" in sub:
            assert "title" in sub, sub


def test_schema_stages_match_the_model() -> None:
    expect = load_schema()["$defs"]["expect"]["properties"]
    assert list(expect) == [stage.yaml_key for stage in Stage]


def test_standard_roles() -> None:
    assert STANDARD_ROLES == ("mx", "relay", "nomail")


def test_full_fixture_is_valid_yaml_mapping() -> None:
    # Guards the fixture itself: the marks asserted above depend on its layout.
    assert isinstance(yaml.safe_load(FULL.read_text()), dict)
