r"""What a sending MTA logged about one message's delivery attempt: the TLS session it sent over (version,
cipher, whether it verified the next hop's certificate) and the next hop's reply. Pure, no I/O: the
lines are given as ``docker logs`` of the container prints them (``harness.observe.mtalogs.read_window``:
Docker's own timestamp removed, the MTA's own prefix kept).

``hop_tls_from_log(mta, lines, queue_id)`` finds the LAST delivery attempt of the message the sending
MTA queued as ``queue_id`` (the id in its 250 reply to the client's final dot) and returns its facts,
or None when the lines hold no attempt for it (or ``mta`` is not one this module reads).

What each MTA tells, and how its lines are tied to the message (all lines below are real, from
Debian 12's postfix 3.7.11, exim4-daemon-light 4.96 (GnuTLS) and opensmtpd 6.8.0p2 relaying to a
harness mx, with the role's outbound TLS set by ``tls: {relay: {outbound: ...}}``; a line ending in
``\`` is one log line, wrapped here):

Postfix (``smtp_tls_loglevel = 1``) logs the handshake and the delivery on two lines of the same
``smtp[pid]``, the handshake line without the queue id::

    Nov 30 21:44:10 relay postfix/smtp[116]: Verified TLS connection established to \
        mx.example.test[172.29.221.10]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange \
        X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256
    Nov 30 21:44:10 relay postfix/smtp[116]: 99DF027E2D7: to=<bob1@example.test>, \
        relay=mx.example.test[172.29.221.10]:25, delay=0.26, delays=0.03/0.04/0.01/0.17, dsn=2.0.0, status=sent \
        (250 2.0.0 Ok: queued as D135C27E611)

An smtp process delivers many messages one after the other (and several run at once, their lines
interleaved), so a handshake line belongs to the next delivery line of its process, and to later ones
only for more recipients of the same message in the same attempt (qmgr's ``<id>: from=<...> ...
(queue active)`` line starts each attempt). Failed handshakes leave ``SSL_connect error to ...``,
``warning: TLS library problem: ...`` and ``<id>: Cannot start TLS: handshake failure`` (at "may" it
may then deliver in clear: no version). Trust is Postfix's own word: Verified (chain and MX host name,
at "verify"), Trusted (chain only: "may" and "encrypt" match no name), Untrusted (the chain failed,
e.g. ``server certificate verification failed for mx.example.test[...]:25: certificate has expired``
before it), Anonymous (no certificate).

Exim puts everything on the delivery line of the message (``=>`` delivered, ``->`` a further recipient
of it, ``==`` deferred, ``**`` bounced); X= (GnuTLS: the TLS version as ``TLS1.3``, given here as
``TLSv1.3``, and GnuTLS's cipher description) and CV= (the certificate verified against
tls_verify_certificates, including the MX host name: yes -> "verified", no -> "untrusted"; Exim tells
no "trusted"). Only ``=>``/``->`` lines carry X= and CV=: a deferral or bounce line has none even after
an encrypted session (``== bob@example.test ... defer (-44) H=mx.example.test [172.30.95.10]:25
DT=0.000s: SMTP error from remote mail server after RCPT TO:<bob@example.test>: 450 4.3.2 ...``), so
there version and trust None mean "not logged", not "in clear"::

    2026-11-30 21:35:05.752 1xY91d-00000c-2E => bob@example.test P=<alice@origin.test> R=dnslookup T=remote_smtp \
        S=410 H=mx.example.test [172.28.168.10]:25 X=TLS1.3:ECDHE_SECP256R1__RSA_PSS_RSAE_SHA256__AES_256_GCM:256 \
        CV=yes C="250 OK id=1xY91d-00000a-2K" QT=0.059s DT=0.019s
    2026-11-30 21:38:13.542 1xY94f-00000c-1Q == bob@example.test R=dnslookup T=remote_smtp defer (-37) \
        H=mx.example.test [172.29.193.10]:25 DT=0.013s: TLS session: (certificate verification failed): certificate \
        invalid

A deferral "retry time not reached for any host" is no attempt (no connection) and is passed over;
the message's own TLS lines before an attempt (``<id> TLS session: ...: delivering unencrypted to
H=...``) are kept with it in ``line``.

OpenSMTPD logs per session (16 hex digits), the delivery line naming the envelope (the message id,
the 8 hex digits of the client's 250 reply, then 8 more)::

    b930444de2fdf603 mta tls ciphers=TLSv1.3:TLS_AES_256_GCM_SHA384:256
    b930444de2fdf603 mta server-cert-check result="success"
    b930444de2fdf603 mta delivery evpid=619fd25820cac67d from=<alice@origin.test> to=<bob@example.test> rcpt=<-> \
        source="172.29.181.11" relay="172.29.181.10 \
        (mailflow-20261130-214039-a68479-mx.mailflow-20261130-214039-a68479)" delay=1s result="Ok" stat="250 2.0.0 \
        Ok: queued as DC4D527E047"

``server-cert-check`` says whether the certificate verified against the relay's CA and named the MX
host: success -> "verified", failure -> "untrusted" (``ssl_check_name: no match for 'mx.example.test'
in cert`` before it when the name was wrong); a session with TLS and no such line had no certificate
("anonymous"). A session that reconnects (``mta connecting``, e.g. after ``smtp-out: Error on session
<id>: opportunistic TLS failed, downgrading to plain``) starts in clear again. The peer is the address
(the name in parentheses is a reverse lookup, not the MX name). When no MX could be used the delivery
line has session 0000000000000000 and no session to tie it to::

    0000000000000000 mta delivery evpid=043090e2735e9ad7 from=<alice@origin.test> to=<bob@example.test> rcpt=<-> \
        source="-" relay="example.test" delay=1s result="TempFail" stat="Network error on destination MXs"
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OUTCOMES", "TRUST_LEVELS", "HopTlsLog", "hop_tls_from_log", "tls_log_evidence"]

# How far the sending MTA trusted the next hop's certificate (None: in clear, or the log does not say).
TRUST_LEVELS = ("verified", "trusted", "untrusted", "anonymous")
# What became of the attempt: delivered to the next hop, to be retried, or returned to the sender.
OUTCOMES = ("sent", "deferred", "bounced")


@dataclass(frozen=True)
class HopTlsLog:
    """One delivery attempt of a message as its sending MTA logged it.

    ``peer``: the next hop's host name (Postfix, Exim) or address (OpenSMTPD), None when no host was
    reached. ``version`` ("TLSv1.3") and ``cipher`` (the MTA's own name for it): None when the attempt
    went in clear or never started a session. ``trust``: one of TRUST_LEVELS, None without TLS.
    ``reply``: the next hop's reply as logged ("250 2.0.0 Ok: queued as ABC"), None when the MTA gave
    up before one (its own reason is in ``line``). ``outcome``: one of OUTCOMES. ``dane``: whether the
    sender authenticated the next hop by its TLSA records (RFC 7672), None when its log cannot say (a
    Postfix that logs no certificate matching, smtp_tls_loglevel without "certmatch"). ``line``: the log
    lines the facts come from, oldest first, one per line of the text."""

    peer: str | None
    version: str | None
    cipher: str | None
    trust: str | None
    reply: str | None
    line: str
    outcome: str
    dane: bool | None = False

    @property
    def final(self) -> bool:
        """The log has the attempt's outcome (always, for what hop_tls_from_log returns: it reports an
        attempt once its delivery line is there). A deferred message may still be tried again: reading
        the log again later gives that attempt."""
        return self.outcome in OUTCOMES

    def to_json(self) -> dict[str, Any]:
        return {"peer": self.peer, "version": self.version, "cipher": self.cipher, "trust": self.trust,
                "reply": self.reply, "line": self.line, "outcome": self.outcome, "dane": self.dane}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HopTlsLog:
        return cls(d.get("peer"), d.get("version"), d.get("cipher"), d.get("trust"), d.get("reply"),
                   str(d.get("line", "")), str(d.get("outcome", "")), d.get("dane"))


def hop_tls_from_log(mta: str, lines: Sequence[str], queue_id: str) -> HopTlsLog | None:
    """The last delivery attempt of the message ``queue_id`` in the sending MTA's ``lines``; None when
    there is none (or ``mta`` is not postfix, exim or opensmtpd)."""
    reader = _READERS.get(mta)
    if reader is None or not queue_id:
        return None
    return reader(lines, queue_id)


@dataclass
class _Tls:
    """What one connection of the sender showed of TLS so far (mutable, while reading)."""

    version: str | None = None
    cipher: str | None = None
    trust: str | None = None
    lines: list[str] = field(default_factory=list)


def _version(text: str) -> str:
    """TLS versions as OpenSSL names them: GnuTLS's "TLS1.3" is "TLSv1.3"."""
    m = re.fullmatch(r"TLS(\d\.\d)", text)
    return f"TLSv{m.group(1)}" if m else text


