"""Steps: from schema-valid step mappings to the frozen step models, with the checks the schema cannot
express (roles, message_of, regular expressions, envelope values, recipients of expect.rcpt)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.name

from harness.dns.zones import HARNESS_ZONE
from harness.scenario.checks import address_problem, ehlo_problem, mailbox_problem
from harness.scenario.messages import build_message
from harness.scenario.model import (
    UNREACHABLE_ROLE,
    BounceStep,
    DeliveryStep,
    DnsChangeStep,
    DnsFaultStep,
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
    RoleFaultStep,
    SmtpSessionStep,
    Stage,
    Step,
    StepOverride,
    TlsExpectation,
)
from harness.scenario.records import RecordBuilder
from harness.scenario.validate import JsonPath

__all__ = [
    "DEFAULT_EHLO",
    "DSN_FIELDS",
    "MessageIds",
    "StepBuilder",
    "build_steps",
]

DEFAULT_EHLO = "client.origin.test"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_DELIVERY_WITHIN_S = 10.0
DEFAULT_NO_DELIVERY_WITHIN_S = 3.0
DEFAULT_NO_BOUNCE_WITHIN_S = DEFAULT_NO_DELIVERY_WITHIN_S
DEFAULT_HOP_WITHIN_S = 15.0
DEFAULT_NO_CONNECTION_WITHIN_S = 5.0
DEFAULT_BOUNCE_WITHIN_S = 20.0
DEFAULT_QUEUE_STATE_WITHIN_S = 15.0
HARNESS_NAME = dns.name.from_text(HARNESS_ZONE)
_FAULT_LABEL = re.compile(rb"[a-z0-9_-]+")

# The bounce step's expect keys -> the RFC 3464 per-recipient fields they check.
DSN_FIELDS: dict[str, str] = {
    "action": "Action",
    "status": "Status",
    "diagnostic_code": "Diagnostic-Code",
    "remote_mta": "Remote-MTA",
    "final_recipient": "Final-Recipient",
}

@dataclass
class MessageIds:
    """What message_of can name while the steps are built in order."""

    every: dict[str, int]  # id -> index of every smtp step with an id, to tell "later" from "unknown"
    before: dict[str, int] = field(default_factory=dict)  # id -> index, smtp steps before this one
    marks: dict[str, Mark] = field(default_factory=dict)
    latest_smtp: int | None = None


def build_steps(
    builder: StepBuilder, raw_steps: list[dict[str, Any]], scenario_name: str
) -> tuple[tuple[Step, ...], dict[int, dict[str, StepOverride]]]:
    """The steps in order, and per step index the per_mta overrides per implementation."""
    from harness.scenario.overrides import build_override, check_skipped_messages

    ids = MessageIds(every={})
    for index, raw in enumerate(raw_steps):
        if "smtp" in raw and "id" in raw["smtp"]:
            ids.every.setdefault(raw["smtp"]["id"], index)
    steps: list[Step] = []
    overrides: dict[int, dict[str, StepOverride]] = {}
    # The smtp step whose message a step checks: for the step itself, and per implementation.
    sources: dict[int, int] = {}
    override_sources: dict[tuple[int, str], int] = {}
    fixed_ids: dict[str, int] = {}  # a Message-ID the scenario sets itself -> the first step sending it
    for index, raw in enumerate(raw_steps):
        kind, body = next(iter(raw.items()))
        here = ("steps", index, kind)
        if kind == "smtp" and body.get("id") is not None:
            step_id: str = body["id"]
            if step_id in ids.marks:
                raise builder.fail(builder.at(*here, "id"), f"duplicate step id {step_id!r} "
                                   f"(already used at line {ids.marks[step_id].line})")
            ids.marks[step_id] = builder.at(*here, "id")
        step, source = builder.step(kind, here, body, scenario_name, ids)
        steps.append(step)
        if isinstance(step, SmtpSessionStep):
            _check_own_message_id(builder, step, index, fixed_ids)
        if source is not None:
            sources[index] = source
        for mta, spec in body.get("per_mta", {}).items():
            override, source = build_override(builder, kind, here, body, mta, spec, scenario_name, ids)
            overrides.setdefault(index, {})[mta] = override
            if source is not None:
                override_sources[(index, mta)] = source
        if kind == "smtp":
            if body.get("id") is not None:
                ids.before[body["id"]] = index
            ids.latest_smtp = index
    check_skipped_messages(builder, raw_steps, overrides, sources, override_sources)
    return tuple(steps), overrides


def _check_own_message_id(builder: StepBuilder, step: SmtpSessionStep, index: int, fixed: dict[str, int]) -> None:
    """Every copy, hop, queue entry and DSN is told to be a message's by its Message-ID: two smtp steps
    sending one (set in ``headers`` or in a message file; the harness makes a unique one otherwise)
    could each pass on the other's."""
    message_id = next((value.strip() for name, value in step.message.headers if name.strip().lower() == "message-id"),
                      None)
    if message_id is None:
        return
    key = message_id.strip("<> ").lower()
    if key in fixed:
        where = f"message file {step.message.source_file}" if step.message.source_file else "headers"
        raise builder.fail(step.mark, f"step {index + 1} sends Message-ID {message_id} (its {where}), as step "
                           f"{fixed[key] + 1} does: the harness finds a message's copies, hops, queue entries and "
                           "DSNs by its Message-ID, so each step's message needs its own (leave the header out "
                           "and the harness makes a unique one)")
    fixed[key] = index


