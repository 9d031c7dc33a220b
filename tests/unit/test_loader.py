"""Scenario loading: a valid file builds the expected models; every bad file is a ScenarioError
``path:line:col: message`` pointing at the offending node."""

from __future__ import annotations

import contextlib
import json
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from harness.errors import ScenarioError, UsageError
from harness.scenario.loader import (
    DEFAULT_BODY,
    DEFAULT_EHLO,
    DSN_FIELDS,
    KNOWN_MTAS,
    STANDARD_ROLES,
    load_scenario,
    load_scenarios,
    load_schema,
    scenario_files,
    schema_path,
)
from harness.scenario.model import (
    NO_REPLY_OUTCOMES,
    QUEUE_STATES,
    QUEUE_SUBJECTS,
    UNREACHABLE_ROLE,
    BounceStep,
    DeliveryStep,
    DsnCheck,
    HeaderCheck,
    HopStep,
    Mark,
    NoBounceStep,
    NoConnectionStep,
    NoDeliveryStep,
    QueueFlushStep,
    QueueStateStep,
    ReplyExpectation,
    SmtpSessionStep,
    Stage,
    Step,
    StepOverride,
)

FIXTURES = Path(__file__).parent / "fixtures" / "scenarios"
FULL = FIXTURES / "full.yaml"
FLOWS = FIXTURES / "flows.yaml"

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
    assert s.roles["relay"].config_dirs == {"postfix": (FIXTURES / "relay-config").resolve()}
    assert (s.roles["relay"].settings, s.roles["relay"].like, s.roles["relay"].mta) == ({}, None, None)
    assert s.roles["relay"].mark == Mark(f, 9, 3)
    assert (s.mtas, s.overrides) == ((), {})

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


def test_flows_scenario_builds_models() -> None:
    s = load_scenario(FLOWS)
    f = str(FLOWS)
    config = (FIXTURES / "relay-config").resolve()
    assert s.mtas == ("postfix", "exim")

    assert list(s.roles) == ["relay", "backup", "mx"]
    relay, backup, mx = s.roles["relay"], s.roles["backup"], s.roles["mx"]
    assert relay.config_dirs == {"postfix": config, "exim": config}
    # Parameter values as written: `no` is not False, `1.10` not 1.1, an empty value is "".
    assert relay.settings == {
        "postfix": {"smtp_skip_5xx_greeting": "no", "smtp_helo_timeout": "10", "version": "1.10",
                    "quoted": "yes", "empty": ""},
        "exim": {"RELAY_VERIFY_RECIPIENT": "no"},
    }
    assert (relay.like, relay.mta, relay.mark) == (None, None, Mark(f, 5, 3))
    assert (backup.like, backup.config_dirs, backup.settings, backup.mta) == ("nomail", {}, {}, None)
    assert (mx.config_dirs, mx.mta) == ({"postfix": config}, "postfix")
    # An added role is a role everywhere: address_of, hosts, hops, no_connection.
    assert s.dns[0].address_of == "backup"

    (first, nc_domain, nc_role, second, hop, hop_ip, queued, flush, bounce, bounce_of, absent,
     delivery) = s.steps
    assert isinstance(first, SmtpSessionStep)
    assert first.expect == {Stage.RCPT: ReplyExpectation(556, "5.1.10")}
    assert isinstance(nc_domain, NoConnectionStep)
    assert (nc_domain.source, nc_domain.domain, nc_domain.target, nc_domain.within_s) == (
        "relay", "nullmx.test", None, 2.0)
    assert nc_domain.mark == Mark(f, 31, 5)
    assert isinstance(nc_role, NoConnectionStep)
    assert (nc_role.source, nc_role.domain, nc_role.target, nc_role.within_s) == ("relay", None, "backup", 5.0)

    assert isinstance(second, SmtpSessionStep) and second.id == "second"
    assert isinstance(hop, HopStep)
    assert (hop.hop, hop.session, hop.within_s, hop.mark) == ("relay->nomail", None, 15.0, Mark(f, 38, 5))
    assert hop.expect == {Stage.CONNECT: ReplyExpectation(521, "5.3.2")}
    assert hop.expect[Stage.CONNECT].mark == Mark(f, 40, 25)
    # No rcpt_to to check against: any recipient.
    assert hop.expect_rcpt == {"y@anywhere.test": ReplyExpectation(250)}
    assert isinstance(hop_ip, HopStep)
    assert (hop_ip.hop, hop_ip.session, hop_ip.within_s) == ("relay->192.0.2.7", 2, 30.0)

    assert isinstance(queued, QueueStateStep)
    assert (queued.host, queued.state, queued.reason, queued.within_s, queued.message_of) == (
        "relay", "deferred", "521", 15.0, None)
    assert flush == QueueFlushStep(host="relay", mark=Mark(f, 51, 5))
    assert isinstance(bounce, BounceStep)
    assert (bounce.host, bounce.mailbox, bounce.within_s, bounce.message_of) == (
        "relay", "alice@origin.test", 20.0, None)
    # In the order written, with the RFC 3464 field names.
    assert bounce.checks == (
        DsnCheck("Status", "^5\\."), DsnCheck("Action", "failed"), DsnCheck("Diagnostic-Code", "521"),
        DsnCheck("Remote-MTA", "nomail"), DsnCheck("Final-Recipient", "x@sendonly.test"))
    assert isinstance(bounce_of, BounceStep)
    assert (bounce_of.checks, bounce_of.message_of) == ((), "second")
    assert isinstance(absent, QueueStateStep)
    assert (absent.host, absent.state, absent.reason) == ("backup", "absent", None)
    assert isinstance(delivery, DeliveryStep) and delivery.host == "mx"

    assert {i: sorted(o) for i, o in s.overrides.items()} == {
        0: ["exim", "opensmtpd"], 6: ["exim"], 11: ["exim"]}
    exim = s.overrides[0]["exim"]
    assert (exim.mta, exim.skip, exim.mark) == ("exim", False, Mark(f, 24, 9))
    assert exim.reason == "Exim's verify = recipient answers 550 with no enhanced code"
    assert isinstance(exim.step, SmtpSessionStep)
    # The override's keys replace the step's own (expect as a whole); the rest is the step's.
    assert exim.step.expect == {Stage.RCPT: ReplyExpectation(550)}
    assert exim.step.expect[Stage.RCPT].mark == Mark(f, 27, 19)
    assert (exim.step.id, exim.step.host, exim.step.rcpt_to, exim.step.mark) == (
        "first", "relay", ("x@nullmx.test",), first.mark)
    assert s.overrides[0]["opensmtpd"] == StepOverride(
        "opensmtpd", "OpenSMTPD has no null-MX check: it accepts and defers", Mark(f, 28, 9), skip=True)
    queue_exim = s.overrides[6]["exim"].step
    assert isinstance(queue_exim, QueueStateStep)
    assert (queue_exim.reason, queue_exim.within_s, queue_exim.state) == ("refused", 40.0, "deferred")
    delivery_exim = s.overrides[11]["exim"].step
    assert isinstance(delivery_exim, DeliveryStep)
    assert (delivery_exim.host, delivery_exim.within_s, delivery_exim.mailbox) == ("backup", 3.0,
                                                                                   "bob@example.test")

    on_exim = s.steps_for("exim")
    assert on_exim[0][1] is exim.step and on_exim[0][2] is exim
    assert on_exim[1][1:] == (nc_domain, None)
    on_opensmtpd = s.steps_for("opensmtpd")
    assert on_opensmtpd[0][1] is first and on_opensmtpd[0][2] == s.overrides[0]["opensmtpd"]
    assert [step for _, step, _ in s.steps_for("postfix")] == list(s.steps)


