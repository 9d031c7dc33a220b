"""A scenario's exchanges as a readable timeline, mismatches marked."""

from __future__ import annotations

from harness.expect.results import Failure, ScenarioResult
from harness.expect.smtp import command_address
from harness.smtp.transcript import Exchange

MARK = "<<<"


def _failure_for(exchange: Exchange, failures: list[Failure]) -> Failure | None:
    for f in failures:
        if f.hop != exchange.hop or f.session != exchange.session or f.stage is None:
            continue
        if f.stage.startswith("RCPT <"):
            if exchange.command == "RCPT" and command_address(exchange.sent).lower() == f.stage[6:-1].lower():
                return f
        elif f.stage == exchange.command:
            return f
    return None


def render_timeline(result: ScenarioResult, *, only_failing_sessions: bool = False) -> str:
    """Every exchange in time order: time, hop and session, command sent, reply lines."""
    failing = {(f.hop, f.session) for f in result.failures if f.hop is not None}
    out: list[str] = []
    current: tuple[str, int] | None = None
    for ex in result.exchanges:
        key = (ex.hop, ex.session)
        if only_failing_sessions and key not in failing:
            continue
        if key != current:
            current = key
            out.append(f"  {ex.hop} session {ex.session}")
        tls = ex.command == "TLS"  # a handshake, not a command: neither side sent a line
        sent = ex.sent if ex.sent is not None else "(TLS handshake)" if tls else "(connect)"
        out.append(f"    [{ex.at_s:7.3f}s] C: {sent}")
        replies = list(ex.lines) or [f"{ex.code} {ex.text}" if ex.code is not None else ex.reply_str()]
        failure = _failure_for(ex, result.failures)
        for i, line in enumerate(replies):
            suffix = ""
            if failure is not None and i == len(replies) - 1:
                suffix = f"   {MARK} expected {failure.expected}"
            out.append(f"               S: {line}{suffix}")
    for f in result.failures:
        if f.hop is not None and f.observed.startswith("not reached"):
            out.append(f"  {f.hop} session {f.session}: {f.stage} {f.observed}   {MARK} expected {f.expected}")
    return "\n".join(out)


def render_failures(result: ScenarioResult) -> str:
    lines = []
    for f in result.failures:
        where = f"{f.mark}: " if f.mark else ""
        stage = f" {f.stage}" if f.stage else ""
        lines.append(f"  {where}step {f.step} ({f.kind}{stage}): expected {f.expected}, observed {f.observed}")
    return "\n".join(lines)


def render_replays(result: ScenarioResult) -> str:
    """For each failed client session, the lines that replay it by hand (empty when there are none)."""
    out = []
    for step in result.steps:
        if step.reproduce:
            out.append(f"  replay step {step.step} by hand (its topology from `harness up`, then swaks):")
            out += [f"    {line}" for line in step.reproduce.splitlines()]
    return "\n".join(out)


def render_logs(result: ScenarioResult) -> str:
    """The MTAs' own lines about the failure, per role (empty when there are none)."""
    out = []
    for role, lines in result.logs.items():
        out.append(f"  {role}'s log (the scenario's window):")
        out += [f"    {line}" for line in lines]
    return "\n".join(out)
