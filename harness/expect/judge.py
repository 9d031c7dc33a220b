"""Judging: a step's expectations against what was observed. Pure: observations in, failures out.

Every verdict here is about the scenario's own message, because every observation is (see
``harness.observe.observations``). Each judge says what would have made it pass; the mutation test
(tests/unit/test_mutation.py) proves that changing any expectation makes it fail.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from harness.expect.results import Failure
from harness.expect.smtp import check_session, check_stages
from harness.observe.dsn import unmatched_fields
from harness.observe.maildir import header_value, split_message
from harness.observe.observations import (
    BounceObservation,
    ConnectionObservation,
    FaultObservation,
    FlushObservation,
    HopObservation,
    MailboxObservation,
    Observation,
    QueueObservation,
    SessionObservation,
)
from harness.scenario.model import (
    BounceStep,
    DeliveryStep,
    DnsChangeStep,
    DnsFaultStep,
    DsnCheck,
    HopStep,
    NoBounceStep,
    NoConnectionStep,
    NoDeliveryStep,
    QueueFlushStep,
    QueueStateStep,
    RoleFaultStep,
    SmtpSessionStep,
    Step,
    TlsExpectation,
)
from harness.smtp.transcript import Transcript, outcome_word, tls_version

__all__ = ["body_difference", "judge", "queue_entry_matches"]


def judge(index: int, step: Step, observation: Observation) -> list[Failure]:
    """The failures of ``step`` (1-based ``index``) given ``observation``; [] when it holds."""
    judges: dict[type, Callable[[int, Any, Any], list[Failure]]] = {
        SmtpSessionStep: _smtp, HopStep: _hop, DeliveryStep: _delivery, NoDeliveryStep: _no_delivery,
        BounceStep: _bounce, NoBounceStep: _no_bounce, QueueStateStep: _queue_state,
        NoConnectionStep: _no_connection, QueueFlushStep: _flush, RoleFaultStep: _fault,
        DnsFaultStep: _dns_fault, DnsChangeStep: _dns_change,
    }
    return judges[type(step)](index, step, observation)


def _smtp(index: int, step: SmtpSessionStep, obs: SessionObservation) -> list[Failure]:
    transcript = Transcript(obs.hop, obs.session, list(obs.exchanges))
    return check_session(index, step, transcript)


def _hop(index: int, step: HopStep, obs: HopObservation) -> list[Failure]:
    if obs.matched_by is None and obs.could_be:
        return [Failure(index, "hop", None, f"the message's transaction on {step.hop}",
                        f"not known: {', '.join(obs.could_be)} could each be this message's (another message "
                        "of the scenario was in flight, and nothing on the wire names the message: no DATA, or "
                        "no MAIL at all), and they differ; name one with `session:` or send the messages one at "
                        "a time", step.mark, step.hop, step.session)]
    if obs.matched_by is None:
        where = f"session {step.session} on {step.hop}" if step.session else f"the message's transaction on {step.hop}"
        seen = f"hops seen: {', '.join(obs.hops_seen) or 'none'}"
        others = f"; other transactions on {step.hop}: " + ", ".join(
            f"session {s} #{n} ({mid or 'no Message-ID'})" for s, n, mid in obs.others) if obs.others else ""
        return [Failure(index, "hop", None, where, f"not seen ({seen}{others})", step.mark, step.hop, step.session)]
    transcript = Transcript(obs.hop, obs.session or 0, list(obs.exchanges), closed=obs.closed)
    failures = check_stages(index, "hop", step.expect, step.expect_rcpt, transcript, step.mark)
    if step.tls is not None:
        failures += _hop_tls(index, step, step.tls, obs)
    if step.cleartext is False and obs.in_clear:
        failures.append(Failure(index, "hop", "MAIL", "no MAIL in clear on the hop",
                                "MAIL in clear on session(s) " + ", ".join(map(str, obs.in_clear)), step.mark,
                                step.hop, obs.session))
    if step.cleartext is True and obs.transaction is None:
        failures.append(Failure(index, "hop", "MAIL", "the message's transaction in clear",
                                f"no transaction in clear ({obs.matched_by})", step.mark, step.hop, obs.session))
    return failures


def _hop_tls(index: int, step: HopStep, exp: TlsExpectation, obs: HopObservation) -> list[Failure]:
    """The hop's handshake as the wire shows it (outcome, version), and as the sending MTA logged it
    for the message (whether it verified the certificate, and whether by DANE)."""
    exchange = obs.tls
    log = obs.tls_log
    seen = "none" if exchange is None else outcome_word(exchange)
    account = "no STARTTLS on the session" if exchange is None else exchange.text
    if log is not None:
        account += f"; {obs.hop.split('->')[0]}'s log: {log.line}"
    problems = []
    if seen != exp.outcome:
        problems.append(f"TLS {seen}")
    if exp.version is not None:
        on_wire = tls_version(exchange.text) if exchange is not None else None
        if on_wire != exp.version and (log is None or log.version != exp.version):
            problems.append(f"not {exp.version}")
    if exp.verified is not None:
        if log is None:
            problems.append("nothing in the sender's log about the message's delivery (only a message the "
                            "client handed to the sender can be found there)")
        elif (log.trust == "verified") != exp.verified:
            problems.append(f"the sender's log says {log.trust or 'no TLS'}")
    if exp.dane is not None:
        if log is None:
            problems.append("nothing in the sender's log about the message's delivery")
        elif log.dane is None:
            problems.append("the sender's log does not say how it matched the certificate (Postfix: "
                            "smtp_tls_loglevel needs certmatch)")
        elif log.dane != exp.dane:
            problems.append("the sender's log says it matched a TLSA record" if log.dane else
                            f"the sender's log says no TLSA record matched (trust: {log.trust or 'no TLS'})")
    if exp.reason is not None and re.search(exp.reason, account) is None:
        problems.append(f"no /{exp.reason}/ in it")
    if not problems:
        return []
    return [Failure(index, "hop", "TLS", str(exp), f"{'; '.join(problems)}: {account}", exp.mark or step.mark,
                    step.hop, obs.session)]


def _delivery(index: int, step: DeliveryStep, obs: MailboxObservation) -> list[Failure]:
    where = f"{step.mailbox} on {step.host}"
    message = obs.message
    if not obs.copies:
        note = ""
        if message.end_of_data is None:
            note = " (the client's session never reached END-OF-DATA)"
        elif not message.accepted:
            note = f" (END-OF-DATA was {message.end_of_data.reply_str()})"
        return [Failure(index, "delivery", None, f"message {message.message_id} in {where}",
                        f"not delivered within {step.within_s:g} s{note}", step.mark)]
    failures: list[Failure] = []
    if step.copies is not None and (len(obs.copies) != step.copies or obs.still_queued):
        # A copy still queued somewhere when the bound ran out may yet arrive: "exactly N" is not shown.
        pending = f"; still queued: {', '.join(obs.still_queued)}" if obs.still_queued else ""
        failures.append(Failure(index, "delivery", None, f"{step.copies} cop{'y' if step.copies == 1 else 'ies'}"
                                f" in {where}", f"{len(obs.copies)}: " + ", ".join(c.path for c in obs.copies)
                                + pending, step.mark))
    # Every copy as the step says, not only the first: with two, the second may be the damaged one.
    for copy in obs.copies:
        which = f" ({copy.path})" if len(obs.copies) > 1 else ""
        for check in step.headers:
            value = header_value(copy.raw, check.name)
            if value is None or re.search(check.pattern, value) is None:
                seen = f"{check.name}: {value}" if value is not None else f"no {check.name} header"
                failures.append(Failure(index, "delivery", None, f"header {check.name} matching /{check.pattern}/",
                                        seen + which, step.mark))
        if step.body_intact:
            difference = body_difference(split_message(message.content)[1], split_message(copy.raw)[1])
            if difference is not None:
                failures.append(Failure(index, "delivery", None, "body byte for byte as sent", difference + which,
                                        step.mark))
    return failures


def _no_delivery(index: int, step: NoDeliveryStep, obs: MailboxObservation) -> list[Failure]:
    if not obs.copies:
        return []
    where = f"{step.mailbox or 'any mailbox'} on {step.host}"
    first = obs.copies[0]
    return [Failure(index, "no_delivery", None, f"no copy in {where} within {step.within_s:g} s",
                    f"delivered to {first.mailbox} on {step.host} ({first.path})", step.mark)]


# A bounce is a DSN saying delivery failed: a delay warning or a success notice (NOTIFY=DELAY, SUCCESS) is a
# DSN too, and a step that names no Action of its own must not pass on one.
_FAILED_ACTION = DsnCheck("Action", "^failed$")


def _bounce(index: int, step: BounceStep, obs: BounceObservation) -> list[Failure]:
    checks = step.checks if any(c.field == _FAILED_ACTION.field for c in step.checks) else \
        (_FAILED_ACTION, *step.checks)
    expected = f"a DSN about {obs.message_id} with " + ", ".join(f"{c.field} /{c.pattern}/" for c in checks)
    if not obs.dsns:
        return [Failure(index, "bounce", None, expected, f"no DSN about the message in {step.mailbox} on "
                        f"{step.host} within {step.within_s:g} s", step.mark)]
    best: list[str] | None = None
    for dsn in obs.dsns:
        missing = unmatched_fields(dsn.per_message, dsn.recipients, [(c.field, c.pattern) for c in checks])
        if not missing:
            return []
        if best is None or len(missing) < len(best):
            best = missing
    return [Failure(index, "bounce", None, expected,
                    f"DSN {obs.dsns[0].summary()} (not matching: {', '.join(best or [])})", step.mark)]


def _no_bounce(index: int, step: NoBounceStep, obs: BounceObservation) -> list[Failure]:
    if not obs.dsns:
        return []
    first = obs.dsns[0]
    return [Failure(index, "no_bounce", None, f"no DSN about {obs.message_id} in {step.mailbox} on {step.host} "
                    f"within {step.within_s:g} s", f"DSN ({first.about}): {first.summary()} ({first.path})",
                    step.mark)]


def queue_entry_matches(step: QueueStateStep, state: str, reasons: tuple[str, ...]) -> bool:
    state_ok = step.state == "queued" or state == step.state
    return state_ok and (step.reason is None or any(re.search(step.reason, r) for r in reasons))


def _queue_state(index: int, step: QueueStateStep, obs: QueueObservation) -> list[Failure]:
    subject = "the message" if step.of == "message" else "a DSN about the message"
    if step.state == "absent":
        if not obs.entries:
            return []
        return [Failure(index, "queue_state", None, f"{subject} not in {step.host}'s queue",
                        "; ".join(e.summary() for e in obs.entries), step.mark)]
    if any(queue_entry_matches(step, e.state, e.reasons) for e in obs.entries):
        return []
    expected = f"{subject} {step.state} in {step.host}'s queue" + (f", reason /{step.reason}/" if step.reason else "")
    observed = "; ".join(e.summary() for e in obs.entries) or "not in the queue"
    return [Failure(index, "queue_state", None, expected, observed, step.mark)]


def _no_connection(index: int, step: NoConnectionStep, obs: ConnectionObservation) -> list[Failure]:
    expected = f"no connection from {step.source} to {obs.what} within {step.within_s:g} s"
    if obs.lost and not obs.attempts:
        lost = ", ".join(f"{role}'s {n} packet(s)" for role, n in obs.lost)
        return [Failure(index, "no_connection", None, expected, f"unknown: the captures lost packets ({lost}: "
                        "tcpdump's ring was full), so none seen shows nothing", step.mark)]
    if not obs.attempts:
        return []
    first = obs.attempts[0]
    return [Failure(index, "no_connection", None, expected, f"{len(obs.attempts)} connection(s), first {step.source}->"
                    f"{first.destination} ({first.where()}) at {first.at_s:.3f}s",
                    step.mark)]


def _flush(index: int, step: QueueFlushStep, obs: FlushObservation) -> list[Failure]:
    return []


_FAULT_DONE = {"stop": "stopped", "start": "started and greeting", "restart": "restarted and greeting",
               "kill": "killed", "pause": "paused", "unpause": "unpaused and greeting",
               "disconnect": "disconnected from the network", "reconnect": "reconnected and greeting"}


def _dns_fault(index: int, step: DnsFaultStep, obs: FaultObservation) -> list[Failure]:
    if obs.error is None:
        return []
    what = f"{step.rtype} queries for {step.name}" if step.rtype else step.name
    return [Failure(index, "dns_fault", None, f"the DNS server answering {step.answer} for {what}",
                    obs.error, step.mark)]


def _dns_change(index: int, step: DnsChangeStep, obs: FaultObservation) -> list[Failure]:
    if obs.error is None:
        return []
    return [Failure(index, "dns_change", None, f"the DNS server answering the changed records ({obs.role})",
                    obs.error, step.mark)]


def _fault(index: int, step: RoleFaultStep, obs: FaultObservation) -> list[Failure]:
    if obs.error is None:
        return []
    return [Failure(index, "fault", None, f"{step.role} {_FAULT_DONE[step.action]}", obs.error, step.mark)]


def body_difference(sent: bytes, delivered: bytes) -> str | None:
    """Where two bodies first differ: line, column and a short excerpt of each side (a line split at
    998 characters by an MTA reads as "line 3, column 999", not as two 1,500-character lines)."""
    if sent == delivered:
        return None
    sent_lines, got_lines = sent.split(b"\n"), delivered.split(b"\n")
    for number, (a, b) in enumerate(zip(sent_lines, got_lines, strict=False), start=1):
        if a == b:
            continue
        col = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        start = max(0, col - 20)
        return (f"body line {number}, column {col + 1} differs (sent {len(a)} bytes, delivered {len(b)}): "
                f"sent {a[start:col + 20]!r}, delivered {b[start:col + 20]!r}")
    return f"body has {len(got_lines)} lines, sent {len(sent_lines)}"
