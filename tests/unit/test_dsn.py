"""DSN parsing against bounces the project's MTAs really sent.

The fixtures in fixtures/dsn/ are copied unedited from the relay container's Maildir; how each was
produced (MTA version, recipient, ESMTP options) is in fixtures/dsn/README.md, and
tests/fixtures_tools/make_dsn_fixtures.py makes them again:
- postfix-nullmx.eml: Postfix 3.7.11, scenario 09 (null MX recipient accepted, then bounced);
- postfix-rcpt-550.eml: Postfix 3.7.11, RCPT TO a/b@example.test refused by mx with 550 5.1.1, sent
  with ENVID=envid-postfix-rcpt-550 RET=HDRS and ORCPT;
- exim-relay-521.eml: Exim 4.96, RCPT TO someone@sendonly.test whose MX greets with 521 (scenario 08);
  the relay offers no DSN extension, so no ENVID;
- opensmtpd-rcpt-550.eml: OpenSMTPD 6.8.0p2, RCPT TO a/b@example.test refused by mx with 550, sent
  with ENVID, which OpenSMTPD accepts but does not echo;
- opensmtpd-expired.eml: OpenSMTPD 6.8.0p2, someone@sendonly.test deferred until `queue ttl 60s`.
"""

from __future__ import annotations

import email
from email import policy
from pathlib import Path

import pytest

from harness.observe.dsn import is_dsn, parse_dsn, recipient_address, same_envelope_id, unmatched_checks

FIXTURES = Path(__file__).parent / "fixtures" / "dsn"
ORIGINAL_ID = "<a9030d10-e83d-4de6-bde9-de189cd5d8d1@origin.test>"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def without_parts(raw: bytes, *content_types: str) -> bytes:
    """``raw`` with its top-level parts of ``content_types`` removed: a real DSN that returns nothing."""
    msg = email.message_from_bytes(raw, policy=policy.compat32)
    payload = msg.get_payload()
    assert isinstance(payload, list)
    kept = [p for p in payload if not isinstance(p, str) and p.get_content_type() not in content_types]
    assert len(kept) < len(payload), f"no part of {content_types} to remove"
    msg.set_payload(kept)
    return msg.as_bytes()


RETURNED = ("message/rfc822", "text/rfc822-headers")

# (file, content type, Action, Status, Diagnostic-Code or None, Remote-MTA or None, Final-Recipient,
#  the returned Message-ID, Original-Envelope-Id or None, Original-Recipient addresses)
CASES = [
    ("postfix-nullmx.eml", "multipart/report", "failed", "5.1.0",
     "X-Postfix; Domain nullmx.test does not accept mail (nullMX)", None, "rfc822; someone@nullmx.test",
     ORIGINAL_ID, None, ("someone@nullmx.test",)),
    ("postfix-rcpt-550.eml", "multipart/report", "failed", "5.1.1",
     "smtp; 550 5.1.1 <a/b@example.test>: Recipient address rejected: User unknown in virtual mailbox table",
     "dns; mx.example.test", "rfc822; a/b@example.test",
     "<dsn-fixture-postfix-rcpt-550@origin.test>", "envid-postfix-rcpt-550", ("a/b@example.test",)),
    ("exim-relay-521.eml", "multipart/report", "failed", "5.0.0",
     "smtp; 521 5.3.2 nomail.sendonly.test accepts no mail (mailflow-harness nomail)",
     "dns; nomail.sendonly.test", "rfc822;someone@sendonly.test",
     "<dsn-fixture-exim-relay-521@origin.test>", None, ()),
    ("opensmtpd-rcpt-550.eml", "multipart/mixed", "failed", "5.0.0", None, None, "rfc822; a/b@example.test",
     "<dsn-fixture-opensmtpd-rcpt-550@origin.test>", None, ()),
    ("opensmtpd-expired.eml", "multipart/mixed", "delayed", "4.4.7", None, None, "rfc822; someone@sendonly.test",
     "<dsn-fixture-opensmtpd-expired@origin.test>", None, ()),
]


