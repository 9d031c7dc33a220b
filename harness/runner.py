"""A scenario's lifecycle: create (images, network, containers), converge (DNS checked), verify (the
steps), destroy (always, unless asked to keep the topology for debugging)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker

from harness.dns.preflight import check_records, wait_until_answering
from harness.errors import HarnessError
from harness.expect.results import ERROR, FAILED, PASSED, ScenarioResult
from harness.observe.capture import CAPTURE_IMAGE, start_captures
from harness.observe.hops import CapturedHops
from harness.plan import ScenarioPlan, plan_scenario
from harness.report.progress import Progress
from harness.scenario.model import Scenario
from harness.topology.images import ImageStore
from harness.topology.labels import new_run_id, reap_abandoned, run_labels
from harness.topology.topology import Topology, build_images, create_network, start_hosts
from harness.verify import StepRunner

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
    topology, addresses = create_network(ctx.client, plan.topology, run_id=run_id, keep=keep_label)
    try:
        zones = plan.zone_setup(addresses)
    except BaseException:
        topology.destroy()
        raise
    start_hosts(topology, plan.topology, images, zones,
                lambda server, zone: wait_until_answering(server, zone, timeout_s=DNS_READY_TIMEOUT_S),
                progress=ctx.progress)
    try:
        # Every declared record must resolve as declared before any mail is sent.
        check_records(topology.address("dns"), plan.records)
    except BaseException:
        topology.destroy()
        raise
    return topology


def run_scenario(ctx: RunContext, scenario: Scenario, mta: str | None = None) -> ScenarioResult:
    mta = mta or ctx.mta
    started = time.monotonic()
    # Capture timestamps are wall-clock; the client's clock is monotonic from the same instant.
    started_wall = time.time()
    result = ScenarioResult(file=str(scenario.path), name=scenario.name, mta=mta)
    run_id = new_run_id()
    result.run_id = run_id
    topology: Topology | None = None
    hops: CapturedHops | None = None
    try:
        plan = plan_scenario(scenario, ctx.compose_dir, mta=mta)
        capture_image = ctx.images.image(CAPTURE_IMAGE)
        keep_label = ctx.keep != KEEP_NEVER
        topology = bring_up(ctx, plan, run_id=run_id, keep_label=keep_label)
        mtas = [h for h in topology.hosts.values() if h.mta is not None]
        captures = start_captures(mtas, capture_image, run_labels(run_id, keep=keep_label))
        names = {h.address: h.role for h in topology.hosts.values()}
        if topology.unreachable is not None:
            names[topology.unreachable] = "unreachable"
        hops = CapturedHops(captures, names, client_address=topology.gateway, start_wall=started_wall)
        StepRunner(topology, scenario, result, started, mta=mta, hops=hops,
                   domain_addresses=plan.domain_addresses).run_all()
        result.status = FAILED if result.failures else PASSED
    except HarnessError as exc:
        result.status = ERROR
        result.error = str(exc)
    except Exception as exc:  # a harness bug must not end the other scenarios' runs, nor leak containers
        result.status = ERROR
        result.error = f"internal error (a bug in the harness: please report it): {exc!r}\n" + traceback.format_exc()
    finally:
        if hops is not None:
            _add_hop_exchanges(result, hops)
        result.duration_s = time.monotonic() - started
        if topology is not None and not _keep(ctx.keep, result.status):
            topology.destroy()
        elif topology is not None:
            ctx.progress.line(f"kept run {run_id} for debugging: `harness status`, then `harness down --run {run_id}`")
    return result


def _add_hop_exchanges(result: ScenarioResult, hops: CapturedHops) -> None:
    """Every hop's exchanges join the client's, as one timeline."""
    try:
        sessions = hops.sessions()
    except HarnessError as exc:
        result.error = (result.error + "\n" if result.error else "") + f"hop capture unreadable: {exc}"
        return
    own = list(result.exchanges)
    merged = own + [e for t in sessions for e in t.exchanges]
    result.exchanges = sorted(merged, key=lambda e: e.at_s)


def _keep(keep: str, status: str) -> bool:
    return keep == KEEP_ALWAYS or (keep == KEEP_ON_FAILURE and status != PASSED)


def run_all(ctx: RunContext, scenarios: Sequence[Scenario],
            on_result: Callable[[ScenarioResult], None] | None = None,
            mtas: Sequence[str] | None = None) -> list[ScenarioResult]:
    """Every scenario on every implementation it runs on (``mtas``: the command line's selection)."""
    ctx.reap()
    results = []
    for scenario in scenarios:
        for mta in implementations_for(scenario, mtas or [ctx.mta]):
            result = run_scenario(ctx, scenario, mta)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def implementations_for(scenario: Scenario, selected: Sequence[str]) -> list[str]:
    """The scenario's own list (or every implementation) narrowed to the selection, in its order."""
    return [m for m in selected if not scenario.mtas or m in scenario.mtas]
