from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_bytes, policy

from harness.scenario.model import Message
from harness.smtp.message import data_payload, dot_stuff, render_message

NOW = datetime(2024, 5, 1, 12, 30, 0, tzinfo=UTC)


def _render(
    headers: tuple[tuple[str, str], ...],
    body: str,
    mail_from: str = "alice@sender.test",
    rcpt_to: tuple[str, ...] = ("bob@example.test", "carol@example.test"),
) -> tuple[bytes, str]:
    return render_message(Message(headers=headers, body=body), mail_from=mail_from, rcpt_to=rcpt_to,
                          domain="sender.test", now=NOW)


def test_adds_missing_headers_after_the_scenarios_in_order() -> None:
    data, message_id = _render((("Subject", "hello"), ("X-Test", "1")), "line one\nline two\n")
    head, _, body = data.partition(b"\r\n\r\n")
    names = [line.split(b":", 1)[0] for line in head.split(b"\r\n")]
    assert names == [b"Subject", b"X-Test", b"From", b"To", b"Date", b"Message-ID"]
    assert b"From: alice@sender.test\r\n" in data
    assert b"To: bob@example.test, carol@example.test\r\n" in data
    assert b"Date: Wed, 01 May 2024 12:30:00 +0000\r\n" in data
    assert re.fullmatch(r"<[0-9a-f-]{36}@sender\.test>", message_id)
    assert f"Message-ID: {message_id}\r\n".encode() in data
    assert body == b"line one\r\nline two\r\n"


def test_message_ids_are_unique() -> None:
    ids = {_render((), "x")[1] for _ in range(50)}
    assert len(ids) == 50


def test_keeps_scenario_headers_and_their_message_id() -> None:
    headers = (
        ("message-id", " <fixed@scenario.test> "),
        ("FROM", "Someone <someone@else.test>"),
        ("to", "list@example.test"),
        ("Date", "Mon, 1 Jan 2024 00:00:00 +0000"),
    )
    data, message_id = _render(headers, "")
    assert message_id == "<fixed@scenario.test>"
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"\r\n") == 3  # nothing added
    assert head.startswith(b"message-id:  <fixed@scenario.test> \r\nFROM: Someone")


def test_line_endings_become_crlf_and_body_ends_with_one() -> None:
    data, _ = _render((("Subject", "x"),), "a\rb\nc\r\nd")
    assert data.endswith(b"\r\n\r\na\r\nb\r\nc\r\nd\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")


def test_empty_body_and_null_sender_without_recipients() -> None:
    data, _ = _render((), "", mail_from="", rcpt_to=())
    assert b"From: MAILER-DAEMON@sender.test\r\n" in data
    assert b"To: undisclosed-recipients:;\r\n" in data
    assert data.endswith(b"\r\n\r\n")


def test_utf8_is_sent_as_is_and_parses() -> None:
    data, _ = _render((("Subject", "grüße"),), "héllo\n")
    assert "Subject: grüße\r\n".encode() in data
    parsed = message_from_bytes(data, policy=policy.default)
    assert parsed["From"] == "alice@sender.test"
    assert parsed.get_payload(decode=True) == "héllo\r\n".encode()


def test_dot_stuff_doubles_leading_dots_only() -> None:
    assert dot_stuff(b".a\r\nb.c\r\n.\r\n..d\r\n") == b"..a\r\nb.c\r\n..\r\n...d\r\n"
    assert dot_stuff(b"no dots\r\n") == b"no dots\r\n"
    assert dot_stuff(b"") == b""
    # After a bare LF too: several MTAs end a line there.
    assert dot_stuff(b"x\n.\r\n") == b"x\n..\r\n"


def test_data_payload_terminates_once() -> None:
    assert data_payload(b"a\r\n") == b"a\r\n.\r\n"
    assert data_payload(b"a") == b"a\r\n.\r\n"
    assert data_payload(b".\r\n") == b"..\r\n.\r\n"
    # The CRLF ending the preceding line (here: the DATA command's) starts the indicator.
    assert data_payload(b"") == b".\r\n"