def test_override_error_in_the_step_names_the_implementation(tmp_path: Path) -> None:
    text = (HEAD + SMTP + "      expect: {rcpt: {bob@example.test: 250}}\n"
            "      per_mta:\n        exim: {reason: r, rcpt_to: carol@example.test}\n")
    path = write(tmp_path, text)
    assert str(load_error(path)).endswith("(on exim: the step with its per_mta override at line 10)")


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
        "unknown key 'extra' in scenario (expected one of: name, description, mta, dns,"),
    "empty steps": (
        "name: t\ndescription: d\nsteps: []\n", 3, 8, "expected a non-empty list of steps"),
    "unknown step kind": (
        HEAD + "  - smtpp:\n      host: mx\n", 4, 5,
        "unknown step kind 'smtpp' (expected one of: smtp, delivery, no_delivery, hop, no_connection, "
        "bounce, no_bounce, queue_flush, queue_state, fault, dns_fault, dns_change)"),
    "step with two keys": (
        HEAD + "  - smtp: {host: mx, mail_from: a, rcpt_to: b}\n    delivery: {host: mx}\n", 4, 5,
        "exactly one key, the step kind (smtp, delivery, no_delivery, hop, no_connection, bounce, "
        "no_bounce, queue_flush, queue_state, fault, dns_fault or dns_change), got a mapping with keys smtp, delivery"),
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
        "expected a reply code (200 to 599) or, for a stage that ends without a reply, one of: refused, "
        "no-answer, reset, closed, got 'abc'"),
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
        HEAD + SMTP + "  - delivery: {host: mx, mailbox: b@x.test, headers: {Subject: '['}}\n", 8, 64,
        "invalid regular expression '['"),
    "rcpt key not a recipient": (
        HEAD + smtp("      expect: {rcpt: {bob@example.test: 250, c@example.test: 550}}\n"), 8, 46,
        "recipient 'c@example.test' in expect.rcpt is not in rcpt_to (bob@example.test)"),
    "delivery before smtp": (
        HEAD + "  - delivery: {host: mx, mailbox: b@x.test}\n" + SMTP, 4, 5, "delivery step before any smtp step"),
    "no_delivery before smtp": (
        HEAD + "  - no_delivery: {host: mx}\n", 4, 5, "no_delivery step before any smtp"),
    "unknown message_of": (
        HEAD + smtp("      id: first\n") + "  - delivery: {host: mx, mailbox: b@x.test, message_of: x}\n", 9, 57,
        "unknown step id 'x' in message_of (known ids: first)"),
    "message_of a later step": (
        HEAD + "  - no_delivery: {host: mx, message_of: later}\n" + smtp("      id: later\n"), 4, 41,
        "message_of 'later' refers to a later step"),
    "unknown host role": (
        HEAD + "  - smtp: {host: mxx, mail_from: a, rcpt_to: b}\n", 4, 18,
        "unknown role 'mxx' in host (expected one of: mx, relay, nomail)"),
    "unknown delivery host": (
        HEAD + SMTP + "  - delivery: {host: dns, mailbox: b@x.test}\n", 8, 22, "unknown role 'dns' in host"),
    "duplicate key": (
        "name: t\ndescription: d\nname: u\nsteps:\n" + SMTP, 3, 1,
        "duplicate key 'name' (first defined at line 1)"),
    "duplicate step id": (
        HEAD + smtp("      id: a\n") + smtp("      id: a\n"), 13, 11,
        "duplicate step id 'a' (already used at line 8)"),
    # Copies, hops, queue entries and DSNs are a message's by its Message-ID: one of two would do for the other.
    "one Message-ID for two messages": (
        HEAD + smtp("      message: {headers: {Message-ID: '<m@origin.test>'}}\n")
        + smtp("      message: {headers: {Subject: two, Message-ID: '<M@origin.test> '}}\n"), 9, 5,
        "step 2 sends Message-ID <M@origin.test> (its headers), as step 1 does"),
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
        "'address_of' is only for A records (the run's network is IPv4), not MX records"),
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


MTA_HEAD = "name: t\ndescription: d\n"
# A queue_state/bounce etc. after one smtp step: the new step starts at line 8.
AFTER = HEAD + SMTP


def override(body: str) -> str:
    """An smtp step (lines 4-7) with per_mta at line 8; ``body`` lines are indented under it."""
    return HEAD + SMTP + "      per_mta:\n" + body