class StepBuilder(RecordBuilder):
    """Builds one step model from its schema-valid mapping; ``here`` is the path of the step's body
    (``("steps", index, kind)``)."""

    def step(
        self, kind: str, here: JsonPath, body: dict[str, Any], scenario_name: str, ids: MessageIds
    ) -> tuple[Step, int | None]:
        """The step, and for a step that checks a session's message the index of that smtp step."""
        if kind == "smtp":
            return self.smtp_step(here, body, scenario_name), None
        if kind == "no_connection":
            return self.no_connection_step(here, body), None
        if kind == "queue_flush":
            host = self.known_role(body["host"], *here, "host")
            return QueueFlushStep(host=host, mark=self.at(*here[:-1])), None
        if kind == "fault":
            role = self.known_role(body["role"], *here, "role")
            return RoleFaultStep(role=role, action=body["action"], mark=self.at(*here[:-1])), None
        if kind == "dns_fault":
            return DnsFaultStep(name=self.fault_name(body["name"], (*here, "name")), answer=body["answer"],
                                rtype=body.get("type"), mark=self.at(*here[:-1])), None
        if kind == "dns_change":
            return self.dns_change_step(here, body), None
        source = self.message_source(kind, here, body, ids)
        message_of: str | None = body.get("message_of")
        if kind == "hop":
            return self.hop_step(here, body, message_of), source
        if kind == "delivery":
            return self.delivery_step(here, body, message_of), source
        if kind == "no_delivery":
            return self.no_delivery_step(here, body, message_of), source
        if kind == "bounce":
            return self.bounce_step(here, body, message_of), source
        if kind == "no_bounce":
            return self.no_bounce_step(here, body, message_of), source
        return self.queue_state_step(here, body, message_of), source

    def fault_name(self, text: str, path: JsonPath) -> str:
        """A dns_fault's name: a valid DNS name in a zone the scenario's server can serve, not the
        server's own zone (the harness asks it whether the server answers)."""
        try:
            name = dns.name.from_text(text, origin=dns.name.root).canonicalize()
        except dns.exception.DNSException as exc:
            raise self.fail(self.at(*path), f"invalid DNS name {text!r}: {exc}") from None
        if not all(_FAULT_LABEL.fullmatch(label) for label in name.labels[:-1]):
            # The name goes into NSD's and dnsdist's configuration files: nothing there needs quoting.
            raise self.fail(self.at(*path), f"{text!r}: a dns_fault name may only have letters, digits, "
                            "'-' and '_' in its labels")
        if len(name.labels) < 3:
            raise self.fail(self.at(*path), f"{text!r} is a top-level domain: a dns_fault names a domain "
                            "(e.g. example.test) or a name below one")
        if name == HARNESS_NAME or name.is_subdomain(HARNESS_NAME):
            raise self.fail(self.at(*path), f"{text!r} is in {HARNESS_NAME}, the DNS server's own zone, "
                            "which the harness needs to see the server answer")
        return name.to_text()

    def dns_change_step(self, here: JsonPath, body: dict[str, Any]) -> DnsChangeStep:
        replace = tuple(self.dns_record((*here, "set", i), rec) for i, rec in enumerate(body.get("set", [])))
        remove = tuple((self.record_name(rec["name"], (*here, "remove", i, "name")), rec["type"])
                       for i, rec in enumerate(body.get("remove", [])))
        self.change_records(replace, remove, here)
        return DnsChangeStep(replace=replace, remove=remove, mark=self.at(*here[:-1]))

    def message_source(self, kind: str, here: JsonPath, body: dict[str, Any], ids: MessageIds) -> int:
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

    def seconds(self, body: dict[str, Any], key: str, default: float) -> float:
        # The schema bounds the value (0 < s <= MAX_SECONDS).
        return float(body.get(key, default))

    # --- smtp ---

    def smtp_step(self, here: JsonPath, body: dict[str, Any], scenario_name: str) -> SmtpSessionStep:
        rcpt_raw: str | list[str] = body["rcpt_to"]
        if isinstance(rcpt_raw, str):
            rcpt_to: tuple[str, ...] = (rcpt_raw,)
            self.check(address_problem(rcpt_raw, "rcpt_to"), *here, "rcpt_to")
        else:
            rcpt_to = tuple(rcpt_raw)
            for i, rcpt in enumerate(rcpt_to):
                self.check(address_problem(rcpt, "rcpt_to"), *here, "rcpt_to", i)
        ehlo: str = body.get("ehlo", DEFAULT_EHLO)
        self.check(ehlo_problem(ehlo), *here, "ehlo")
        mail_from: str = body["mail_from"]
        self.check(address_problem(mail_from, "mail_from"), *here, "mail_from")
        raw_expect: dict[str, Any] = body.get("expect", {})
        expect, expect_rcpt = self.expectations((*here, "expect"), raw_expect, rcpt_to)
        starttls: bool = body.get("starttls", False)
        expect_tls = self.tls_expectation((*here, "expect", "tls"), raw_expect["tls"]) if "tls" in raw_expect else None
        if not starttls:
            # Either would only ever fail "not reached": say why now.
            for key in ("starttls", "tls"):
                if key in raw_expect:
                    raise self.fail(self.at_key(*here, "expect", key), f"expect.{key} needs starttls: true in "
                                    "the step: without it the client never sends STARTTLS")
        return SmtpSessionStep(
            host=self.known_role(body["host"], *here, "host"),
            ehlo=ehlo,
            mail_from=mail_from,
            rcpt_to=rcpt_to,
            message=build_message(self, here, body.get("message"), scenario_name),
            expect=expect,
            expect_rcpt=expect_rcpt,
            mark=self.at(*here[:-1]),
            id=body.get("id"),
            timeout_s=self.seconds(body, "timeout", DEFAULT_TIMEOUT_S),
            # The schema checks each is one RFC 5321 esmtp-param (keyword or keyword=value).
            mail_options=tuple(body.get("mail_options", ())),
            rcpt_options=tuple(body.get("rcpt_options", ())),
            starttls=starttls,
            expect_tls=expect_tls,
        )

    def tls_expectation(self, path: JsonPath, spec: str | dict[str, Any]) -> TlsExpectation:
        if isinstance(spec, str):
            return TlsExpectation(outcome=spec, mark=self.at(*path))
        reason: str | None = spec.get("reason")
        if reason is not None:
            self.regex(reason, *path, "reason")
        return TlsExpectation(outcome=spec["outcome"], reason=reason, mark=self.at(*path),
                              version=spec.get("version"), verified=spec.get("verified"), dane=spec.get("dane"))

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

    def reply(self, spec: int | str | dict[str, Any], path: JsonPath) -> ReplyExpectation:
        mark = self.at(*path)
        if isinstance(spec, str):
            # The schema allows only NO_REPLY_OUTCOMES here: a stage that ends without any reply.
            return ReplyExpectation(code=None, no_reply=spec, mark=mark)
        if isinstance(spec, int):
            return ReplyExpectation(code=spec, mark=mark)
        text: str | None = spec.get("text")
        if text is not None:
            self.regex(text, *path, "text")
        return ReplyExpectation(code=spec["code"], enhanced=spec.get("enhanced"), text=text, mark=mark)

    # --- mailboxes ---

    def mailbox(self, body: dict[str, Any], here: JsonPath) -> str:
        mailbox: str = body["mailbox"]
        self.check(mailbox_problem(mailbox), *here, "mailbox")
        return mailbox

    def delivery_step(self, here: JsonPath, body: dict[str, Any], message_of: str | None) -> DeliveryStep:
        checks = tuple(
            HeaderCheck(name=name, pattern=self.regex(pattern, *here, "headers", name))
            for name, pattern in body.get("headers", {}).items()
        )
        return DeliveryStep(
            host=self.known_role(body["host"], *here, "host"),
            mailbox=self.mailbox(body, here),
            within_s=self.seconds(body, "within", DEFAULT_DELIVERY_WITHIN_S),
            headers=checks,
            body_intact=body.get("body_intact", True),
            mark=self.at(*here[:-1]),
            message_of=message_of,
            # The schema refuses 0 (that is a no_delivery step).
            copies=body.get("copies"),
        )

    def no_delivery_step(
        self, here: JsonPath, body: dict[str, Any], message_of: str | None
    ) -> NoDeliveryStep:
        return NoDeliveryStep(
            host=self.known_role(body["host"], *here, "host"),
            mailbox=self.mailbox(body, here) if "mailbox" in body else None,
            within_s=self.seconds(body, "within", DEFAULT_NO_DELIVERY_WITHIN_S),
            mark=self.at(*here[:-1]),
            message_of=message_of,
        )

    def bounce_step(self, here: JsonPath, body: dict[str, Any], message_of: str | None) -> BounceStep:
        checks = tuple(
            DsnCheck(field=DSN_FIELDS[key], pattern=self.regex(pattern, *here, "expect", key))
            for key, pattern in body.get("expect", {}).items()
        )
        return BounceStep(
            host=self.known_role(body["host"], *here, "host"),
            mailbox=self.mailbox(body, here),
            within_s=self.seconds(body, "within", DEFAULT_BOUNCE_WITHIN_S),
            checks=checks,
            mark=self.at(*here[:-1]),
            message_of=message_of,
        )

    def no_bounce_step(self, here: JsonPath, body: dict[str, Any], message_of: str | None) -> NoBounceStep:
        return NoBounceStep(
            host=self.known_role(body["host"], *here, "host"),
            mailbox=self.mailbox(body, here),
            within_s=self.seconds(body, "within", DEFAULT_NO_BOUNCE_WITHIN_S),
            mark=self.at(*here[:-1]),
            message_of=message_of,
        )

    # --- hops and connections ---

    def hop_step(self, here: JsonPath, body: dict[str, Any], message_of: str | None) -> HopStep:
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
        if receiver not in self.roles and receiver != UNREACHABLE_ROLE and not _is_ipv4(receiver):
            raise self.fail(mark, f"{receiver!r} on the right of hop {hop!r} is neither a role "
                            f"({roles}) nor an IPv4 address")
        if not {"expect", "tls", "cleartext"} & body.keys():
            raise self.fail(self.at(*here), f"hop {hop!r} checks nothing: give it expect (replies per stage), "
                            "tls (what the hop did about TLS) or cleartext")
        if "tls" in body.get("expect", {}):
            raise self.fail(self.at_key(*here, "expect", "tls"), "expect.tls is for smtp steps (the client's "
                            "own handshake): a hop's TLS is checked by the hop step's own tls key")
        expect, expect_rcpt = self.expectations((*here, "expect"), body.get("expect", {}), None)
        tls = self.tls_expectation((*here, "tls"), body["tls"]) if "tls" in body else None
        if tls is not None and tls.outcome != "established" and tls.version:
            raise self.fail(self.at_key(*here, "tls"), f"tls {tls.outcome!r} with a version: a version is "
                            "known only for an established session")
        if tls is not None and tls.outcome == "none" and (tls.verified is not None or tls.dane is not None):
            key = "dane" if tls.verified is None else "verified"
            raise self.fail(self.at_key(*here, "tls"), f"tls 'none' with {key}: without a handshake there "
                            "is no certificate to verify")
        return HopStep(
            hop=hop,
            session=body.get("session"),
            expect=expect,
            expect_rcpt=expect_rcpt,
            within_s=self.seconds(body, "within", DEFAULT_HOP_WITHIN_S),
            mark=self.at(*here[:-1]),
            message_of=message_of,
            tls=tls,
            cleartext=body.get("cleartext"),
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
            within_s=self.seconds(body, "within", DEFAULT_NO_CONNECTION_WITHIN_S),
            mark=self.at(*here[:-1]),
        )

    # --- queues ---

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
            within_s=self.seconds(body, "within", DEFAULT_QUEUE_STATE_WITHIN_S),
            mark=self.at(*here[:-1]),
            message_of=message_of,
            # The schema allows QUEUE_SUBJECTS only.
            of=body.get("of", "message"),
        )


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True
