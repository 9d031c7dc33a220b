"""A client session's transcript against the step's stage expectations."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from harness.expect.results import Failure
from harness.scenario.model import Mark, ReplyExpectation, SmtpSessionStep, Stage, TlsExpectation
from harness.smtp.transcript import Exchange, Transcript, address_in, outcome_word, tls_outcome


def no_reply_outcome(exchange: Exchange) -> str | None:
    """How a stage ended without a reply, in the words scenarios use (NO_REPLY_OUTCOMES), from the text
    the client or the capture decoder recorded; None when there was a reply."""
    if exchange.code is not None:
        return None
    text = exchange.text.lower()
    if "refused" in text:
        return "refused"
    if "reset" in text:
        return "reset"
    if "no answer" in text or "timed out" in text:
        return "no-answer"
    return "closed"


def reply_matches(expectation: ReplyExpectation, exchange: Exchange) -> bool:
    if expectation.code is None:
        return no_reply_outcome(exchange) == expectation.no_reply
    if exchange.code != expectation.code:
        return False
    if expectation.enhanced is not None and exchange.enhanced != expectation.enhanced:
        return False
    return expectation.text is None or re.search(expectation.text, exchange.text) is not None


def _last_reached(transcript: Transcript) -> str:
    if not transcript.exchanges:
        return "nothing was exchanged"
    last = transcript.exchanges[-1]
    return f"the session ended after {last.command} {last.reply_str()}"


# (what the failure names, the expectation, the exchange that answers it or None: not reached)
Judged = tuple[str, ReplyExpectation, Exchange | None]


def stage_replies(expect: Mapping[Stage, ReplyExpectation], expect_rcpt: Mapping[str, ReplyExpectation],
                  transcript: Transcript, sent: Sequence[str] | None) -> list[Judged]:
    """Every reply an expectation judges, in protocol order. EHLO: every EHLO of the session (the one
    again after STARTTLS too), or the HELO when there was none. RCPT: with ``sent`` (the client's own
    recipients, named in that order) the i-th RCPT is the i-th recipient's, so two spellings of one
    address are two replies; without it (a hop, whose recipients are what the wire named) an address's
    expectation judges every RCPT naming it, case aside, and is "not reached" when none did, and
    ``rcpt:`` judges every other RCPT, and is "not reached" when the session named none."""
    out: list[Judged] = []
    for stage in Stage:
        if stage is Stage.RCPT:
            out += _rcpt_replies(expect.get(stage), expect_rcpt, transcript.all("RCPT"), sent)
        elif stage in expect:
            if stage is Stage.EHLO:
                replies = transcript.all("EHLO") or transcript.all("HELO")
            else:
                first = transcript.first(stage.value)
                replies = [first] if first is not None else []
            out += [(stage.value, expect[stage], e) for e in replies] or [(stage.value, expect[stage], None)]
    return out


def _rcpt_replies(generic: ReplyExpectation | None, expect_rcpt: Mapping[str, ReplyExpectation],
                  rcpts: Sequence[Exchange], sent: Sequence[str] | None) -> list[Judged]:
    if sent is not None:
        out: list[Judged] = []
        for i, rcpt in enumerate(sent):
            exp = expect_rcpt.get(rcpt) or generic
            reply = rcpts[i] if i < len(rcpts) and command_address(rcpts[i].sent).lower() == rcpt.lower() else None
            if exp is not None:
                out.append((f"RCPT <{rcpt}>", exp, reply))
        return out
    named = {a.lower() for a in expect_rcpt}
    out = []
    for address, exp in expect_rcpt.items():
        naming = [e for e in rcpts if command_address(e.sent).lower() == address.lower()]
        out += [(f"RCPT <{address}>", exp, e) for e in naming] or [(f"RCPT <{address}>", exp, None)]
    if generic is not None:
        others = [e for e in rcpts if command_address(e.sent).lower() not in named]
        out += [(f"RCPT <{command_address(e.sent)}>", generic, e) for e in others]
        if not rcpts:
            out.append((Stage.RCPT.value, generic, None))
    return out


def command_address(sent: str | None) -> str:
    """The address of ``MAIL FROM:<a> SIZE=1`` / ``RCPT TO:<b> ORCPT=...``."""
    return address_in(sent)


def check_stages(index: int, kind: str, expect: Mapping[Stage, ReplyExpectation],
                 expect_rcpt: Mapping[str, ReplyExpectation], transcript: Transcript, mark: Mark, *,
                 sent: Sequence[str] | None = None) -> list[Failure]:
    """A stage never reached is a failure "not reached", never a pass."""
    failures: list[Failure] = []
    for label, exp, exchange in stage_replies(expect, expect_rcpt, transcript, sent):
        if exchange is None:
            failures.append(Failure(index, kind, label, str(exp), f"not reached ({_last_reached(transcript)})",
                                    exp.mark or mark, transcript.hop, transcript.session))
        elif not reply_matches(exp, exchange):
            failures.append(Failure(index, kind, label, str(exp), exchange.reply_str(), exp.mark or mark,
                                    transcript.hop, transcript.session))
    return failures


def check_session(index: int, step: SmtpSessionStep, transcript: Transcript) -> list[Failure]:
    failures = check_stages(index, "smtp", step.expect, step.expect_rcpt, transcript, step.mark, sent=step.rcpt_to)
    if step.expect_tls is not None:
        failures.extend(check_tls(index, step.expect_tls, transcript, step.mark))
    return failures


def check_tls(index: int, expectation: TlsExpectation, transcript: Transcript, mark: Mark) -> list[Failure]:
    """The client's handshake (its TLS exchange) against ``expect.tls``; no handshake is "not reached"."""
    exchange = transcript.first("TLS")
    if exchange is None:
        return [Failure(index, "smtp", "TLS", str(expectation), f"not reached ({_last_reached(transcript)})",
                        expectation.mark or mark, transcript.hop, transcript.session)]
    matches = tls_outcome(exchange.text) == expectation.outcome and (
        expectation.reason is None or re.search(expectation.reason, exchange.text) is not None)
    if matches:
        return []
    return [Failure(index, "smtp", "TLS", str(expectation), exchange.text, expectation.mark or mark,
                    transcript.hop, transcript.session)]


def session_summary(transcript: Transcript) -> str:
    return ", ".join(f"{e.command} {outcome_word(e)}" for e in transcript.exchanges)
