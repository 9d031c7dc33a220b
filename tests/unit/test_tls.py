"""The TLS lab's foundation without Docker: the run's CA and each certificate kind (parsed back with
cryptography's x509), the run's key directory, the `tls:` key and `starttls` in scenario files, each
driver's STARTTLS configuration, and the client's STARTTLS against an in-process aiosmtpd with TLS."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import stat
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from harness.dns.tlsa import spki_sha256
from harness.errors import ScenarioError, UsageError
from harness.expect.smtp import check_session
from harness.mta import DRIVERS
from harness.mta.base import TLS_CA, TLS_CERT, TLS_KEY, TlsOffer
from harness.scenario.loader import load_scenario
from harness.scenario.model import Mark, Message, SmtpSessionStep, Stage, TlsExpectation
from harness.shard import topology_key
from harness.smtp.client import TlsTrust, run_session
from harness.smtp.message import render_message
from harness.smtp.transcript import Transcript, outcome_word
from harness.tls.ca import CERTIFICATE_KINDS, WRONG_NAME, CertificateAuthority, RunTls
from tests.unit.test_smtp_client import HOST, Handler, _free_port

ROOT = Path(__file__).resolve().parents[2]
HOSTNAME = "mx.example.test"


# --- the CA and the certificate kinds ---------------------------------------------------------


def _chain(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


@pytest.fixture(scope="module")
def authorities() -> tuple[CertificateAuthority, CertificateAuthority]:
    return CertificateAuthority("run CA"), CertificateAuthority("other CA")


def test_the_ca_is_a_ca(authorities: tuple[CertificateAuthority, CertificateAuthority]) -> None:
    ca, _ = authorities
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca
    assert _signed_by(ca.certificate, ca.certificate)


@pytest.mark.parametrize("kind", CERTIFICATE_KINDS)
def test_each_kind_breaks_exactly_what_it_says(
        kind: str, authorities: tuple[CertificateAuthority, CertificateAuthority]) -> None:
    ca, other = authorities
    leaf = _chain(ca.issue_kind(HOSTNAME, kind, other=other).cert_pem)[0]
    now = datetime.datetime.now(datetime.UTC)
    in_window = leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc
    assert in_window == (kind != "expired")
    assert _names(leaf) == ([WRONG_NAME] if kind == "wrong-name" else [HOSTNAME])
    assert _signed_by(leaf, ca.certificate) == (kind in ("valid", "expired", "wrong-name"))
    assert _signed_by(leaf, other.certificate) == (kind == "other-ca")
    if kind == "self-signed":
        assert _signed_by(leaf, leaf)
        assert leaf.issuer == leaf.subject
    else:
        issuer = other.certificate if kind == "other-ca" else ca.certificate
        assert leaf.issuer == issuer.subject
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == _names(leaf)[0]


def test_an_expired_certificate_ended_in_the_past(authorities: tuple[CertificateAuthority, CertificateAuthority]
                                                  ) -> None:
    ca, other = authorities
    leaf = _chain(ca.issue_kind(HOSTNAME, "expired", other=other).cert_pem)[0]
    assert leaf.not_valid_after_utc < datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=12)


def test_an_unknown_kind_is_refused(authorities: tuple[CertificateAuthority, CertificateAuthority]) -> None:
    ca, other = authorities
    with pytest.raises(ValueError, match="unknown certificate kind"):
        ca.issue_kind(HOSTNAME, "valid-ish", other=other)


def test_the_schema_lists_the_kinds_the_ca_makes() -> None:
    from harness.scenario.loader import load_schema

    assert load_schema()["$defs"]["roleTls"]["properties"]["certificate"]["enum"] == list(CERTIFICATE_KINDS)


def test_run_keys_live_in_a_private_directory_and_go_with_remove() -> None:
    tls = RunTls("unit")
    try:
        tls.issue("mx", HOSTNAME, "valid")
        assert stat.S_IMODE(tls.directory.stat().st_mode) == 0o700
        assert stat.S_IMODE((tls.directory / "mx").stat().st_mode) == 0o700
        assert stat.S_IMODE((tls.directory / "mx" / "key.pem").stat().st_mode) == 0o600
        assert (tls.directory / "ca.pem").read_bytes() == tls.ca_pem
    finally:
        tls.remove()
    assert not tls.directory.exists()
    tls.remove()  # idempotent: destroy() and a kept topology's close may both call it


# --- scenario files ------------------------------------------------------------------------------

SESSION = "      mail_from: alice@origin.test\n      rcpt_to: [bob@example.test]\n"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load_scenario(_write(tmp_path, text))
    return info.value


def test_tls_key_and_starttls_build_the_models(tmp_path: Path) -> None:
    s = load_scenario(_write(tmp_path, (
        "name: n\ndescription: d\ntls:\n  mx: {certificate: other-ca, require: true}\n  relay: {}\n"
        "steps:\n  - smtp:\n      host: mx\n      starttls: true\n" + SESSION +
        "      expect: {starttls: 220, tls: {outcome: failed, reason: issuer}}\n")))
    assert s.tls["mx"].certificate == "other-ca" and s.tls["mx"].require
    assert s.tls["relay"].certificate == "valid" and not s.tls["relay"].require
    step = s.steps[0]
    assert isinstance(step, SmtpSessionStep) and step.starttls
    assert step.expect[Stage.STARTTLS].code == 220
    assert step.expect_tls == TlsExpectation("failed", "issuer")
    assert step.expect_tls.mark == Mark(str(tmp_path / "s.yaml"), 12, 36)


@pytest.mark.parametrize(("text", "where", "words"), [
    ("tls:\n  backup: {}\n", (4, 3), "unknown role 'backup' in tls"),
    ("tls:\n  dns: {}\n", (4, 3), "'dns' is the scenario's DNS server"),
    ("tls:\n  mx: {certificate: expird}\n", (4, 21), "a certificate kind: valid, expired, wrong-name"),
    ("tls:\n  mx: {require: yes please}\n", (4, 17), "true or false"),
    ("tls:\n  mx: {verify: true}\n", (4, 8), "unknown key 'verify' in role tls"),
    ("tls: [mx]\n", (3, 6), "a mapping of role name to {certificate, require}"),
])
def test_bad_tls_keys_are_located(tmp_path: Path, text: str, where: tuple[int, int], words: str) -> None:
    error = _error(tmp_path, "name: n\ndescription: d\n" + text + "steps:\n  - smtp:\n      host: mx\n" + SESSION)
    assert (error.line, error.col) == where, error
    assert words in str(error)
    assert str(error).startswith(f"{tmp_path / 's.yaml'}:{where[0]}:{where[1]}: ")


def test_an_added_role_can_offer_tls(tmp_path: Path) -> None:
    s = load_scenario(_write(tmp_path, "name: n\ndescription: d\nroles:\n  backup: {like: mx}\n"
                             "tls:\n  backup: {certificate: expired}\nsteps:\n  - smtp:\n      host: backup\n"
                             + SESSION))
    assert s.tls["backup"].certificate == "expired"


@pytest.mark.parametrize(("expect", "where", "words"), [
    ("{starttls: 220}", (8, 16), "expect.starttls needs starttls: true"),
    ("{tls: established}", (8, 16), "expect.tls needs starttls: true"),
    ("{mail: 250, tls: sort of}", (8, 32), "established or failed"),
    ("{tls: {outcome: failed, reason: '(('}}", (8, 47), "invalid regular expression"),
])
def test_bad_tls_expectations_are_located(tmp_path: Path, expect: str, where: tuple[int, int], words: str) -> None:
    starttls = "" if "needs" in words else "      starttls: true\n"
    text = ("name: n\ndescription: d\nsteps:\n  - smtp:\n      host: mx\n" + SESSION
            + starttls + f"      expect: {expect}\n")
    if starttls:
        where = (where[0] + 1, where[1])
    error = _error(tmp_path, text)
    assert (error.line, error.col) == where, error
    assert words in str(error)


def test_a_hop_cannot_expect_the_clients_tls(tmp_path: Path) -> None:
    error = _error(tmp_path, "name: n\ndescription: d\nsteps:\n  - smtp:\n      host: relay\n" + SESSION +
                   "  - hop:\n      hop: relay->mx\n      expect: {starttls: 220, tls: established}\n")
    assert (error.line, error.col) == (10, 31)
    assert "expect.tls is for smtp steps" in str(error)


def test_the_bundled_tls_scenario_loads_and_gets_a_topology_of_its_own() -> None:
    s = load_scenario(ROOT / "scenarios" / "23-mx-requires-starttls.yaml")
    plain = load_scenario(ROOT / "scenarios" / "01-direct-354.yaml")
    assert s.tls["mx"].require
    assert ("tls:mx", None, (("certificate", "valid"), ("require", "yes")), None, None) in topology_key(s, "postfix")[1]
    assert not any(str(role[0]).startswith("tls:") for role in topology_key(plain, "postfix")[1])


# --- each driver's STARTTLS configuration ---------------------------------------------------------


def _files(mta: str, require: bool) -> str:
    driver = DRIVERS[mta]
    files = driver.role_files(ROOT / "compose" / mta / "mx", {}, TlsOffer(HOSTNAME, require))
    return files[driver.main_file].decode()


def test_no_tls_changes_nothing() -> None:
    for mta, driver in DRIVERS.items():
        assert driver.role_files(ROOT / "compose" / mta / "mx", {}, None) == {}


def test_postfix_offers_or_requires_starttls() -> None:
    assert "smtpd_tls_security_level = may" in _files("postfix", False)
    main = _files("postfix", True)
    assert "smtpd_tls_security_level = encrypt" in main
    assert f"smtpd_tls_key_file = {TLS_KEY}" in main and f"smtpd_tls_cert_file = {TLS_CERT}" in main
    master = DRIVERS["postfix"].role_files(ROOT / "compose/postfix/mx", {}, TlsOffer(HOSTNAME, True))["master.cf"]
    assert b"\ntlsmgr " in master


def test_postfix_settings_win_over_the_tls_defaults() -> None:
    files = DRIVERS["postfix"].role_files(ROOT / "compose/postfix/mx", {"smtpd_tls_security_level": "may"},
                                          TlsOffer(HOSTNAME, True))
    assert files["main.cf"].decode().rstrip().endswith("smtpd_tls_security_level = may")


def test_exim_offers_or_requires_starttls() -> None:
    offered = _files("exim", False)
    assert "tls_advertise_hosts = *" in offered and "tls_advertise_hosts =\n" not in offered
    assert "!encrypted" not in offered
    required = _files("exim", True)
    assert "acl_check_mail:\n  deny    !encrypted = *" in required
    assert "530 5.7.0" in required


def test_opensmtpd_offers_or_requires_starttls() -> None:
    offered = _files("opensmtpd", False)
    assert f'pki {HOSTNAME} key "{TLS_KEY}"' in offered
    assert f"hostname {HOSTNAME} tls pki {HOSTNAME}" in offered
    assert f"tls-require pki {HOSTNAME}" in _files("opensmtpd", True)


def test_a_configuration_without_the_anchor_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "exim4.conf").write_text("primary_hostname = x\n")
    with pytest.raises(UsageError, match="tls_advertise_hosts"):
        DRIVERS["exim"].role_files(tmp_path, {}, TlsOffer(HOSTNAME, False))
    (tmp_path / "smtpd.conf").write_text("# listen on nothing\n")
    with pytest.raises(UsageError, match="listen on"):
        DRIVERS["opensmtpd"].role_files(tmp_path, {}, TlsOffer(HOSTNAME, False))


def _relay(mta: str, outbound: str) -> str:
    driver = DRIVERS[mta]
    files = driver.role_files(ROOT / "compose" / mta / "relay", {}, TlsOffer("relay.origin.test", False, outbound))
    return files[driver.main_file].decode()


@pytest.mark.parametrize(("outbound", "postfix", "exim", "opensmtpd"), [
    ("may", "smtp_tls_security_level = may", [], 'action "relay" relay ca mailflow-run'),
    ("encrypt", "smtp_tls_security_level = encrypt", ["hosts_require_tls = *"],
     'action "relay" relay tls no-verify ca mailflow-run'),
    ("verify", "smtp_tls_security_level = verify", ["hosts_require_tls = *", "tls_verify_hosts = *"],
     'action "relay" relay tls ca mailflow-run'),
])
def test_each_driver_sends_with_the_outbound_policy(outbound: str, postfix: str, exim: list[str],
                                                    opensmtpd: str) -> None:
    main = _relay("postfix", outbound)
    assert postfix in main and f"smtp_tls_CAfile = {TLS_CA}" in main and "smtp_tls_loglevel = 1, certmatch" in main
    assert ("smtp_tls_verify_cert_match = hostname" in main) == (outbound == "verify")
    transport = _relay("exim", outbound)
    assert "hosts_avoid_tls" not in transport and f"tls_verify_certificates = {TLS_CA}" in transport
    for option in ["hosts_require_tls = *", "tls_verify_hosts = *"]:
        assert (option in transport) == (option in exim), option
    smtpd = _relay("opensmtpd", outbound)
    assert opensmtpd in smtpd and f'ca mailflow-run cert "{TLS_CA}"' in smtpd


def test_no_outbound_policy_keeps_the_relay_in_clear() -> None:
    assert "hosts_avoid_tls = *" in DRIVERS["exim"].role_files(
        ROOT / "compose/exim/relay", {}, TlsOffer("relay.origin.test", False))["exim4.conf"].decode()
    assert "smtp_tls_security_level" not in _files("postfix", False).replace("smtpd_tls_security_level", "")


def test_an_outbound_policy_without_its_anchor_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "exim4.conf").write_text("tls_advertise_hosts =\nremote_smtp:\n  driver = smtp\n")
    with pytest.raises(UsageError, match="hosts_avoid_tls"):
        DRIVERS["exim"].role_files(tmp_path, {}, TlsOffer(HOSTNAME, False, "verify"))
    (tmp_path / "smtpd.conf").write_text('listen on 0.0.0.0\naction "local" maildir\n')
    with pytest.raises(UsageError, match=r"action \.\.\. relay"):
        DRIVERS["opensmtpd"].role_files(tmp_path, {}, TlsOffer(HOSTNAME, False, "encrypt"))


def test_no_two_certificates_of_a_topology_share_a_key_and_another_topology_reuses_them_under_its_own_ca() -> None:
    """A TLSA record made for one role must never match another role's certificate, nor one of another
    kind: within a topology every (role, kind) has a key of its own. Another topology of the process
    gets the same keys (each is 60 ms of CPU) in certificates its own CA signed."""
    first, second = RunTls("unit-keys-first"), RunTls("unit-keys-second")
    try:
        issued = {(role, kind): first.issue(role, f"{role}.example.test", kind)
                  for role in ("mx", "relay") for kind in CERTIFICATE_KINDS}
        assert len({spki_sha256(c.cert_pem) for c in issued.values()}) == len(issued)
        again = second.issue("mx", "mx.example.test", "valid")
        assert spki_sha256(again.cert_pem) == spki_sha256(issued[("mx", "valid")].cert_pem)
        leaf = x509.load_pem_x509_certificate(again.cert_pem)
        leaf.verify_directly_issued_by(second.ca.certificate)
        with pytest.raises((ValueError, InvalidSignature)):
            leaf.verify_directly_issued_by(first.ca.certificate)
    finally:
        first.remove()
        second.remove()


# --- the client's STARTTLS against aiosmtpd with TLS ----------------------------------------------


@pytest.fixture(scope="module")
def lab() -> RunTls:
    tls = RunTls("unit-client")
    yield tls
    tls.remove()


def _server_context(lab: RunTls, kind: str, hostname: str = HOSTNAME) -> ssl.SSLContext:
    credentials = lab.issue(f"server-{kind}", hostname, kind)
    directory = lab.directory / f"server-{kind}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    assert credentials.key_pem == (directory / "key.pem").read_bytes()
    return context


def _tls_step(expect_tls: TlsExpectation | None = None) -> SmtpSessionStep:
    return SmtpSessionStep(host="mx", ehlo="client.test", mail_from="alice@origin.test", rcpt_to=("bob@example.test",),
                           message=Message(headers=(("Subject", "tls"),), body=".dot\nend\n"), expect={},
                           expect_rcpt={}, mark=Mark("s.yaml", 1, 1), timeout_s=5.0, starttls=True,
                           expect_tls=expect_tls)


def _session(port: int, step: SmtpSessionStep, trust: TlsTrust) -> Transcript:
    data, message_id = render_message(step.message, mail_from=step.mail_from, rcpt_to=step.rcpt_to,
                                      domain="origin.test")

    async def main() -> Transcript:
        return await run_session(HOST, port, step, hop="client->mx", session=1, clock=lambda: 0.0,
                                 message_bytes=data, message_id=message_id, trust=trust)

    return asyncio.run(main())


def _serve(handler: Handler, context: ssl.SSLContext, *, require: bool = True) -> tuple[Controller, int]:
    port = _free_port()
    controller = Controller(handler, hostname=HOST, port=port, server_hostname=HOSTNAME, tls_context=context,
                            require_starttls=require)
    controller.start()
    return controller, port


def test_starttls_then_the_session_over_tls(lab: RunTls) -> None:
    handler = Handler()
    controller, port = _serve(handler, _server_context(lab, "valid"))
    try:
        t = _session(port, _tls_step(TlsExpectation("established")), TlsTrust(lab.ca_pem, HOSTNAME))
    finally:
        controller.stop()
    assert [e.command for e in t.exchanges] == ["CONNECT", "EHLO", "STARTTLS", "TLS", "EHLO", "MAIL", "RCPT",
                                                "DATA", "END-OF-DATA", "QUIT"]
    assert t.first("STARTTLS").code == 220  # type: ignore[union-attr]
    tls = t.first("TLS")
    assert tls is not None and tls.code is None and outcome_word(tls) == "established"
    assert f"certificate verified for {HOSTNAME}" in tls.text and "TLSv1." in tls.text
    # The second EHLO is the one over TLS: it no longer offers STARTTLS.
    assert "STARTTLS" in t.exchanges[1].text and "STARTTLS" not in t.exchanges[4].text
    assert handler.received and handler.received[0].content is not None
    assert check_session(1, _tls_step(TlsExpectation("established", r"TLSv1\.[23]")), t) == []
    assert check_session(1, _tls_step(TlsExpectation("failed")), t) != []


def test_mail_before_starttls_gets_530_from_a_server_that_requires_it(lab: RunTls) -> None:
    from tests.unit.test_smtp_client import _step

    controller, port = _serve(Handler(), _server_context(lab, "valid"))
    try:
        t = _session(port, _step(), TlsTrust(lab.ca_pem, HOSTNAME))
    finally:
        controller.stop()
    assert t.first("MAIL").code == 530  # type: ignore[union-attr]
    assert t.first("STARTTLS") is None and t.first("RCPT") is None


@pytest.mark.parametrize(("kind", "reason"), [
    ("expired", "certificate has expired"),
    ("wrong-name", "Hostname mismatch"),
    ("self-signed", "self-signed certificate"),
    ("other-ca", "certificate verify failed"),
])
def test_a_broken_certificate_is_a_failed_handshake_recorded_not_raised(lab: RunTls, kind: str, reason: str) -> None:
    handler = Handler()
    controller, port = _serve(handler, _server_context(lab, kind))
    try:
        t = _session(port, _tls_step(), TlsTrust(lab.ca_pem, HOSTNAME))
    finally:
        controller.stop()
    assert [e.command for e in t.exchanges] == ["CONNECT", "EHLO", "STARTTLS", "TLS"]
    tls = t.exchanges[-1]
    assert tls.text.startswith("TLS handshake failed: ") and reason in tls.text, tls.text
    assert outcome_word(tls) == "failed" and not handler.received
    assert check_session(1, _tls_step(TlsExpectation("failed", reason)), t) == []
    failures = check_session(1, _tls_step(TlsExpectation("established")), t)
    assert [(f.stage, f.observed) for f in failures] == [("TLS", tls.text)]


def test_a_client_without_the_run_ca_trusts_nothing(lab: RunTls) -> None:
    controller, port = _serve(Handler(), _server_context(lab, "valid"))
    try:
        t = _session(port, _tls_step(), TlsTrust(None, HOSTNAME))
    finally:
        controller.stop()
    assert t.exchanges[-1].text.startswith("TLS handshake failed: certificate verify failed: ")


def test_a_refused_starttls_ends_the_transaction_in_clear(lab: RunTls) -> None:
    from tests.unit.test_smtp_client import aiosmtpd_server

    with aiosmtpd_server(Handler()) as port:  # no tls_context: aiosmtpd answers 454 to STARTTLS
        t = _session(port, _tls_step(TlsExpectation("established")), TlsTrust(lab.ca_pem, HOSTNAME))
    assert [e.command for e in t.exchanges] == ["CONNECT", "EHLO", "STARTTLS", "QUIT"]
    assert t.first("STARTTLS").code == 454  # type: ignore[union-attr]
    failures = check_session(1, _tls_step(TlsExpectation("established")), t)
    assert failures[0].stage == "TLS" and failures[0].observed.startswith("not reached")


def test_a_starttls_step_replays_with_swaks_tls() -> None:
    from harness.report.reproduce import reproduction

    s = load_scenario(ROOT / "scenarios" / "23-mx-requires-starttls.yaml")
    plain, tls = s.steps[0], s.steps[2]
    assert isinstance(plain, SmtpSessionStep) and isinstance(tls, SmtpSessionStep)
    assert " --tls" in reproduction(s, "postfix", tls, b"Subject: x\n\nbody\n")
    assert "--tls" not in reproduction(s, "postfix", plain, b"Subject: x\n\nbody\n")


def test_what_a_killed_run_left_of_its_keys_goes_with_its_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A SIGKILLed run cannot remove its key directory; removing the run (harness down, the reaping of
    # abandoned runs) does, and touches no other run's.
    import tempfile

    from harness.tls import ca
    from harness.topology import labels

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed, other = RunTls("20261130-191500-aaaaaa"), RunTls("20261130-191500-bbbbbb")
    killed.issue("mx", "mx.example.test", "valid")
    assert ca.key_directories("20261130-191500-aaaaaa") == [killed.directory]

    class Engine:
        class api:  # stands in for the SDK's attribute
            @staticmethod
            def containers(**kwargs: object) -> list[object]:
                return []

            @staticmethod
            def networks(**kwargs: object) -> list[object]:
                return []

    labels.remove_run(Engine(), "20261130-191500-aaaaaa")  # type: ignore[arg-type]
    assert not killed.directory.exists() and other.directory.exists()
    other.remove()
