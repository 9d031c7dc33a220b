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


def find_stage(transcript: Transcript, stage: Stage, recipient: str | None = None) -> Exchange | None:
    if stage is Stage.EHLO:
        return transcript.first("EHLO") or transcript.first("HELO")
    if stage is Stage.RCPT:
        wanted = (recipient or "").lower()
        return next((e for e in transcript.all("RCPT") if command_address(e.sent).lower() == wanted), None)
    return transcript.first(stage.value)


def _last_reached(transcript: Transcript) -> str:
    if not transcript.exchanges:
        return "nothing was exchanged"
    last = transcript.exchanges[-1]
    return f"the session ended after {last.command} {last.reply_str()}"


def expectations_of(expect: Mapping[Stage, ReplyExpectation], expect_rcpt: Mapping[str, ReplyExpectation],
                    recipients: Sequence[str]) -> list[tuple[Stage, str | None, ReplyExpectation]]:
    """(stage, recipient, expectation) in protocol order."""
    out: list[tuple[Stage, str | None, ReplyExpectation]] = []
    for stage in Stage:
        if stage is Stage.RCPT:
            for rcpt in recipients:
                exp = expect_rcpt.get(rcpt) or expect.get(Stage.RCPT)
                if exp is not None:
                    out.append((stage, rcpt, exp))
        elif stage in expect:
            out.append((stage, None, expect[stage]))
    return out


def command_address(sent: str | None) -> str:
    """The address of ``MAIL FROM:<a> SIZE=1`` / ``RCPT TO:<b> ORCPT=...``."""
    return address_in(sent)


def recipients_in(transcript: Transcript) -> list[str]:
    """The recipients a session named, in order (for hops, whose recipients the scenario did not send)."""
    return [command_address(e.sent) for e in transcript.all("RCPT")]


def check_stages(index: int, kind: str, expect: Mapping[Stage, ReplyExpectation],
                 expect_rcpt: Mapping[str, ReplyExpectation], recipients: Sequence[str], transcript: Transcript,
                 mark: Mark) -> list[Failure]:
    """A stage never reached is a failure "not reached", never a pass."""
    failures: list[Failure] = []
    for stage, rcpt, exp in expectations_of(expect, expect_rcpt, recipients):
        label = stage.value if rcpt is None else f"RCPT <{rcpt}>"
        exchange = find_stage(transcript, stage, rcpt)
        if exchange is None:
            failures.append(Failure(index, kind, label, str(exp), f"not reached ({_last_reached(transcript)})",
                                    exp.mark or mark, transcript.hop, transcript.session))
            continue
        if not reply_matches(exp, exchange):
            failures.append(Failure(index, kind, label, str(exp), exchange.reply_str(), exp.mark or mark,
                                    transcript.hop, transcript.session))
    return failures


def check_session(index: int, step: SmtpSessionStep, transcript: Transcript) -> list[Failure]:
    failures = check_stages(index, "smtp", step.expect, step.expect_rcpt, step.rcpt_to, transcript, step.mark)
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
