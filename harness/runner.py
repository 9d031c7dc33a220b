"""A scenario's lifecycle: create (images, network, containers), converge (DNS checked), verify (the
steps), destroy (always, unless asked to keep the topology for debugging)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker

from harness.dns.preflight import check_records, wait_until_answering
from harness.errors import HarnessError, InfrastructureError
from harness.expect.results import ERROR, FAILED, PASSED, Failure, ScenarioResult, StepOutcome
from harness.expect.smtp import check_session, session_summary
from harness.observe.mailbox import wait_for_message
from harness.observe.maildir import DeliveredMessage, header_value, split_message
from harness.plan import ScenarioPlan, plan_scenario
from harness.report.progress import Progress
from harness.scenario.model import DeliveryStep, NoDeliveryStep, Scenario, SmtpSessionStep, Step
from harness.smtp.client import run_session
from harness.smtp.message import render_message
from harness.smtp.transcript import Transcript
from harness.topology.images import ImageStore
from harness.topology.labels import new_run_id, reap_abandoned
from harness.topology.topology import Topology, build_images, start_topology

KEEP_NEVER = "never"
KEEP_ON_FAILURE = "on-failure"
KEEP_ALWAYS = "always"
DNS_READY_TIMEOUT_S = 20.0


@dataclass
class RunContext:
    """What scenarios of one invocation share: the engine, the images, the progress stream."""

    client: docker.DockerClient
    images: ImageStore
    compose_dir: Path
    progress: Progress
    keep: str = KEEP_NEVER
    mta: str = "postfix"
    reaped: list[str] = field(default_factory=list)

    def reap(self) -> None:
        self.reaped.extend(reap_abandoned(self.client))
        if self.reaped:
            self.progress.line(f"removed what {len(self.reaped)} abandoned run(s) left behind: "
                               + ", ".join(self.reaped))


def bring_up(ctx: RunContext, plan: ScenarioPlan, *, run_id: str, keep_label: bool) -> Topology:
    images = build_images(ctx.images, plan.topology)
    topology = start_topology(
        ctx.client, plan.topology, images, plan.zone_setup,
        lambda server, zone: wait_until_answering(server, zone, timeout_s=DNS_READY_TIMEOUT_S),
        run_id=run_id, progress=ctx.progress, keep=keep_label,
    )
    try:
        # Every declared record must resolve as declared before any mail is sent.
        check_records(topology.address("dns"), plan.declared)
    except BaseException:
        topology.destroy()
        raise
    return topology


def run_scenario(ctx: RunContext, scenario: Scenario) -> ScenarioResult:
    started = time.monotonic()
    result = ScenarioResult(file=str(scenario.path), name=scenario.name, mta=ctx.mta)
    run_id = new_run_id()
    result.run_id = run_id
    topology: Topology | None = None
    try:
        plan = plan_scenario(scenario, ctx.compose_dir, mta=ctx.mta)
        topology = bring_up(ctx, plan, run_id=run_id, keep_label=ctx.keep != KEEP_NEVER)
        StepRunner(topology, scenario, result, started).run_all()
        result.status = FAILED if result.failures else PASSED
    except HarnessError as exc:
        result.status = ERROR
        result.error = str(exc)
    finally:
        result.duration_s = time.monotonic() - started
        if topology is not None and not _keep(ctx.keep, result.status):
            topology.destroy()
        elif topology is not None:
            ctx.progress.line(f"kept run {run_id} for debugging: `harness status`, then `harness down --run {run_id}`")
    return result


def _keep(keep: str, status: str) -> bool:
    return keep == KEEP_ALWAYS or (keep == KEEP_ON_FAILURE and status != PASSED)


def run_all(ctx: RunContext, scenarios: Sequence[Scenario],
            on_result: Callable[[ScenarioResult], None] | None = None) -> list[ScenarioResult]:
    ctx.reap()
    results = []
    for scenario in scenarios:
        result = run_scenario(ctx, scenario)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


class StepRunner:
    """Runs the verify phase: each step in order, observations recorded into the result."""

    def __init__(self, topology: Topology, scenario: Scenario, result: ScenarioResult, started: float) -> None:
        self.topology = topology
        self.scenario = scenario
        self.result = result
        self.started = started
        self.sessions: list[tuple[SmtpSessionStep, Transcript]] = []
        self.session_counter: dict[str, int] = {}

    def clock(self) -> float:
        return time.monotonic() - self.started

    def run_all(self) -> None:
        for index, step in enumerate(self.scenario.steps, start=1):
            failures, summary = self.run_step(index, step)
            self.result.failures.extend(failures)
            self.result.steps.append(StepOutcome(index, step.kind, FAILED if failures else PASSED, summary))

    def run_step(self, index: int, step: Step) -> tuple[list[Failure], str]:
        if isinstance(step, SmtpSessionStep):
            return self.smtp(index, step)
        if isinstance(step, DeliveryStep):
            return self.delivery(index, step)
        return self.no_delivery(index, step)

    def smtp(self, index: int, step: SmtpSessionStep) -> tuple[list[Failure], str]:
        hop = f"client->{step.host}"
        number = self.session_counter.get(hop, 0) + 1
        self.session_counter[hop] = number
        domain = step.mail_from.rpartition("@")[2] or "mailflow-harness.test"
        message_bytes, message_id = render_message(step.message, mail_from=step.mail_from,
                                                   rcpt_to=step.rcpt_to, domain=domain)
        transcript = asyncio.run(run_session(
            self.topology.address(step.host), 25, step, hop=hop, session=number, clock=self.clock,
            message_bytes=message_bytes, message_id=message_id))
        self.sessions.append((step, transcript))
        self.result.exchanges.extend(transcript.exchanges)
        failures = check_session(index, step, transcript)
        return failures, f"{hop} session {number}: {session_summary(transcript)}"

    def _session_for(self, message_of: str | None) -> Transcript:
        for step, transcript in reversed(self.sessions):
            if message_of is None or step.id == message_of:
                return transcript
        # The loader guarantees an earlier session exists; reaching here is a harness bug.
        raise InfrastructureError(f"no earlier smtp session {message_of or ''} to take the message from")

    def delivery(self, index: int, step: DeliveryStep) -> tuple[list[Failure], str]:
        transcript = self._session_for(step.message_of)
        assert transcript.message_id is not None and transcript.message_bytes is not None
        found = wait_for_message(self.topology.hosts[step.host], transcript.message_id, step.mailbox,
                                 step.within_s)
        where = f"{step.mailbox} on {step.host}"
        if not found:
            observed = f"not delivered within {step.within_s:g} s"
            eod = transcript.first("END-OF-DATA")
            if eod is None:
                observed += " (the session never reached END-OF-DATA)"
            elif eod.code != 250:
                observed += f" (END-OF-DATA was {eod.reply_str()})"
            return [Failure(index, "delivery", None, f"message {transcript.message_id} in {where}", observed,
                            step.mark)], observed
        message = found[0]
        failures = self._check_delivered(index, step, message, transcript.message_bytes)
        return failures, f"delivered to {where} ({message.path})"

    def _check_delivered(self, index: int, step: DeliveryStep, message: DeliveredMessage, sent: bytes
                         ) -> list[Failure]:
        failures = []
        for check in step.headers:
            value = header_value(message.raw, check.name)
            if value is None or re.search(check.pattern, value) is None:
                failures.append(Failure(index, "delivery", None, f"header {check.name} matching /{check.pattern}/",
                                        f"{check.name}: {value}" if value is not None else f"no {check.name} header",
                                        step.mark))
        if step.body_intact:
            sent_body = split_message(sent)[1]
            got_body = split_message(message.raw)[1]
            if sent_body != got_body:
                failures.append(Failure(index, "delivery", None, "body byte for byte as sent",
                                        _first_difference(sent_body, got_body), step.mark))
        return failures

    def no_delivery(self, index: int, step: NoDeliveryStep) -> tuple[list[Failure], str]:
        transcript = self._session_for(step.message_of)
        assert transcript.message_id is not None
        found = wait_for_message(self.topology.hosts[step.host], transcript.message_id, step.mailbox,
                                 step.within_s)
        where = f"{step.mailbox or 'any mailbox'} on {step.host}"
        if found:
            observed = f"delivered to {found[0].mailbox} on {step.host} ({found[0].path})"
            return [Failure(index, "no_delivery", None, f"no copy in {where} within {step.within_s:g} s",
                            observed, step.mark)], observed
        return [], f"nothing in {where} after {step.within_s:g} s"


def _first_difference(expected: bytes, observed: bytes) -> str:
    exp_lines = expected.split(b"\n")
    obs_lines = observed.split(b"\n")
    for number, (a, b) in enumerate(zip(exp_lines, obs_lines, strict=False), start=1):
        if a != b:
            return f"body line {number} differs: sent {a!r}, delivered {b!r}"
    return f"body has {len(obs_lines)} lines, sent {len(exp_lines)}"