BAD_NEW: dict[str, tuple[str, int, int, str]] = {
    # mta
    "unknown mta": (
        MTA_HEAD + "mta: sendmail\nsteps:\n" + SMTP, 3, 6,
        "expected an MTA implementation: postfix, exim or opensmtpd, got 'sendmail'"),
    "unknown mta in list": (
        MTA_HEAD + "mta: [postfix, Exim]\nsteps:\n" + SMTP, 3, 16,
        "expected an MTA implementation: postfix, exim or opensmtpd, got 'Exim'"),
    "empty mta list": (
        MTA_HEAD + "mta: []\nsteps:\n" + SMTP, 3, 6,
        "expected a non-empty list of MTA implementations (postfix, exim, opensmtpd), got an empty list"),
    "mta listed twice": (
        MTA_HEAD + "mta: [exim, postfix, exim]\nsteps:\n" + SMTP, 3, 22,
        "MTA implementation 'exim' is listed twice in mta"),
    # roles
    "bad role name": (
        ROLES_HEAD + "  Backup: {like: nomail}\nsteps:\n" + SMTP, 4, 3,
        "expected a role name (lowercase letters, digits and '-', starting with a letter) as key, "
        "got 'Backup'"),
    "dns as a role": (
        ROLES_HEAD + "  dns: {config: .}\nsteps:\n" + SMTP, 4, 3,
        "'dns' is the scenario's DNS server, not a mail role"),
    "client as a role": (
        ROLES_HEAD + "  client: {like: relay}\nsteps:\n" + SMTP, 4, 3,
        "'client' is the harness's own SMTP client, not a role"),
    "added role without like": (
        ROLES_HEAD + "  submit: {config: .}\nsteps:\n" + SMTP, 4, 3,
        "'submit' is not a standard role (mx, relay or nomail): a role the scenario adds needs "
        "'like: <standard role>'"),
    "like on a standard role": (
        ROLES_HEAD + "  relay: {config: ., like: mx}\nsteps:\n" + SMTP, 4, 22,
        "'like' is only for a role the scenario adds: relay is a standard role"),
    "like an added role": (
        ROLES_HEAD + "  a: {like: nomail}\n  b: {like: a}\nsteps:\n" + SMTP, 5, 13,
        "expected a standard role: mx, relay or nomail, got 'a'"),
    "empty role override": (
        ROLES_HEAD + "  relay: {}\nsteps:\n" + SMTP, 4, 10,
        "expected a role override mapping with at least one of config, settings, like, mta, "
        "got an empty mapping"),
    "role override without value": (
        ROLES_HEAD + "  relay:\nsteps:\n" + SMTP, 4, 9, "got an empty value"),
    "unknown key in role override": (
        ROLES_HEAD + "  relay: {configs: .}\nsteps:\n" + SMTP, 4, 11,
        "unknown key 'configs' in role override (expected one of: config, settings, like, mta)"),
    "unknown mta in config": (
        ROLES_HEAD + "  relay:\n    config: {postfix: ., sendmail: .}\nsteps:\n" + SMTP, 5, 26,
        "unknown MTA implementation 'sendmail' (expected one of: postfix, exim, opensmtpd)"),
    "empty config mapping": (
        ROLES_HEAD + "  relay: {config: {}}\nsteps:\n" + SMTP, 4, 19,
        "expected a mapping of MTA implementation (postfix, exim, opensmtpd) to directory path, "
        "got an empty mapping"),
    "config not a path": (
        ROLES_HEAD + "  relay: {config: [a]}\nsteps:\n" + SMTP, 4, 19,
        "expected a directory path (a non-empty string), got a list"),
    "unknown mta in settings": (
        ROLES_HEAD + "  relay:\n    settings: {qmail: {a: b}}\nsteps:\n" + SMTP, 5, 16,
        "unknown MTA implementation 'qmail' (expected one of: postfix, exim, opensmtpd)"),
    "bad parameter name": (
        ROLES_HEAD + "  relay:\n    settings: {postfix: {'bad name': 1}}\nsteps:\n" + SMTP, 5, 26,
        "expected a parameter name (letters, digits and '_', not starting with a digit) as key, "
        "got 'bad name'"),
    "multi-line parameter value": (
        ROLES_HEAD + "  relay:\n    settings: {postfix: {a: \"x\\ny\"}}\nsteps:\n" + SMTP, 5, 29,
        "expected a parameter value (a single-line string, a number or a boolean)"),
    "parameter value a list": (
        ROLES_HEAD + "  relay:\n    settings: {postfix: {a: [x]}}\nsteps:\n" + SMTP, 5, 29,
        "expected a parameter value (a single-line string, a number or a boolean), got a list"),
    "unknown role mta": (
        ROLES_HEAD + "  mx: {mta: qmail}\nsteps:\n" + SMTP, 4, 13,
        "expected an MTA implementation: postfix, exim or opensmtpd, got 'qmail'"),
    "unknown host lists the added roles": (
        ROLES_HEAD + "  backup: {like: nomail}\nsteps:\n  - smtp: {host: backup2, mail_from: a, rcpt_to: b}\n",
        6, 18, "unknown role 'backup2' in host (expected one of: mx, relay, nomail, backup)"),
    # hop
    "hop not a hop": (
        AFTER + "  - hop: {hop: relay-mx, expect: {connect: 220}}\n", 8, 16,
        "expected a hop such as relay->mx (a role, '->', then a role or an IPv4 address), got 'relay-mx'"),
    "hop from client": (
        AFTER + "  - hop: {hop: client->relay, expect: {connect: 220}}\n", 8, 16,
        "hop 'client->relay' starts at the client: the client's own sessions are checked in smtp steps"),
    "hop from unknown role": (
        AFTER + "  - hop: {hop: mxx->relay, expect: {connect: 220}}\n", 8, 16,
        "unknown role 'mxx' on the left of hop 'mxx->relay' (expected one of: mx, relay, nomail)"),
    "hop to unknown": (
        AFTER + "  - hop: {hop: relay->mxx, expect: {connect: 220}}\n", 8, 16,
        "'mxx' on the right of hop 'relay->mxx' is neither a role (mx, relay, nomail) nor an IPv4 address"),
    "hop to bad address": (
        AFTER + "  - hop: {hop: relay->192.0.2.300, expect: {connect: 220}}\n", 8, 16,
        "'192.0.2.300' on the right of hop"),
    "hop without expect": (
        AFTER + "  - hop: {hop: relay->mx}\n", 8, 10, "checks nothing: give it expect (replies per stage), tls"),
    "hop empty expect": (
        AFTER + "  - hop: {hop: relay->mx, expect: {}}\n", 8, 35,
        "expected a non-empty mapping of stage (connect, ehlo, mail, rcpt, data, end_of_data, quit) to "
        "expected reply, got an empty mapping"),
    "hop bad stage": (
        AFTER + "  - hop: {hop: relay->mx, expect: {helo: 250}}\n", 8, 36, "unknown key 'helo' in expect"),
    "hop session 0": (
        AFTER + "  - hop: {hop: relay->mx, session: 0, expect: {quit: 221}}\n", 8, 36,
        "expected a session number (an integer, 1 or more), got 0"),
    "hop within 0": (
        AFTER + "  - hop: {hop: relay->mx, within: 0, expect: {quit: 221}}\n", 8, 35,
        "expected a number of seconds greater than 0 and at most 600, got 0"),
    # no_connection
    "no_connection domain and to": (
        HEAD + "  - no_connection: {from: relay, domain: nullmx.test, to: mx}\n", 4, 55,
        "a no_connection step takes either 'domain' or 'to', not both"),
    "no_connection neither": (
        HEAD + "  - no_connection: {from: relay}\n", 4, 20,
        "missing required key 'domain' (or 'to') in no_connection step"),
    "no_connection without from": (
        HEAD + "  - no_connection: {domain: nullmx.test}\n", 4, 20,
        "missing required key 'from' in no_connection step"),
    "no_connection unknown from": (
        HEAD + "  - no_connection: {from: client, to: mx}\n", 4, 27, "unknown role 'client' in from"),
    "no_connection unknown to": (
        HEAD + "  - no_connection: {from: relay, to: dns}\n", 4, 38, "unknown role 'dns' in to"),
    "no_connection bad domain": (
        HEAD + "  - no_connection: {from: relay, domain: 'a b'}\n", 4, 42,
        "expected a domain name such as nullmx.test, got 'a b'"),
    # bounce
    "bounce before smtp": (
        HEAD + "  - bounce: {host: relay, mailbox: a@origin.test}\n", 4, 5,
        "bounce step before any smtp step: there is no message to look for"),
    "bounce without mailbox": (
        AFTER + "  - bounce: {host: relay}\n", 8, 13, "missing required key 'mailbox' in bounce step"),
    "bounce unknown field": (
        AFTER + "  - bounce: {host: relay, mailbox: a@x.test, expect: {reporting_mta: x}}\n", 8, 55,
        "unknown key 'reporting_mta' in bounce expect (expected one of: action, status, diagnostic_code, "
        "remote_mta, final_recipient)"),
    "bounce bad regex": (
        AFTER + "  - bounce: {host: relay, mailbox: a@x.test, expect: {status: '^5\\.('}}\n", 8, 63,
        "invalid regular expression '^5\\\\.(': missing ), unterminated subpattern"),
    "bounce number pattern": (
        AFTER + "  - bounce: {host: relay, mailbox: a@x.test, expect: {diagnostic_code: 521}}\n", 8, 72,
        "expected a regular expression (a string), got 521 (a number): write it in quotes"),
    "bounce unknown message_of": (
        AFTER + "  - bounce: {host: relay, mailbox: a@x.test, message_of: x}\n", 8, 58,
        "unknown step id 'x' in message_of (no earlier smtp step has an id)"),
    # queue_flush
    "queue_flush without host": (
        AFTER + "  - queue_flush: {}\n", 8, 18, "missing required key 'host' in queue_flush step"),
    "queue_flush unknown host": (
        AFTER + "  - queue_flush: {host: dns}\n", 8, 25, "unknown role 'dns' in host"),
    "queue_flush extra key": (
        AFTER + "  - queue_flush: {host: mx, within: 3}\n", 8, 29,
        "unknown key 'within' in queue_flush step (expected one of: host, per_mta)"),
    # queue_state
    "queue_state before smtp": (
        HEAD + "  - queue_state: {host: relay, state: deferred}\n", 4, 5, "queue_state step before any smtp"),
    "queue_state bad state": (
        AFTER + "  - queue_state: {host: relay, state: bounced}\n", 8, 39,
        "expected a queue state: deferred, active, frozen, queued or absent, got 'bounced'"),
    "queue_state without state": (
        AFTER + "  - queue_state: {host: relay}\n", 8, 18, "missing required key 'state' in queue_state step"),
    "queue_state reason when absent": (
        AFTER + "  - queue_state: {host: relay, state: absent, reason: x}\n", 8, 47,
        "'reason' cannot be checked with state 'absent'"),
    "queue_state bad reason regex": (
        AFTER + "  - queue_state: {host: relay, state: deferred, reason: '['}\n", 8, 57,
        "invalid regular expression '['"),
    # per_mta
    "override without reason": (
        override("        exim: {skip: true}\n"), 9, 15,
        "an override needs a 'reason': say why this implementation differs"),
    "override with empty reason": (
        override("        exim: {reason: ' ', skip: true}\n"), 9, 24,
        "expected a reason (a non-empty single-line string), got ' '"),
    "override with multi-line reason": (
        override("        exim:\n          reason: |\n            a\n            b\n          skip: true\n"),
        10, 19, "expected a reason (a non-empty single-line string)"),
    "override for unknown mta": (
        override("        qmail: {reason: r, skip: true}\n"), 9, 9,
        "unknown MTA implementation 'qmail' (expected one of: postfix, exim, opensmtpd)"),
    "empty per_mta": (
        HEAD + SMTP + "      per_mta: {}\n", 8, 16,
        "expected a non-empty mapping of MTA implementation (postfix, exim, opensmtpd) to override"),
    "override not a mapping": (
        override("        exim: skip\n"), 9, 15,
        "expected an override mapping {reason, skip} or {reason, keys of the smtp step}, got 'skip'"),
    "skip with other keys": (
        override("        exim: {reason: r, skip: true, host: relay}\n"), 9, 39,
        "a skipped step takes no keys besides 'reason': 'host' would change a step that does not run on exim"),
    "override changes nothing": (
        override("        exim: {reason: r}\n"), 9, 9,
        "the override for exim changes nothing: give 'skip: true', or keys of the smtp step"),
    "override changes nothing with skip false": (
        override("        exim: {reason: r, skip: false}\n"), 9, 9, "the override for exim changes nothing"),
    "override of id": (
        override("        exim: {reason: r, id: other}\n"), 9, 27,
        "unknown key 'id' in smtp override (expected one of: reason, skip, host, ehlo, mail_from,"),
    "override key of another kind": (
        override("        exim: {reason: r, state: deferred}\n"), 9, 27, "unknown key 'state' in smtp override"),
    "override bad value": (
        override("        exim:\n          reason: r\n          expect: {rcpt: 600}\n"), 11, 26,
        "expected an integer reply code between 200 and 599, got 600"),
    "override unknown role": (
        override("        exim: {reason: r, host: mxx}\n"), 9, 33,
        "unknown role 'mxx' in host (expected one of: mx, relay, nomail)"),
    "override bad regex": (
        override("        exim: {reason: r, expect: {mail: {code: 250, text: '('}}}\n"), 9, 60,
        "invalid regular expression '('"),
    "override rcpt_to no longer matches the step's expect": (
        HEAD + SMTP + "      expect: {rcpt: {bob@example.test: 250}}\n"
        "      per_mta:\n        exim: {reason: r, rcpt_to: carol@example.test}\n", 8, 23,
        "recipient 'bob@example.test' in expect.rcpt is not in rcpt_to (carol@example.test)"),
    "override no_connection gets both domain and to": (
        HEAD + "  - no_connection:\n      from: relay\n      domain: nullmx.test\n"
        "      per_mta:\n        exim: {reason: r, to: mx}\n", 8, 27,
        "a no_connection step takes either 'domain' or 'to', not both"),
    "override message_of a later step": (
        HEAD + SMTP + "  - delivery:\n      host: mx\n      mailbox: b@x.test\n      per_mta:\n"
        "        exim: {reason: r, message_of: later}\n" + smtp("      id: later\n"), 12, 39,
        "message_of 'later' refers to a later step (step 3)"),
    "queue_state override reason is the why": (
        AFTER + "  - queue_state:\n      host: relay\n      state: deferred\n      per_mta:\n"
        "        exim: {reason: r, queue_reason: '('}\n", 12, 41, "invalid regular expression '('"),
    "message of a skipped step": (
        override("        opensmtpd: {reason: r, skip: true}\n") + "  - delivery: {host: mx, mailbox: b@x.test}\n",
        10, 5, "step 2 (delivery) checks the message of step 1, which is skipped on opensmtpd (per_mta): "
        "skip this step on opensmtpd too, or name another message with message_of"),
    "message_of a skipped step": (
        HEAD + smtp("      id: one\n      per_mta:\n        exim: {reason: r, skip: true}\n") + SMTP
        + "  - bounce: {host: mx, mailbox: b@x.test, message_of: one}\n", 15, 55,
        "step 3 (bounce) checks the message of step 1, which is skipped on exim"),
    "message_of a skipped step named in an override": (
        HEAD + smtp("      id: one\n      per_mta:\n        exim: {reason: r, skip: true}\n") + SMTP
        + "  - delivery:\n      host: mx\n      mailbox: b@x.test\n      per_mta:\n"
        "        exim: {reason: r, message_of: one}\n", 19, 39,
        "step 3 (delivery) checks the message of step 1, which is skipped on exim"),
}