def _reply(text: str | None) -> str | None:
    """A text that is an SMTP reply (three digits first), else None."""
    return text if text is not None and re.match(r"\d{3}(?:[ -]|$)", text) else None


# --- Postfix ---------------------------------------------------------------------------------------

# "<date> <host> postfix/smtp[116]: <text>": the process, and what it said.
_PF_PROCESS = re.compile(r"(?:^|\s)([\w./-]+\[\d+\]): (.*)$")
_PF_TLS = re.compile(r"^(Verified|Trusted|Untrusted|Anonymous) TLS connection established to "
                     r"([^\s\[]*)\[([^\]]*)\](?::\d+)?: (\S+) with cipher (\S+)")
# A handshake that failed, or the certificate check that did (logged before "Untrusted ... established").
_PF_TLS_TROUBLE = re.compile(r"^(?:[0-9A-Za-z]+: )?(?:SSL_connect error to |server certificate verification "
                             r"failed for |certificate verification failed for |Cannot start TLS|"
                             r"warning: TLS library problem)")
# With smtp_tls_loglevel "certmatch": how the certificate was matched, logged before "Verified ...":
# "mx.example.test[172.29.248.10]:25: Matched DANE EE certificate at depth 0: 3 1 1 6FD1..." (DANE) or
# "...: matched peername: mx.example.test" (the run's CA and the host name).
_PF_CERTMATCH = re.compile(r"^\S+: (?:(Matched DANE )|matched (?:peername|subjectAltName|CommonName)\b)")
_PF_DELIVERY = re.compile(r"^([0-9A-Za-z]+): to=<[^>]*>, (?:orig_to=<[^>]*>, )?relay=([^,]+), .*?"
                          r"\bstatus=(\w+)(?: \((.*)\))?$")
