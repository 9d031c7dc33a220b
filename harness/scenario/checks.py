"""Checks on scenario values that JSON Schema cannot express well, as pure functions: each returns what
is wrong with the value (a message for ``file:line:col: ...``) or None.

They reject at load time what would otherwise stop a run half-way: the SMTP client refuses control
characters and blanks on a command line, dnspython refuses bad rdata, and a mailbox that is not
``local@domain`` could never be found in ``/var/mail/<domain>/<local>/``.
"""

from __future__ import annotations

import re

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

__all__ = [
    "address_problem",
    "ehlo_problem",
    "header_value_problem",
    "mailbox_problem",
    "rdata_problem",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DOMAIN = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}\.?")
# RFC 5321 4.1.3: General-address-literal = Standardized-tag ":" 1*dcontent.
# A quoted local part may hold blanks: "john doe"@example.test.
_QUOTED_LOCAL = re.compile(r'^"(?:[^"\\]|\\.)*"(?=@)')

# How each record type's rdata is written, for the message when a value is not valid.
RDATA_EXAMPLES = {
    "A": "192.0.2.1",
    "AAAA": "2001:db8::1",
    "CAA": '0 issue "ca.example.test"',
    "CNAME": "target.example.test.",
    "DNAME": "target.test.",
    "MX": "10 mx.example.test.",
    "NS": "ns.example.test.",
    "PTR": "host.example.test.",
    "SRV": "10 5 25 mx.example.test.",
    "TLSA": "3 1 1 0123456789abcdef",
    "TXT": '"v=spf1 -all"',
}


def _control(value: str) -> str | None:
    match = _CONTROL.search(value)
    return f"U+{ord(match.group()):04X}" if match else None


def ehlo_problem(ehlo: str) -> str | None:
    """What cannot be put on an EHLO line at all: control characters, blanks, non-ASCII."""
    control = _control(ehlo)
    if control is not None:
        return f"ehlo {ehlo!r} contains a control character ({control})"
    if any(c.isspace() for c in ehlo):
        return f"ehlo {ehlo!r} contains a blank: EHLO takes one word, a domain or an address literal"
    if not ehlo.isascii():
        return f"ehlo {ehlo!r} is not ASCII: EHLO takes a domain or an address literal"
    # A malformed but sendable name ("bad_name!", "[1.2.3]") stays allowed: a scenario may test the
    # server's HELO checks (Postfix's reject_invalid_helo_hostname) with it on purpose.
    return None


def address_problem(address: str, what: str) -> str | None:
    """An envelope address as the client puts it between '<' and '>': no control characters, no blanks
    (except in a quoted local part), no angle brackets. ``what`` names the key, e.g. ``rcpt_to``."""
    control = _control(address)
    if control is not None:
        return f"{what} {address!r} contains a control character ({control})"
    if "<" in address or ">" in address:
        return (f"{what} {address!r}: write the address without '<' and '>', the client adds them "
                "(MAIL FROM:<a@b.test>)")
    unquoted = _QUOTED_LOCAL.sub("", address)
    if any(c.isspace() for c in unquoted):
        return f"{what} {address!r} contains a blank (only a quoted local part may: \"a b\"@example.test)"
    return None


def mailbox_problem(mailbox: str, what: str = "mailbox") -> str | None:
    """A mailbox the harness looks into: ``local@domain``, stored as /var/mail/<domain>/<local>/."""
    problem = address_problem(mailbox, what)
    if problem is not None:
        return problem
    local, at, domain = mailbox.rpartition("@")
    if not at or not local or not _DOMAIN.fullmatch(domain) or "/" in local:
        return (f"{what} {mailbox!r} is not an address local@domain (the harness reads mailboxes as "
                "/var/mail/<domain>/<local>/)")
    return None


def header_value_problem(name: str, value: str) -> str | None:
    """A header value goes on the wire as written: no line breaks, no control characters but tab."""
    match = re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value)
    if match is None:
        return None
    character = f"U+{ord(match.group()):04X}"
    if match.group() in "\r\n":
        return f"header {name!r}: the value contains a line break ({character}): write it on one line"
    return f"header {name!r}: the value contains a control character ({character})"


def rdata_problem(rtype: str, value: str) -> str | None:
    """Zone-file rdata of ``rtype`` as the dns zones are rendered: class IN, names relative to the root."""
    try:
        dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), value,
                            origin=dns.name.root, relativize=False)
    except (dns.exception.DNSException, ValueError) as exc:
        example = RDATA_EXAMPLES.get(rtype)
        hint = f", e.g. {example!r}" if example else ""
        return f"{value!r} is not valid {rtype} rdata ({exc}){hint}"
    return None
