"""The MTAs' own lines about a failure: which lines count, which queue ids tie lines to the message."""

from __future__ import annotations

import pytest

from harness.observe.mtalogs import MAX_LINES, _parse, notable, queue_ids
from harness.smtp.transcript import Exchange


def _eod(code: int, text: str) -> Exchange:
    return Exchange("client->relay", 1, "END-OF-DATA", ".", code, None, text)


def test_queue_ids_of_the_three_implementations() -> None:
    exchanges = [
        _eod(250, "2.0.0 Ok: queued as 4Xyz2B1Cd"),                   # Postfix
        _eod(250, "OK id=1xY0Zn-00002m-11"),                           # Exim
        _eod(250, "2.0.0 1a593c48 Message accepted for delivery"),     # OpenSMTPD
        _eod(550, "5.7.1 Error: queued as NOTOURS"),                   # refused: no queue id
        Exchange("client->relay", 1, "RCPT", "RCPT TO:<a@b>", 250, None, "queued as ALSONOT"),
    ]
    assert queue_ids(exchanges) == {"4Xyz2B1Cd", "1xY0Zn-00002m-11", "1a593c48"}


def test_notable_lines_are_complaints_and_the_messages_own() -> None:
    lines = [
        "postfix/smtpd[12]: connect from unknown[172.28.0.1]",
        "postfix/cleanup[140]: warning: regexp map /etc/postfix/header_checks, line 1: Unmatched ( or \\(",
        "postfix/qmgr[20]: 4Xyz2B1Cd: from=<alice@origin.test>, size=300, nrcpt=1 (queue active)",
        "postfix/qmgr[20]: 9OTHER: from=<carol@origin.test>, size=300, nrcpt=1 (queue active)",
        "postfix/smtp[30]: 9OTHER: to=<x@y>, status=deferred (connect to nomail: 521)",
        "postfix/smtpd[12]: disconnect from unknown[172.28.0.1] ehlo=1 mail=1 quit=1 commands=3",
    ]
    assert notable(lines, {"4Xyz2B1Cd"}) == [lines[1], lines[2], lines[4]]
    assert notable(lines, set()) == [lines[1], lines[4]]


def test_a_flood_is_cut_and_says_so() -> None:
    lines = [f"warning: line {i}" for i in range(MAX_LINES + 7)]
    kept = notable(lines, set())
    assert kept[:MAX_LINES] == lines[:MAX_LINES]
    assert kept[-1].startswith("... 7 more line(s)")


def test_docker_timestamps_select_the_window() -> None:
    raw = (b"2026-11-30T13:00:00.100000000Z before the window\n"
           b"2026-11-30T13:00:02.500000000Z fatal: in the window\n"
           b"2026-11-30T13:00:03.000000001Z \n")
    start = 1796043601.0  # 2026-11-30T13:00:01Z
    assert _parse(raw, start) == ["fatal: in the window"]


def test_the_dns_roles_lines_say_which_queries_a_dns_fault_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from harness.observe import mtalogs

    dns_lines = ["Added downstream server 127.0.0.1:5300", "Listening on 0.0.0.0:53",
                 "dns_fault: example.test. type 15 from 172.28.246.11:40184: SERVFAIL",
                 "[2026-11-30 19:11:22.105] nsd[22]: error: zone example.test. could not be read",
                 "[2026-11-30 19:11:22.105] nsd[22]: info: zone origin.test read with success"]
    relay_lines = ["postfix/smtpd[1]: connect from unknown[10.0.0.1]", "postfix/smtp[2]: warning: no MX host"]
    logs = {"dns": dns_lines, "relay": relay_lines}
    monkeypatch.setattr(mtalogs, "read_window", lambda host, since: logs[host.role])
    hosts = {"dns": SimpleNamespace(role="dns", mta=None), "relay": SimpleNamespace(role="relay", mta="postfix")}
    found = mtalogs.role_logs(hosts, 0.0, [])  # type: ignore[arg-type]
    assert found == {"dns": [dns_lines[2], dns_lines[3]], "relay": [relay_lines[1]]}
