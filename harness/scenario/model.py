"""Frozen models of a validated scenario. Nothing here does I/O."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Mark:
    """Where a node came from in its YAML file (1-based line and column)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class Stage(enum.Enum):
    """The stages of a client SMTP session, in protocol order."""

    CONNECT = "CONNECT"
    EHLO = "EHLO"
    STARTTLS = "STARTTLS"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_DATA = "END-OF-DATA"
    QUIT = "QUIT"

    @property
    def yaml_key(self) -> str:
        return self.value.lower().replace("-", "_")


# What a stage may end in instead of a reply (``connect: refused`` in a scenario): how the connection
# attempt or the session failed, as the client or the capture saw it.
NO_REPLY_OUTCOMES = ("refused", "no-answer", "reset", "closed")


@dataclass(frozen=True)
class ReplyExpectation:
    """An expected SMTP reply: the code, optionally the enhanced status code, a regex the text must match.
    Or, with ``code`` None, an expected absence of any reply: ``no_reply`` is one of NO_REPLY_OUTCOMES."""

    code: int | None
    enhanced: str | None = None
    text: str | None = None
    mark: Mark | None = field(default=None, compare=False)
    no_reply: str | None = None

    def __str__(self) -> str:
        if self.code is None:
            return f"no reply ({self.no_reply})"
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        if self.text:
            parts.append(f"/{self.text}/")
        return " ".join(parts)


# How a client's TLS handshake after a 220 to STARTTLS ended (``expect: {tls: failed}``).
TLS_OUTCOMES = ("established", "failed")
# A hop's: also "none", a session that never started TLS.
HOP_TLS_OUTCOMES = (*TLS_OUTCOMES, "none")


@dataclass(frozen=True)
class TlsExpectation:
    """How the client's TLS handshake must end, and optionally a regex the client's description of it
    must match (the protocol version and cipher when established, the reason when it failed)."""

    outcome: str  # one of TLS_OUTCOMES (HOP_TLS_OUTCOMES on a hop)
    reason: str | None = None
    mark: Mark | None = field(default=None, compare=False)
    version: str | None = None  # hops: the version on the wire ("TLSv1.3")
    verified: bool | None = None  # hops: the sending MTA's log says it verified the certificate
    dane: bool | None = None  # hops: ... that it authenticated the next hop by its TLSA records

    def __str__(self) -> str:
        words = [f"TLS {self.outcome}"]
        if self.version:
            words.append(self.version)
        if self.verified is not None:
            words.append("verified by the sender" if self.verified else "not verified by the sender")
        if self.dane is not None:
            words.append("DANE-authenticated" if self.dane else "not DANE-authenticated")
        return " ".join(words) + (f" /{self.reason}/" if self.reason else "")


@dataclass(frozen=True)
class Message:
    """The message a session sends. ``headers`` keep their order; a Message-ID is added when absent."""

    headers: tuple[tuple[str, str], ...]
    body: str
    source_file: Path | None = None


@dataclass(frozen=True)
class SmtpSessionStep:
    host: str
    ehlo: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    message: Message
    expect: Mapping[Stage, ReplyExpectation]
    # RCPT expectations per recipient; a recipient without one falls back to expect[Stage.RCPT] if present.
    expect_rcpt: Mapping[str, ReplyExpectation]
    mark: Mark
    id: str | None = None
    timeout_s: float = 30.0
    # ESMTP parameters as written (``SIZE=12000000``, ``SMTPUTF8``, ``NOTIFY=FAILURE``); ``SIZE=auto``
    # is replaced by the rendered message's size when the session runs.
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[str, ...] = ()
    # STARTTLS after EHLO, trusting the run's CA and checking the role's host name; then EHLO again.
    starttls: bool = False
    expect_tls: TlsExpectation | None = None

    kind = "smtp"


@dataclass(frozen=True)
class HeaderCheck:
    name: str
    pattern: str  # regex searched in the header's decoded value


