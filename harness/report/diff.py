"""What changed between two runs of the same scenarios (a baseline and a candidate configuration), as
data, text and Markdown. Pure: no I/O.

Results are matched by scenario file and implementation. For each pair the comparison looks at the
verdict and at the *key replies*: every reply of the client's own sessions (command, code, enhanced
code) and, for the other steps, what the matrix cell shows (``harness.report.matrix``: a hop's
deciding reply, a bounce's DSN Status, queue states, deliveries), else the step's status. Reply
texts, times, run ids, queue ids, dates and Message-IDs are not compared: they differ from run to
run whatever the configuration.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from harness.errors import EXIT_FAILED, EXIT_INFRA, EXIT_OK
from harness.expect.results import CONFIG_ERROR, ERROR, ScenarioResult, StepOutcome
from harness.observe.observations import SessionObservation
from harness.report.matrix import step_key
from harness.smtp.transcript import Exchange

__all__ = [
    "ADDED",
    "CHANGED",
    "NOT_REACHED",
    "REMOVED",
    "ReplyChange",
    "ResultsDiff",
    "ScenarioDiff",
    "diff_markdown",
    "diff_results",
    "diff_text",
    "key_replies",
]

CHANGED = "changed"
ADDED = "added"
REMOVED = "removed"
# A key reply one side has and the other does not (the session ended earlier, a step did not run).
NOT_REACHED = "(not reached)"


def _reply(exchange: Exchange) -> str:
    if exchange.code is None:
        return "closed"
    return f"{exchange.code} {exchange.enhanced}" if exchange.enhanced else str(exchange.code)


def _step_value(step: StepOutcome) -> str:
    """A non-session step as the matrix shows it; the step's status where the matrix shows nothing."""
    key = step_key(step)
    if key is None or key == f"{step.kind} failed":
        return step.status
    return key


def key_replies(result: ScenarioResult) -> dict[str, str]:
    """Label -> value, in step order. A client session's replies are labelled by command ("RCPT",
    "RCPT #2" for a second one in the session; "step 3 RCPT" when the scenario has several smtp
    steps); every other step by its number and kind ("step 2 hop")."""
    sessions = sum(1 for s in result.steps if s.kind == "smtp")
    out: dict[str, str] = {}
    for step in result.steps:
        obs = step.observation
        if isinstance(obs, SessionObservation):
            prefix = f"step {step.step} " if sessions > 1 else ""
            seen: Counter[str] = Counter()
            for exchange in obs.exchanges:
                seen[exchange.command] += 1
                count = seen[exchange.command]
                out[f"{prefix}{exchange.command}{f' #{count}' if count > 1 else ''}"] = _reply(exchange)
            continue
        out[f"step {step.step} {step.kind}"] = _step_value(step)
    return out


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def _verdict(result: ScenarioResult) -> str:
    """The status, with the error's first line where there is no mail flow to show."""
    if result.status in (ERROR, CONFIG_ERROR):
        line = _first_line(result.error)
        return f"{result.status}: {line}" if line else result.status
    return result.status


@dataclass(frozen=True)
class ReplyChange:
    """One key reply that differs: ``before`` / ``after`` None where that side has none."""

    label: str
    before: str | None
    after: str | None

    def text(self) -> str:
        return f"{self.label} {self.before or NOT_REACHED} -> {self.after or NOT_REACHED}"


@dataclass(frozen=True)
class ScenarioDiff:
    """A scenario run (file, implementation) that changed, or is on one side only (``kind``)."""

    kind: str  # CHANGED, ADDED or REMOVED
    file: str
    name: str
    mta: str
    before: str | None  # the verdict (status, with an error's first line); None: not on that side
    after: str | None
    changes: tuple[ReplyChange, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.name} [{self.mta}]"

    @property
    def verdict(self) -> str:
        """``passed -> failed``, ``still passed``, ``added: failed``, ``removed: was passed``."""
        if self.kind == ADDED:
            return f"added: {self.after}"
        if self.kind == REMOVED:
            return f"removed: was {self.before}"
        return f"{self.before} -> {self.after}" if self.before != self.after else f"still {self.after}"

    def lines(self) -> list[str]:
        """One line per change, each naming the scenario, the verdict first (with the file)."""
        return [f"{self.label}: {self.verdict}  ({self.file})",
                *(f"{self.label}: {c.text()}" for c in self.changes)]