BAD.update(BAD_NEW)

ESMTP_EXPECTED = ("expected an ESMTP parameter KEYWORD or KEYWORD=VALUE (keyword: letters, digits and '-', "
                  "starting with a letter or digit; value: printable ASCII without blanks or '=')")
NO_REPLY_EXPECTED = ("expected a reply code (200 to 599) or, for a stage that ends without a reply, one of: "
                     "refused, no-answer, reset, closed")

# The keys the lead's model added (ESMTP options, no-reply outcomes, hop message_of, no_bounce, queue_state
# of, delivery copies, address_of: unreachable), and the checks that moved from run time to load time.
BAD_CONTENT: dict[str, tuple[str, int, int, str]] = {
    # ESMTP parameters
    "mail_options with a blank": (
        HEAD + smtp('      mail_options: ["SIZE=1 BODY=8BITMIME"]\n'), 8, 22,
        f"{ESMTP_EXPECTED}, got 'SIZE=1 BODY=8BITMIME'"),
    "mail_options empty value": (
        HEAD + smtp("      mail_options: [SIZE=]\n"), 8, 22, f"{ESMTP_EXPECTED}, got 'SIZE='"),
    "mail_options '=' in the value": (
        HEAD + smtp("      mail_options: [ENVID=a=b]\n"), 8, 22, f"{ESMTP_EXPECTED}, got 'ENVID=a=b'"),
    "mail_options keyword starting with '-'": (
        HEAD + smtp("      mail_options: [-X]\n"), 8, 22, f"{ESMTP_EXPECTED}, got '-X'"),
    "mail_options keyword with '_'": (
        HEAD + smtp("      mail_options: [X_Y=1]\n"), 8, 22, f"{ESMTP_EXPECTED}, got 'X_Y=1'"),
    "mail_options control character": (
        HEAD + smtp('      mail_options: ["SIZE=1\\t"]\n'), 8, 22, ESMTP_EXPECTED),
    "mail_options non-ASCII value": (
        HEAD + smtp("      mail_options: [ENVID=é]\n"), 8, 22, f"{ESMTP_EXPECTED}, got 'ENVID=é'"),
    "mail_options not a list": (
        HEAD + smtp("      mail_options: SIZE=1\n"), 8, 21,
        "expected a list of ESMTP parameters such as [SIZE=12000000, BODY=8BITMIME], got 'SIZE=1'"),
    "rcpt_options empty value": (
        HEAD + smtp("      rcpt_options: [NOTIFY=]\n"), 8, 22, f"{ESMTP_EXPECTED}, got 'NOTIFY='"),
    # no-reply outcomes
    "no-reply typo": (
        HEAD + smtp("      expect: {connect: refuse}\n"), 8, 25, f"{NO_REPLY_EXPECTED}, got 'refuse'"),
    "no-reply typo per recipient": (
        HEAD + smtp("      expect: {rcpt: {bob@example.test: refuse}}\n"), 8, 41,
        f"{NO_REPLY_EXPECTED}, got 'refuse'"),
    "no-reply in the mapping form": (
        HEAD + smtp("      expect: {connect: {code: refused}}\n"), 8, 32,
        "expected an integer reply code between 200 and 599, got 'refused'"),
    "no-reply typo on a hop": (
        AFTER + "  - hop: {hop: relay->mx, expect: {connect: noanswer}}\n", 8, 45,
        f"{NO_REPLY_EXPECTED}, got 'noanswer'"),
    # hop message_of
    "hop before smtp": (
        HEAD + "  - hop: {hop: relay->mx, expect: {quit: 221}}\n" + SMTP, 4, 5,
        "hop step before any smtp step: there is no message to look for"),
    "hop unknown message_of": (
        AFTER + "  - hop: {hop: relay->mx, message_of: x, expect: {quit: 221}}\n", 8, 39,
        "unknown step id 'x' in message_of (no earlier smtp step has an id)"),
    "hop message_of a later step": (
        AFTER + "  - hop: {hop: relay->mx, message_of: later, expect: {quit: 221}}\n"
        + smtp("      id: later\n"), 8, 39, "message_of 'later' refers to a later step (step 3)"),
    "hop message_of a skipped step": (
        HEAD + smtp("      id: one\n      per_mta:\n        exim: {reason: r, skip: true}\n") + SMTP
        + "  - hop: {hop: relay->mx, message_of: one, expect: {quit: 221}}\n", 15, 39,
        "step 3 (hop) checks the message of step 1, which is skipped on exim"),
    # no_bounce
    "no_bounce before smtp": (
        HEAD + "  - no_bounce: {host: relay, mailbox: a@origin.test}\n", 4, 5,
        "no_bounce step before any smtp step: there is no message to look for"),
    "no_bounce without mailbox": (
        AFTER + "  - no_bounce: {host: relay}\n", 8, 16, "missing required key 'mailbox' in no_bounce step"),
    "no_bounce mailbox not an address": (
        AFTER + "  - no_bounce: {host: relay, mailbox: alice}\n", 8, 39,
        "mailbox 'alice' is not an address local@domain (the harness reads mailboxes as "
        "/var/mail/<domain>/<local>/)"),
    "no_bounce within too long": (
        AFTER + "  - no_bounce: {host: relay, mailbox: a@x.test, within: 700}\n", 8, 57,
        "expected a number of seconds greater than 0 and at most 600, got 700"),
    "no_bounce unknown host": (
        AFTER + "  - no_bounce: {host: dns, mailbox: a@x.test}\n", 8, 23,
        "unknown role 'dns' in host (expected one of: mx, relay, nomail)"),
    "no_bounce unknown key": (
        AFTER + "  - no_bounce: {host: relay, mailbox: a@x.test, expect: {}}\n", 8, 49,
        "unknown key 'expect' in no_bounce step (expected one of: host, mailbox, within, message_of, per_mta)"),
    "no_bounce about a skipped step": (
        HEAD + smtp("      id: one\n      per_mta:\n        exim: {reason: r, skip: true}\n") + SMTP
        + "  - no_bounce: {host: mx, mailbox: b@x.test, message_of: one}\n", 15, 58,
        "step 3 (no_bounce) checks the message of step 1, which is skipped on exim"),
    # queue_state of
    "queue_state of something else": (
        AFTER + "  - queue_state: {host: relay, state: queued, of: bounces}\n", 8, 51,
        "expected what is looked for in the queue: message or bounce, got 'bounces'"),
    # delivery copies
    "delivery copies 0": (
        AFTER + "  - delivery: {host: mx, mailbox: b@x.test, copies: 0}\n", 8, 53,
        "expected a number of copies (an integer, 1 or more; for no copy at all, write a no_delivery step), "
        "got 0"),
    "delivery copies not an integer": (
        AFTER + "  - delivery: {host: mx, mailbox: b@x.test, copies: 1.5}\n", 8, 53,
        "expected a number of copies (an integer, 1 or more; for no copy at all, write a no_delivery step), "
        "got 1.5 (a number)"),
    "delivery copies quoted": (
        AFTER + "  - delivery: {host: mx, mailbox: b@x.test, copies: '2'}\n", 8, 53, "write it without quotes"),
    # DNS
    "dns address_of unreachable on AAAA": (
        DNS_HEAD + "  - {name: a.test, type: AAAA, address_of: unreachable}\nsteps:\n" + SMTP, 4, 32,
        "'address_of' is only for A records (the run's network is IPv4), not AAAA records"),
    "dns address_of a role on AAAA": (
        DNS_HEAD + "  - {name: a.test, type: AAAA, address_of: mx}\nsteps:\n" + SMTP, 4, 32,
        "'address_of' is only for A records"),
    "dns unknown address_of": (
        DNS_HEAD + "  - {name: a.test, type: A, address_of: nowhere}\nsteps:\n" + SMTP, 4, 41,
        "unknown role 'nowhere' in address_of (expected one of: mx, relay, nomail, or unreachable for an "
        "address nothing answers on)"),
    "role named unreachable": (
        ROLES_HEAD + "  unreachable: {like: nomail}\nsteps:\n" + SMTP, 4, 3,
        "'unreachable' names the address in the run's network that nothing answers on"),
    "dns bad MX rdata": (
        DNS_HEAD + "  - {name: a.test, type: MX, value: not an mx}\nsteps:\n" + SMTP, 4, 37,
        "'not an mx' is not valid MX rdata (expecting an integer), e.g. '10 mx.example.test.'"),
    "dns MX without a target": (
        DNS_HEAD + "  - {name: a.test, type: MX, value: '10'}\nsteps:\n" + SMTP, 4, 37,
        "'10' is not valid MX rdata"),
    "dns bad A rdata": (
        DNS_HEAD + "  - {name: a.test, type: A, value: 300.1.1.1}\nsteps:\n" + SMTP, 4, 36,
        "'300.1.1.1' is not valid A rdata"),
    "dns unterminated TXT": (
        DNS_HEAD + "  - {name: a.test, type: TXT, value: '\"abc'}\nsteps:\n" + SMTP, 4, 38,
        "'\"abc' is not valid TXT rdata"),
    "dns CNAME beside a standard record": (
        DNS_HEAD + "  - {name: mx.example.test, type: CNAME, value: other.test.}\nsteps:\n" + SMTP, 4, 5,
        "mx.example.test. CNAME: a CNAME cannot coexist with A records"),
    "dns CNAME beside an added role's record": (
        "name: t\ndescription: d\nroles:\n  backup: {like: nomail}\ndns:\n"
        "  - {name: backup.hosts.test, type: CNAME, value: other.test.}\nsteps:\n" + SMTP, 6, 5,
        "backup.hosts.test. CNAME: a CNAME cannot coexist with A records"),
    "dns NS at a zone apex": (
        DNS_HEAD + "  - {name: example.test, type: NS, value: ns.other.test.}\nsteps:\n" + SMTP, 4, 5,
        "NS at the zone apex example.test. is generated by the harness"),
    "dns two CNAMEs": (
        DNS_HEAD + "  - {name: a.example.test, type: CNAME, value: b.test.}\n"
        "  - {name: a.example.test, type: CNAME, value: c.test.}\nsteps:\n" + SMTP, 4, 5,
        "a.example.test. CNAME: a name can have only one CNAME record"),
    # EHLO
    "ehlo with a blank": (
        HEAD + smtp("      ehlo: a b\n"), 8, 13,
        "ehlo 'a b' contains a blank: EHLO takes one word, a domain or an address literal"),
    "ehlo not ASCII": (
        HEAD + smtp("      ehlo: bücher.test\n"), 8, 13, "ehlo 'bücher.test' is not ASCII"),
    "ehlo control character": (
        HEAD + smtp('      ehlo: "a\\x01b"\n'), 8, 13, "ehlo 'a\\x01b' contains a control character (U+0001)"),
    # envelope addresses
    "mail_from in angle brackets": (
        HEAD + '  - smtp: {host: mx, mail_from: "<a@b.test>", rcpt_to: c@d.test}\n', 4, 33,
        "mail_from '<a@b.test>': write the address without '<' and '>', the client adds them"),
    "mail_from with a blank": (
        HEAD + '  - smtp: {host: mx, mail_from: "a b@c.test", rcpt_to: c@d.test}\n', 4, 33,
        "mail_from 'a b@c.test' contains a blank"),
    "rcpt_to item with a blank": (
        HEAD + '  - smtp: {host: mx, mail_from: a@b.test, rcpt_to: [ok@b.test, "x y@b.test"]}\n', 4, 64,
        "rcpt_to 'x y@b.test' contains a blank"),
    "rcpt_to with a control character": (
        HEAD + '  - smtp: {host: mx, mail_from: a@b.test, rcpt_to: "x\\x7f@b.test"}\n', 4, 52,
        "rcpt_to 'x\\x7f@b.test' contains a control character (U+007F)"),
    # headers
    "header value with a control character": (
        HEAD + smtp('      message: {headers: {X-A: "a\\x01b"}}\n'), 8, 32,
        "header 'X-A': the value contains a control character (U+0001)"),
    # bounds
    "timeout above 600": (
        HEAD + smtp("      timeout: 601\n"), 8, 16,
        "expected a number of seconds greater than 0 and at most 600, got 601"),
    "within above 600": (
        AFTER + "  - no_delivery: {host: mx, within: 601}\n", 8, 37,
        "expected a number of seconds greater than 0 and at most 600, got 601"),
    # mailboxes
    "delivery mailbox not an address": (
        AFTER + "  - delivery: {host: mx, mailbox: bob}\n", 8, 35, "mailbox 'bob' is not an address local@domain"),
    "delivery mailbox in angle brackets": (
        AFTER + '  - delivery: {host: mx, mailbox: "<bob@example.test>"}\n', 8, 35,
        "mailbox '<bob@example.test>': write the address without '<' and '>'"),
    "no_delivery mailbox not an address": (
        AFTER + "  - no_delivery: {host: mx, mailbox: 'a@b@'}\n", 8, 38, "mailbox 'a@b@' is not an address"),
    # per_mta: every new key and check applies to the step as overridden
    "override bad mail_options": (
        override("        exim: {reason: r, mail_options: [SIZE=]}\n"), 9, 42, f"{ESMTP_EXPECTED}, got 'SIZE='"),
    "override no-reply typo": (
        override("        exim: {reason: r, expect: {connect: refuse}}\n"), 9, 45,
        f"{NO_REPLY_EXPECTED}, got 'refuse'"),
    "override ehlo with a blank": (
        override("        exim: {reason: r, ehlo: 'a b'}\n"), 9, 33, "ehlo 'a b' contains a blank"),
    "override copies 0": (
        AFTER + "  - delivery:\n      host: mx\n      mailbox: b@x.test\n      per_mta:\n"
        "        exim: {reason: r, copies: 0}\n", 12, 35, "expected a number of copies"),
    "override mailbox not an address": (
        AFTER + "  - no_bounce:\n      host: mx\n      mailbox: b@x.test\n      per_mta:\n"
        "        exim: {reason: r, mailbox: nobody}\n", 12, 36, "mailbox 'nobody' is not an address"),
    "override queue_state of": (
        AFTER + "  - queue_state:\n      host: relay\n      state: queued\n      per_mta:\n"
        "        exim: {reason: r, of: dsn}\n", 12, 31, "expected what is looked for in the queue"),
    "override hop message_of": (
        AFTER + "  - hop:\n      hop: relay->mx\n      expect: {quit: 221}\n      per_mta:\n"
        "        exim: {reason: r, message_of: nope}\n", 12, 39,
        "unknown step id 'nope' in message_of (no earlier smtp step has an id) (on exim: the step with its "
        "per_mta override at line 12)"),
}

