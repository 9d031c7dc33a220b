"""Ask the dns container directly whether it serves what the scenario declared, before any mail flows.

Queries go straight to the server with dnspython; the host's resolver is never involved, so a
pass here means the MTAs (which use that server) see the same data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from harness.dns.zones import ResolvedRecord
from harness.errors import DnsPreflightError, ReadinessTimeoutError

# Each query's budget is split into short attempts so one lost UDP datagram costs a second, not the budget.
_ATTEMPT_S = 1.0
_READY_ATTEMPT_S = 0.5
_READY_POLL_S = 0.1

_Key = tuple[dns.name.Name, dns.rdatatype.RdataType]


class _NoReply(Exception):
    """No reply within the query's whole budget."""


def check_records(
    server: str, records: Sequence[ResolvedRecord], *, timeout_s: float = 5.0, port: int = 53
) -> None:
    """Every declared (name, type) answers with exactly the declared rdata set (TTL ignored).

    Records sharing a name and type form one rrset on the server, so they are checked together.
    Mismatches are collected and reported at once; no answer at all aborts at the first query,
    since every later query would time out too. ``timeout_s`` bounds each query.
    """
    groups: dict[_Key, list[ResolvedRecord]] = {}
    for record in records:
        groups.setdefault((record.dns_name().canonicalize(), record.dns_rdtype()), []).append(record)

    problems: list[str] = []
    for (name, rdtype), group in groups.items():
        label = f"{name} {dns.rdatatype.to_text(rdtype)}"
        try:
            response = _query(server, port, name, rdtype, timeout_s, _ATTEMPT_S)
        except _NoReply as e:
            raise DnsPreflightError(
                f"dns preflight: {server}:{port} did not answer {label} within {timeout_s:g} s "
                f"(declared at {_where(group, set())})"
            ) from e
        except (OSError, ValueError, dns.exception.DNSException) as e:
            raise DnsPreflightError(
                f"dns preflight: querying {server}:{port} for {label} failed: {str(e) or type(e).__name__} "
                f"(declared at {_where(group, set())})"
            ) from e
        declared = {record.to_rdata() for record in group}
        answered, problem = _judge(response, name, rdtype, declared)
        if problem:
            missing = declared - answered
            problems.append(f"{_where(group, missing)}: {label}: declared {_show(declared)}; {problem}")

    if problems:
        raise DnsPreflightError(
            f"dns preflight: {server}:{port} does not serve {len(problems)} declared rrset(s) "
            "as declared:\n  " + "\n  ".join(problems)
        )


def wait_until_answering(server: str, zone: str, *, timeout_s: float, port: int = 53) -> None:
    """Poll SOA of ``zone`` until the server answers it authoritatively, for at most ``timeout_s``."""
    zone_name = dns.name.from_text(zone, origin=dns.name.root)

    def verdict(response: dns.message.Message) -> str | None:
        answered, problem = _judge(response, zone_name, dns.rdatatype.SOA, None)
        return None if problem is None and answered else (problem or "empty answer")

    _poll(server, port, zone_name, dns.rdatatype.SOA, timeout_s, verdict, recurse=False,
          what=f"dns at {server}:{port} did not answer SOA {zone_name}")


def wait_until_resolving(server: str, name: str, *, timeout_s: float, port: int = 53) -> dns.message.Message:
    """Poll a recursive resolver (the validating one of a scenario with dnssec:) with a recursive A query
    for ``name`` until it answers NOERROR with data, for at most ``timeout_s``; its answer."""
    qname = dns.name.from_text(name, origin=dns.name.root)

    def verdict(response: dns.message.Message) -> str | None:
        if response.rcode() == dns.rcode.NOERROR and response.answer:
            return None
        return f"{dns.rcode.to_text(response.rcode())}, {len(response.answer)} answer rrset(s)"

    return _poll(server, port, qname, dns.rdatatype.A, timeout_s, verdict, recurse=True,
                 what=f"resolver at {server}:{port} did not resolve {qname} A")