@dataclass(frozen=True)
class ResultsDiff:
    """Every scenario run that changed between ``before`` (the baseline) and ``after`` (the candidate)."""

    scenarios: tuple[ScenarioDiff, ...]
    unchanged: int
    before_count: int
    after_count: int
    # "<side>: <name> [<mta>]: <first line>" for every ERROR result (nothing can be said about its mail).
    errors: tuple[str, ...] = ()

    @property
    def identical(self) -> bool:
        return not self.scenarios

    @property
    def exit_code(self) -> int:
        """3 an infrastructure error on either side, 1 behaviour changed, 0 identical."""
        if self.errors:
            return EXIT_INFRA
        return EXIT_FAILED if self.scenarios else EXIT_OK

    def count(self, kind: str) -> int:
        return sum(1 for s in self.scenarios if s.kind == kind)

    def summary(self) -> str:
        return (f"{self.count(CHANGED)} changed, {self.count(ADDED)} added, {self.count(REMOVED)} removed, "
                f"{self.unchanged} unchanged (baseline: {self.before_count}, candidate: {self.after_count} "
                "scenario run(s))")


def _key(result: ScenarioResult) -> tuple[str, str]:
    return (os.path.normpath(result.file), result.mta)


def _index(results: Sequence[ScenarioResult], side: str) -> dict[tuple[str, str], ScenarioResult]:
    out: dict[tuple[str, str], ScenarioResult] = {}
    for r in results:
        if _key(r) in out:
            raise ValueError(f"{side}: {r.file} on {r.mta} is there twice")
        out[_key(r)] = r
    return out


def _compare(before: ScenarioResult, after: ScenarioResult) -> ScenarioDiff | None:
    changes: list[ReplyChange] = []
    if ERROR not in (before.status, after.status):
        a, b = key_replies(before), key_replies(after)
        labels = list(a) + [label for label in b if label not in a]
        changes = [ReplyChange(label, a.get(label), b.get(label)) for label in labels if a.get(label) != b.get(label)]
    verdict_a, verdict_b = _verdict(before), _verdict(after)
    if verdict_a == verdict_b and not changes:
        return None
    return ScenarioDiff(CHANGED, after.file, after.name, after.mta, verdict_a, verdict_b, tuple(changes))


def diff_results(before: Sequence[ScenarioResult], after: Sequence[ScenarioResult]) -> ResultsDiff:
    """The scenario runs that changed, in ``before``'s order, then those only in ``after``. ValueError
    when one side has the same scenario file and implementation twice."""
    a, b = _index(before, "baseline"), _index(after, "candidate")
    scenarios: list[ScenarioDiff] = []
    unchanged = 0
    for key, old in a.items():
        new = b.get(key)
        if new is None:
            scenarios.append(ScenarioDiff(REMOVED, old.file, old.name, old.mta, _verdict(old), None))
            continue
        changed = _compare(old, new)
        if changed is None:
            unchanged += 1
        else:
            scenarios.append(changed)
    scenarios += [ScenarioDiff(ADDED, new.file, new.name, new.mta, None, _verdict(new))
                  for key, new in b.items() if key not in a]
    errors = tuple(f"{side}: {r.name} [{r.mta}]: {_first_line(r.error) or 'error'}"
                   for side, results in (("baseline", before), ("candidate", after))
                   for r in results if r.status == ERROR)
    return ResultsDiff(tuple(scenarios), unchanged, len(before), len(after), errors)


def diff_text(diff: ResultsDiff) -> str:
    """For the console: per changed scenario its verdict line, then one line per changed key reply."""
    lines: list[str] = []
    for scenario in diff.scenarios:
        lines += scenario.lines()
        lines.append("")
    if diff.errors:
        lines.append("infrastructure errors (nothing can be said about these scenarios' mail):")
        lines += [f"  {e}" for e in diff.errors]
        lines.append("")
    lines.append(("no behaviour changed: " if diff.identical else "") + diff.summary())
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _side(verdict: str | None, replies: Sequence[str | None]) -> str:
    if verdict is None:
        return "-"
    return "<br>".join(_cell(part) for part in [verdict, *(r for r in replies if r is not None)])


def diff_markdown(diff: ResultsDiff) -> str:
    """For a merge request: a table of scenario, implementation, before (baseline), after (candidate);
    each side's cell its verdict, then the key replies that changed (one per line)."""
    lines = ["## Mail-flow changes (`harness diff`)", "", diff.summary(), ""]
    if diff.scenarios:
        lines += ["| scenario | implementation | before | after |", "| --- | --- | --- | --- |"]
        for s in diff.scenarios:
            before = _side(s.before, [f"{c.label} {c.before or NOT_REACHED}" for c in s.changes])
            after = _side(s.after, [f"{c.label} {c.after or NOT_REACHED}" for c in s.changes])
            name = f"{_cell(s.name)} ({s.kind})" if s.kind != CHANGED else _cell(s.name)
            lines.append(f"| {name}<br>`{_cell(s.file)}` | {s.mta} | {before} | {after} |")
    else:
        lines.append("No behaviour changed.")
    if diff.errors:
        lines += ["", "Infrastructure errors (nothing can be said about these scenarios' mail):", ""]
        lines += [f"- {_cell(e)}" for e in diff.errors]
    return "\n".join(lines) + "\n"