BAD.update(BAD_CONTENT)


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


def test_role_config_dir_is_relative_to_the_scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "compose" / "relay").mkdir(parents=True)
    (tmp_path / "compose" / "relay" / "main.cf").write_text("")
    (tmp_path / "scenarios").mkdir()
    # ../compose leaves the scenario's directory: allowed because it stays inside the working directory.
    monkeypatch.chdir(tmp_path)
    text = ROLES_HEAD + "  relay: {config: {postfix: ../compose/relay}}\nsteps:\n" + SMTP
    path = write(tmp_path, text, "scenarios/s.yaml")
    assert load_scenario(path).roles["relay"].config_dirs == {"postfix": (tmp_path / "compose" / "relay").resolve()}


def test_missing_role_config_dir_per_mta(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "main.cf").write_text("")
    (tmp_path / "file").write_text("")
    path = write(tmp_path, ROLES_HEAD + "  relay:\n    config: {postfix: p, exim: e}\nsteps:\n" + SMTP)
    error = load_error(path)
    assert str(error).startswith(f"{path}:5:32: role config directory 'e' does not exist"), str(error)
    path = write(tmp_path, ROLES_HEAD + "  relay:\n    config: {exim: file}\nsteps:\n" + SMTP)
    assert str(load_error(path)).startswith(f"{path}:5:20: role config directory 'file' is not a directory")


