"""The MTAs' own words about a scenario: each role's log lines from the scenario's time window
(Postfix's maillog, Exim's mainlog and paniclog, OpenSMTPD's log: every harness image sends them to
the container's output, so ``docker logs`` has them), narrowed to what explains a failure: warnings,
errors, fatal and panic lines, deferrals and bounces, and every line naming a queue id the scenario's
messages got (the ids in the "250 ... queued as" replies, on every hop).

``read_window`` does the I/O (one logs call per role, no process started in the container); the rest
is pure."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterable, Mapping, Sequence

from docker.errors import DockerException

from harness.dns.served import FAULT_LOG_PREFIX
from harness.observe.observations import SentMessage
from harness.observe.tlslog import HopTlsLog, hop_tls_from_log
from harness.smtp.transcript import Exchange
from harness.topology.topology import Host

__all__ = ["MAX_LINES", "SenderLog", "notable", "queue_ids", "read_window", "role_logs"]

# Per role, at most this many lines in a report: a failure's cause is in the first few, and a looping
# MTA must not bury the transcript.
MAX_LINES = 40
# What the three MTAs print when something is wrong (Postfix "warning:/fatal:/panic:/error:", Exim
# "PANIC", "defer (-1)", "** ... failed", OpenSMTPD "warn:/fatal:", "result=TempFail/PermFail").
_SEVERE = re.compile(
    r"\b(warning|warn|error|fatal|panic|failed|failure|defer(?:red)?|bounced?|reject(?:ed)?|unused parameter"
    r"|tempfail|permfail|not found|no such|cannot|can't|unable)\b", re.IGNORECASE)
# The queue id in the reply to the final dot: Postfix "250 2.0.0 Ok: queued as 4Xyz", Exim
# "250 OK id=1xY0Zn-00002m-11", OpenSMTPD "250 2.0.0 1a593c48 Message accepted for delivery".
_QUEUE_ID = (
    re.compile(r"queued as ([0-9A-Za-z]{6,})"),
    re.compile(r"\bid=([0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4})"),
    re.compile(r"^(?:2\.0\.0 )?([0-9a-f]{8}) Message accepted"),
)


def queue_ids(exchanges: Iterable[Exchange]) -> set[str]:
    """The queue ids MTAs gave the scenario's messages, from every accepted final dot."""
    found = set()
    for e in exchanges:
        if e.command != "END-OF-DATA" or e.code is None or not 200 <= e.code < 300:
            continue
        for pattern in _QUEUE_ID:
            m = pattern.search(e.text)
            if m:
                found.add(m.group(1))
    return found


def notable(lines: Sequence[str], ids: Iterable[str]) -> list[str]:
    """The lines that explain: severe ones and those naming one of ``ids`` (order kept, at most
    MAX_LINES, the last line saying how many were left out)."""
    wanted = [i for i in ids if i]
    return _capped([line for line in lines if _SEVERE.search(line) or any(i in line for i in wanted)])


def _capped(kept: list[str]) -> list[str]:
    if len(kept) > MAX_LINES:
        left = len(kept) - MAX_LINES
        kept = [*kept[:MAX_LINES], f"... {left} more line(s): docker logs of the role's container"]
    return kept


def _parse(raw: bytes, since_wall: float) -> list[str]:
    """``docker logs --timestamps`` output from ``since_wall`` on, without the timestamps."""
    out = []
    for line in raw.decode("utf-8", "replace").splitlines():
        stamp, _, text = line.partition(" ")
        try:
            # RFC 3339 with nanoseconds: Python takes microseconds.
            when = dt.datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", stamp.replace("Z", "+00:00")))
        except ValueError:
            out.append(line)
            continue
        if when.timestamp() >= since_wall and text.strip():
            out.append(text.rstrip())
    return out


def read_window(host: Host, since_wall: float) -> list[str]:
    """Every log line ``host`` printed from ``since_wall`` on."""
    try:
        container = host.container.get_wrapped_container()
        raw = container.logs(stdout=True, stderr=True, timestamps=True, since=int(since_wall))
    except DockerException as exc:
        return [f"(logs unavailable: {exc})"]
    return _parse(bytes(raw), since_wall)


def role_logs(hosts: Mapping[str, Host], since_wall: float, exchanges: Iterable[Exchange]) -> dict[str, list[str]]:
    """Per role, the notable lines of the window (roles with none are left out)."""
    ids = queue_ids(exchanges)
    out = {}
    for role, host in hosts.items():
        if host.mta is None:
            # The dns role: every query a dns_fault step answered (who asked what, and what it got),
            # and NSD's or dnsdist's own complaints.
            lines = _capped([line for line in read_window(host, since_wall)
                             if line.startswith(FAULT_LOG_PREFIX) or _SEVERE.search(line)])
        else:
            lines = notable(read_window(host, since_wall), ids)
        if lines:
            out[role] = lines
    return out


# A hop step polls the capture ten times a second; the sender's log is a logs call: read it less often.
SENDER_LOG_EVERY_S = 0.5


class SenderLog:
    """What the MTA that sends a hop logged about the scenario's message (its TLS session and the next
    hop's reply), by the queue id it gave the message in the client's session; read at most every
    SENDER_LOG_EVERY_S, and no more once it has the delivery's outcome."""

    def __init__(self, host: Host, message: SentMessage, window_wall: float) -> None:
        self.host = host
        self.since = window_wall
        received_here = message.hop.endswith(f"->{host.role}") and message.end_of_data is not None
        ids = sorted(queue_ids([message.end_of_data])) if received_here and message.end_of_data else []
        self.queue_id = ids[0] if ids else None
        self._read_at = 0.0
        self._facts: HopTlsLog | None = None

    def facts(self, *, decided: bool) -> HopTlsLog | None:
        """The facts so far; ``decided``: the wire has the handshake's outcome, so the log may too."""
        if self.queue_id is None or self.host.mta is None or not decided:
            return self._facts
        if self._facts is not None and self._facts.final:
            return self._facts
        now = time.monotonic()
        if now - self._read_at >= SENDER_LOG_EVERY_S:
            self._read_at = now
            self._facts = hop_tls_from_log(str(self.host.mta), read_window(self.host, self.since), self.queue_id)
        return self._facts