@dataclass(frozen=True)
class DeliveryStep:
    """The message sent by session ``message_of`` (default: the latest session before this step)
    arrives in ``mailbox`` on ``host`` within ``within_s`` seconds."""

    host: str
    mailbox: str
    within_s: float
    headers: tuple[HeaderCheck, ...]
    body_intact: bool
    mark: Mark
    message_of: str | None = None
    copies: int | None = None  # exactly this many copies in the mailbox (None: at least one)

    kind = "delivery"


@dataclass(frozen=True)
class NoDeliveryStep:
    """No copy of the message arrives in ``mailbox`` (any mailbox when None) on ``host`` within ``within_s``."""

    host: str
    mailbox: str | None
    within_s: float
    mark: Mark
    message_of: str | None = None

    kind = "no_delivery"


@dataclass(frozen=True)
class HopStep:
    """Stage expectations on a hop between hosts (``relay->mx``), judged against the one transaction
    (MAIL .. END-OF-DATA or RSET) that carried the message of ``message_of`` (default: the latest smtp
    step's), found by its Message-ID in the DATA content, else by its envelope. ``session`` (1-based,
    in connection order) is an explicit override: that connection's transaction for the message, or its
    first transaction when the message never got as far as DATA on it. A hop without any transaction
    (a 521 greeting, a refused connection) is judged on its connection stages only."""

    hop: str
    session: int | None
    expect: Mapping[Stage, ReplyExpectation]
    expect_rcpt: Mapping[str, ReplyExpectation]
    within_s: float
    mark: Mark
    message_of: str | None = None
    tls: TlsExpectation | None = None
    cleartext: bool | None = None  # False: no MAIL crossed the hop in clear

    kind = "hop"


@dataclass(frozen=True)
class NoConnectionStep:
    """No TCP connection from ``source`` to any address serving ``domain`` (its MX hosts' and its own
    addresses, from the scenario's DNS) or to role ``target``, within ``within_s``. When the domain has
    no such address at all (null MX), no SMTP connection from ``source`` to anything is allowed."""

    source: str
    domain: str | None
    target: str | None
    within_s: float
    mark: Mark

    kind = "no_connection"


@dataclass(frozen=True)
class DsnCheck:
    """A delivery-status field (Action, Status, Diagnostic-Code, Remote-MTA, Final-Recipient) and a regex
    searched in its value."""

    field: str
    pattern: str


@dataclass(frozen=True)
class BounceStep:
    """A DSN (RFC 3464 multipart/report) about the message sent by ``message_of`` arrives in ``mailbox``
    on ``host`` within ``within_s``, and its per-recipient fields match ``checks``."""

    host: str
    mailbox: str
    within_s: float
    checks: tuple[DsnCheck, ...]
    mark: Mark
    message_of: str | None = None

    kind = "bounce"


@dataclass(frozen=True)
class NoBounceStep:
    """No DSN about the message of ``message_of`` (by its Original-Envelope-Id, the returned headers'
    Message-ID, or a Final-Recipient naming one of its recipients) arrives in ``mailbox`` on ``host``
    within ``within_s``."""

    host: str
    mailbox: str
    within_s: float
    mark: Mark
    message_of: str | None = None

    kind = "no_bounce"


@dataclass(frozen=True)
class QueueFlushStep:
    """Ask the MTA on ``host`` to retry its queue now (``postqueue -f`` for Postfix)."""

    host: str
    mark: Mark

    kind = "queue_flush"


QUEUE_STATES = ("deferred", "active", "frozen", "queued", "absent")
QUEUE_SUBJECTS = ("message", "bounce")


@dataclass(frozen=True)
class QueueStateStep:
    """The message of ``message_of`` is in ``host``'s queue in ``state`` (``queued`` = any queue,
    ``absent`` = not queued), with a reason matching ``reason`` (a regex), within ``within_s``."""

    host: str
    state: str
    reason: str | None
    within_s: float
    mark: Mark
    message_of: str | None = None
    # "message": the message itself; "bounce": the DSN the MTA made about it (stuck when the sender's
    # domain accepts no mail).
    of: str = "message"

    kind = "queue_state"