def test_added_role_with_its_own_config(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "exim4.conf").write_text("")
    text = (ROLES_HEAD + "  backup-2: {like: nomail, config: {exim: b}, settings: {exim: {X: 1}}}\nsteps:\n"
            "  - smtp: {host: backup-2, mail_from: a, rcpt_to: b}\n")
    s = load_scenario(write(tmp_path, text))
    role = s.roles["backup-2"]
    assert (role.like, role.config_dirs, role.settings) == ("nomail", {"exim": (tmp_path / "b").resolve()},
                                                            {"exim": {"X": "1"}})
    assert isinstance(s.steps[0], SmtpSessionStep) and s.steps[0].host == "backup-2"


def test_single_mta(tmp_path: Path) -> None:
    assert load_scenario(write(tmp_path, "name: t\ndescription: d\nmta: exim\nsteps:\n" + SMTP)).mtas == (
        "exim",)


def test_step_defaults(tmp_path: Path) -> None:
    text = (HEAD + SMTP + "  - hop: {hop: relay->mx, expect: {quit: 221}}\n"
            "  - no_connection: {from: relay, to: mx}\n"
            "  - bounce: {host: relay, mailbox: a@origin.test}\n"
            "  - queue_state: {host: relay, state: queued}\n")
    _, hop, no_connection, bounce, queue = load_scenario(write(tmp_path, text)).steps
    assert isinstance(hop, HopStep) and (hop.session, hop.within_s, hop.message_of) == (None, 15.0, None)
    assert isinstance(no_connection, NoConnectionStep) and no_connection.within_s == 5.0
    assert isinstance(bounce, BounceStep) and (bounce.within_s, bounce.checks) == (20.0, ())
    assert isinstance(queue, QueueStateStep) and (queue.within_s, queue.reason) == (15.0, None)


def test_a_skipped_step_may_be_checked_where_the_checker_is_skipped_too(tmp_path: Path) -> None:
    skip = "      per_mta:\n        exim: {reason: r, skip: true}\n"
    text = HEAD + smtp(skip) + "  - delivery:\n      host: mx\n      mailbox: b@x.test\n" + skip
    s = load_scenario(write(tmp_path, text))
    assert [o.skip for _, _, o in s.steps_for("exim") if o] == [True, True]


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


@pytest.mark.parametrize("fixture", ["full", "flows", "new keys"])
def test_no_traceback_for_any_damaged_copy_of_a_valid_file(tmp_path: Path, fixture: str) -> None:
    # Truncations and single-line deletions of a valid file reach every corner of the pipeline;
    # each must load or raise ScenarioError, never anything else.
    text = {"full": FULL.read_text(), "flows": FLOWS.read_text(), "new keys": NEW_KEYS}[fixture]
    lines = text.splitlines(keepends=True)
    (tmp_path / "relay-config").mkdir()
    for main_file in ("main.cf", "exim4.conf"):
        (tmp_path / "relay-config" / main_file).write_bytes((FIXTURES / "relay-config" / main_file).read_bytes())
    (tmp_path / "messages").mkdir()
    (tmp_path / "messages" / "hello.eml").write_bytes((FIXTURES / "messages" / "hello.eml").read_bytes())
    load_scenario(write(tmp_path, text))  # the undamaged copy loads
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
    # tls is not a reply but how the client's handshake ended (expect.tls, smtp steps only).
    assert [key for key in expect if key != "tls"] == [stage.yaml_key for stage in Stage]


def test_standard_roles() -> None:
    assert STANDARD_ROLES == ("mx", "relay", "nomail")
    assert load_schema()["$defs"]["standardRole"]["enum"] == list(STANDARD_ROLES)


def test_schema_mtas_match_the_loader() -> None:
    schema = load_schema()
    defs = schema["$defs"]
    assert defs["mtaName"]["enum"] == list(KNOWN_MTAS)
    role = defs["roleOverride"]["properties"]
    for mapping in (role["config"]["then"], role["settings"]):
        assert list(mapping["properties"]) == list(KNOWN_MTAS)
    for name, sub in defs.items():
        if name.endswith("PerMta"):
            assert list(sub["properties"]) == list(KNOWN_MTAS), name


def _step_defs() -> dict[str, str]:
    """Step kind -> the name of its schema definition."""
    return {kind: ref["$ref"].rsplit("/", 1)[1]
            for kind, ref in load_schema()["$defs"]["step"]["properties"].items()}


def test_schema_step_kinds_match_the_model() -> None:
    kinds = [cls.kind for cls in typing.get_args(Step)]
    assert list(_step_defs()) == kinds


def test_every_step_kind_has_per_mta_overrides_mirroring_its_keys() -> None:
    # The override of a step offers exactly the step's keys (not id: message_of refers to it), each the
    # same schema as in the step, plus reason and skip.
    defs = load_schema()["$defs"]
    renamed = {"queue_reason": "reason"}
    for kind, name in _step_defs().items():
        step = defs[name]["properties"]
        prefix = name.removesuffix("Step")
        assert step["per_mta"] == {"$ref": f"#/$defs/{prefix}PerMta"}, kind
        override = defs[f"{prefix}Override"]
        assert override["required"] == ["reason"]
        assert "an override needs a 'reason'" in override["x-missing"]["reason"]
        keys = list(override["properties"])
        assert keys[:2] == ["reason", "skip"], kind
        assert [renamed.get(k, k) if kind == "queue_state" else k for k in keys[2:]] == [
            k for k in step if k not in ("id", "per_mta")], kind
        for key in keys[2:]:
            target = renamed.get(key, key) if kind == "queue_state" else key
            assert override["properties"][key]["$ref"] == f"#/$defs/{name}/properties/{target}", (kind, key)


