"""Judging observations about the scenario's own message; regression tests for issue 7's verdicts."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.expect.judge import body_difference, judge
from harness.observe.dsn import DeliveryStatus, parse_dsn
from harness.observe.hopmatch import select_on_hop
from harness.observe.maildir import messages_in
from harness.observe.observations import (
    BounceObservation,
    ConnectionAttempt,
    ConnectionObservation,
    DeliveredCopy,
    FoundDsn,
    HopObservation,
    MailboxObservation,
    QueuedMessage,
    QueueObservation,
    SentMessage,
    SessionObservation,
    observation_from_json,
)
from harness.observe.queue import is_bounce_about
from harness.scenario.model import (
    BounceStep,
    DeliveryStep,
    DsnCheck,
    HeaderCheck,
    HopStep,
    Mark,
    Message,
    NoBounceStep,
    NoConnectionStep,
    NoDeliveryStep,
    QueueStateStep,
    ReplyExpectation,
    SmtpSessionStep,
    Stage,
)
from harness.smtp.transcript import PENDING_TEXT, Exchange, Transcript
from harness.verify import StepRunner
from tests.mutants import mutants

MARK = Mark("s.yaml", 3, 5)
OURS = "<ours@origin.test>"
THEIRS = "<theirs@origin.test>"
DSN_FIXTURES = Path(__file__).parent / "fixtures" / "dsn"


def _sent(message_id: str = OURS, rcpt: str = "nobody@example.test", at: float = 0.0) -> SentMessage:
    eod = Exchange("client->relay", 1, "END-OF-DATA", ".", 250, "2.0.0", "2.0.0 Ok: queued", at_s=at + 0.01)
    return SentMessage(None, "client->relay", 1, message_id, "alice@origin.test", (rcpt,), None,
                       b"Message-ID: " + message_id.encode() + b"\r\n\r\nhello\r\n", eod, at)


def _ex(session: int, command: str, sent: str | None, code: int | None, at: float, message_id: str | None = None,
        text: str = "") -> Exchange:
    return Exchange("relay->mx", session, command, sent, code, None, text, (), at, message_id)


def _reused_session(*, ours_complete: bool = True) -> Transcript:
    """OpenSMTPD's way: one relay->mx connection; our message refused at RCPT (then RSET), another
    message carried in full on the same session."""
    exchanges = [
        _ex(1, "CONNECT", None, 220, 1.0), _ex(1, "EHLO", "EHLO relay", 250, 1.01),
        _ex(1, "MAIL", "MAIL FROM:<alice@origin.test>", 250, 1.02),
        _ex(1, "RCPT", "RCPT TO:<nobody@example.test>", 550, 1.03),
    ]
    if ours_complete:
        exchanges += [
            _ex(1, "RSET", "RSET", 250, 1.04),
            _ex(1, "MAIL", "MAIL FROM:<carol@origin.test>", 250, 1.05),
            _ex(1, "RCPT", "RCPT TO:<bob@example.test>", 250, 1.06),
            _ex(1, "DATA", "DATA", 354, 1.07),
            _ex(1, "END-OF-DATA", ".", 250, 1.08, THEIRS),
        ]
    return Transcript("relay->mx", 1, exchanges, closed=False)


HOP_EXPECT = {Stage.RCPT: ReplyExpectation(550), Stage.DATA: ReplyExpectation(354),
              Stage.END_OF_DATA: ReplyExpectation(250)}


def test_hop_expectation_is_judged_on_the_messages_transaction_not_the_session() -> None:
    """Verdict 1: on today's main the session's DATA 354/END-OF-DATA 250 (another message's) passed."""
    obs = select_on_hop([_reused_session()], "relay->mx", _sent())
    assert obs.matched_by == "envelope alice@origin.test -> nobody@example.test"
    assert obs.transaction == 1 and obs.complete
    failures = judge(2, HopStep("relay->mx", None, HOP_EXPECT, {}, 15, MARK), obs)
    assert [(f.stage, f.observed.split(" (")[0]) for f in failures] == [("DATA", "not reached"),
                                                                        ("END-OF-DATA", "not reached")]


def test_second_message_on_a_reused_connection_is_found_by_message_id() -> None:
    """Verdict 1: `session: 2` found "no session 2" on OpenSMTPD; the message's own transaction is found."""
    obs = select_on_hop([_reused_session()], "relay->mx", _sent(THEIRS, "bob@example.test"))
    assert obs.matched_by == f"Message-ID {THEIRS}"
    assert (obs.session, obs.transaction) == (1, 2)
    expect = {Stage.DATA: ReplyExpectation(354), Stage.END_OF_DATA: ReplyExpectation(250)}
    assert judge(2, HopStep("relay->mx", None, expect, {}, 15, MARK), obs) == []
    # CONNECT and EHLO belong to the session, and are judged with its transaction.
    assert [e.command for e in obs.exchanges][:2] == ["CONNECT", "EHLO"]


def test_explicit_session_never_mixes_two_transactions() -> None:
    obs = select_on_hop([_reused_session()], "relay->mx", _sent("<unknown@x>", "zed@example.test"), session=1)
    assert obs.matched_by == "session 1 as asked" and obs.transaction == 1
    assert "END-OF-DATA" not in [e.command for e in obs.exchanges]


def test_a_transaction_whose_content_is_another_message_is_not_ours_by_envelope() -> None:
    session = _reused_session()
    obs = select_on_hop([session], "relay->mx", SentMessage(
        None, "client->relay", 1, OURS, "carol@origin.test", ("bob@example.test",), None, b"", None, 0.0))
    assert obs.matched_by is None
    failures = judge(2, HopStep("relay->mx", None, HOP_EXPECT, {}, 15, MARK), obs)
    assert len(failures) == 1 and "session 1 #2" in failures[0].observed


def test_hop_waits_for_the_transactions_outcome() -> None:
    """Verdict 5: the capture was read once, mid-transaction; now the hop is read until its outcome."""
    reads = [[_reused_session(ours_complete=False)], [_reused_session(ours_complete=False)]]

    class Hops:
        calls = 0

        def sessions(self) -> list[Transcript]:
            Hops.calls += 1
            return reads.pop(0) if reads else [_reused_session()]

        def attempts(self) -> list[ConnectionAttempt]:
            return []

    runner = StepRunner.__new__(StepRunner)
    runner.hops = Hops()
    runner.sent = [_sent(THEIRS, "bob@example.test")]
    step = HopStep("relay->mx", None, {Stage.END_OF_DATA: ReplyExpectation(250)}, {}, 5, MARK)
    obs = runner.hop(1, step)
    assert isinstance(obs, HopObservation)
    assert Hops.calls == 3 and obs.complete and judge(1, step, obs) == []


def test_connection_without_transaction_is_matched_only_after_the_message() -> None:
    early = Transcript("relay->nomail", 1, [Exchange("relay->nomail", 1, "CONNECT", None, 521, "5.3.2", "x",
                                                     (), 0.5)], closed=True)
    late = Transcript("relay->nomail", 2, [Exchange("relay->nomail", 2, "CONNECT", None, 521, "5.3.2", "x",
                                                    (), 2.5)], closed=True)
    obs = select_on_hop([early, late], "relay->nomail", _sent(at=2.0))
    assert obs.session == 2 and obs.matched_by == "connection without a transaction"
    assert select_on_hop([early], "relay->nomail", _sent(at=2.0)).matched_by is None


def _greeted(session: int, at: float, code: int = 521, text: str = "nomail.example.test no mail here") -> Transcript:
    return Transcript("relay->nomail", session, [Exchange("relay->nomail", session, "CONNECT", None, code, None, text,
                                                          (), at)], closed=True)


GREETING_521 = HopStep("relay->nomail", None, {Stage.CONNECT: ReplyExpectation(521)}, {}, 5, MARK)


def test_a_connection_without_a_transaction_while_another_message_was_in_flight_is_judged_only_if_all_agree() -> None:
    """Two messages in flight, two connections that never reached MAIL: which is which is not on the
    wire. Alike, either one gives the verdict; unlike, the first one after the message may be the other
    message's, and taking it passed a 521 expectation while the message's own connection said 421."""
    first, second = _sent(at=1.0), _sent(THEIRS, at=1.5)
    alike = [_greeted(1, 2.0), _greeted(2, 2.1)]
    obs = select_on_hop(alike, "relay->nomail", second, rivals=[first])
    assert obs.matched_by == "connection without a transaction" and judge(4, GREETING_521, obs) == []
    unlike = [_greeted(1, 2.0), _greeted(2, 2.1, 421, "try again later")]
    for ours, theirs in ((second, first), (first, second)):
        obs = select_on_hop(unlike, "relay->nomail", ours, rivals=[theirs])
        assert obs.matched_by is None and obs.could_be == ("session 1", "session 2")
        (failure,) = judge(4, GREETING_521, obs)
        assert failure.observed.startswith("not known: session 1, session 2") and "session:" in failure.observed
        assert HopObservation.from_json(obs.to_json()) == obs


def _refused_at_rcpt(session: int, at: float, code: int) -> Transcript:
    return Transcript("relay->mx", session, [
        _ex(session, "CONNECT", None, 220, at), _ex(session, "EHLO", "EHLO relay", 250, at + 0.01),
        _ex(session, "MAIL", "MAIL FROM:<alice@origin.test>", 250, at + 0.02),
        _ex(session, "RCPT", "RCPT TO:<nobody@example.test>", code, at + 0.03),
        _ex(session, "QUIT", "QUIT", 221, at + 0.04)], closed=True)


def test_a_transaction_matched_by_envelope_while_a_message_with_that_envelope_was_in_flight_is_judged_only_if_all_agree(
        ) -> None:
    """Two messages alice -> nobody, each refused by mx at RCPT (no DATA, so no Message-ID on the wire):
    the first transaction after the second message may be the first message's."""
    first, second = _sent(at=1.0), _sent(THEIRS, at=1.5)
    refused = HopStep("relay->mx", None, {Stage.RCPT: ReplyExpectation(550)}, {}, 5, MARK)
    alike = [_refused_at_rcpt(1, 2.0, 550), _refused_at_rcpt(2, 2.5, 550)]
    obs = select_on_hop(alike, "relay->mx", second, rivals=[first])
    assert (obs.session, obs.matched_by) == (1, "envelope alice@origin.test -> nobody@example.test")
    assert judge(3, refused, obs) == []
    unlike = [_refused_at_rcpt(1, 2.0, 550), _refused_at_rcpt(2, 2.5, 450)]
    obs = select_on_hop(unlike, "relay->mx", second, rivals=[first])
    assert obs.matched_by is None and obs.could_be == ("session 1 #1", "session 2 #1")
    assert judge(3, refused, obs)[0].observed.startswith("not known: session 1 #1, session 2 #1")
    # Another envelope in flight is no rival; nor is a message alone.
    other = SentMessage(None, "client->relay", 2, THEIRS, "carol@origin.test", ("nobody@example.test",), None, b"",
                        first.end_of_data, 1.0)
    for rivals in ([other], []):
        obs = select_on_hop(unlike, "relay->mx", second, rivals=rivals)
        assert obs.session == 1 and judge(3, refused, obs) == []


def test_later_connections_of_a_message_alone_in_flight_do_not_hide_its_first() -> None:
    """Its own retries (or a rival refused by the client's MTA, or one sent after the connection opened)
    make nothing ambiguous: the first connection after the message is its own."""
    unlike = [_greeted(1, 2.0), _greeted(2, 9.0, 421, "try again later")]
    refused = replace(_sent(THEIRS, at=0.5), end_of_data=None)
    later = _sent(THEIRS, at=5.0)
    for rivals in ([], [refused], [later]):
        obs = select_on_hop(unlike, "relay->nomail", _sent(at=1.0), rivals=rivals)
        assert (obs.session, obs.matched_by) == (1, "connection without a transaction"), rivals
        assert judge(4, GREETING_521, obs) == []


def _dsn_found(path: str = "new/1") -> FoundDsn:
    status = parse_dsn((DSN_FIXTURES / "postfix-nullmx.eml").read_bytes())
    assert status is not None
    return FoundDsn(path, "Message-ID in the returned headers", dict(status.per_message), tuple(status.recipients))


def test_no_bounce_fails_when_a_dsn_about_the_message_arrived() -> None:
    """Verdict 2: no_delivery looked for the message's own Message-ID, which a DSN does not carry."""
    step = NoBounceStep("relay", "alice@origin.test", 3, MARK)
    failures = judge(4, step, BounceObservation("relay", "alice@origin.test", OURS, (_dsn_found(),), 0.1))
    assert len(failures) == 1 and "Status: 5.1.0" in failures[0].observed
    assert judge(4, step, BounceObservation("relay", "alice@origin.test", OURS, (), 3.0)) == []


def test_a_real_dsn_is_about_its_message_and_not_another() -> None:
    status = parse_dsn((DSN_FIXTURES / "postfix-nullmx.eml").read_bytes())
    assert status is not None
    assert status.about("<a9030d10-e83d-4de6-bde9-de189cd5d8d1@origin.test>")
    assert not status.about(OURS)


def test_queued_bounce_is_tied_to_its_message() -> None:
    """Verdict 4: queue_state looked only for the original message, never the DSN stuck behind it."""
    dsn = QueuedMessage("7F1", "deferred", "<dsn@relay>", ("521 5.3.2",), "", ("x@sendonly.test",),
                        ("<dsn@relay>", OURS))
    other = QueuedMessage("7F2", "deferred", "<dsn2@relay>", ("521",), "", ("x@sendonly.test",),
                          ("<dsn2@relay>", THEIRS))
    original = QueuedMessage("7F3", "deferred", OURS, (), "x@sendonly.test", ("y@example.test",), (OURS,))
    message = _sent()
    assert [is_bounce_about(q, message) for q in (dsn, other, original)] == [True, False, False]
    step = QueueStateStep("relay", "deferred", "521", 5, MARK, of="bounce")
    assert judge(3, step, QueueObservation("relay", "bounce", (dsn,), 0.5)) == []
    assert judge(3, step, QueueObservation("relay", "bounce", (), 5.0))[0].expected.startswith(
        "a DSN about the message deferred")


def _copy(raw: bytes, path: str = "new/1") -> DeliveredCopy:
    return DeliveredCopy("bob@example.test", path, raw)


def test_copies_counts_every_copy_of_the_message() -> None:
    message = _sent(rcpt="bob@example.test")
    step = DeliveryStep("mx", "bob@example.test", 10, (), True, MARK, copies=1)
    one = MailboxObservation("mx", "bob@example.test", message, (_copy(message.content),), 0.2)
    two = MailboxObservation("mx", "bob@example.test", message, (_copy(message.content),
                                                                 _copy(message.content, "new/2")), 0.2)
    assert judge(5, step, one) == []
    assert judge(5, step, two)[0].expected == "1 copy in bob@example.test on mx"


def test_body_difference_names_line_and_column() -> None:
    sent = b"short\n" + b"x" * 1500 + b"\n"
    got = b"short\n" + b"x" * 998 + b"\n" + b"x" * 502 + b"\n"
    text = body_difference(sent, got)
    assert text is not None and text.startswith("body line 2, column 999 differs (sent 1500 bytes, delivered 998)")
    assert len(text) < 200


def test_no_connection_fails_on_any_attempt() -> None:
    step = NoConnectionStep("relay", "nullmx.test", None, 2, MARK)
    attempt = ConnectionAttempt("relay", "10.0.0.9", "10.0.0.9", 25, 0.7)
    assert judge(1, step, ConnectionObservation("relay", "anything", (attempt,), 0.7))
    assert judge(1, step, ConnectionObservation("relay", "anything", (), 2.0)) == []


def test_no_reply_expectations_match_how_the_connection_ended() -> None:
    refused = HopObservation("relay->dead", 1, None, "connection without a transaction",
                             (Exchange("relay->dead", 1, "CONNECT", None, None, None, "connection refused"),),
                             True, ("relay->dead",), complete=True)
    step = HopStep("relay->dead", None, {Stage.CONNECT: ReplyExpectation(None, no_reply="refused")}, {}, 5, MARK)
    assert judge(1, step, refused) == []
    silent = HopStep("relay->dead", None, {Stage.CONNECT: ReplyExpectation(None, no_reply="no-answer")}, {}, 5, MARK)
    assert judge(1, silent, refused)


@pytest.mark.parametrize("obs", [
    MailboxObservation("mx", None, _sent(), (_copy(b"a\r\n\r\nb"),), 0.3, ("relay 1 deferred",)),
    BounceObservation("relay", "a@b", OURS, (_dsn_found(),), 1.0),
    QueueObservation("relay", "bounce", (QueuedMessage("1", "deferred", None, ("r",), "", ("a",), (OURS,)),), 1),
])
def test_observations_round_trip_through_json(obs: MailboxObservation | BounceObservation | QueueObservation
                                               ) -> None:
    assert observation_from_json(obs.to_json()) == obs


def test_every_mutant_of_a_passing_step_fails() -> None:
    message = _sent(rcpt="bob@example.test")
    step = DeliveryStep("mx", "bob@example.test", 10, (), True, MARK, copies=1)
    obs = MailboxObservation("mx", "bob@example.test", message, (_copy(message.content),), 0.2)
    assert judge(1, step, obs) == []
    assert all(judge(1, mutant, obs) for _, mutant in mutants(step))
    nothing = MailboxObservation("mx", "bob@example.test", message, (), 3.0)
    none_step = NoDeliveryStep("mx", "bob@example.test", 3, MARK)
    assert judge(1, none_step, nothing) == [] and all(judge(1, m, nothing) for _, m in mutants(none_step))
    bounce = BounceStep("relay", "alice@origin.test", 5, (), MARK)
    found = BounceObservation("relay", "alice@origin.test", OURS, (_dsn_found(),), 0.1)
    assert all(judge(1, m, found) for _, m in mutants(bounce))


def test_copies_are_not_settled_while_the_message_is_still_queued() -> None:
    message = _sent(rcpt="bob@example.test")
    step = DeliveryStep("mx", "bob@example.test", 10, (), True, MARK, copies=1)
    pending = MailboxObservation("mx", "bob@example.test", message, (_copy(message.content),), 10.0,
                                 ("mx 4F1 deferred",))
    (failure,) = judge(5, step, pending)
    assert failure.observed.endswith("still queued: mx 4F1 deferred")


def test_a_refused_message_is_decided_at_once_and_an_unanswered_one_is_not() -> None:
    refused = replace(_sent(), end_of_data=Exchange("client->relay", 1, "END-OF-DATA", ".", 552, "5.3.4", "too big"))
    never_sent = replace(_sent(), end_of_data=None)
    unanswered = replace(_sent(), end_of_data=Exchange("client->relay", 1, "END-OF-DATA", ".", None, None,
                                                       "timed out after 30 s"))
    assert refused.refused and never_sent.refused
    assert not unanswered.refused and not _sent().refused
    runner = StepRunner.__new__(StepRunner)
    assert runner._bound(10, refused) == 0 and runner._bound(10, unanswered) == 10


def test_a_transaction_waiting_for_its_end_of_data_reply_is_not_complete() -> None:
    session = Transcript("relay->mx", 1, [
        _ex(1, "CONNECT", None, 220, 1.0), _ex(1, "MAIL", "MAIL FROM:<alice@origin.test>", 250, 1.02),
        _ex(1, "RCPT", "RCPT TO:<bob@example.test>", 250, 1.03), _ex(1, "DATA", "DATA", 354, 1.04),
        _ex(1, "END-OF-DATA", ".", None, 1.05, THEIRS,
            text="no reply yet: the client had closed its side, the server not yet, when the capture was read"),
    ])
    obs = select_on_hop([session], "relay->mx", _sent(THEIRS, "bob@example.test"))
    assert obs.matched_by is not None and not obs.complete


def test_a_transaction_ended_by_rset_is_complete_only_once_the_rset_has_its_reply() -> None:
    """The isolation test once saw "RSET 250" in one mode and "RSET: no reply yet" in the other: a hop
    step had been settled on a capture read between Postfix's RSET and its reply."""
    refused = [_ex(1, "CONNECT", None, 220, 1.0), _ex(1, "EHLO", "EHLO relay", 250, 1.01),
               _ex(1, "MAIL", "MAIL FROM:<alice@origin.test>", 250, 1.02),
               _ex(1, "RCPT", "RCPT TO:<nobody@example.test>", 550, 1.03),
               _ex(1, "DATA", "DATA", 554, 1.03)]
    in_flight = Transcript("relay->mx", 1, [*refused, _ex(1, "RSET", "RSET", None, 1.04, text=PENDING_TEXT)],
                           closed=False)
    answered = Transcript("relay->mx", 1, [*refused, _ex(1, "RSET", "RSET", 250, 1.04)], closed=False)
    assert not select_on_hop([in_flight], "relay->mx", _sent()).complete
    settled = select_on_hop([answered], "relay->mx", _sent())
    assert settled.complete and [(e.command, e.code) for e in settled.exchanges][-1] == ("RSET", 250)


# --- every reply an expectation names is judged (audit of 2026-12-02) ---------------------------------

def _client(*exchanges: tuple[str, str | None, int]) -> SessionObservation:
    return SessionObservation("client->relay", 1, tuple(
        Exchange("client->relay", 1, command, sent, code, None, "") for command, sent, code in exchanges), OURS)


def _session_step(rcpt_to: tuple[str, ...], expect: dict[Stage, ReplyExpectation], *,
                  starttls: bool = False) -> SmtpSessionStep:
    return SmtpSessionStep("relay", "client.origin.test", "alice@origin.test", rcpt_to, Message((), ""), expect, {},
                           MARK, starttls=starttls)


def test_each_recipient_of_the_client_is_judged_on_its_own_rcpt_also_two_spellings_of_one_address() -> None:
    # Scenario 18 names bob@ and Bob@: the second RCPT's reply was never judged (both looked up the first).
    step = _session_step(("bob@example.test", "Bob@example.test"), {Stage.RCPT: ReplyExpectation(250)})
    obs = _client(("CONNECT", None, 220), ("EHLO", "EHLO c", 250), ("MAIL", "MAIL FROM:<alice@origin.test>", 250),
                  ("RCPT", "RCPT TO:<bob@example.test>", 250), ("RCPT", "RCPT TO:<Bob@example.test>", 452))
    assert [(f.stage, f.observed) for f in judge(1, step, obs)] == [("RCPT <Bob@example.test>", "452")]
    # A recipient the session never named is not reached, whatever the others got.
    cut = replace(obs, exchanges=obs.exchanges[:4])
    assert [(f.stage, f.observed.split(" (")[0]) for f in judge(1, step, cut)] == [
        ("RCPT <Bob@example.test>", "not reached")]


def test_the_ehlo_after_starttls_is_judged_too() -> None:
    step = _session_step(("bob@example.test",), {Stage.EHLO: ReplyExpectation(250)}, starttls=True)
    obs = _client(("CONNECT", None, 220), ("EHLO", "EHLO c", 250), ("STARTTLS", "STARTTLS", 220),
                  ("EHLO", "EHLO c", 554))
    assert [(f.stage, f.observed) for f in judge(1, step, obs)] == [("EHLO", "554")]


def _hop_obs(*exchanges: Exchange) -> HopObservation:
    return HopObservation("relay->mx", 1, None, "connection without a transaction", exchanges, True, ("relay->mx",),
                          (), True)


def test_a_hop_rcpt_expectation_on_a_session_that_named_no_recipient_is_not_reached() -> None:
    # A 521 greeting, or a session encrypted after STARTTLS: no RCPT to judge is never a pass.
    obs = _hop_obs(_ex(1, "CONNECT", None, 521, 1.0), _ex(1, "QUIT", "QUIT", None, 1.1))
    for expect, rcpt in (({Stage.RCPT: ReplyExpectation(250)}, {}), ({}, {"bob@example.test": ReplyExpectation(250)})):
        failures = judge(2, HopStep("relay->mx", None, expect, rcpt, 15, MARK), obs)
        assert [f.observed.split(" (")[0] for f in failures] == ["not reached"]


def test_a_hop_recipients_expectation_judges_every_rcpt_naming_it_case_aside_and_only_those() -> None:
    obs = _hop_obs(_ex(1, "CONNECT", None, 220, 1.0), _ex(1, "MAIL", "MAIL FROM:<a@origin.test>", 250, 1.01),
                   _ex(1, "RCPT", "RCPT TO:<bob@example.test>", 250, 1.02),
                   _ex(1, "RCPT", "RCPT TO:<carol@example.test>", 550, 1.03))
    step = HopStep("relay->mx", None, {Stage.RCPT: ReplyExpectation(550)},
                   {"Bob@Example.test": ReplyExpectation(550), "dave@example.test": ReplyExpectation(550)}, 15, MARK)
    assert [(f.stage, f.observed.split(" (")[0]) for f in judge(2, step, obs)] == [
        ("RCPT <Bob@Example.test>", "250"), ("RCPT <dave@example.test>", "not reached")]


def test_exactly_n_copies_counts_a_copy_delivered_between_the_mailbox_read_and_the_queue_listing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The mailbox read first (one copy), then the second copy written and its queue entry gone just as the
    # queues were listed: "one copy, queued nowhere" passed `copies: 1` with two in the mailbox.
    copy = b"Message-ID: " + OURS.encode() + b"\nFrom: alice@origin.test\n\nhello\n"
    files = {"mail/example.test/bob/new/1": copy}
    queued = [True]

    def listing(host: object, message: SentMessage, *subjects: str) -> list[QueuedMessage]:
        if queued[0]:
            files["mail/example.test/bob/new/2"] = copy
            queued[0] = False
        return []

    class Host:
        role, mta = "mx", "postfix"

        def read_tree(self, path: str) -> dict[str, bytes]:
            return dict(files)

    monkeypatch.setattr("harness.verify.queue_entries", listing)
    runner = StepRunner.__new__(StepRunner)
    runner.topology = SimpleNamespace(hosts={"mx": Host()})
    runner.sent, runner.mail_events, runner.faulted = [_sent(rcpt="bob@example.test")], {}, set()
    step = DeliveryStep("mx", "bob@example.test", 0.3, (), True, MARK, copies=1)
    obs = runner.mailbox(1, step)
    assert isinstance(obs, MailboxObservation) and len(obs.copies) == 2
    assert [f.observed.split(":")[0] for f in judge(1, step, obs)] == ["2"]


def test_no_connection_waits_while_any_message_of_the_scenario_is_held_not_only_the_last() -> None:
    # The last message refused (so decided "at once"), an earlier one still queued: its retry connects later.
    began = time.monotonic()

    class Hops:
        def attempts(self) -> list[ConnectionAttempt]:
            late = time.monotonic() - began >= 1.0  # after the capture's lag the verdict waits out, too
            return [ConnectionAttempt("relay", "mx", "10.0.0.3", 25, 1.0)] if late else []

    def refused(message_id: str) -> SentMessage:
        return replace(_sent(message_id), end_of_data=Exchange("client->relay", 1, "END-OF-DATA", ".", 550,
                                                                "5.7.1", "no"))

    runner = StepRunner.__new__(StepRunner)
    runner.hops, runner.topology = Hops(), SimpleNamespace(address=lambda role: "10.0.0.3")
    runner.sent = [_sent(OURS), refused(THEIRS)]
    runner._nowhere = lambda message, **_: (lambda: message.message_id != OURS)  # type: ignore[method-assign]
    step = NoConnectionStep("relay", None, "mx", 3.0, MARK)
    obs = runner.no_connection(1, step)
    assert isinstance(obs, ConnectionObservation) and obs.attempts
    assert judge(1, step, obs)


def test_an_earlier_transaction_with_the_same_envelope_is_not_the_messages() -> None:
    # Message 1 refused at RCPT on the hop at 1.0 s; message 2, same envelope, sent at 5.0 s and never relayed.
    session = _reused_session(ours_complete=False)
    assert select_on_hop([session], "relay->mx", _sent(at=0.5)).matched_by is not None
    later = select_on_hop([session], "relay->mx", _sent("<second@origin.test>", at=5.0))
    assert later.matched_by is None
    assert judge(2, HopStep("relay->mx", None, HOP_EXPECT, {}, 15, MARK), later)


def test_an_explicit_session_whose_first_transaction_carried_another_message_is_not_judged_for_ours() -> None:
    session = Transcript("relay->mx", 1, [
        _ex(1, "CONNECT", None, 220, 1.0), _ex(1, "MAIL", "MAIL FROM:<carol@origin.test>", 250, 1.01),
        _ex(1, "RCPT", "RCPT TO:<dave@example.test>", 250, 1.02), _ex(1, "DATA", "DATA", 354, 1.03),
        _ex(1, "END-OF-DATA", ".", 250, 1.04, THEIRS)], closed=True)
    obs = select_on_hop([session], "relay->mx", _sent(OURS, "bob@example.test"), session=1)
    assert obs.matched_by is None
    failures = judge(2, HopStep("relay->mx", 1, {Stage.END_OF_DATA: ReplyExpectation(250)}, {}, 15, MARK), obs)
    assert len(failures) == 1 and "not seen" in failures[0].observed and THEIRS in failures[0].observed


def _dsn(per_message: str, recipient: str) -> DeliveryStatus:
    """A DSN of one per-message block (the Reporting-MTA, then ``per_message``) and one recipient block."""
    status = parse_dsn(f"""Message-ID: <dsn@relay>
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.origin.test
{per_message}
{recipient}

--B--
""".encode())
    assert status is not None
    return status


def test_a_dsn_echoing_an_envelope_id_is_not_about_a_message_sent_without_one() -> None:
    status = _dsn("Original-Envelope-Id: first-message\n",
                  "Final-Recipient: rfc822; x@sendonly.test\nAction: failed\nStatus: 5.0.0")
    assert status.about(OURS, envelope_id="first-message", recipients=["x@sendonly.test"]) is not None
    assert status.about(OURS, recipients=["x@sendonly.test"]) is None  # the recipient alone matched it


def test_a_queued_dsn_that_returned_no_headers_is_tied_to_its_message_by_the_sender() -> None:
    # Its own Message-ID is all it mentions: the recipient fallback applies (it never did).
    dsn = QueuedMessage("7F1", "deferred", "<dsn@relay>", ("521",), "", ("alice@origin.test",), ("<dsn@relay>",))
    assert is_bounce_about(dsn, _sent())
    assert not is_bounce_about(replace(dsn, mentions=("<dsn@relay>", THEIRS)), _sent())


def test_every_copy_is_checked_not_only_the_first() -> None:
    good = DeliveredCopy("bob@example.test", "new/1", b"Message-ID: " + OURS.encode() + b"\nSubject: hi\n\nhello\r\n")
    bad = replace(good, path="new/2", raw=good.raw.replace(b"Subject: hi", b"Subject: [SPAM] hi"))
    step = DeliveryStep("mx", "bob@example.test", 5, (HeaderCheck("Subject", "^hi$"),), False, MARK)
    obs = MailboxObservation("mx", "bob@example.test", _sent(), (good, bad), 0.1)
    assert [f.observed for f in judge(1, step, obs)] == ["Subject: [SPAM] hi (new/2)"]


def test_a_bounce_step_naming_no_action_wants_a_failure_not_a_delay_warning() -> None:
    warning = _dsn("", "Final-Recipient: rfc822; nobody@example.test\nAction: delayed\nStatus: 4.4.1")
    found = FoundDsn("new/1", "Final-Recipient", dict(warning.per_message), tuple(warning.recipients))
    obs = BounceObservation("relay", "alice@origin.test", OURS, (found,), 0.5)
    bare = BounceStep("relay", "alice@origin.test", 5, (), MARK)
    (failure,) = judge(1, bare, obs)
    assert "Action /^failed$/" in failure.expected and "Action: delayed" in failure.observed
    assert judge(1, replace(bare, checks=(DsnCheck("Action", "^delayed$"),)), obs) == []


def test_no_connection_is_unknown_when_a_capture_lost_packets() -> None:
    class Hops:
        def attempts(self) -> list[ConnectionAttempt]:
            return []

        def dropped(self) -> dict[str, int]:
            return {"relay": 3}

    runner = StepRunner.__new__(StepRunner)
    runner.hops, runner.topology, runner.sent = Hops(), SimpleNamespace(address=lambda role: "10.0.0.3"), []
    step = NoConnectionStep("relay", None, "mx", 0.1, MARK)
    obs = runner.no_connection(1, step)
    assert isinstance(obs, ConnectionObservation) and obs.lost == (("relay", 3),)
    (failure,) = judge(1, step, obs)
    assert failure.observed.startswith("unknown: the captures lost packets (relay's 3 packet(s)")
    again = observation_from_json(obs.to_json())
    assert isinstance(again, ConnectionObservation) and again.lost == obs.lost
    assert judge(1, step, replace(obs, lost=())) == []


def test_a_copy_in_a_mailbox_directory_spelled_in_capitals_is_that_mailboxs() -> None:
    # A configuration of the user's own may keep mail/Example.Test/Bob/: `no_delivery` into
    # bob@example.test must see that copy, not pass.
    copy = b"Message-ID: " + OURS.encode() + b"\n\nhello\n"
    (found,) = messages_in("mx", {"mail/Example.Test/Bob/new/1": copy})
    assert found.mailbox == "bob@example.test" and found.path == "mail/Example.Test/Bob/new/1"


def test_a_message_waiting_in_one_queue_is_found_there_first_and_gone_only_after_two_full_rounds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Deferred on the relay for a whole "no delivery" bound: once found there, one listing per look.
    holder = ["relay"]
    listed: list[str] = []

    def listing(host: SimpleNamespace, message: SentMessage, *subjects: str) -> list[QueuedMessage]:
        listed.append(host.role)
        return [QueuedMessage("Q1", "deferred", OURS, (), "", ("bob@example.test",), ())] \
            if host.role in holder else []

    monkeypatch.setattr("harness.verify.queue_entries", listing)
    runner = StepRunner.__new__(StepRunner)
    roles = ("mx", "relay", "nomail")
    runner.topology = SimpleNamespace(hosts={r: SimpleNamespace(role=r, mta="postfix") for r in roles})
    runner.faulted, runner._holder = set(), {}
    gone = runner._nowhere(_sent())
    assert not gone() and "relay" in listed
    listed.clear()
    assert not gone() and listed == ["relay"]
    # Handed on to mx: the relay, listed first, no longer has it, and a round finds it on mx.
    holder[:] = ["mx"]
    listed.clear()
    assert not gone() and listed[0] == "relay" and "mx" in listed
    listed.clear()
    assert not gone() and listed == ["mx"]
    # Nowhere: gone only after both rounds found nothing on every host.
    holder.clear()
    listed.clear()
    assert gone() and sorted(listed) == ["mx", "mx", "mx", "nomail", "nomail", "relay", "relay"]


def test_a_message_handed_on_between_two_listings_is_not_taken_for_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The relay hands it to mx once each round has listed its first host: a round that lists mx before
    # the relay misses it (mx still empty, then the relay empty); the other, the relay first, cannot.
    # Two rounds in the same order would both miss it.
    holder = ["relay"]
    lock = threading.Lock()
    seen: set[int] = set()
    both_started = threading.Barrier(2)

    def listing(host: SimpleNamespace, message: SentMessage, *subjects: str) -> list[QueuedMessage]:
        with lock:
            held = host.role in holder
            first = threading.get_ident() not in seen
            seen.add(threading.get_ident())
        if first:
            with contextlib.suppress(threading.BrokenBarrierError):
                both_started.wait(timeout=1.0)
            with lock:
                holder[:] = ["mx"]  # at once: a sender keeps it until the receiver has it
        return [QueuedMessage("Q1", "deferred", OURS, (), "", ("bob@example.test",), ())] if held else []

    monkeypatch.setattr("harness.verify.queue_entries", listing)
    runner = StepRunner.__new__(StepRunner)
    runner.topology = SimpleNamespace(hosts={r: SimpleNamespace(role=r, mta="postfix") for r in ("mx", "relay")})
    runner.faulted, runner._holder = set(), {}
    assert not runner._nowhere(_sent())()
