"""Which transaction on a hop carried the scenario's message. Pure: decoded sessions in, one
``HopObservation`` out.

An MTA may carry several messages over one connection (OpenSMTPD reuses relay->mx sessions; Postfix
can, with its connection cache), so a hop expectation is judged against one *transaction*, never a
whole session: the one whose DATA content has the message's Message-ID, else the one whose envelope
is the message's (sender and one of its recipients). A session that never reached MAIL (a 521
greeting, a refused connection) can only be matched as a connection, opened after the message was
accepted by the client's session. While another message of the scenario was in flight (for an
envelope match: one with the same envelope), such a connection or transaction may be that one's: the
first one after the message is taken only when every one that could be the message's shows the same
exchanges (then the verdict is the same whichever it was); otherwise the observation names them all
and matches none.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.observe.maildir import same_message_id
from harness.observe.observations import HopObservation, SentMessage
from harness.smtp.transcript import Transaction, Transcript

__all__ = ["select_on_hop"]


def _observation(hop: str, transcript: Transcript, transaction: Transaction | None, matched_by: str,
                 hops_seen: tuple[str, ...], others: tuple[tuple[int, int, str | None], ...]) -> HopObservation:
    exchanges = list(transcript.connection_stages())
    if transaction is not None:
        exchanges += list(transaction.exchanges)
    exchanges.sort(key=lambda e: transcript.exchanges.index(e))
    complete = transcript.closed or (transaction is not None and transaction.complete)
    return HopObservation(hop, transcript.session, transaction.number if transaction else None, matched_by,
                          tuple(exchanges), transcript.closed, hops_seen, others, complete)


def _by_message_id(transactions: Sequence[Transaction], message: SentMessage) -> Transaction | None:
    return next((t for t in transactions if same_message_id(t.message_id, message.message_id)), None)


def _same_envelope(t: Transaction, message: SentMessage) -> bool:
    return t.mail_from.lower() == message.mail_from.lower() \
        and bool({r.lower() for r in message.rcpt_to} & {r.lower() for r in t.recipients})


def _by_envelope(transactions: Sequence[Transaction], message: SentMessage) -> list[Transaction]:
    """The transactions that can be the message's by its envelope, earliest first: only those that never
    carried another message's content (one that did is not ours), and none begun before the client's
    session did (an earlier message's with the same envelope)."""
    return [t for t in transactions if t.message_id is None and _same_envelope(t, message)
            and not (t.exchanges and t.exchanges[0].at_s < message.sent_at_s)]


def _seen_as(obs: HopObservation) -> tuple[tuple[str, str | None, int | None, str | None, str], ...]:
    """What a verdict on an observation can depend on: its exchanges, without their times and session."""
    return tuple((e.command, e.sent, e.code, e.enhanced, e.text) for e in obs.exchanges)


def _unless_ambiguous(candidates: Sequence[HopObservation], names: Sequence[str], in_flight: bool) -> HopObservation:
    """The first of ``candidates`` (earliest first), unless another message was in flight when it began
    (it may be that one's) and they differ: then none, naming them all (which one it is is not known)."""
    first = candidates[0]
    if not in_flight or len({_seen_as(c) for c in candidates}) == 1:
        return first
    return HopObservation(first.hop, None, None, None, (), False, first.hops_seen, first.others,
                          could_be=tuple(names))


def select_on_hop(sessions: Sequence[Transcript], hop: str, message: SentMessage | None, *,
                  session: int | None = None, rivals: Sequence[SentMessage] = ()) -> HopObservation:
    """The transaction on ``hop`` that carried ``message`` (None: the scenario sent none; then the
    first transaction, or the first session, is taken). ``session`` narrows the search to that
    connection; without a match there, its first transaction is judged, never a mix of two.
    ``rivals``: the scenario's other messages, which a connection without a transaction may be about."""
    hops_seen = tuple(sorted({t.hop for t in sessions}))
    on_hop = [t for t in sessions if t.hop == hop]
    if session is not None:
        on_hop = [t for t in on_hop if t.session == session]
    pairs = [(t, x) for t in on_hop for x in t.transactions()]
    transactions = [x for _, x in pairs]
    owner = {id(x): t for t, x in pairs}

    def others(chosen: Transaction | None) -> tuple[tuple[int, int, str | None], ...]:
        return tuple((x.session, x.number, x.message_id) for x in transactions if x is not chosen)

    if message is not None:
        found = _by_message_id(transactions, message)
        if found is not None:
            return _observation(hop, owner[id(found)], found, f"Message-ID {message.message_id}", hops_seen,
                                others(found))
        found_all = _by_envelope(transactions, message)
        if found_all:
            began = found_all[0].exchanges[0].at_s if found_all[0].exchanges else 0.0
            return _unless_ambiguous(
                [_observation(hop, owner[id(t)], t, f"envelope {message.mail_from} -> {', '.join(t.recipients)}",
                              hops_seen, others(t)) for t in found_all],
                [f"session {t.session} #{t.number}" for t in found_all],
                any(not r.refused and r.sent_at_s <= began and _same_envelope(found_all[0], r) for r in rivals))
    if session is not None and on_hop:
        first = on_hop[0].transactions()
        # Its first transaction, when that one never got as far as carrying a message: never another's.
        if not first or first[0].message_id is None or message is None:
            return _observation(hop, on_hop[0], first[0] if first else None, f"session {session} as asked",
                                hops_seen, others(first[0] if first else None))
    if message is None and on_hop:
        first = on_hop[0].transactions()
        return _observation(hop, on_hop[0], first[0] if first else None, "the first session (no message sent)",
                            hops_seen, others(first[0] if first else None))
    # A connection that never reached MAIL, opened once the message had been handed over.
    after = message.sent_at_s if message is not None else 0.0
    candidates = [t for t in on_hop if not t.transactions() and t.exchanges and t.exchanges[0].at_s >= after]
    if candidates:
        return _unless_ambiguous(
            [_observation(hop, t, None, "connection without a transaction", hops_seen, others(None))
             for t in candidates],
            [f"session {t.session}" for t in candidates],
            any(not r.refused and r.sent_at_s <= candidates[0].exchanges[0].at_s for r in rivals))
    return HopObservation(hop, session, None, None, (), False, hops_seen, others(None))