@pytest.mark.parametrize(("name", "ctype", "action", "status_code", "diagnostic", "remote_mta", "final",
                          "message_id", "envid", "orcpts"), CASES, ids=[c[0] for c in CASES])
def test_real_dsn_is_parsed(name: str, ctype: str, action: str, status_code: str, diagnostic: str | None,
                            remote_mta: str | None, final: str, message_id: str, envid: str | None,
                            orcpts: tuple[str, ...]) -> None:
    raw = fixture(name)
    assert email.message_from_bytes(raw, policy=policy.compat32).get_content_type() == ctype
    assert is_dsn(raw)
    status = parse_dsn(raw)
    assert status is not None
    assert status.per_message["Reporting-MTA"] == "dns; relay.origin.test"
    (rcpt,) = status.recipients
    assert rcpt["Action"] == action
    assert rcpt["Status"] == status_code
    assert rcpt.get("Diagnostic-Code") == diagnostic
    assert rcpt.get("Remote-MTA") == remote_mta
    assert rcpt["Final-Recipient"] == final
    assert status.final_recipients == (final.partition(";")[2].strip(),)
    assert status.original_recipients == orcpts
    assert status.original_message_id == message_id
    assert status.original_envelope_id == envid


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_about_matches_the_returned_message_id_only(name: str) -> None:
    status = parse_dsn(fixture(name))
    assert status is not None
    assert status.original_message_id is not None
    # The form existing callers use: truthy for the message, None for another one.
    assert status.about(status.original_message_id) == \
        f"Message-ID {status.original_message_id} in the returned headers"
    assert status.about(status.original_message_id.upper().strip("<>"))  # case and brackets do not matter
    assert status.about("<other@origin.test>") is None
    # A returned Message-ID of another message decides, even when the recipient is the same.
    assert status.about("<other@origin.test>", recipients=status.final_recipients) is None


def test_the_postfix_null_mx_bounce_is_about_its_message() -> None:
    status = parse_dsn(fixture("postfix-nullmx.eml"))
    assert status is not None
    assert status.about(ORIGINAL_ID)
    assert not status.about("<other@origin.test>")


def test_matching_by_echoed_envelope_id() -> None:
    # Postfix echoes the ENVID; with the returned headers removed, the envelope id is all that is left.
    status = parse_dsn(without_parts(fixture("postfix-rcpt-550.eml"), *RETURNED))
    assert status is not None
    assert status.original_message_id is None
    assert status.original_envelope_id == "envid-postfix-rcpt-550"
    assert status.about("<x@origin.test>", envelope_id="envid-postfix-rcpt-550") == \
        "Original-Envelope-Id envid-postfix-rcpt-550"
    assert status.about("<x@origin.test>", envelope_id="envid-other") is None
    # A different echoed envelope id decides against a matching recipient.
    assert status.about("<x@origin.test>", envelope_id="envid-other", recipients=["a/b@example.test"]) is None
    assert status.about("<x@origin.test>") is None


def test_an_envelope_id_that_differs_overrides_a_matching_message_id() -> None:
    status = parse_dsn(fixture("postfix-rcpt-550.eml"))
    assert status is not None
    message_id = "<dsn-fixture-postfix-rcpt-550@origin.test>"
    assert status.about(message_id, envelope_id="envid-postfix-rcpt-550")
    assert status.about(message_id, envelope_id="envid-a-resend") is None


def test_envelope_ids_compare_as_sent_or_xtext_decoded() -> None:
    assert same_envelope_id("a+b=c", "a+2Bb+3Dc")
    assert same_envelope_id("a+2Bb+3Dc", "a+b=c")
    assert same_envelope_id(" id-1 ", "id-1")
    assert not same_envelope_id("id-1", "id-2")
    assert not same_envelope_id("ID-1", "id-1")  # an envelope id is opaque: case counts


