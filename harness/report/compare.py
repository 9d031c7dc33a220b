"""What a result says about mail flow, as comparable fields: the same scenario run twice (on a fresh
topology and on a shared one, say) must give equal fields. Names that differ between runs by
construction (addresses, queue ids, Message-IDs, times, paths) are left out or normalised."""

from __future__ import annotations

import re
from typing import Any

from harness.expect.results import PASSED, ScenarioResult
from harness.observe.observations import (
    BounceObservation,
    ConnectionObservation,
    HopObservation,
    MailboxObservation,
    QueueObservation,
    SessionObservation,
)
from harness.smtp.transcript import Exchange

__all__ = ["differences", "outcome_fields"]

_VOLATILE = [
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "<address>"),
    (re.compile(r"<[^<>@\s]+@[^<>\s]+>"), "<message-id>"),
    (re.compile(r"\b[0-9A-F]{9,12}\b"), "<queue-id>"),  # Postfix queue ids
    (re.compile(r"\b[0-9A-Za-z]{6}-[0-9A-Za-z]{6}-[0-9A-Za-z]{2}\b"), "<queue-id>"),  # Exim
    (re.compile(r"\b[0-9a-f]{8,16}\b"), "<queue-id>"),  # OpenSMTPD
    (re.compile(r"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}"), "<date>"),
]


def _stable(text: str | None) -> str | None:
    if text is None:
        return None
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return text


def _replies(exchanges: tuple[Exchange, ...] | list[Exchange]) -> list[tuple[str, int | None, str | None]]:
    return [(e.command, e.code, e.enhanced) for e in exchanges]


def _observed(obs: Any, status: str) -> Any:
    if isinstance(obs, SessionObservation):
        return {"replies": _replies(obs.exchanges)}
    if isinstance(obs, HopObservation):
        # The hop's QUIT is left out: whether it was on the wire when the step was judged is timing.
        return {"matched": obs.matched_by is not None,
                "replies": _replies([e for e in obs.exchanges if e.command not in ("QUIT", "UNSOLICITED")])}
    if isinstance(obs, MailboxObservation):
        return {"copies": len(obs.copies)}
    if isinstance(obs, BounceObservation):
        return {"dsns": [{k: _stable(d.field(k)) for k in ("Action", "Status", "Diagnostic-Code", "Final-Recipient")}
                         for d in obs.dsns]}
    if isinstance(obs, QueueObservation):
        if status == PASSED:
            # Which state a passing look saw is timing when the step allows several (`state: queued`: Exim's
            # bounce is "active" while it is tried, then "frozen"); a state it names, the pass shows already.
            return {"entries": len(obs.entries)}
        return {"states": sorted(e.state for e in obs.entries)}
    if isinstance(obs, ConnectionObservation):
        return {"connections": len(obs.attempts)}
    return None


def outcome_fields(result: ScenarioResult) -> dict[str, Any]:
    """The verdict and, step by step, what was observed: every reply code, copies, DSN fields, queue
    states, connections."""
    return {
        "status": result.status,
        "failures": [(f.step, f.kind, f.stage) for f in result.failures],
        "steps": [{"step": s.step, "kind": s.kind, "status": s.status, "observed": _observed(s.observation, s.status)}
                  for s in result.steps],
    }


def differences(a: ScenarioResult, b: ScenarioResult) -> list[str]:
    """Field by field, where two results of the same scenario and implementation disagree."""
    fa, fb = outcome_fields(a), outcome_fields(b)
    out = []
    if fa["status"] != fb["status"]:
        out.append(f"status {fa['status']} != {fb['status']} ({a.error or ''}{b.error or ''})".strip())
    if fa["failures"] != fb["failures"]:
        out.append(f"failures {fa['failures']} != {fb['failures']}")
    for sa, sb in zip(fa["steps"], fb["steps"], strict=False):
        if sa != sb:
            out.append(f"step {sa['step']} ({sa['kind']}): {sa['status']} {sa['observed']} != "
                       f"{sb['status']} {sb['observed']}")
    if len(fa["steps"]) != len(fb["steps"]):
        out.append(f"{len(fa['steps'])} steps != {len(fb['steps'])}")
    return out
