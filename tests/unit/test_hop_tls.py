"""What a hop did about TLS: the hop step's tls and cleartext keys, loaded with their locations and
judged on the wire's account (the handshake's outcome and version) and the sending MTA's log line
about the message (whether it verified the certificate). No Docker."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.errors import ScenarioError
from harness.expect.judge import judge
from harness.observe.observations import HopObservation, tls_decided
from harness.observe.smtpstream import TLS_TEXT
from harness.observe.tlslog import HopTlsLog
from harness.scenario.loader import load_scenario
from harness.scenario.model import HopStep, Mark, TlsExpectation
from harness.smtp.transcript import TLS_ESTABLISHED, TLS_FAILED, Exchange

MARK = Mark("s.yaml", 9, 5)
HOP = "relay->mx"
HEAD = ("name: n\ndescription: d\ntls:\n  mx: {certificate: valid}\n  relay: {outbound: verify}\nsteps:\n"
        "  - smtp:\n      host: relay\n      mail_from: alice@origin.test\n      rcpt_to: [bob@example.test]\n")


def _ex(command: str, code: int | None, text: str = "ok") -> Exchange:
    return Exchange(hop=HOP, session=1, command=command, sent=None, code=code, enhanced=None, text=text)


ON_WIRE = f"{TLS_ESTABLISHED}: TLSv1.3 TLS_AES_256_GCM_SHA384 (seen on the wire)"
VERIFIED = HopTlsLog("mx.example.test", "TLSv1.3", "TLS_AES_256_GCM_SHA384", "verified",
                     "250 2.0.0 Ok: queued as 4Xyz",
                     "postfix/smtp[88]: Verified TLS connection established to mx.example.test[172.28.0.11]:25",
                     "sent")


def _obs(tls_text: str | None = ON_WIRE, log: HopTlsLog | None = VERIFIED, in_clear: tuple[int, ...] = ()
         ) -> HopObservation:
    exchanges = [_ex("CONNECT", 220), _ex("EHLO", 250)]
    if tls_text is not None:
        exchanges += [_ex("STARTTLS", 220), _ex("TLS", None, tls_text)]
    else:
        exchanges += [_ex("QUIT", 221)]
    return HopObservation(HOP, 1, None, "connection without a transaction", tuple(exchanges), True, (HOP,),
                          complete=True, in_clear=in_clear, tls_log=log)


def _step(tls: TlsExpectation | None = None, cleartext: bool | None = None) -> HopStep:
    return HopStep(HOP, None, {}, {}, 15, MARK, tls=tls, cleartext=cleartext)


def _observed(step: HopStep, obs: HopObservation) -> list[str]:
    return [f.observed for f in judge(4, step, obs)]


def test_an_established_verified_hop_passes_and_each_difference_fails() -> None:
    want = TlsExpectation("established", version="TLSv1.3", verified=True)
    assert judge(4, _step(want), _obs()) == []
    # What would make it fail, each on its own:
    assert _observed(_step(want), _obs(log=replace(VERIFIED, trust="untrusted")))[0].startswith(
        "the sender's log says untrusted")
    assert _observed(_step(want), _obs(f"{TLS_FAILED}: the server's alert handshake_failure (40)"))[0].startswith(
        "TLS failed")
    assert _observed(_step(want), _obs(None))[0].startswith("TLS none")
    assert _observed(_step(want), _obs(f"{TLS_ESTABLISHED}: TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384",
                                       log=replace(VERIFIED, version="TLSv1.2")))[0].startswith("not TLSv1.3")
    assert "nothing in the sender's log" in _observed(_step(want), _obs(log=None))[0]
    # A handshake the wire has not decided yet is "started", never "established".
    assert _observed(_step(want), _obs(TLS_TEXT))[0].startswith("TLS started")


def test_dane_is_judged_on_how_the_sender_matched_the_certificate() -> None:
    want = TlsExpectation("established", verified=True, dane=True)
    assert judge(4, _step(want), _obs(log=replace(VERIFIED, dane=True))) == []
    # Verified by the run's CA and the name: not DANE.
    ca_only = _obs(log=replace(VERIFIED, dane=False))
    assert "no TLSA record matched (trust: verified)" in _observed(_step(want), ca_only)[0]
    # A log that cannot tell (Postfix without certmatch) fails rather than guesses.
    assert "does not say how it matched" in _observed(_step(want), _obs(log=replace(VERIFIED, dane=None)))[0]
    assert "nothing in the sender's log" in _observed(_step(want), _obs(log=None))[0]
    # dane: false fails on a DANE match.
    assert "matched a TLSA record" in _observed(_step(TlsExpectation("established", dane=False)),
                                                _obs(log=replace(VERIFIED, dane=True)))[0]
    assert str(want) == "TLS established verified by the sender DANE-authenticated"


def test_the_failure_reads_the_wire_and_the_senders_log_line() -> None:
    failure = judge(4, _step(TlsExpectation("established", verified=False)), _obs())[0]
    assert (failure.kind, failure.stage, failure.hop) == ("hop", "TLS", HOP)
    assert failure.expected == "TLS established not verified by the sender"
    assert ON_WIRE in failure.observed and "relay's log: postfix/smtp[88]: Verified TLS" in failure.observed


def test_a_reason_is_searched_in_the_whole_account() -> None:
    assert judge(4, _step(TlsExpectation("established", reason="Verified TLS")), _obs()) == []
    assert _observed(_step(TlsExpectation("established", reason="Anonymous")), _obs())[0].startswith(
        "no /Anonymous/ in it")


def test_no_tls_and_no_mail_in_clear() -> None:
    never = _step(TlsExpectation("none"), cleartext=False)
    assert judge(4, never, _obs(None, log=None)) == []
    assert _observed(never, _obs(None, log=None, in_clear=(2,))) == ["MAIL in clear on session(s) 2"]
    assert _observed(never, _obs())[0].startswith("TLS established")


def test_tls_is_decided_by_the_handshakes_outcome_or_the_end_of_the_session() -> None:
    assert tls_decided(_obs()) and tls_decided(_obs(f"{TLS_FAILED}: closed"))
    assert not tls_decided(_obs(TLS_TEXT))
    assert tls_decided(_obs(None))  # closed without STARTTLS: nothing more will come
    assert not tls_decided(replace(_obs(None), closed=False, complete=False))


def test_the_observation_keeps_the_log_facts_in_json() -> None:
    obs = _obs(in_clear=(1, 3))
    assert HopObservation.from_json(obs.to_json()) == obs


def test_hop_tls_and_cleartext_load(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + "  - hop:\n      hop: relay->mx\n      tls: {outcome: established, version: TLSv1.3, "
                    "verified: true}\n      cleartext: false\n", encoding="utf-8")
    scenario = load_scenario(path)
    step = scenario.steps[1]
    assert isinstance(step, HopStep)
    assert step.tls == TlsExpectation("established", version="TLSv1.3", verified=True)
    assert step.cleartext is False and step.expect == {}
    assert scenario.tls["relay"].outbound == "verify"


@pytest.mark.parametrize(("hop", "where", "words"), [
    ("      tls: {outcome: failed, version: TLSv1.2}\n", (13, 7), "known only for an established session"),
    ("      tls: {outcome: none, verified: false}\n", (13, 7), "no certificate to verify"),
    ("      tls: {outcome: none, dane: false}\n", (13, 7), "tls 'none' with dane"),
    ("      tls: {outcome: established, dane: maybe}\n", (13, 41), "true or false"),
    ("      tls: sometimes\n", (13, 12), "established, failed or none"),
    ("      tls: {outcome: established, version: SSLv3}\n", (13, 44), "TLSv1.3, TLSv1.2"),
    ("      within: 3\n", (12, 7), "checks nothing: give it expect"),
])
def test_bad_hop_tls_is_located(tmp_path: Path, hop: str, where: tuple[int, int], words: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + "  - hop:\n      hop: relay->mx\n" + hop, encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert (info.value.line, info.value.col) == where, info.value
    assert words in str(info.value)


def test_bad_outbound_is_located(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(HEAD.replace("outbound: verify", "outbound: always") + "  - delivery:\n      host: mx\n"
                    "      mailbox: bob@example.test\n", encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert (info.value.line, info.value.col) == (5, 21)
    assert "may, encrypt, verify, dane or mta-sts" in str(info.value)
