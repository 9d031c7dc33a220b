"""The cross-MTA matrix: scenarios down, implementations across, each cell the key replies observed
and whether the scenario passed there. The same table as text (console) or Markdown (docs)."""

from __future__ import annotations

from collections.abc import Sequence

from harness.expect.results import CONFIG_ERROR, ERROR, FAILED, PASSED, SKIPPED, ScenarioResult, StepOutcome
from harness.observe.observations import (
    BounceObservation,
    HopObservation,
    MailboxObservation,
    QueueObservation,
    SessionObservation,
)
from harness.observe.tlslog import tls_log_evidence
from harness.smtp.transcript import Exchange, outcome_word, tls_version

_MARK = {PASSED: "pass", FAILED: "FAIL", ERROR: "ERROR", CONFIG_ERROR: "CONFIG"}


def _decisive(exchanges: Sequence[Exchange], *, show_data: bool) -> str:
    """The reply that decided a session or transaction: the first refusal, else the end of its DATA."""
    for e in exchanges:
        if e.command == "QUIT" or (e.command == "TLS" and outcome_word(e) == "established"):
            continue
        if e.code is None or e.code >= 400:
            code = outcome_word(e)
            return " ".join(p for p in (e.command, code, e.enhanced or "") if p)
    eod = next((e for e in exchanges if e.command == "END-OF-DATA"), None)
    data = next((e for e in exchanges if e.command == "DATA"), None)
    if eod is not None:
        return f"DATA {data.code if data else '?'}, {eod.code}" if show_data else f"{eod.code}"
    return exchanges[-1].command if exchanges else "?"


def step_key(step: StepOutcome) -> str | None:
    """The cell text of one step, from its observation's fields."""
    obs = step.observation
    if step.status == SKIPPED or obs is None:
        return None
    if isinstance(obs, SessionObservation):
        return _decisive(obs.exchanges, show_data=False)
    if isinstance(obs, HopObservation):
        if obs.matched_by is None:
            return f"{obs.hop} not seen"
        tls = obs.tls
        if tls is not None and outcome_word(tls) == "established" and obs.transaction is None:
            # Encrypted: the wire shows the version, the sender's log whether it verified the peer.
            trust = obs.tls_log.trust if obs.tls_log is not None and obs.tls_log.trust else None
            return " ".join(w for w in (obs.hop, tls_version(tls.text) or "TLS", trust) if w)
        return f"{obs.hop} {_decisive(obs.exchanges, show_data=True)}"
    if isinstance(obs, BounceObservation):
        if not obs.dsns:
            return "no bounce"
        dsn = obs.dsns[0]
        action = dsn.field("Action")
        return f"bounced {dsn.field('Status') or '?'}" + (f" ({action})" if action and action != "failed" else "")
    if isinstance(obs, QueueObservation):
        states = sorted({e.state for e in obs.entries})
        what = "" if obs.of == "message" else "bounce "
        return f"{what}{'/'.join(states)}" if states else (f"{what}not queued" if step.kind == "queue_state"
                                                            and obs.of != "message" else None)
    if isinstance(obs, MailboxObservation) and step.kind == "delivery":
        return "delivered" + (f" x{len(obs.copies)}" if len(obs.copies) > 1 else "") if obs.copies \
            else "not delivered"
    if step.status == FAILED:
        return f"{step.kind} failed"
    return None


def cell(result: ScenarioResult) -> str:
    if result.status == ERROR:
        return "ERROR"
    if result.status == CONFIG_ERROR:
        return "CONFIG ERROR"
    keys: list[str] = []
    for step in result.steps:
        key = step_key(step)
        if key and key not in keys:
            keys.append(key)
    overridden = any(s.override for s in result.steps)
    text = ", ".join(keys)
    return f"{_MARK[result.status]}{' (override)' if overridden else ''}: {text}"


def _rows(results: Sequence[ScenarioResult], mtas: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    names: list[str] = []
    by: dict[tuple[str, str], ScenarioResult] = {}
    for r in results:
        if r.name not in names:
            names.append(r.name)
        by[(r.name, r.mta)] = r
    header = ["scenario", *mtas]
    rows = [[name, *[cell(by[(name, m)]) if (name, m) in by else "-" for m in mtas]] for name in names]
    return header, rows


def matrix_text(results: Sequence[ScenarioResult], mtas: Sequence[str]) -> str:
    header, rows = _rows(results, mtas)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(header))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def overrides_text(results: Sequence[ScenarioResult]) -> list[str]:
    seen = []
    for r in results:
        for s in r.steps:
            if s.override:
                line = f"{r.name} on {r.mta}, step {s.step}: {s.override}"
                if line not in seen:
                    seen.append(line)
    return seen


def tls_log_cell(result: ScenarioResult) -> str | None:
    """What the sending MTA's log said about the TLS of the scenario's hops (tlslog.tls_log_evidence),
    None when no hop step read one."""
    phrases: list[str] = []
    seen = False
    for step in result.steps:
        obs = step.observation
        if isinstance(obs, HopObservation) and obs.tls_log is not None:
            seen = True
            phrases += [p for p in tls_log_evidence(obs.tls_log.line) if p not in phrases]
    if not seen:
        return None
    return "; ".join(f"`{p}`" for p in phrases) if phrases else "(no TLS words)"


def _tls_log_rows(results: Sequence[ScenarioResult], mtas: Sequence[str]) -> list[list[str]]:
    by = {(r.name, r.mta): tls_log_cell(r) for r in results}
    names = list(dict.fromkeys(r.name for r in results))
    return [[name, *[by.get((name, m)) or "-" for m in mtas]] for name in names
            if any(by.get((name, m)) for m in mtas)]


def matrix_markdown(results: Sequence[ScenarioResult], mtas: Sequence[str]) -> str:
    header, rows = _rows(results, mtas)

    def md(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [
        "# Compatibility matrix",
        "",
        "Generated by `harness matrix --markdown` from the bundled scenarios; do not edit by hand.",
        "Each cell: pass/FAIL, then the key replies observed (the first refusal of each session, the end of",
        "DATA, bounces with their DSN Status, queue states, hop replies).",
        "",
        md(header),
        md(["---"] * len(header)),
        *[md(row) for row in rows],
    ]
    tls_rows = _tls_log_rows(results, mtas)
    if tls_rows:
        lines += ["", "## What each sender logged about its hop's TLS", "",
                  "From the sending MTA's own log lines about the scenario's message (by queue id): the trust",
                  "it gave the next hop's certificate, what verification said, why a message was kept.",
                  "Postfix: `Verified` (chain and name), `Trusted` (chain only), `Untrusted`; Exim: `CV=yes`,",
                  "`CV=dane`, `CV=no`; OpenSMTPD: `server-cert-check result=`. DANE is Postfix's and Exim's",
                  "only; MTA-STS only Postfix's (postfix-mta-sts-resolver): the others send as at `may`.", "",
                  md(["scenario", *mtas]), md(["---"] * (len(mtas) + 1)), *[md(row) for row in tls_rows]]
    notes = overrides_text(results)
    if notes:
        lines += ["", "## Where implementations differ (overrides, with their reasons)", ""]
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
