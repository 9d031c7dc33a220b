"""A CA per run and the certificates it issues to roles, valid or broken on purpose.

Nothing here is ever committed: every run makes a fresh CA, its keys exist in memory, in the run's
temporary directory (0700, keys 0600) and inside the run's containers, and ``RunTls.remove`` deletes
the directory when the run ends (the containers go with the run). CA keys are ECDSA P-256 (quick to
make); the roles' keys are RSA 2048, the one kind every MTA's TLS library loads the same way. An RSA
key costs about 60 ms of CPU, so a process makes one per (role, certificate kind) and its topologies
reuse it, each in certificates of its own CA: within a topology no two certificates share a key (their
roles or kinds differ), and no key outlives the process.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness.errors import InfrastructureError

__all__ = ["CERTIFICATE_KINDS", "WRONG_NAME", "CertificateAuthority", "Credentials", "RunTls", "remove_run_keys"]

# What a scenario can ask a role's certificate to be. Every broken kind breaks exactly one thing a
# verifying client checks: the validity window, the name, the issuer's trust, the chain to the run CA.
CERTIFICATE_KINDS = ("valid", "expired", "wrong-name", "self-signed", "other-ca")
# The only name in a wrong-name certificate: under .invalid (RFC 6761), so it can never be a role's.
WRONG_NAME = "wrong-name.invalid"
# Validity windows: a little back-dated so a container clock a few seconds behind still accepts them.
_SKEW = datetime.timedelta(minutes=5)
_LIFETIME = datetime.timedelta(days=2)
_EXPIRED_FOR = datetime.timedelta(days=1)
# A run's key directory: <tmp>/mailflow-tls-<run id>-<random>, found again by run id after a SIGKILL.
KEY_DIR_PREFIX = "mailflow-tls-"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _server_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


_ROLE_KEYS: dict[tuple[str, str], rsa.RSAPrivateKey] = {}
_ROLE_KEYS_LOCK = threading.Lock()


def _role_key(role: str, kind: str) -> rsa.RSAPrivateKey:
    """The process's key for ``role``'s certificates of ``kind`` (made on first use)."""
    with _ROLE_KEYS_LOCK:
        key = _ROLE_KEYS.get((role, kind))
    if key is None:
        made = _server_key()  # outside the lock: topologies starting side by side make theirs at once
        with _ROLE_KEYS_LOCK:
            key = _ROLE_KEYS.setdefault((role, kind), made)
    return key


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    # PKCS#8 without a pass-phrase: MTAs read it unattended.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailflow-harness"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Credentials:
    """A certificate (PEM, the issuing CA's certificate appended where there is one) and its key."""

    cert_pem: bytes
    key_pem: bytes


class CertificateAuthority:
    """A self-signed CA that signs server certificates for host names."""

    def __init__(self, common_name: str, *, now: datetime.datetime | None = None) -> None:
        self.now = now or datetime.datetime.now(datetime.UTC)
        self.key = _key()
        subject = _name(common_name)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - _SKEW)
            .not_valid_after(self.now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, hostname: str, *, not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None, key: rsa.RSAPrivateKey | None = None) -> Credentials:
        """A server certificate for ``hostname`` (its only subjectAltName), signed by this CA, for
        ``key`` (None: a new one)."""
        key = key or _server_key()
        cert = _server_certificate(hostname, key, issuer=self.certificate.subject, signer=self.key,
                                   not_before=not_before or self.now - _SKEW,
                                   not_after=not_after or self.now + _LIFETIME,
                                   issuer_key_id=self.key.public_key())
        return Credentials(cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem, _key_pem(key))

    def issue_kind(self, hostname: str, kind: str, *, other: CertificateAuthority,
                   key: rsa.RSAPrivateKey | None = None) -> Credentials:
        """A certificate of ``kind`` (CERTIFICATE_KINDS) for a role whose host name is ``hostname``;
        ``other`` is the second CA, which nothing in the run trusts; ``key`` (None: a new one)."""
        if kind == "valid":
            return self.issue(hostname, key=key)
        if kind == "expired":
            # Its whole window in the past, as a certificate nobody renewed.
            return self.issue(hostname, not_before=self.now - _LIFETIME, not_after=self.now - _EXPIRED_FOR, key=key)
        if kind == "wrong-name":
            return self.issue(WRONG_NAME, key=key)
        if kind == "other-ca":
            return other.issue(hostname, key=key)
        if kind == "self-signed":
            key = key or _server_key()
            cert = _server_certificate(hostname, key, issuer=_name(hostname), signer=key,
                                       not_before=self.now - _SKEW, not_after=self.now + _LIFETIME,
                                       issuer_key_id=None)
            return Credentials(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))
        raise ValueError(f"unknown certificate kind {kind!r} (known: {', '.join(CERTIFICATE_KINDS)})")


def _server_certificate(hostname: str, key: rsa.RSAPrivateKey, *, issuer: x509.Name,
                        signer: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, not_before: datetime.datetime,
                        not_after: datetime.datetime, issuer_key_id: ec.EllipticCurvePublicKey | None
                        ) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(hostname))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_key_id is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key_id),
                                        critical=False)
    return builder.sign(signer, hashes.SHA256())


def key_directories(run_id: str) -> list[Path]:
    """The temporary directories of run ``run_id``'s keys on this host (one per topology of the run)."""
    return sorted(Path(tempfile.gettempdir()).glob(f"{KEY_DIR_PREFIX}{run_id}-*"))


def remove_run_keys(run_id: str) -> int:
    """Delete what a run left of its keys on this host (a run killed with SIGKILL could not); how many
    directories went."""
    found = key_directories(run_id)
    for directory in found:
        shutil.rmtree(directory, ignore_errors=True)
    return len(found)


class RunTls:
    """One run's TLS material: its CA, a second CA nothing trusts (for ``other-ca``), and the files of
    every certificate issued, in a temporary directory of the run's own (0700; keys 0600)."""

    def __init__(self, run_id: str) -> None:
        self.ca = CertificateAuthority(f"mailflow-harness run {run_id} CA")
        self.other_ca = CertificateAuthority(f"mailflow-harness run {run_id} untrusted CA")
        self._lock = threading.Lock()
        try:
            # mkdtemp makes it 0700; said again because nothing else may ever read a key in it.
            self.directory = Path(tempfile.mkdtemp(prefix=f"{KEY_DIR_PREFIX}{run_id}-"))
            self.directory.chmod(0o700)
            self._write(self.directory / "ca.pem", self.ca.cert_pem, 0o644)
        except OSError as exc:
            raise InfrastructureError(f"could not write the run's CA into a temporary directory: {exc}") from exc

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    def issue(self, role: str, hostname: str, kind: str) -> Credentials:
        """``role``'s certificate of ``kind``, also written under the run's directory as ``role``/."""
        credentials = self.ca.issue_kind(hostname, kind, other=self.other_ca, key=_role_key(role, kind))
        with self._lock:
            try:
                role_dir = self.directory / role
                role_dir.mkdir(mode=0o700, exist_ok=True)
                self._write(role_dir / "cert.pem", credentials.cert_pem, 0o644)
                self._write(role_dir / "key.pem", credentials.key_pem, 0o600)
            except OSError as exc:
                raise InfrastructureError(f"could not write {role}'s certificate under {self.directory}: {exc}"
                                          ) from exc
        return credentials

    @staticmethod
    def _write(path: Path, content: bytes, mode: int) -> None:
        # Created with its final mode: a key is never readable by others, not even for an instant.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)

    def remove(self) -> None:
        """Delete every key and certificate on the host (idempotent)."""
        shutil.rmtree(self.directory, ignore_errors=True)
