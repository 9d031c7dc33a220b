"""DNSSEC and DANE without Docker: zones signed with the run's keys (and validated here with
dnspython), trust anchors (right and bogus), Unbound's configuration, TLSA records from a role's
certificate, and the loader's dnssec:/tlsa: keys with their file:line:col errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness.dns.dnssec import RESOLVER_CONTROL, ZoneSigner, resolver_flush, unbound_conf
from harness.dns.served import ServedDns
from harness.dns.tlsa import spki_sha256, tlsa_name, tlsa_rdata
from harness.dns.zones import render_zones, resolve_records, standard_records
from harness.errors import ScenarioError
from harness.mta.base import TlsOffer
from harness.mta.exim import Exim
from harness.mta.postfix import Postfix
from harness.scenario.loader import load_scenario
from harness.scenario.model import Dnssec
from harness.shard import topology_key
from harness.tls.ca import CertificateAuthority

ADDRESSES = {"dns": "10.0.0.2", "mx": "10.0.0.10", "relay": "10.0.0.11", "nomail": "10.0.0.12"}
COMPOSE = Path(__file__).resolve().parents[2] / "compose"


def _zones(signer: ZoneSigner | None) -> dict[str, dns.zone.Zone]:
    records = resolve_records(standard_records(ADDRESSES), ADDRESSES)
    rendered = render_zones(records, ns_address=ADDRESSES["dns"], signer=signer)
    return {z.origin: dns.zone.from_text(z.text, origin=z.origin, relativize=False) for z in rendered}


def _dnskeys(zone: dns.zone.Zone) -> dns.rrset.RRset:
    origin = zone.origin
    assert origin is not None
    rdataset = zone.get_rdataset(origin, dns.rdatatype.DNSKEY)
    assert rdataset is not None
    return dns.rrset.from_rdata_list(origin, rdataset.ttl, list(rdataset))


def test_signed_zone_validates_with_its_own_key_and_matches_its_anchor() -> None:
    signer = ZoneSigner(["example.test"])
    zone = _zones(signer)["example.test."]
    keys = _dnskeys(zone)
    origin = dns.name.from_text("example.test.")
    for name in ("example.test.", "mx.example.test."):
        owner = dns.name.from_text(name)
        for rdtype in (dns.rdatatype.A, dns.rdatatype.MX):
            data = zone.get_rdataset(owner, rdtype)
            if data is None:
                continue
            sigs = zone.get_rdataset(owner, dns.rdatatype.RRSIG, rdtype)
            assert sigs is not None, f"{name} {rdtype} has no RRSIG"
            rrset = dns.rrset.from_rdata_list(owner, data.ttl, list(data))
            sigset = dns.rrset.from_rdata_list(owner, sigs.ttl, list(sigs))
            dns.dnssec.validate(rrset, sigset, {origin: keys})  # raises when it does not validate
    # NSEC chain present (authenticated denial), and the anchor is the DS of the signing key.
    assert zone.get_rdataset(origin, dns.rdatatype.NSEC) is not None
    ds = dns.dnssec.make_ds(origin, next(iter(keys)), "SHA256").to_text()
    assert signer.trust_anchors() == [f"example.test. DS {ds}"]


def test_unsigned_zones_stay_unsigned() -> None:
    zones = _zones(ZoneSigner(["example.test"]))
    for origin in ("origin.test.", "sendonly.test.", "harness.test."):
        text = zones[origin].to_text()
        assert "RRSIG" not in text and "DNSKEY" not in text
    assert _zones(None)["example.test."].get_rdataset("example.test.", "DNSKEY") is None


def test_bogus_zone_is_signed_but_anchored_to_another_key() -> None:
    signer = ZoneSigner([], ["example.test"])
    zone = _zones(signer)["example.test."]
    origin = dns.name.from_text("example.test.")
    key = next(iter(_dnskeys(zone)))
    anchor = signer.ds("example.test")
    assert anchor != dns.dnssec.make_ds(origin, key, "SHA256").to_text()
    assert zone.get_rdataset(origin, dns.rdatatype.RRSIG, dns.rdatatype.MX) is not None


def test_keys_are_made_per_signer() -> None:
    assert ZoneSigner(["example.test"]).ds("example.test") != ZoneSigner(["example.test"]).ds("example.test")


def test_served_dns_keeps_signing_after_a_change() -> None:
    signer = ZoneSigner(["example.test"])
    records = resolve_records(standard_records(ADDRESSES), ADDRESSES)
    files = ServedDns(records, signer=signer).files(ns_address=ADDRESSES["dns"], serial=7)
    assert "RRSIG" in files["example.test.zone"] and "RRSIG" not in files["origin.test.zone"]


def test_unbound_conf_trusts_only_the_given_anchors_and_forwards_to_nsd() -> None:
    text = unbound_conf(["example.test. DS 1 13 2 AA"], nsd_address="10.0.0.2")
    assert 'trust-anchor: "example.test. DS 1 13 2 AA"' in text
    assert "auto-trust-anchor-file" not in text and "root.key" not in text
    assert 'local-zone: "test." nodefault' in text  # else Unbound answers NXDOMAIN for *.test itself
    assert "forward-addr: 10.0.0.2" in text and "cache-max-ttl: 1" in text
    # Controlled through a Unix socket in its container only (no control keys, nothing on the network).
    assert "control-enable: yes" in text and f"control-interface: {RESOLVER_CONTROL}" in text
    assert RESOLVER_CONTROL.startswith("/")


def test_the_resolvers_flush_forgets_every_cached_answer_and_what_it_knows_of_nsd() -> None:
    argv = resolver_flush("/etc/unbound/harness/unbound.conf")
    assert argv[:2] == ["sh", "-c"]
    commands = argv[2].split(" && ")
    assert [c.split(" -c /etc/unbound/harness/unbound.conf ")[1].removesuffix(" >/dev/null") for c in commands] == [
        "flush_zone .", "flush_infra all", "flush_requestlist"]


# --- TLSA --------------------------------------------------------------------------------------------


def test_tlsa_3_1_1_is_the_sha256_of_the_certificates_public_key() -> None:
    credentials = CertificateAuthority("test CA").issue("mx.example.test")
    cert = x509.load_pem_x509_certificate(credentials.cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki_sha256(credentials.cert_pem) == hashlib.sha256(spki).digest()
    assert tlsa_rdata(credentials.cert_pem) == f"3 1 1 {hashlib.sha256(spki).hexdigest()}"
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TLSA, tlsa_rdata(credentials.cert_pem))
    assert rdata.to_text().replace(" ", "").lower().endswith(hashlib.sha256(spki).hexdigest())
    assert tlsa_name("mx.example.test") == "_25._tcp.mx.example.test."


def test_wrong_tlsa_matches_no_key() -> None:
    pem = CertificateAuthority("test CA").issue("mx.example.test").cert_pem
    wrong = tlsa_rdata(pem, "wrong").split()[-1]
    assert wrong != tlsa_rdata(pem).split()[-1] and len(wrong) == 64
    with pytest.raises(ValueError):
        tlsa_rdata(pem, "almost")


# --- drivers -----------------------------------------------------------------------------------------


def test_postfix_dane_level_asks_for_dnssec() -> None:
    files = Postfix().role_files(COMPOSE / "postfix" / "relay", {}, TlsOffer("relay.origin.test", False, "dane"))
    main = files["main.cf"].decode()
    assert "smtp_tls_security_level = dane" in main and "smtp_dns_support_level = dnssec" in main


def test_exim_dane_replaces_the_roles_own_hosts_try_dane() -> None:
    files = Exim().role_files(COMPOSE / "exim" / "relay", {}, TlsOffer("relay.origin.test", False, "dane"))
    text = files["exim4.conf"].decode()
    assert text.count("hosts_try_dane") == 1 and "hosts_try_dane = *" in text
    assert "dns_dnssec_ok = 1" in text


# --- the loader --------------------------------------------------------------------------------------

HEAD = "name: t\ndescription: d\n"
STEPS = "steps:\n  - smtp: {host: mx, mail_from: a@origin.test, rcpt_to: [b@example.test]}\n"


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + body + STEPS, encoding="utf-8")
    return path


def _error(path: Path) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return info.value


def test_loader_builds_dnssec_and_tlsa(tmp_path: Path) -> None:
    s = load_scenario(_write(tmp_path, "dnssec:\n  signed: [example.test]\n  bogus: [origin.test.]\n"
                                       "tls:\n  mx: {tlsa: wrong}\n  relay: {outbound: dane}\n"))
    assert s.dnssec == Dnssec(signed=("example.test.",), bogus=("origin.test.",))
    assert s.tls["mx"].tlsa == "wrong" and s.tls["relay"].outbound == "dane"
    # Scenarios with different DNSSEC never share a topology with one without.
    plain = load_scenario(_write(tmp_path, "tls:\n  mx: {tlsa: wrong}\n  relay: {outbound: dane}\n"))
    assert topology_key(s, "postfix") != topology_key(plain, "postfix")


@pytest.mark.parametrize(("body", "line", "col", "words"), [
    ("dnssec:\n  signed: [example.tes]\n", 4, 12, "zone 'example.tes' is not served"),
    ("dnssec:\n  signed: [example.test]\n  bogus: [example.test]\n", 5, 11,
     "listed twice in dnssec (already under signed)"),
    ("dnssec:\n  signed: [mx.example.test]\n", 4, 12, "zone name like example.test"),
    ("dnssec: {}\n", 3, 1, "dnssec lists no zone"),
    ("dnssec:\n  sign: [example.test]\n", 4, 3, "sign"),
    ("tls:\n  mx: {tlsa: maybe}\n", 4, 14, "valid or wrong"),
    ("tls:\n  relay: {outbound: danger}\n", 4, 21, "dane"),
])
def test_loader_errors_point_at_the_node(tmp_path: Path, body: str, line: int, col: int, words: str) -> None:
    error = _error(_write(tmp_path, body))
    assert (error.line, error.col) == (line, col), str(error)
    assert words in str(error)