def test_schema_bounce_fields_and_queue_states_match() -> None:
    defs = load_schema()["$defs"]
    assert list(defs["bounceStep"]["properties"]["expect"]["properties"]) == list(DSN_FIELDS)
    assert defs["queueStateStep"]["properties"]["state"]["enum"] == list(QUEUE_STATES)


def test_full_fixture_is_valid_yaml_mapping() -> None:
    # Guards the fixture itself: the marks asserted above depend on its layout.
    assert isinstance(yaml.safe_load(FULL.read_text()), dict)


def test_settings_for_opensmtpd_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: n\ndescription: d\nroles:\n  relay:\n    settings:\n      opensmtpd: {a: b}\n"
                    "steps:\n  - smtp: {host: relay, mail_from: a@b.test, rcpt_to: c@d.test}\n")
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert str(err.value).startswith(f"{path}:6:7: opensmtpd roles take no settings")


# --- the model's new keys ---------------------------------------------------------------------------

NEW_KEYS = """\
name: new keys
description: d
mta: [postfix, exim]
dns:
  - {name: dead.example.test, type: A, address_of: unreachable}
steps:
  - smtp:
      id: first
      host: relay
      ehlo: "[192.0.2.1]"
      mail_from: '"john doe"@origin.test'
      rcpt_to: [bob@example.test, carol@example.test]
      mail_options: [SIZE=auto, BODY=8BITMIME, RET=HDRS, ENVID=x-1+2]
      rcpt_options: ["NOTIFY=FAILURE,DELAY", SMTPUTF8]
      message: {headers: {Subject: "tab\\there"}}
      expect:
        connect: 220
        rcpt: {bob@example.test: 250, carol@example.test: reset}
        data: closed
      per_mta:
        exim:
          reason: r
          mail_options: [SIZE=12000000]
          expect: {connect: no-answer}
  - smtp:
      host: nomail
      ehlo: "[IPv6:2001:db8::1]"
      mail_from: ""
      rcpt_to: bob@example.test
      expect: {connect: refused}
  - hop:
      hop: relay->mx
      message_of: first
      expect: {connect: no-answer, rcpt: closed}
      per_mta:
        exim: {reason: r, session: 2, message_of: first}
  - delivery: {host: mx, mailbox: bob@example.test, copies: 2, message_of: first}
  - no_bounce:
      host: relay
      mailbox: alice@origin.test
      per_mta:
        exim: {reason: r, within: 10, message_of: first}
  - no_bounce: {host: relay, mailbox: alice@origin.test, within: 5, message_of: first}
  - queue_state:
      host: relay
      state: queued
      of: bounce
      per_mta:
        exim: {reason: r, of: message}
  - delivery:
      host: mx
      mailbox: bob@example.test
      per_mta:
        exim: {reason: r, copies: 1}
"""


def test_new_keys_build_models(tmp_path: Path) -> None:
    path = write(tmp_path, NEW_KEYS)
    s = load_scenario(path)
    f = str(path)
    assert [(r.name, r.rtype, r.value, r.address_of) for r in s.dns] == [
        ("dead.example.test", "A", None, UNREACHABLE_ROLE)]

    first, second, hop, delivery, no_bounce, no_bounce_of, queue, delivery_copies = s.steps
    assert isinstance(first, SmtpSessionStep)
    assert (first.ehlo, first.mail_from) == ("[192.0.2.1]", '"john doe"@origin.test')
    assert first.mail_options == ("SIZE=auto", "BODY=8BITMIME", "RET=HDRS", "ENVID=x-1+2")
    assert first.rcpt_options == ("NOTIFY=FAILURE,DELAY", "SMTPUTF8")
    assert first.message.headers == (("Subject", "tab\there"),)
    assert first.expect == {Stage.CONNECT: ReplyExpectation(220),
                            Stage.DATA: ReplyExpectation(None, no_reply="closed")}
    assert first.expect[Stage.DATA].mark == Mark(f, 19, 15)
    assert first.expect_rcpt == {"bob@example.test": ReplyExpectation(250),
                                 "carol@example.test": ReplyExpectation(None, no_reply="reset")}
    assert str(first.expect_rcpt["carol@example.test"]) == "no reply (reset)"
    exim = s.overrides[0]["exim"].step
    assert isinstance(exim, SmtpSessionStep)
    assert (exim.mail_options, exim.rcpt_options) == (("SIZE=12000000",), first.rcpt_options)
    assert exim.expect == {Stage.CONNECT: ReplyExpectation(None, no_reply="no-answer")}
    assert exim.expect[Stage.CONNECT].mark == Mark(f, 24, 29)

    assert isinstance(second, SmtpSessionStep)
    assert (second.ehlo, second.mail_from, second.mail_options, second.rcpt_options) == (
        "[IPv6:2001:db8::1]", "", (), ())
    assert second.expect == {Stage.CONNECT: ReplyExpectation(None, no_reply="refused")}

    assert isinstance(hop, HopStep)
    assert (hop.session, hop.message_of, hop.within_s) == (None, "first", 15.0)
    # A bare outcome for rcpt is the expectation for every recipient, as a code is.
    assert hop.expect == {Stage.CONNECT: ReplyExpectation(None, no_reply="no-answer"),
                          Stage.RCPT: ReplyExpectation(None, no_reply="closed")}
    assert hop.expect_rcpt == {}
    hop_exim = s.overrides[2]["exim"].step
    assert isinstance(hop_exim, HopStep)
    assert (hop_exim.session, hop_exim.message_of) == (2, "first")

    assert isinstance(delivery, DeliveryStep) and (delivery.copies, delivery.message_of) == (2, "first")
    assert isinstance(no_bounce, NoBounceStep)
    assert (no_bounce.host, no_bounce.mailbox, no_bounce.within_s, no_bounce.message_of) == (
        "relay", "alice@origin.test", 3.0, None)
    assert no_bounce.mark == Mark(f, 38, 5)
    nb_exim = s.overrides[4]["exim"].step
    assert isinstance(nb_exim, NoBounceStep) and (nb_exim.within_s, nb_exim.message_of) == (10.0, "first")
    assert isinstance(no_bounce_of, NoBounceStep)
    assert (no_bounce_of.within_s, no_bounce_of.message_of) == (5.0, "first")

    assert isinstance(queue, QueueStateStep) and (queue.state, queue.of) == ("queued", "bounce")
    queue_exim = s.overrides[6]["exim"].step
    assert isinstance(queue_exim, QueueStateStep) and queue_exim.of == "message"

    assert isinstance(delivery_copies, DeliveryStep) and delivery_copies.copies is None
    copies_exim = s.overrides[7]["exim"].step
    assert isinstance(copies_exim, DeliveryStep) and copies_exim.copies == 1


def test_rcpt_stage_takes_a_bare_outcome(tmp_path: Path) -> None:
    text = AFTER + "  - hop: {hop: relay->mx, expect: {rcpt: closed, end_of_data: reset}}\n"
    hop = load_scenario(write(tmp_path, text)).steps[1]
    assert isinstance(hop, HopStep)
    assert hop.expect == {Stage.RCPT: ReplyExpectation(None, no_reply="closed"),
                          Stage.END_OF_DATA: ReplyExpectation(None, no_reply="reset")}


def test_new_key_defaults(tmp_path: Path) -> None:
    text = (AFTER + "  - no_bounce: {host: relay, mailbox: a@origin.test}\n"
            "  - queue_state: {host: relay, state: queued}\n  - delivery: {host: mx, mailbox: b@example.test}\n")
    session, no_bounce, queue, delivery = load_scenario(write(tmp_path, text)).steps
    assert isinstance(session, SmtpSessionStep) and (session.mail_options, session.rcpt_options) == ((), ())
    assert isinstance(no_bounce, NoBounceStep)
    assert (no_bounce.within_s, no_bounce.message_of) == (3.0, None)
    assert isinstance(queue, QueueStateStep) and queue.of == "message"
    assert isinstance(delivery, DeliveryStep) and delivery.copies is None


@pytest.mark.parametrize("ehlo", ["localhost", "client_1.origin.test", "mx.example.test.", "[192.0.2.1]",
                                  "[IPv6:2001:db8::1]", "[x-tag:anything]"])