_PF_ACTIVE = re.compile(r"^([0-9A-Za-z]+): from=<[^>]*>, .*\(queue active\)$")
_PF_RELAY = re.compile(r"^([^\s\[]*)\[([^\]]*)\]")
# The next hop's words in a deferral or bounce: "host mx.example.test[172.31.28.10] said: 450 4.3.2 ... (in
# reply to RCPT TO command)"; a sent message's detail is the reply itself.
_PF_SAID = re.compile(r"^host \S+ said: (.*?)(?: \(in reply to [^()]*\))?$")
_PF_OUTCOMES = {"sent": "sent", "deferred": "deferred", "bounced": "bounced", "expired": "bounced"}


@dataclass
class _PostfixConnection(_Tls):
    owner: str | None = None  # the queue id whose delivery line used this handshake
    attempt: int = 0  # ... in its attempt number (qmgr's "queue active" lines for it)
    dane: bool | None = None  # how its certificate matched, when the log said (certmatch)

    def authenticated_by_dane(self) -> bool | None:
        if self.trust != "verified":
            return False
        return self.dane


def _postfix(lines: Sequence[str], queue_id: str) -> HopTlsLog | None:
    connections: dict[str, _PostfixConnection] = {}
    attempts: dict[str, int] = {}
    found: HopTlsLog | None = None

    def fresh(process: str) -> _PostfixConnection:
        # A handshake line after a delivery line of the process: a new connection.
        conn = connections.get(process)
        if conn is None or conn.owner is not None:
            conn = connections[process] = _PostfixConnection()
        return conn

    for line in lines:
        m = _PF_PROCESS.search(line)
        if m is None:
            continue
        process, text = m.groups()
        if active := _PF_ACTIVE.match(text):
            attempts[active.group(1)] = attempts.get(active.group(1), 0) + 1
        elif match := _PF_CERTMATCH.match(text):
            conn = fresh(process)
            conn.dane = match.group(1) is not None
            conn.lines.append(line)
        elif tls := _PF_TLS.match(text):
            conn = fresh(process)
            conn.trust, conn.version, conn.cipher = tls.group(1).lower(), tls.group(4), tls.group(5)
            conn.lines.append(line)
        elif _PF_TLS_TROUBLE.match(text):
            conn = fresh(process)
            conn.trust = conn.version = conn.cipher = None
            conn.lines.append(line)
        elif delivery := _PF_DELIVERY.match(text):
            qid, relay, status, detail = delivery.groups()
            used = connections.get(process)
            if used is not None and used.owner is None:
                used.owner, used.attempt = qid, attempts.get(qid, 0)
            elif used is None or used.owner != qid or used.attempt != attempts.get(qid, 0):
                used = None  # this delivery went in clear (or never connected)
            if qid != queue_id:
                continue
            where = _PF_RELAY.match(relay)
            peer = (where.group(1) if where.group(1) not in ("", "unknown") else where.group(2)) if where else None
            used = used or _PostfixConnection()
            said = _PF_SAID.match(detail or "")
            found = HopTlsLog(peer, used.version, used.cipher, used.trust, _reply(said.group(1) if said else detail),
                              "\n".join([*used.lines, line]), _PF_OUTCOMES.get(status, status),
                              used.authenticated_by_dane())
    return found