def _poll(server: str, port: int, name: dns.name.Name, rdtype: dns.rdatatype.RdataType, timeout_s: float,
          verdict: Callable[[dns.message.Message], str | None], *, recurse: bool, what: str
          ) -> dns.message.Message:
    """Ask until ``verdict`` finds nothing wrong with the answer (None), for at most ``timeout_s``; that
    answer. Past the bound: ReadinessTimeoutError saying ``what`` and the last problem seen."""
    deadline = time.monotonic() + timeout_s
    last = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReadinessTimeoutError(f"{what} within {timeout_s:g} s (last: {last})")
        try:
            response = _query(server, port, name, rdtype, min(remaining, _READY_ATTEMPT_S), recurse=recurse)
        except _NoReply:
            last = "no reply"
            continue  # the timeout already spent the wait
        except (OSError, ValueError, dns.exception.DNSException) as e:
            last = str(e) or type(e).__name__
        else:
            problem = verdict(response)
            if problem is None:
                return response
            last = problem
        time.sleep(min(_READY_POLL_S, max(0.0, deadline - time.monotonic())))


def _query(
    server: str,
    port: int,
    name: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
    timeout_s: float,
    attempt_s: float | None = None,
    *,
    recurse: bool = False,
) -> dns.message.Message:
    """One question, retried over UDP until ``timeout_s``; TCP only when the UDP answer is truncated."""
    query = dns.message.make_query(name, rdtype, want_dnssec=recurse)
    if not recurse:
        query.flags &= ~dns.flags.RD  # an authoritative server has nothing to recurse for
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _NoReply
        try:
            attempt = min(remaining, attempt_s or remaining)
            response = dns.query.udp(query, server, timeout=attempt, port=port, ignore_unexpected=True)
        except dns.exception.Timeout:
            continue
        if response.flags & dns.flags.TC:
            response = dns.query.tcp(query, server, timeout=max(deadline - time.monotonic(), 0.1), port=port)
        return response


def _judge(
    response: dns.message.Message,
    name: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
    declared: set[dns.rdata.Rdata] | None,
) -> tuple[set[dns.rdata.Rdata], str | None]:
    """The answered rdata and what is wrong with the response (None when it matches ``declared``;
    with ``declared`` None any authoritative non-empty answer is fine)."""
    rcode = response.rcode()
    if rcode != dns.rcode.NOERROR:
        hint = " (the server has no zone for this name loaded)" if rcode == dns.rcode.REFUSED else ""
        return set(), f"server answered {dns.rcode.to_text(rcode)}{hint}"
    if not response.flags & dns.flags.AA:
        return set(), "server answered without authority (referral or not its zone)"
    rrset = response.get_rrset(response.answer, name, dns.rdataclass.IN, rdtype)
    answered: set[dns.rdata.Rdata] = set(rrset) if rrset is not None else set()
    if not answered:
        return answered, f"server answered NOERROR with no {dns.rdatatype.to_text(rdtype)} records"
    if declared is None or answered == declared:
        return answered, None
    details = []
    if declared - answered:
        details.append(f"missing {_show(declared - answered)}")
    if answered - declared:
        details.append(f"extra {_show(answered - declared)}")
    return answered, f"server answered {_show(answered)} ({', '.join(details)})"


def _where(group: Sequence[ResolvedRecord], missing: set[dns.rdata.Rdata]) -> str:
    """The declaration most likely at fault: one whose rdata is missing, from a scenario file first."""
    culprits = [r for r in group if r.to_rdata() in missing] or list(group)
    ranked = sorted(culprits, key=lambda r: r.mark.line <= 0)  # stable: keeps declaration order within ranks
    return ranked[0].where


def _show(rdatas: Iterable[dns.rdata.Rdata]) -> str:
    return "{" + ", ".join(sorted(rd.to_text() for rd in rdatas)) + "}"