def test_valid_ehlo_names(tmp_path: Path, ehlo: str) -> None:
    step = load_scenario(write(tmp_path, HEAD + smtp(f"      ehlo: '{ehlo}'\n"))).steps[0]
    assert isinstance(step, SmtpSessionStep) and step.ehlo == ehlo


def test_schema_no_reply_outcomes_and_queue_subjects_match_the_model() -> None:
    defs = load_schema()["$defs"]
    assert defs["noReply"]["enum"] == list(NO_REPLY_OUTCOMES)
    assert defs["queueStateStep"]["properties"]["of"]["enum"] == list(QUEUE_SUBJECTS)


def test_a_dns_error_is_a_load_error_of_harness_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    from harness.cli import main

    path = write(tmp_path, DNS_HEAD + "  - {name: a.test, type: MX, value: not an mx}\nsteps:\n" + SMTP)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4:37: 'not an mx' is not valid MX rdata" in err


# --- role configurations: a plain directory is for one implementation ---------------------------------


def test_plain_config_dir_for_every_implementation_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "relay").mkdir()
    path = write(tmp_path, ROLES_HEAD + "  relay: {config: relay}\nsteps:\n" + SMTP)
    error = load_error(path)
    assert (error.line, error.col) == (4, 19)
    assert error.detail == (
        "a plain config directory is for one MTA implementation, but relay runs on postfix, exim or opensmtpd "
        "(the scenario has no mta: list, so every one): write config: {postfix: relay} (a directory per "
        "implementation), or restrict the scenario to one implementation with mta: [postfix]")


def test_plain_config_dir_for_two_implementations_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "relay").mkdir()
    path = write(tmp_path, "name: t\ndescription: d\nmta: [exim, postfix]\nroles:\n  relay: {config: relay}\n"
                           "steps:\n" + SMTP)
    error = load_error(path)
    assert (error.line, error.col) == (5, 19)
    assert "but relay runs on exim or postfix only (the scenario's mta: at line 3): write config: " \
           "{exim: relay}" in error.detail


def test_plain_config_dir_for_the_one_implementation(tmp_path: Path) -> None:
    (tmp_path / "relay").mkdir()
    (tmp_path / "relay" / "exim4.conf").write_text("")
    (tmp_path / "relay" / "smtpd.conf").write_text("")
    text = "name: t\ndescription: d\nmta: exim\nroles:\n  relay: {config: relay}\nsteps:\n" + SMTP
    assert load_scenario(write(tmp_path, text)).roles["relay"].config_dirs == {"exim": (tmp_path / "relay").resolve()}
    text = "name: t\ndescription: d\nmta: [opensmtpd]\nroles:\n  relay: {config: relay}\nsteps:\n" + SMTP
    assert load_scenario(write(tmp_path, text)).roles["relay"].config_dirs == {
        "opensmtpd": (tmp_path / "relay").resolve()}


def test_plain_config_dir_for_a_role_with_a_fixed_implementation(tmp_path: Path) -> None:
    (tmp_path / "mx").mkdir()
    (tmp_path / "mx" / "exim4.conf").write_text("")
    text = ROLES_HEAD + "  mx: {config: mx, mta: exim}\nsteps:\n" + SMTP
    assert load_scenario(write(tmp_path, text)).roles["mx"].config_dirs == {"exim": (tmp_path / "mx").resolve()}


def test_config_for_an_implementation_that_never_runs_the_role(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "main.cf").write_text("")
    path = write(tmp_path, "name: t\ndescription: d\nmta: postfix\nroles:\n  relay:\n"
                           "    config: {postfix: d, exim: d}\nsteps:\n" + SMTP)
    error = load_error(path)
    assert (error.line, error.col) == (6, 26)
    assert error.detail == ("the exim configuration is never used: relay runs on postfix only (the scenario's "
                            "mta: at line 3)")
    path = write(tmp_path, ROLES_HEAD + "  mx:\n    mta: exim\n    config: {postfix: d}\nsteps:\n" + SMTP)
    error = load_error(path)
    assert (error.line, error.col) == (6, 14)
    assert error.detail == "the postfix configuration is never used: mx always runs exim (mta: exim at line 5)"


def test_settings_for_an_implementation_that_never_runs_the_role(tmp_path: Path) -> None:
    path = write(tmp_path, ROLES_HEAD + "  mx:\n    mta: postfix\n    settings: {exim: {A: b}}\nsteps:\n" + SMTP)
    error = load_error(path)
    assert (error.line, error.col) == (6, 16)
    assert error.detail == "the exim settings are never used: mx always runs postfix (mta: postfix at line 5)"


def test_postfix_settings_need_a_main_cf_in_the_role_config(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    text = (ROLES_HEAD + "  relay:\n    config: {postfix: p, exim: p}\n"
            "    settings: {postfix: {a: b}, exim: {A: b}}\nsteps:\n" + SMTP)
    path = write(tmp_path, text)
    error = load_error(path)
    assert (error.line, error.col) == (5, 23)
    # main.cf is the main file of every Postfix configuration: missing, it is refused whether or not
    # settings are added to it.
    assert error.detail.startswith("role config directory 'p' has no main.cf, the main file of every postfix "
                                   "configuration")
    # Exim's settings are a file of their own: nothing but the main file is needed in the directory.
    (tmp_path / "p" / "main.cf").write_text("")
    (tmp_path / "p" / "exim4.conf").write_text("")
    assert load_scenario(path).roles["relay"].settings == {"postfix": {"a": "b"}, "exim": {"A": "b"}}


def test_bundled_scenarios_load() -> None:
    scenarios = load_scenarios([Path(__file__).parents[2] / "scenarios"])
    assert len(scenarios) >= 12


# --- message files, parsed by the email package -------------------------------------------------------


@pytest.mark.parametrize(("content", "phrase"), [
    (" folded\nSubject: x\n\nb\n", "line 1: expected a header field 'Name: value' or the blank line before the "
                                   "body, got ' folded'"),
    ("From alice@origin.test Mon Jan  1 00:00:00 2024\nSubject: x\n\nb\n", "line 1: an mbox 'From ' line"),
    ("Subject: x\n:no name\n\nb\n", "line 2: expected a header field 'Name: value' or the blank line before the "
                                    "body, got ':no name'"),
    ("Subject: x\r\nBad Name: y\r\n\r\nb\r\n", "line 2: expected a header field 'Name: value' or the blank line "
                                               "before the body, got 'Bad Name: y'"),
    ("Subject: x\nX-A: a\x01b\n\nb\n", ": header 'X-A': the value contains a control character (U+0001)"),
])
def test_bad_message_files(tmp_path: Path, content: str, phrase: str) -> None:
    (tmp_path / "m.eml").write_bytes(content.encode())
    path = write(tmp_path, HEAD + smtp("      message: {file: m.eml}\n"))
    error = load_error(path)
    assert (error.line, error.col) == (8, 23), str(error)
    assert error.detail.startswith("message file 'm.eml'"), str(error)
    assert phrase in error.detail, str(error)


def test_message_file_keeps_a_multipart_body_as_written(tmp_path: Path) -> None:
    body = "--b\nContent-Type: text/plain\n\npart\n--b--\n"
    (tmp_path / "m.eml").write_text('Subject: s\nContent-Type: multipart/mixed; boundary="b"\n'
                                    "X-Tabbed:\tvalue  \n\n" + body)
    step = load_scenario(write(tmp_path, HEAD + smtp("      message: {file: m.eml}\n"))).steps[0]
    assert isinstance(step, SmtpSessionStep)
    assert step.message.headers == (("Subject", "s"), ("Content-Type", 'multipart/mixed; boundary="b"'),
                                    ("X-Tabbed", "value"))
    assert step.message.body == body


def test_a_malformed_but_sendable_ehlo_is_allowed(tmp_path: Path) -> None:
    """A scenario may test a server's HELO checks with a bad name on purpose; only what cannot be
    put on the line at all is refused."""
    path = tmp_path / "helo.yaml"
    path.write_text(HEAD + smtp("      ehlo: '-bad-.test'\n"), encoding="utf-8")
    step = load_scenario(path).steps[0]
    assert isinstance(step, SmtpSessionStep) and step.ehlo == "-bad-.test"