# --- Exim ---------------------------------------------------------------------------------------------

_EXIM_ID = r"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}"
_EXIM_LINE = re.compile(rf"(?:^|\s)({_EXIM_ID}) (.*)$")
_EXIM_DELIVERY = re.compile(r"^(=>|->|==|\*\*) ")
_EXIM_HOST = re.compile(r"\bH=(?:([^\s\[]+) )?\[([^\]]+)\]")
_EXIM_TLS = re.compile(r"\bX=([^:\s]+):([^:\s]+)")
_EXIM_VERIFIED = re.compile(r"\bCV=(\w+)")
_EXIM_CONFIRMATION = re.compile(r'\bC="((?:[^"\\]|\\.)*)"')
_EXIM_REMOTE_ERROR = re.compile(r"SMTP error from remote (?:mail server|MTA) after .*?: (\d{3}(?:[ -].*)?)$")
_EXIM_OUTCOMES = {"=>": "sent", "->": "sent", "==": "deferred", "**": "bounced"}
_EXIM_TRUST = {"yes": "verified", "dane": "verified", "no": "untrusted"}


def _exim(lines: Sequence[str], queue_id: str) -> HopTlsLog | None:
    found: HopTlsLog | None = None
    context: list[str] = []  # the message's TLS lines since its last attempt
    for line in lines:
        m = _EXIM_LINE.search(line)
        if m is None or m.group(1) != queue_id:
            continue
        text = m.group(2)
        marker = _EXIM_DELIVERY.match(text)
        if marker is None:
            if "TLS" in text:
                context.append(line)
            continue
        if "retry time not reached" in text:
            continue  # no attempt: no host was tried
        host, tls, verified = _EXIM_HOST.search(text), _EXIM_TLS.search(text), _EXIM_VERIFIED.search(text)
        confirmation = _EXIM_CONFIRMATION.search(text)
        error = _EXIM_REMOTE_ERROR.search(text)
        reply = confirmation.group(1).replace('\\"', '"') if confirmation else error.group(1) if error else None
        trust = _EXIM_TRUST.get(verified.group(1)) if tls and verified else None
        found = HopTlsLog((host.group(1) or host.group(2)) if host else None,
                          _version(tls.group(1)) if tls else None, tls.group(2) if tls else None, trust,
                          _reply(reply), "\n".join([*context, line]), _EXIM_OUTCOMES[marker.group(1)],
                          bool(tls and verified and verified.group(1) == "dane"))
        context = []
    return found


# --- OpenSMTPD ----------------------------------------------------------------------------------------

_OS_SESSION = re.compile(r"(?:^|\s)([0-9a-f]{16}) mta (.*)$")
_OS_DOWNGRADE = re.compile(r"smtp-out: Error on session ([0-9a-f]{16}): opportunistic TLS failed")
_OS_CIPHERS = re.compile(r"^tls ciphers=([^:\s]+):([^:\s]+)")
_OS_CERT_CHECK = re.compile(r'^server-cert-check result="(\w+)"')
_OS_DELIVERY = re.compile(r'^delivery evpid=([0-9a-f]{16}) .*?\brelay="([^"]*)" .*?\bresult="(\w+)" stat="(.*)"$')
_OS_NO_SESSION = "0" * 16
_OS_OUTCOMES = {"Ok": "sent", "TempFail": "deferred", "PermFail": "bounced", "Loop": "bounced"}