@dataclass(frozen=True)
class RoleFaultStep:
    """A fault done to a role's container mid-scenario (harness.topology.faults)."""

    role: str
    action: str  # stop, start, restart, kill, pause, unpause, disconnect, reconnect
    mark: Mark

    kind = "fault"


@dataclass(frozen=True)
class DnsFaultStep:
    """The scenario's DNS server answers SERVFAIL or NXDOMAIN, or nothing, for ``name`` and below (for
    queries of ``rtype`` only, or of every type), or normally again."""

    name: str  # absolute, lower case
    answer: str  # servfail, nxdomain, timeout, normal
    mark: Mark
    rtype: str | None = None

    kind = "dns_fault"


@dataclass(frozen=True)
class DnsChangeStep:
    """The scenario's records changed mid-scenario: each (name, type) in ``replace`` gets exactly its
    records there, each (name, type) in ``remove`` (absolute lower-case name) none."""

    replace: tuple[DnsRecord, ...]
    remove: tuple[tuple[str, str], ...]
    mark: Mark

    kind = "dns_change"


Step = (SmtpSessionStep | DeliveryStep | NoDeliveryStep | HopStep | NoConnectionStep | BounceStep
        | NoBounceStep | QueueFlushStep | QueueStateStep | RoleFaultStep | DnsFaultStep | DnsChangeStep)


# ``address_of: unreachable``: an address in the run's own network that nothing answers on, so MX
# fallback past a dead host is written without a literal address outside the network.
UNREACHABLE_ROLE = "unreachable"
# Containers of a run that are not mail roles, their names reserved: the validating resolver of a scenario
# with dnssec:, the MTA-STS policy host of one with mta_sts:.
RESOLVER_ROLE = "resolver"
POLICY_ROLE = "policy"


@dataclass(frozen=True)
class DnsRecord:
    """An extra record. ``value`` is zone-file rdata (``10 mx.example.test.``); for A records
    ``address_of`` names a role whose container address becomes the rdata instead, or ``unreachable``:
    an address inside the run's network that no container answers on (UNREACHABLE_ROLE)."""

    name: str
    rtype: str
    value: str | None
    address_of: str | None
    ttl: int
    mark: Mark


@dataclass(frozen=True)
class RoleOverride:
    """A role's configuration changed for this scenario.

    ``config_dirs``: per MTA implementation, another configuration directory (resolved relative to the
    scenario file). ``settings``: per implementation, parameters laid over the configuration (Postfix:
    main.cf parameters; Exim: macros). ``like``: for a role the scenario adds, the standard role whose
    configuration and behaviour it copies (e.g. a second 521 host ``like: nomail``)."""

    role: str
    config_dirs: Mapping[str, Path]
    settings: Mapping[str, Mapping[str, str]]
    mark: Mark
    like: str | None = None
    # Run this role on a fixed implementation whatever the one under test (e.g. a Postfix mx behind
    # an Exim relay): the scenario then tests the hop between two implementations.
    mta: str | None = None


# A role's TLS toward its next hop: "may" (STARTTLS when offered, any certificate, else in clear),
# "encrypt" (STARTTLS or nothing is sent; any certificate), "verify" (STARTTLS, and a certificate from
# the run's CA for the next hop's name, or nothing is sent), "dane" (DNSSEC-validated lookups, and STARTTLS
# authenticated by the next hop's TLSA records when its zone is signed; RFC 7672), "mta-sts" (RFC 8461: the
# destination's MTA-STS policy decides; Postfix asks postfix-mta-sts-resolver, else "may").
OUTBOUND_TLS = ("may", "encrypt", "verify", "dane", "mta-sts")
# A role's TLSA record (_25._tcp.<host>, 3 1 1): from its real certificate, or the digest of another key.
TLSA_KINDS = ("valid", "wrong")