@pytest.mark.parametrize(("name", "address"), [("opensmtpd-rcpt-550.eml", "a/b@example.test"),
                                               ("exim-relay-521.eml", "someone@sendonly.test")])
def test_matching_by_final_recipient_when_nothing_is_returned(name: str, address: str) -> None:
    # OpenSMTPD and Exim echo no envelope id: without the returned part only the recipient is left.
    status = parse_dsn(without_parts(fixture(name), *RETURNED))
    assert status is not None
    assert status.original_message_id is None
    assert status.original_envelope_id is None
    assert status.about("<x@origin.test>", recipients=[address.upper()]) == f"Final-Recipient rfc822;{address}"
    assert status.about("<x@origin.test>", recipients=[f"<{address}>"]) == f"Final-Recipient rfc822;{address}"
    assert status.about("<x@origin.test>", recipients=["bob@example.test"]) is None
    assert status.about("<x@origin.test>") is None
    # An envelope id asked for but not echoed neither matches nor contradicts.
    assert status.about("<x@origin.test>", envelope_id="envid-x", recipients=[address])


def test_matching_by_original_recipient() -> None:
    raw = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
           b"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; r.test\n\n"
           b"Final-Recipient: rfc822; vmail@mx.example.test\nOriginal-Recipient: rfc822;Bob@Example.test\n"
           b"Action: failed\nStatus: 5.2.2\n\n--b--\n")
    status = parse_dsn(raw)
    assert status is not None
    assert status.original_recipients == ("Bob@Example.test",)
    assert status.about("<x@y>", recipients=["bob@example.test"]) == "Original-Recipient rfc822;Bob@Example.test"
    assert status.about("<x@y>", recipients=["vmail@mx.example.test"]) == \
        "Final-Recipient rfc822;vmail@mx.example.test"


def test_recipient_address() -> None:
    assert recipient_address("rfc822; someone@nullmx.test") == "someone@nullmx.test"
    assert recipient_address("rfc822;<a@b.test>") == "a@b.test"
    assert recipient_address("utf-8; jörg@example.test") == "jörg@example.test"
    assert recipient_address("a@b.test") == "a@b.test"
    assert recipient_address("rfc822;") is None
    assert recipient_address(None) is None


def test_checks_hold_together_on_one_recipient() -> None:
    status = parse_dsn(fixture("postfix-nullmx.eml"))
    assert status is not None
    assert unmatched_checks(status, [("Action", "^failed$"), ("Status", r"^5\.1"), ("Reporting-MTA", "relay")]) == []
    assert unmatched_checks(status, [("Action", "^delayed$"), ("Status", r"^5\.")]) == ["Action /^delayed$/"]
    assert unmatched_checks(status, [("Remote-MTA", "nomail")]) == ["Remote-MTA /nomail/"]


def test_checks_on_the_opensmtpd_bounce() -> None:
    status = parse_dsn(fixture("opensmtpd-rcpt-550.eml"))
    assert status is not None
    assert unmatched_checks(status, [("Action", "^failed$"), ("Status", r"^5\.0\.0$"),
                                     ("Final-Recipient", r"a/b@example\.test")]) == []
    # The 550 is only in the notification text: there is no Diagnostic-Code to match.
    assert unmatched_checks(status, [("Diagnostic-Code", "550")]) == ["Diagnostic-Code /550/"]
    assert status.summary() == "Final-Recipient: rfc822; a/b@example.test, Action: failed, Status: 5.0.0"


def test_summary_of_the_exim_bounce() -> None:
    status = parse_dsn(fixture("exim-relay-521.eml"))
    assert status is not None
    assert status.summary() == (
        "Final-Recipient: rfc822;someone@sendonly.test, Action: failed, Status: 5.0.0, "
        "Remote-MTA: dns; nomail.sendonly.test, "
        "Diagnostic-Code: smtp; 521 5.3.2 nomail.sendonly.test accepts no mail (mailflow-harness nomail)")


