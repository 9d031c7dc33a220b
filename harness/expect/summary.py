"""One line per step saying what was observed, rendered from the observation's fields (console and
JSON ``summary``; no report reads it back)."""

from __future__ import annotations

from harness.observe.observations import (
    BounceObservation,
    ConnectionObservation,
    FaultObservation,
    FlushObservation,
    HopObservation,
    MailboxObservation,
    Observation,
    QueueObservation,
    SessionObservation,
)
from harness.scenario.model import Step
from harness.smtp.transcript import Exchange, outcome_word

__all__ = ["exchanges_summary", "summarize"]


def exchanges_summary(exchanges: tuple[Exchange, ...] | list[Exchange]) -> str:
    return ", ".join(f"{e.command} {outcome_word(e)}" for e in exchanges)


def summarize(step: Step, obs: Observation) -> str:
    if isinstance(obs, SessionObservation):
        return f"{obs.hop} session {obs.session}: {exchanges_summary(obs.exchanges)}"
    if isinstance(obs, HopObservation):
        if obs.matched_by is None:
            return f"{obs.hop}: the message's transaction not seen (hops seen: {', '.join(obs.hops_seen) or 'none'})"
        where = f"session {obs.session}" + (f" transaction {obs.transaction}" if obs.transaction else "")
        return f"{obs.hop} {where} (matched by {obs.matched_by}): {exchanges_summary(obs.exchanges)}"
    if isinstance(obs, MailboxObservation):
        where = f"{obs.mailbox or 'any mailbox'} on {obs.host}"
        if not obs.copies:
            return f"nothing in {where} after {obs.waited_s:.1f} s"
        return f"{len(obs.copies)} cop{'y' if len(obs.copies) == 1 else 'ies'} in {where} ({obs.copies[0].path})"
    if isinstance(obs, BounceObservation):
        if not obs.dsns:
            return f"no DSN about the message in {obs.mailbox} on {obs.host} after {obs.waited_s:.1f} s"
        return f"DSN in {obs.mailbox} ({obs.dsns[0].about}): {obs.dsns[0].summary()}"
    if isinstance(obs, QueueObservation):
        subject = "message" if obs.of == "message" else "DSN about the message"
        if not obs.entries:
            return f"{obs.host} queue: {subject} not in the queue"
        return f"{obs.host} queue ({subject}): " + "; ".join(e.summary() for e in obs.entries)
    if isinstance(obs, ConnectionObservation):
        if not obs.attempts:
            return f"no connection from {obs.source} to {obs.what}"
        return f"{len(obs.attempts)} connection(s) from {obs.source} to {obs.what}"
    if isinstance(obs, FaultObservation):
        if obs.error is not None:
            return f"{obs.action} {obs.role} at {obs.at_s:.1f}s: {obs.error}"
        return f"{obs.action} {obs.role} at {obs.at_s:.1f}s (done in {obs.took_s:.1f} s)"
    assert isinstance(obs, FlushObservation)
    return f"asked {obs.host} to retry its queue"