@dataclass(frozen=True)
class RoleTls:
    """A role that offers STARTTLS in this scenario, with a certificate of ``certificate`` kind
    (harness.tls.ca.CERTIFICATE_KINDS) from the run's CA; ``require``: MAIL before STARTTLS is refused;
    ``outbound``: its policy toward its next hop (OUTBOUND_TLS), trusting the run's CA."""

    role: str
    certificate: str
    require: bool
    mark: Mark | None = field(default=None, compare=False)
    # How the role sends to its next hop (OUTBOUND_TLS); None: as its role directory says (no TLS).
    outbound: str | None = None
    # Its TLSA record (TLSA_KINDS); None: no TLSA record.
    tlsa: str | None = None


@dataclass(frozen=True)
class Dnssec:
    """A scenario's DNSSEC: zone origins (absolute, lower case) signed and trusted by the validating
    resolver, and those signed but anchored to another key (bogus: SERVFAIL)."""

    signed: tuple[str, ...]
    bogus: tuple[str, ...] = ()
    mark: Mark | None = field(default=None, compare=False)


@dataclass(frozen=True)
class MtaSts:
    """A destination domain's MTA-STS policy (RFC 8461): the ``_mta-sts.<domain>`` TXT record and a
    policy host, ``mta-sts.<domain>``, serving ``/.well-known/mta-sts.txt`` over HTTPS with a certificate
    of ``certificate`` kind from the run's CA. ``mx``: the policy's mx patterns, as written."""

    domain: str  # lower case, no trailing dot
    mode: str  # enforce, testing or none (RFC 8461 section 3.2; the schema's enum)
    mx: tuple[str, ...]
    max_age: int = 86400
    certificate: str = "valid"
    mark: Mark | None = field(default=None, compare=False)

    @property
    def policy_text(self) -> str:
        """The policy file (RFC 8461 section 3.2: key/value lines, CRLF)."""
        lines = ["version: STSv1", f"mode: {self.mode}", *(f"mx: {mx}" for mx in self.mx),
                 f"max_age: {self.max_age}"]
        return "".join(line + "\r\n" for line in lines)

    @property
    def policy_id(self) -> str:
        """The TXT record's id: the policy's digest, so another policy is another id (section 3.1)."""
        return hashlib.sha256(self.policy_text.encode("ascii")).hexdigest()[:32]


@dataclass(frozen=True)
class StepOverride:
    """How one step differs on one MTA implementation, always with a reason (shown in every report)."""

    mta: str
    reason: str
    mark: Mark
    skip: bool = False
    step: Step | None = None  # the step as it applies on this implementation, when not skipped


@dataclass(frozen=True)
class Scenario:
    path: Path
    name: str
    description: str
    dns: tuple[DnsRecord, ...]
    roles: Mapping[str, RoleOverride]
    steps: tuple[Step, ...]
    mark: Mark
    # The MTA implementations this scenario runs on; empty = every one that supports its roles.
    mtas: tuple[str, ...] = ()
    # Per step index (0-based), per implementation.
    overrides: Mapping[int, Mapping[str, StepOverride]] = field(default_factory=dict)
    # Roles offering STARTTLS (none unless asked: the standard roles offer no TLS).
    tls: Mapping[str, RoleTls] = field(default_factory=dict)
    # Signed zones and a validating resolver the MTAs use (None: unsigned zones, no resolver).
    dnssec: Dnssec | None = None
    # A destination's MTA-STS policy and the host that serves it (None: no MTA-STS).
    mta_sts: MtaSts | None = None

    def steps_for(self, mta: str) -> tuple[tuple[int, Step, StepOverride | None], ...]:
        """(1-based index, step, override applied) for ``mta``; a skipped step keeps its override
        (``skip`` set) so reports can say why it did not run."""
        out: list[tuple[int, Step, StepOverride | None]] = []
        for i, step in enumerate(self.steps):
            override = self.overrides.get(i, {}).get(mta)
            if override is not None and override.skip:
                out.append((i + 1, step, override))
                continue
            out.append((i + 1, override.step if override and override.step else step, override))
        return tuple(out)