def test_a_delivery_status_part_is_found_wherever_it_sits() -> None:
    # The OpenSMTPD bounce attached to a plain multipart/mixed message (e.g. forwarded by someone):
    # still a DSN, and what it is about comes from the parts beside the status part, not from the
    # enclosing message.
    inner = fixture("opensmtpd-rcpt-550.eml")
    raw = (b"Content-Type: multipart/mixed; boundary=outer\nMessage-ID: <forwarder@origin.test>\n\n"
           b"--outer\nContent-Type: text/plain\n\nsee attached\n"
           b"--outer\nContent-Type: message/rfc822\n\n" + inner + b"\n--outer--\n")
    assert is_dsn(raw)
    status = parse_dsn(raw)
    assert status is not None
    assert status.recipients[0]["Status"] == "5.0.0"
    assert status.original_message_id == "<dsn-fixture-opensmtpd-rcpt-550@origin.test>"
    assert status.about("<forwarder@origin.test>") is None


def test_multipart_report_of_another_type_is_not_a_dsn() -> None:
    raw = (b"Content-Type: multipart/report; report-type=disposition-notification; boundary=b\n\n"
           b"--b\nContent-Type: text/plain\n\nread\n"
           b"--b\nContent-Type: message/disposition-notification\n\nDisposition: manual-action/MDN-sent-manually;"
           b" displayed\n\n--b--\n")
    assert not is_dsn(raw)
    assert parse_dsn(raw) is None


def test_a_plain_message_is_not_a_dsn() -> None:
    plain = b"Subject: hi\nMessage-ID: <x@y>\n\nhello\n"
    assert not is_dsn(plain)
    assert parse_dsn(plain) is None
    multipart_mixed = (b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nx\n--b--\n")
    assert not is_dsn(multipart_mixed)
    assert parse_dsn(multipart_mixed) is None
    # A real DSN with its delivery-status part removed is a multipart/mixed like any other.
    stripped = without_parts(fixture("opensmtpd-rcpt-550.eml"), "message/delivery-status")
    assert not is_dsn(stripped)
    assert parse_dsn(stripped) is None


def test_global_delivery_status_is_read_too() -> None:
    raw = ("Content-Type: multipart/report; report-type=global-delivery-status; boundary=b\n\n"
           "--b\nContent-Type: message/global-delivery-status\n\nReporting-MTA: dns; r.test\n"
           "Original-Envelope-Id: e1\n\n"
           "Final-Recipient: utf-8; jörg@example.test\nAction: failed\nStatus: 5.1.1\n\n"
           "--b\nContent-Type: message/global-headers\n\nMessage-ID: <g@origin.test>\n\n--b--\n").encode()
    status = parse_dsn(raw)
    assert status is not None
    assert status.per_message["Original-Envelope-Id"] == "e1"
    assert status.recipients[0]["Status"] == "5.1.1"
    assert status.final_recipients == ("jörg@example.test",)
    assert status.original_message_id == "<g@origin.test>"


def test_folded_diagnostic_code_is_unfolded() -> None:
    raw = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
           b"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; r.test\n\n"
           b"Final-Recipient: rfc822; a@b.test\nAction: failed\nStatus: 5.3.2\n"
           b"Diagnostic-Code: smtp; 521 5.3.2 Service\n    currently unavailable\n\n--b--\n")
    status = parse_dsn(raw)
    assert status is not None
    assert status.recipients[0]["Diagnostic-Code"] == "smtp; 521 5.3.2 Service currently unavailable"
    assert status.original_message_id is None
    assert status.original_envelope_id is None


def test_parsing_is_independent_of_line_endings() -> None:
    crlf = fixture("opensmtpd-rcpt-550.eml").replace(b"\n", b"\r\n")
    status = parse_dsn(crlf)
    assert status is not None
    assert status.recipients[0]["Status"] == "5.0.0"
    assert status.about("<dsn-fixture-opensmtpd-rcpt-550@origin.test>")