@dataclass
class _OpenSmtpdSession(_Tls):
    downgraded: list[str] = field(default_factory=list)  # why its next connection is in clear


def _opensmtpd(lines: Sequence[str], queue_id: str) -> HopTlsLog | None:
    sessions: dict[str, _OpenSmtpdSession] = {}
    found: HopTlsLog | None = None
    wanted = queue_id.lower()
    for line in lines:
        if downgrade := _OS_DOWNGRADE.search(line):
            sessions.setdefault(downgrade.group(1), _OpenSmtpdSession()).downgraded.append(line)
            continue
        m = _OS_SESSION.search(line)
        if m is None:
            continue
        sid, text = m.groups()
        if text.startswith("connecting "):
            # A new connection of the session (again in clear after a downgrade): nothing TLS yet.
            before = sessions.get(sid)
            sessions[sid] = _OpenSmtpdSession(lines=before.downgraded if before else [])
            continue
        session = sessions.setdefault(sid, _OpenSmtpdSession())
        if ciphers := _OS_CIPHERS.match(text):
            session.version, session.cipher = _version(ciphers.group(1)), ciphers.group(2)
            session.lines.append(line)
        elif check := _OS_CERT_CHECK.match(text):
            session.trust = "verified" if check.group(1) == "success" else "untrusted"
            session.lines.append(line)
        elif text.startswith(("ssl_check_name", "error ")):
            session.lines.append(line)
        elif delivery := _OS_DELIVERY.match(text):
            evpid, relay, result, stat = delivery.groups()
            if wanted not in (evpid, evpid[:8]):
                continue
            used = session if sid != _OS_NO_SESSION else _OpenSmtpdSession()
            # TLS and no certificate check line: the next hop sent no certificate.
            trust = used.trust or ("anonymous" if used.version else None)
            peer = relay.split(" ", 1)[0] if sid != _OS_NO_SESSION and relay else None
            found = HopTlsLog(peer, used.version, used.cipher, trust, _reply(stat),
                              "\n".join([*used.lines, line]), _OS_OUTCOMES.get(result, "deferred"))
    return found


_READERS: dict[str, Callable[[Sequence[str], str], HopTlsLog | None]] = {
    "postfix": _postfix,
    "exim": _exim,
    "opensmtpd": _opensmtpd,
}


# The words in a sender's account of a hop that say what it made of the next hop's TLS, the same from run
# to run (no time, queue id, pid or address): the trust phrase, the verification's complaint, and the
# reason a message was kept. In order of appearance; a next hop's "250 ... queued as X" is not among them.
_EVIDENCE = re.compile(
    r"(?P<pf_dane>Matched DANE \w+ certificate at depth \d+)"
    r"|(?P<pf_trust>(?:Verified|Trusted|Untrusted|Anonymous) TLS connection established)"
    r"|server certificate verification failed for [^:]+:\d+: (?P<pf_failed>.+)$"
    r"|(?P<pf_status>status=(?:deferred|bounced|expired) \(.*\))$"
    r"|(?P<exim_cv>\bCV=\w+)"
    r"|(?P<exim_dane>DANE attempt failed)"
    r"|\bdefer \(-?\d+\) .*?DT=[\d.]+m?s: (?P<exim_defer>.+)$"
    r"|(?P<os_name>ssl_check_name: no match for '[^']*' in cert)"
    r"|(?P<os_check>server-cert-check result=\"\w+\")"
    r"|result=\"(?:TempFail|PermFail)\" stat=\"(?P<os_stat>[^\"]*)\"",
    re.MULTILINE)
_ADDRESS = re.compile(r"\[?\b\d{1,3}(?:\.\d{1,3}){3}\b\]?(?::\d+)?")


def tls_log_evidence(line: str) -> list[str]:
    """What ``HopTlsLog.line`` says about the hop's TLS, as phrases stable across runs (addresses dropped)."""
    found: list[str] = []
    for match in _EVIDENCE.finditer(line):
        phrase = next(v for v in match.groupdict().values() if v is not None)
        phrase = " ".join(_ADDRESS.sub("", phrase).split())
        if phrase not in found:
            found.append(phrase)
    return found
