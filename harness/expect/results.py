"""What a run found, as data: the input of every report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.observe.observations import Observation, observation_from_json
from harness.scenario.model import Mark
from harness.smtp.transcript import Exchange

PASSED = "passed"
FAILED = "failed"
ERROR = "error"
# An MTA refused a role's configuration (harness.errors.ConfigurationError): nothing was sent.
CONFIG_ERROR = "config-error"
SKIPPED = "skipped"


@dataclass(frozen=True)
class Failure:
    step: int  # 1-based index of the step in the scenario
    kind: str  # smtp, delivery, no_delivery
    stage: str | None  # CONNECT ... QUIT for smtp steps
    expected: str
    observed: str
    mark: Mark | None = None
    hop: str | None = None
    session: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "kind": self.kind,
            "stage": self.stage,
            "expected": self.expected,
            "observed": self.observed,
            "location": str(self.mark) if self.mark else None,
            "hop": self.hop,
            "session": self.session,
        }


@dataclass(frozen=True)
class StepOutcome:
    step: int
    kind: str
    status: str
    summary: str  # one line: what was observed, for people
    override: str | None = None  # the reason of the per-implementation override applied, if any
    observation: Observation | None = None  # what was observed, as typed data (None: skipped)
    # A failed client session: the shell lines that replay it by hand (harness.report.reproduce).
    reproduce: str | None = None
    # When the step began and how long it took, on the scenario's clock (the exchanges' at_s); None when skipped.
    at_s: float | None = None
    took_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "status": self.status, "summary": self.summary,
                "override": self.override,
                "observation": self.observation.to_json() if self.observation is not None else None,
                "reproduce": self.reproduce, "at_s": _ms(self.at_s), "took_s": _ms(self.took_s)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)


@dataclass
class ScenarioResult:
    file: str
    name: str
    status: str = PASSED
    duration_s: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    steps: list[StepOutcome] = field(default_factory=list)
    error: str | None = None
    run_id: str | None = None
    mta: str = "postfix"
    # On a failure or error: per MTA role, its own log lines of the scenario's window that explain it
    # (harness.observe.mtalogs): warnings, errors, deferrals, and the lines naming the message's queue ids.
    logs: dict[str, list[str]] = field(default_factory=dict)
    # Per role: what the implementation's own configuration check warned about (postconf, exim -bV, smtpd -n).
    config_warnings: dict[str, list[str]] = field(default_factory=dict)
    # The wall clock (Unix time) at the scenario's start, where its exchanges' and steps' at_s count from.
    started_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "name": self.name,
            "mta": self.mta,
            "status": self.status,
            "duration_s": round(self.duration_s, 3),
            "started_at": _ms(self.started_at),
            "failures": [f.to_json() for f in self.failures],
            "exchanges": [e.to_json() for e in self.exchanges],
            "steps": [s.to_json() for s in self.steps],
            "error": self.error,
            "run_id": self.run_id,
            "logs": {role: list(lines) for role, lines in self.logs.items()},
            "config_warnings": {role: list(lines) for role, lines in self.config_warnings.items()},
        }


def result_from_json(doc: dict[str, Any]) -> ScenarioResult:
    """What reports need back from a results file (failures keep their text, not their marks)."""

    return ScenarioResult(
        file=doc["file"],
        name=doc["name"],
        status=doc["status"],
        duration_s=float(doc.get("duration_s", 0.0)),
        failures=[Failure(f["step"], f["kind"], f.get("stage"), f["expected"], f["observed"], None, f.get("hop"),
                          f.get("session")) for f in doc.get("failures", [])],
        exchanges=[Exchange.from_json(e) for e in doc.get("exchanges", [])],
        steps=[StepOutcome(s["step"], s["kind"], s["status"], s["summary"], s.get("override"),
                           observation_from_json(s["observation"]) if s.get("observation") else None,
                           s.get("reproduce"), _seconds(s.get("at_s")), _seconds(s.get("took_s")))
               for s in doc.get("steps", [])],
        error=doc.get("error"),
        run_id=doc.get("run_id"),
        mta=doc.get("mta", "postfix"),
        started_at=_seconds(doc.get("started_at")),
        logs={str(role): [str(line) for line in lines] for role, lines in (doc.get("logs") or {}).items()},
        config_warnings={str(role): [str(line) for line in lines]
                         for role, lines in (doc.get("config_warnings") or {}).items()},
    )


def _seconds(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
