"""DSN parsing against a bounce Postfix really sent (captured from scenario 09's relay)."""

from __future__ import annotations

from pathlib import Path

from harness.observe.dsn import parse_dsn, unmatched_checks

FIXTURES = Path(__file__).parent / "fixtures" / "dsn"
ORIGINAL_ID = "<a9030d10-e83d-4de6-bde9-de189cd5d8d1@origin.test>"


def test_postfix_null_mx_bounce_is_parsed() -> None:
    status = parse_dsn((FIXTURES / "postfix-nullmx.eml").read_bytes())
    assert status is not None
    assert status.per_message["Reporting-MTA"] == "dns; relay.origin.test"
    (rcpt,) = status.recipients
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.0"
    assert rcpt["Final-Recipient"] == "rfc822; someone@nullmx.test"
    assert rcpt["Diagnostic-Code"] == "X-Postfix; Domain nullmx.test does not accept mail (nullMX)"
    assert status.about(ORIGINAL_ID)
    assert not status.about("<other@origin.test>")


def test_checks_hold_together_on_one_recipient() -> None:
    status = parse_dsn((FIXTURES / "postfix-nullmx.eml").read_bytes())
    assert status is not None
    assert unmatched_checks(status, [("Action", "^failed$"), ("Status", r"^5\.1"), ("Reporting-MTA", "relay")]) == []
    assert unmatched_checks(status, [("Action", "^delayed$"), ("Status", r"^5\.")]) == ["Action /^delayed$/"]
    assert unmatched_checks(status, [("Remote-MTA", "nomail")]) == ["Remote-MTA /nomail/"]


def test_a_plain_message_is_not_a_dsn() -> None:
    assert parse_dsn(b"Subject: hi\nMessage-ID: <x@y>\n\nhello\n") is None
    multipart_mixed = (b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nx\n--b--\n")
    assert parse_dsn(multipart_mixed) is None


def test_folded_diagnostic_code_is_unfolded() -> None:
    raw = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
           b"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; r.test\n\n"
           b"Final-Recipient: rfc822; a@b.test\nAction: failed\nStatus: 5.3.2\n"
           b"Diagnostic-Code: smtp; 521 5.3.2 Service\n    currently unavailable\n\n--b--\n")
    status = parse_dsn(raw)
    assert status is not None
    assert status.recipients[0]["Diagnostic-Code"] == "smtp; 521 5.3.2 Service currently unavailable"
    assert status.original_message_id is None
