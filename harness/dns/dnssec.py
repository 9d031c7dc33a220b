"""DNSSEC for a scenario that opts in (``dnssec:``): zones signed at render time with keys made per run,
and the configuration of the validating resolver (Unbound) the MTAs then use.

Pure apart from key generation: nothing here does I/O. No key is ever written to disk by this module:
the private keys live in memory for the run; only signed zone files (public data) and trust anchors
leave it.

A signed zone is signed with one combined key (a CSK: flags 257, ECDSA P-256, algorithm 13, quick to
make and small). The resolver gets a trust anchor (the key's DS) for each signed zone and none for the
root, so a zone without an anchor is insecure (answered, AD never set). A *bogus* zone is signed the
same way, but its anchor is the DS of another key that signed nothing: every answer from it fails
validation and the resolver says SERVFAIL.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import dns.dnssec
import dns.dnssectypes
import dns.name
import dns.rdtypes.ANY.DNSKEY
import dns.transaction
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["RESOLVER_CONF", "RESOLVER_CONTROL", "SIGNATURE_LIFETIME", "ZoneSigner", "resolver_flush", "unbound_conf"]

ALGORITHM = dns.dnssectypes.Algorithm.ECDSAP256SHA256
# Combined signing key: ZONE | SEP.
CSK_FLAGS = 257
# Signatures valid from an hour back (a container clock a little behind) for two days (a kept run).
_SKEW = datetime.timedelta(hours=1)
SIGNATURE_LIFETIME = datetime.timedelta(days=2)
# Where the resolver container's configuration goes (compose/dns/resolver-start reads it).
RESOLVER_CONF = "unbound.conf"
# Unbound's control socket: a Unix socket needs no control keys, and nothing off the container reaches it.
RESOLVER_CONTROL = "/run/unbound.ctl"
# What the resolver has learnt, forgotten: every cached answer (at or below the root), and what it knows
# about NSD's responsiveness (a restart or a dns_fault can leave it marked slow or down).
_FLUSHES = ("flush_zone .", "flush_infra all", "flush_requestlist")


@dataclass(frozen=True)
class _ZoneKey:
    private: ec.EllipticCurvePrivateKey
    dnskey: dns.rdtypes.ANY.DNSKEY.DNSKEY


def _new_key() -> _ZoneKey:
    private = ec.generate_private_key(ec.SECP256R1())
    dnskey = dns.dnssec.make_dnskey(private.public_key(), ALGORITHM, flags=CSK_FLAGS)
    return _ZoneKey(private, dnskey)


def _origin(name: str) -> dns.name.Name:
    return dns.name.from_text(name.rstrip(".").lower() + ".")


class ZoneSigner:
    """The keys of one run's signed zones. ``signed`` and ``bogus`` are zone origins (``example.test``,
    with or without the final dot); a name in both is bogus."""

    def __init__(self, signed: Iterable[str], bogus: Iterable[str] = (), *,
                 now: datetime.datetime | None = None) -> None:
        self.now = now or datetime.datetime.now(datetime.UTC)
        self.bogus = frozenset(_origin(n) for n in bogus)
        self.signed = frozenset(_origin(n) for n in signed) | self.bogus
        self._keys: dict[dns.name.Name, _ZoneKey] = {origin: _new_key() for origin in sorted(self.signed)}
        # The key a bogus zone's anchor names: it signs nothing.
        self._anchored: dict[dns.name.Name, _ZoneKey] = {
            origin: (_new_key() if origin in self.bogus else key) for origin, key in self._keys.items()}

    def signs(self, origin: dns.name.Name) -> bool:
        return origin in self.signed

    def sign(self, zone: dns.zone.Zone, txn: dns.transaction.Transaction) -> None:
        """Add DNSKEY, RRSIG and NSEC records to ``zone`` (being written in ``txn``) if it is signed."""
        key = self._keys.get(zone.origin) if zone.origin is not None else None
        if key is None:
            return
        dns.dnssec.sign_zone(zone, txn, keys=[(key.private, key.dnskey)], add_dnskey=True,
                             inception=self.now - _SKEW, expiration=self.now + SIGNATURE_LIFETIME)

    def ds(self, origin: str) -> str:
        """The DS (SHA-256) the resolver trusts for ``origin``: its real key's, or another's when bogus."""
        name = _origin(origin)
        return dns.dnssec.make_ds(name, self._anchored[name].dnskey, "SHA256").to_text()

    def trust_anchors(self) -> list[str]:
        """``<origin> DS <rdata>`` for every signed zone, as Unbound's ``trust-anchor:`` takes them."""
        return [f"{origin.to_text()} DS {self.ds(origin.to_text())}" for origin in sorted(self.signed)]


