"""The verify phase: each step of a scenario in order, observations recorded into the result.
Expectation failures are results; only infrastructure trouble raises."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from harness.expect.results import FAILED, PASSED, SKIPPED, Failure, ScenarioResult, StepOutcome
from harness.expect.smtp import check_session, check_stages, recipients_in, session_summary
from harness.observe.dsn import DeliveryStatus, parse_dsn, unmatched_checks
from harness.observe.mailbox import wait_for_message
from harness.observe.maildir import MAIL_ROOT, DeliveredMessage, header_value, messages_in, split_message
from harness.observe.polling import poll_until
from harness.observe.queue import find_queued, queue_of
from harness.scenario.model import (
    BounceStep,
    DeliveryStep,
    HopStep,
    NoConnectionStep,
    NoDeliveryStep,
    QueueFlushStep,
    QueueStateStep,
    Scenario,
    SmtpSessionStep,
    Step,
    StepOverride,
)
from harness.smtp.client import run_session
from harness.smtp.message import render_message
from harness.smtp.transcript import Transcript
from harness.topology.topology import Topology


@dataclass(frozen=True)
class ConnectionAttempt:
    """A TCP connection (or only its SYN) seen on the wire, named by role where known."""

    source: str  # role, or address when unknown
    destination: str
    destination_address: str
    port: int
    at_s: float


class HopSource(Protocol):
    """What the hop captures offer the verify phase (decoded on demand, so each call is current)."""

    def sessions(self) -> list[Transcript]: ...

    def attempts(self) -> list[ConnectionAttempt]: ...


class NoHops:
    """Where no capture runs: no hop is ever seen."""

    def sessions(self) -> list[Transcript]:
        return []

    def attempts(self) -> list[ConnectionAttempt]:
        return []


Outcome = tuple[list[Failure], str]


class StepRunner:
    def __init__(self, topology: Topology, scenario: Scenario, result: ScenarioResult, started: float,
                 *, mta: str, hops: HopSource | None = None,
                 domain_addresses: Callable[[str], set[str]] | None = None) -> None:
        self.topology = topology
        self.scenario = scenario
        self.result = result
        self.started = started
        self.mta = mta
        self.hops: HopSource = hops or NoHops()
        self.domain_addresses = domain_addresses or (lambda domain: set())
        self.sessions: list[tuple[SmtpSessionStep, Transcript]] = []
        self.session_counter: dict[str, int] = {}

    def clock(self) -> float:
        return time.monotonic() - self.started

    def run_all(self) -> None:
        for index, step, override in self.scenario.steps_for(self.mta):
            if override is not None and override.skip:
                self.result.steps.append(StepOutcome(index, step.kind, SKIPPED, f"skipped on {self.mta}",
                                                     override.reason))
                continue
            failures, summary = self.run_step(index, step)
            self.result.failures.extend(failures)
            self.result.steps.append(StepOutcome(index, step.kind, FAILED if failures else PASSED, summary,
                                                 _reason(override)))

    def run_step(self, index: int, step: Step) -> Outcome:
        handlers: dict[type, Callable[[int, Step], Outcome]] = {
            SmtpSessionStep: self.smtp, DeliveryStep: self.delivery, NoDeliveryStep: self.no_delivery,
            HopStep: self.hop, NoConnectionStep: self.no_connection, BounceStep: self.bounce,
            QueueFlushStep: self.queue_flush, QueueStateStep: self.queue_state,
        }
        return handlers[type(step)](index, step)

    # -- the client's own sessions -----------------------------------------------------------------
    def smtp(self, index: int, step: Step) -> Outcome:
        assert isinstance(step, SmtpSessionStep)
        hop = f"client->{step.host}"
        number = self.session_counter.get(hop, 0) + 1
        self.session_counter[hop] = number
        domain = step.mail_from.rpartition("@")[2] or "mailflow-harness.test"
        message_bytes, message_id = render_message(step.message, mail_from=step.mail_from,
                                                   rcpt_to=step.rcpt_to, domain=domain)
        transcript = asyncio.run(run_session(
            self.topology.address(step.host), 25, step, hop=hop, session=number, clock=self.clock,
            message_bytes=message_bytes, message_id=message_id))
        self.sessions.append((step, transcript))
        self.result.exchanges.extend(transcript.exchanges)
        return check_session(index, step, transcript), f"{hop} session {number}: {session_summary(transcript)}"

    def _session_for(self, message_of: str | None) -> Transcript:
        for step, transcript in reversed(self.sessions):
            if message_of is None or step.id == message_of:
                return transcript
        raise AssertionError(f"the loader guarantees an earlier smtp session {message_of or ''}")

    def _message_id(self, message_of: str | None) -> str:
        """The Message-ID of the message a step is about (the client always renders one)."""
        message_id = self._session_for(message_of).message_id
        assert message_id is not None
        return message_id

    # -- mailboxes ------------------------------------------------------------------------------------
    def delivery(self, index: int, step: Step) -> Outcome:
        assert isinstance(step, DeliveryStep)
        transcript = self._session_for(step.message_of)
        assert transcript.message_id is not None and transcript.message_bytes is not None
        found = wait_for_message(self.topology.hosts[step.host], transcript.message_id, step.mailbox,
                                 step.within_s)
        where = f"{step.mailbox} on {step.host}"
        if not found:
            observed = f"not delivered within {step.within_s:g} s{_eod_note(transcript)}"
            return [Failure(index, "delivery", None, f"message {transcript.message_id} in {where}", observed,
                            step.mark)], observed
        message = found[0]
        failures = self._check_delivered(index, step, message, transcript.message_bytes)
        return failures, f"delivered to {where} ({message.path})"

    def _check_delivered(self, index: int, step: DeliveryStep, message: DeliveredMessage, sent: bytes
                         ) -> list[Failure]:
        failures = []
        for check in step.headers:
            value = header_value(message.raw, check.name)
            if value is None or re.search(check.pattern, value) is None:
                failures.append(Failure(index, "delivery", None, f"header {check.name} matching /{check.pattern}/",
                                        f"{check.name}: {value}" if value is not None else f"no {check.name} header",
                                        step.mark))
        if step.body_intact:
            sent_body = split_message(sent)[1]
            got_body = split_message(message.raw)[1]
            if sent_body != got_body:
                failures.append(Failure(index, "delivery", None, "body byte for byte as sent",
                                        _first_difference(sent_body, got_body), step.mark))
        return failures

    def no_delivery(self, index: int, step: Step) -> Outcome:
        assert isinstance(step, NoDeliveryStep)
        found = wait_for_message(self.topology.hosts[step.host], self._message_id(step.message_of),
                                 step.mailbox, step.within_s)
        where = f"{step.mailbox or 'any mailbox'} on {step.host}"
        if found:
            observed = f"delivered to {found[0].mailbox} on {step.host} ({found[0].path})"
            return [Failure(index, "no_delivery", None, f"no copy in {where} within {step.within_s:g} s",
                            observed, step.mark)], observed
        return [], f"nothing in {where} after {step.within_s:g} s"

    def bounce(self, index: int, step: Step) -> Outcome:
        assert isinstance(step, BounceStep)
        message_id = self._message_id(step.message_of)
        host = self.topology.hosts[step.host]
        found: list[DeliveryStatus] = []

        def probe() -> bool:
            found.clear()
            for m in messages_in(step.host, host.read_tree(MAIL_ROOT)):
                if m.mailbox != step.mailbox.lower():
                    continue
                status = parse_dsn(m.raw)
                if status is not None and (status.about(message_id) or message_id.encode() in m.raw):
                    found.append(status)
            return bool(found)

        poll_until(step.within_s, probe)
        expected = "a DSN about " + message_id + (" with " + ", ".join(
            f"{c.field} /{c.pattern}/" for c in step.checks) if step.checks else "")
        if not found:
            observed = f"no DSN about the message in {step.mailbox} on {step.host} within {step.within_s:g} s"
            return [Failure(index, "bounce", None, expected, observed, step.mark)], observed
        checks = [(c.field, c.pattern) for c in step.checks]
        for status in found:
            if not unmatched_checks(status, checks):
                return [], f"DSN in {step.mailbox}: {status.summary()}"
        status = found[0]
        missing = unmatched_checks(status, checks)
        observed = f"DSN {status.summary()} (not matching: {', '.join(missing)})"
        return [Failure(index, "bounce", None, expected, observed, step.mark)], observed

    # -- queues ----------------------------------------------------------------------------------------
    def queue_flush(self, index: int, step: Step) -> Outcome:
        assert isinstance(step, QueueFlushStep)
        queue_of(self.topology.hosts[step.host]).flush(self.topology.hosts[step.host])
        return [], f"asked {step.host} to retry its queue"

    def queue_state(self, index: int, step: Step) -> Outcome:
        assert isinstance(step, QueueStateStep)
        message_id = self._message_id(step.message_of)
        host = self.topology.hosts[step.host]
        last: list[str] = []

        def probe() -> bool:
            queued = find_queued(host, message_id)
            last[:] = [q.summary() for q in queued]
            if step.state == "absent":
                return not queued
            for q in queued:
                state_ok = step.state == "queued" or q.state == step.state
                reason_ok = step.reason is None or any(re.search(step.reason, r) for r in q.reasons)
                if state_ok and reason_ok:
                    return True
            return False

        ok = poll_until(step.within_s, probe, interval=0.5)
        expected = f"message {step.state} in {step.host}'s queue" + (f", reason /{step.reason}/" if step.reason
                                                                   else "")
        observed = "; ".join(last) if last else "not in the queue"
        if ok:
            return [], f"{step.host} queue: {observed}"
        return [Failure(index, "queue_state", None, expected, observed, step.mark)], observed

    # -- hops between hosts ----------------------------------------------------------------------------
    def _hop_session(self, hop: str, number: int) -> Transcript | None:
        on_hop = [t for t in self.hops.sessions() if t.hop == hop]
        return on_hop[number - 1] if len(on_hop) >= number else None

    def hop(self, index: int, step: Step) -> Outcome:
        assert isinstance(step, HopStep)
        seen: list[Transcript] = []

        def probe() -> bool:
            transcript = self._hop_session(step.hop, step.session)
            seen[:] = [transcript] if transcript is not None else []
            if transcript is None:
                return False
            return transcript.closed or not check_stages(index, "hop", step.expect, step.expect_rcpt,
                                                         recipients_in(transcript), transcript, step.mark)

        poll_until(step.within_s, probe, interval=0.25)
        if not seen:
            observed = f"no session {step.session} on {step.hop} within {step.within_s:g} s"
            hops = sorted({t.hop for t in self.hops.sessions()})
            observed += f" (hops seen: {', '.join(hops) or 'none'})"
            return [Failure(index, "hop", None, f"session {step.session} on {step.hop}", observed, step.mark,
                            step.hop, step.session)], observed
        transcript = seen[0]
        failures = check_stages(index, "hop", step.expect, step.expect_rcpt, recipients_in(transcript),
                                transcript, step.mark)
        return failures, f"{step.hop} session {step.session}: {session_summary(transcript)}"

    def no_connection(self, index: int, step: Step) -> Outcome:
        assert isinstance(step, NoConnectionStep)
        if step.target is not None:
            addresses = {self.topology.address(step.target)}
            what = step.target
        else:
            assert step.domain is not None
            addresses = self.domain_addresses(step.domain)
            what = f"any address serving {step.domain}" if addresses else \
                f"anything (no address serves {step.domain})"
        offending: list[ConnectionAttempt] = []

        def probe() -> bool:
            # True as soon as an offending attempt is on the wire: no need to wait out the bound.
            offending[:] = [a for a in self.hops.attempts() if a.source == step.source
                            and (not addresses or a.destination_address in addresses)]
            return bool(offending)

        poll_until(step.within_s, probe, interval=0.25)
        expected = f"no connection from {step.source} to {what} within {step.within_s:g} s"
        if offending:
            first = offending[0]
            observed = (f"{len(offending)} connection(s), first {step.source}->{first.destination} "
                        f"({first.destination_address}:{first.port}) at {first.at_s:.3f}s")
            return [Failure(index, "no_connection", None, expected, observed, step.mark)], observed
        return [], f"no connection from {step.source} to {what}"


def _reason(override: StepOverride | None) -> str | None:
    return override.reason if override is not None else None


def _eod_note(transcript: Transcript) -> str:
    eod = transcript.first("END-OF-DATA")
    if eod is None:
        return " (the session never reached END-OF-DATA)"
    if eod.code != 250:
        return f" (END-OF-DATA was {eod.reply_str()})"
    return ""


def _first_difference(expected: bytes, observed: bytes) -> str:
    exp_lines = expected.split(b"\n")
    obs_lines = observed.split(b"\n")
    for number, (a, b) in enumerate(zip(exp_lines, obs_lines, strict=False), start=1):
        if a != b:
            return f"body line {number} differs: sent {a!r}, delivered {b!r}"
    return f"body has {len(obs_lines)} lines, sent {len(exp_lines)}"


