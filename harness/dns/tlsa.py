"""TLSA records (RFC 6698, RFC 7672) for a role's SMTP service, from its real certificate.

Pure: nothing here does I/O. Only ``3 1 1`` is made (DANE-EE, the SubjectPublicKeyInfo, SHA-256): what
RFC 7672 recommends for SMTP, and what needs no CA at all (the certificate's name and dates are not
checked, its key is).
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["TLSA_PORT_PREFIX", "spki_sha256", "tlsa_name", "tlsa_rdata"]

TLSA_PORT_PREFIX = "_25._tcp."


def tlsa_name(hostname: str) -> str:
    """The owner name of the TLSA records of ``hostname``'s SMTP service (absolute)."""
    return f"{TLSA_PORT_PREFIX}{hostname.rstrip('.').lower()}."


def spki_sha256(cert_pem: bytes) -> bytes:
    """SHA-256 of the SubjectPublicKeyInfo (DER) of the first certificate in ``cert_pem``."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def tlsa_rdata(cert_pem: bytes, kind: str = "valid") -> str:
    """``3 1 1 <hex>`` for the certificate's key (``valid``), or a digest that matches no key
    (``wrong``: every bit of the real one inverted, so it can never match by accident)."""
    digest = spki_sha256(cert_pem)
    if kind == "wrong":
        digest = bytes(b ^ 0xFF for b in digest)
    elif kind != "valid":
        raise ValueError(f"unknown TLSA kind {kind!r} (known: valid, wrong)")
    return f"3 1 1 {digest.hex()}"