def unbound_conf(anchors: Iterable[str], *, nsd_address: str, zones: Iterable[str] = (".",),
                 settings: Mapping[str, str] | None = None) -> str:
    """Unbound's configuration: validate with ``anchors`` only (no root anchor), forward every query for
    ``zones`` (all names: NSD refuses those outside its zones, which Unbound turns into SERVFAIL) to NSD
    at ``nsd_address``, and cache nothing for more than a second, so that a dns_change or dns_fault step
    is seen at once. (A stub zone for the root fails: NSD is not authoritative for it.)"""
    lines = [
        "# Generated by mailflow-harness: the validating resolver of a run with dnssec:.",
        "server:",
        "    interface: 0.0.0.0",
        "    port: 53",
        "    do-ip6: no",
        "    access-control: 0.0.0.0/0 allow",
        '    username: ""',
        '    chroot: ""',
        '    directory: "/etc/unbound"',
        '    logfile: ""',
        "    use-syslog: no",
        "    log-servfail: yes",
        "    verbosity: 1",
        "    val-log-level: 2",
        '    module-config: "validator iterator"',
        # No root anchor: nothing outside the run's network is reachable, and a zone without an anchor
        # of its own is then insecure (answered without AD), never bogus.
        "    harden-dnssec-stripped: yes",
        "    val-permissive-mode: no",
        # NSD is on a private address of the run's network.
        "    do-not-query-localhost: no",
        "    cache-max-ttl: 1",
        "    cache-max-negative-ttl: 1",
        "    cache-min-ttl: 0",
        "    infra-host-ttl: 1",
        "    prefetch: no",
        "    serve-expired: no",
        "    qname-minimisation: no",
        "    aggressive-nsec: no",
        "    minimal-responses: no",
        "    hide-identity: yes",
        "    hide-version: yes",
        "    ratelimit: 0",
        "    ip-ratelimit: 0",
        "    unwanted-reply-threshold: 0",
        # Unbound answers names under test. (RFC 6761) itself, NXDOMAIN, unless told not to.
        '    local-zone: "test." nodefault',
    ]
    for key, value in (settings or {}).items():
        lines.append(f"    {key}: {value}")
    for anchor in anchors:
        lines.append(f'    trust-anchor: "{anchor}"')
    # Controlled from inside its container only (resolver_flush): a changed zone is answered at once,
    # not after the second an answer may stay cached.
    lines += ["", "remote-control:", "    control-enable: yes", f"    control-interface: {RESOLVER_CONTROL}"]
    for zone in zones:
        lines += ["", "forward-zone:", f'    name: "{zone}"', f"    forward-addr: {nsd_address}",
                  "    forward-first: no"]
    return "\n".join(lines) + "\n"


def resolver_flush(conf_path: str) -> list[str]:
    """The command, run in the resolver's container, that empties its caches (one unbound-control per
    flush: it takes a single command)."""
    control = f"unbound-control -c {conf_path}"
    return ["sh", "-c", " && ".join(f"{control} {flush} >/dev/null" for flush in _FLUSHES)]
