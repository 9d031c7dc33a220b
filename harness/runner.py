"""A scenario's lifecycle: create (images, network, containers), converge (DNS checked), verify (the
steps), destroy (always, unless asked to keep the topology for debugging).

Scenarios that can share a topology (implementation, DNSSEC; ``sharing_key``) share one: it is
created once, and between two scenarios ``SharedTopology.prepare`` removes a role the next scenario
does not have, starts one it adds, replaces the container of a role whose configuration it changes
(the MTA-STS policy host too), resets what one could leak into the next (queues, Maildirs, retry and
dead-destination state: each driver's ``reset``) and serves the next scenario's DNS records. Every
observation is about the scenario's own message and its own time window, which is what makes the
sharing safe; tests/integration/test_isolation.py proves the results
equal those of a fresh topology per scenario (``fresh=True``). Groups run side by side (``jobs``),
as ``harness.schedule.Schedule`` hands them out.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import docker

from harness.dns.dnssec import resolver_flush
from harness.dns.preflight import check_records, wait_until_answering
from harness.dns.served import DNSDIST_CONF, ServedDns
from harness.dns.zones import HARNESS_ZONE, ResolvedRecord
from harness.errors import (
    ConfigurationError,
    DnsPreflightError,
    HarnessError,
    InfrastructureError,
    ReadinessTimeoutError,
)
from harness.expect.results import CONFIG_ERROR, ERROR, FAILED, PASSED, ScenarioResult
from harness.mta import DRIVERS
from harness.observe.capture import CaptureError, HopCapture, start_captures
from harness.observe.hops import CapturedHops
from harness.observe.mailwatch import MailWatch
from harness.observe.mtalogs import role_logs
from harness.observe.polling import CANCELLED, poll_until
from harness.observe.queue import HostCommands
from harness.plan import ScenarioPlan, plan_scenario
from harness.report.progress import Progress
from harness.scenario.model import POLICY_ROLE, RESOLVER_ROLE, MtaSts, Scenario
from harness.schedule import Schedule
from harness.shard import sharing_key, topology_key
from harness.topology.faults import restore
from harness.topology.images import ImageStore
from harness.topology.labels import debugging_lines, new_run_id, reap_abandoned, run_containers
from harness.topology.readiness import container_state
from harness.topology.topology import (
    DNS_ROLE,
    RESOLVER_CONF_PATH,
    Host,
    HostPlan,
    Topology,
    ZoneSetup,
    build_images,
    create_network,
    plan_addresses,
    reconfigurable,
    reconfigure_role,
    remove_host,
    replace_policy_host,
    replace_roles,
    start_hosts,
)
from harness.verify import StepRunner

KEEP_NEVER = "never"
KEEP_ON_FAILURE = "on-failure"
KEEP_ALWAYS = "always"
DNS_READY_TIMEOUT_S = 20.0
DNS_RELOAD_TIMEOUT_S = 10.0


def default_jobs() -> int:
    """Topologies side by side. Shared topologies mostly wait (on MTAs, timers, the network), so three
    per core: on 2 cores the bundled matrix took 116 s with 3, 103-109 s with 4, 93 s with 6 and 89 s
    with 8, the cores then 92 % busy. Capped at 8: past that the starts only queue for the engine.
    Fresh mode too (its isolation run took 5 min 26 s at 6, both modes). It once lost a hop at 6: a
    relay delivered to an mx a fault step had started, before the mx's capture listened again; the
    start gate (harness.topology.faults) holds such an MTA until its capture follows it."""
    cores = os.cpu_count() or 2
    return max(1, min(8, 3 * cores))


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
    fresh: bool = False  # one topology per scenario, as before sharing existed
    jobs: int = 1
    lanes: list[list[tuple[Scenario, str]]] = field(default_factory=list)  # what each topology ran (run_all)

    def reap(self) -> None:
        self.reaped.extend(reap_abandoned(self.client))
        if self.reaped:
            self.progress.line(f"removed what {len(self.reaped)} abandoned run(s) left behind: "
                               + ", ".join(self.reaped))


def bring_up(ctx: RunContext, plan: ScenarioPlan, *, run_id: str, keep_label: bool) -> Topology:
    images = build_images(ctx.images, plan.topology)
    topology, addresses = create_network(ctx.client, plan.topology, run_id=run_id, keep=keep_label)
    try:
        zones = plan.zone_setup(addresses, signer=topology.signer, credentials=topology.credentials)
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


class SharedTopology:
    """One running topology with its hop captures, for the scenarios of one topology key."""

    def __init__(self, ctx: RunContext, plan: ScenarioPlan) -> None:
        self.ctx = ctx
        self.run_id = new_run_id()
        self.keep_label = ctx.keep != KEEP_NEVER
        self.topology = bring_up(ctx, plan, run_id=self.run_id, keep_label=self.keep_label)
        self.served = dict(self.zones_for(plan).files)  # what the dns container serves now
        self.used = False
        self.window_start = time.time()  # the current scenario's window (its MTA log lines are read from it)
        mtas = [h for h in self.topology.hosts.values() if h.mta is not None]
        try:
            captures, self.mail_watches = self._observe(mtas)
        except BaseException:
            self.topology.destroy()
            raise
        self.captures = captures
        self.mail_events = {role: watch.changed for role, watch in self.mail_watches.items()}
        self.faulted: set[str] = set()  # roles the last scenario's fault steps acted on
        # Each MTA role's TCP counters just before its last reset: the same counters now mean no TCP to or
        # from it since, so nothing it holds changed (see _touched). None known: it is reset.
        self.quiet_at: dict[str, tuple[int, ...]] = {}
        # The plan each MTA role's container was made from; a role whose plan a scenario changes is
        # replaced (a role missing here, one whose replacement failed, is replaced by the next one).
        self.roles = {h.role: h for h in plan.topology.hosts if h.mta is not None}
        # The MTA-STS policy host's plan and the policy it serves (None, None: no policy host).
        self.policy = self._policy_of(plan)
        self.hops = CapturedHops(captures, self.names(), client_address=self.topology.gateway, start_wall=time.time())

    def _observe(self, hosts: Sequence[Host]) -> tuple[dict[str, HopCapture], dict[str, MailWatch]]:
        """A listening capture and a mail watch (deliveries noticed as they are written, not at
        the next poll) for each of ``hosts``, all started side by side."""
        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            watching = {h.role: pool.submit(MailWatch(self.ctx.client, h.container_id, h.role,
                                                      prefix=h.confinement).start) for h in hosts}
            captures = start_captures(hosts)
            return captures, {role: future.result() for role, future in watching.items()}

    def names(self) -> dict[str, str]:
        """Who is at which address now (roles are added, moved and removed between two scenarios): each
        scenario's hop reader takes them as they are when it starts."""
        names = {h.address: h.role for h in self.topology.hosts.values()}
        if self.topology.unreachable is not None:
            names[self.topology.unreachable] = "unreachable"
        return names

    def zones_for(self, plan: ScenarioPlan) -> ZoneSetup:
        """``plan``'s zones on this topology's addresses, keys and certificates (``plan.records`` filled)."""
        addresses = {role: host.address for role, host in self.topology.hosts.items()}
        if self.topology.unreachable is not None:
            addresses["unreachable"] = self.topology.unreachable
        return plan.zone_setup(addresses, signer=self.topology.signer, credentials=self.topology.credentials)

    def prepare(self, plan: ScenarioPlan) -> None:
        """Make the topology as a fresh one would be for ``plan``'s scenario: every MTA reset and the
        zones served, side by side; a role whose plan changes replaced after the resets."""
        if not self.used:
            self.used = True  # bring_up served this scenario's zones and nothing has run yet
            return
        # Roles a fault acted on are reset whatever their TCP counters say (a restarted container has a
        # new network namespace, its counters from zero).
        faulted = set(self.faulted)
        if self.faulted:
            self._restore(sorted(self.faulted))
            self.faulted = set()
        leaving = self._leaving(plan)
        if leaving:
            # An added role the next scenario does not have goes first: nothing it holds can reach the
            # others while they are reset.
            self._remove(leaving)
        changing = self._changing(plan)
        # A role whose TLS alone changes is reset like the others and then reconfigured in its container.
        reloading = self._reconfigurable(plan, changing)
        policy_changing = self._policy_of(plan) != self.policy
        # A new container is as a fresh topology's: only the others are reset.
        hosts = [h for h in self.topology.hosts.values()
                 if h.mta is not None and (h.role not in changing or h.role in reloading)]
        always = faulted | reloading

        def reset(host: Host) -> str | None:
            """The role, once reset; None when nothing of the last scenario reached it."""
            quiet_outbound = None
            if host.role in always:
                self.quiet_at.pop(host.role, None)  # reset now and after the next scenario too
            else:
                touched, quiet_outbound = self._touched(host.role)
                if not touched:
                    return None
            _reset(host, quiet_outbound=quiet_outbound)
            return host.role

        with ThreadPoolExecutor(max_workers=len(hosts) + 1) as pool:
            resets = [pool.submit(reset, h) for h in hosts]
            if changing or policy_changing:
                # The resets first: a role still holding the last scenario's message must not hand it to
                # the new container (which no reset empties), nor look up the next hop's records or
                # policy then.
                for future in resets:
                    future.result()
                if policy_changing:
                    self._replace_policy(plan)
                changing -= self._reconfigure(plan, reloading)
                if changing:
                    self._replace(plan, changing)
            # A replaced role's TLSA record is its new certificate's: the zones are served after it.
            serving = pool.submit(self._serve, plan)
            emptied = {r for r in (f.result() for f in resets) if r is not None}
            serving.result()
            # Then the neighbour caches emptied, as a fresh topology's are, so that a role the scenario
            # stops or takes off the network is unreachable at once, not through a stale entry. After
            # the resets: an MTA restarted by its reset closes the sessions it kept open, and that
            # exchange fills its neighbours' caches again. (A new container's cache is empty already.)
            # Only the roles just reset: one no TCP reached or left since its last reset (``_touched``)
            # has learnt no neighbour since its cache was last emptied, as a host learns one only from
            # traffic addressed to it or sent by it, and an MTA's traffic is mail, over TCP (its DNS
            # server's entry stays valid: that container stays).
            for forgetting in [pool.submit(c.forget_neighbours) for role, c in self.captures.items()
                               if role not in changing and role in emptied]:
                forgetting.result()

    def _touched(self, role: str) -> tuple[bool, int | None]:
        """Whether ``role`` may hold anything of the scenarios since its last reset, and, when it opened
        no TCP connection since then, how many its network namespace has opened (the driver's
        ``quiet_outbound``: what it keeps about next hops is as that reset left it). Everything a reset
        forgets (queued and delivered mail, retry and dead-destination state, idle sessions, an MTA-STS
        policy cache) comes from mail, and mail reaches or leaves an MTA over TCP: a role whose network
        namespace counted no TCP connection or segment, on any port, since just before its last reset is
        as that reset left it. Remembers the counters now, before the reset that follows: what happens
        during or after it counts next time."""
        capture = self.captures.get(role)
        try:
            now = capture.tcp_activity() if capture is not None else None
        except CaptureError:
            now = None
        before = self.quiet_at.pop(role, None)
        if now is None:
            return True, None
        self.quiet_at[role] = now
        # Index 0 is ActiveOpens (HopCapture.tcp_activity).
        quiet_outbound = now[0] if before is not None and before[0] == now[0] else None
        return before != now, quiet_outbound

    @staticmethod
    def _policy_of(plan: ScenarioPlan) -> tuple[HostPlan | None, MtaSts | None]:
        return next((h for h in plan.topology.hosts if h.role == POLICY_ROLE), None), plan.topology.mta_sts

    def _replace_policy(self, plan: ScenarioPlan) -> None:
        """The MTA-STS policy host as ``plan`` has it (started, replaced or removed), at the address a
        fresh topology gives it."""
        began = time.monotonic()
        self.policy = (None, None)  # until the new one listens
        address = plan_addresses(plan.topology, self.topology.subnet).get(POLICY_ROLE, "")
        replace_policy_host(self.topology, plan.topology, build_images(self.ctx.images, plan.topology), address)
        self.policy = self._policy_of(plan)
        what = "started" if self.policy[0] is not None else "removed"
        self.ctx.progress.line(f"run {self.run_id}: the MTA-STS policy host {what} for the next scenario "
                               f"({time.monotonic() - began:.1f}s)")

    def _planned(self, plan: ScenarioPlan) -> dict[str, tuple[HostPlan, str]]:
        """``plan``'s MTA roles, each with the address a fresh topology of that plan gives it."""
        addresses = plan_addresses(plan.topology, self.topology.subnet)
        return {h.role: (h, addresses[h.role]) for h in plan.topology.hosts if h.mta is not None}

    def _leaving(self, plan: ScenarioPlan) -> set[str]:
        """The MTA roles running here that ``plan`` does not have (roles an earlier scenario added)."""
        planned = self._planned(plan)
        return {r for r, h in self.topology.hosts.items() if h.mta is not None and r not in planned}

    def _changing(self, plan: ScenarioPlan) -> set[str]:
        """The MTA roles of ``plan`` not running here as planned: a role whose plan (configuration,
        settings, TLS, implementation) differs from the one its container was made from, whose address
        differs from a fresh topology's, or that is not running here at all (an added role)."""
        return {r for r, (h, address) in self._planned(plan).items()
                if self.roles.get(r) != h or r not in self.topology.hosts or self.topology.address(r) != address}

    def _reconfigurable(self, plan: ScenarioPlan, changing: set[str]) -> set[str]:
        """The roles of ``changing`` that run here at their planned address and whose plan differs from
        their container's only in what the implementation can reload in place (``reconfigurable``)."""
        planned = self._planned(plan)
        return {r for r in changing if r in self.roles and r in self.topology.hosts
                and self.topology.address(r) == planned[r][1] and reconfigurable(self.roles[r], planned[r][0])}

    def _reconfigure(self, plan: ScenarioPlan, roles: set[str]) -> set[str]:
        """Each of ``roles`` serving ``plan``'s TLS in its own container, side by side; the roles done. One
        that could not be (its MTA refused the change, say) is left to be replaced, as any other change
        is: a new container then reports what is wrong in the MTA's own words."""
        if not roles:
            return set()
        planned = self._planned(plan)
        began = time.monotonic()

        def one(role: str) -> str | None:
            try:
                reconfigure_role(self.topology, self.roles[role], planned[role][0])
            except HarnessError as exc:
                self.ctx.progress.line(f"run {self.run_id}: {role} could not take the next scenario's TLS in its "
                                       f"container ({exc}); it is replaced")
                self.roles.pop(role, None)
                return None
            self.roles[role] = planned[role][0]
            return role

        with ThreadPoolExecutor(max_workers=len(roles)) as pool:
            done = {r for r in pool.map(one, sorted(roles)) if r is not None}
        if done:
            self.ctx.progress.line(f"run {self.run_id}: {', '.join(sorted(done))} reconfigured in place for the next "
                                   f"scenario's TLS, greeting after {time.monotonic() - began:.1f}s")
        return done

    def _remove(self, roles: set[str]) -> None:
        """Each of ``roles`` gone from this topology, with its capture and mail watch."""
        for role in sorted(roles):
            self._forget(role)
            remove_host(self.topology, role)
        self.ctx.progress.line(f"run {self.run_id}: {', '.join(sorted(roles))} removed (the next scenario has "
                               "no such role)")

    def _forget(self, role: str) -> None:
        """What observes ``role``'s container let go: its plan, mail watch and capture (its file goes
        with the container)."""
        self.roles.pop(role, None)
        self.quiet_at.pop(role, None)
        self.mail_watches.pop(role, None)
        self.mail_events.pop(role, None)
        self.captures.pop(role, None)  # its file goes with the container

    def _replace(self, plan: ScenarioPlan, roles: set[str]) -> None:
        """Each of ``roles`` in a new container made from ``plan``'s, at the address a fresh topology gives
        it, with a capture and a mail watch of its own. The other roles keep their containers."""
        planned = self._planned(plan)
        changed = [planned[r][0] for r in sorted(roles)]
        began = time.monotonic()
        images = build_images(self.ctx.images, plan.topology)
        for host in changed:
            self._forget(host.role)  # until its new container greets
        replace_roles(self.topology, changed, images, {r: planned[r][1] for r in roles})
        captures, watches = self._observe([self.topology.hosts[h.role] for h in changed])
        # The same mapping the hop reader holds: the new captures join it.
        self.captures.update(captures)
        self.mail_watches.update(watches)
        self.mail_events.update({role: watch.changed for role, watch in watches.items()})
        self.roles.update({h.role: h for h in changed})
        self.ctx.progress.line(f"run {self.run_id}: {', '.join(h.role for h in changed)} started for the next "
                               f"scenario's configuration, greeting after {time.monotonic() - began:.1f}s")

    def _restore(self, roles: Sequence[str]) -> None:
        """Every role a fault step acted on running, unpaused and on the network again (the queue and
        retry state it kept are the reset's), its capture and mail watch following a new container
        process. What cannot be restored ends this topology: the caller starts a new one."""
        for role in roles:
            error = restore(self.topology, role, resume_capture=lambda host: self.hops.resume(host.role))
            if error is not None:
                raise InfrastructureError(f"{role} could not be brought back after the faults of the last scenario: "
                                          f"{error}")
            watch = self.mail_watches.get(role)
            if watch is not None and not watch.alive:
                # A started or restarted container ended the watch's process with its own.
                host = self.topology.hosts[role]
                self.mail_watches[role] = MailWatch(self.ctx.client, host.container_id, role,
                                                     prefix=host.confinement).start()
                self.mail_events[role] = self.mail_watches[role].changed

    def _serve(self, plan: ScenarioPlan) -> None:
        self.zones_for(plan)  # plan.records: the scenario's records, resolved
        self.serve_dns(ServedDns(list(plan.records), signer=self.topology.signer))

    def _written(self, files: Mapping[str, str]) -> list[str]:
        """The files of ``files`` the dns container does not serve yet, written into it; their names
        (dns-check then checks just those, and NSD reloads just those zones)."""
        changed = {name: text.encode() for name, text in files.items() if self.served.get(name) != text}
        if changed:
            # Until the reload or restart succeeds, what the container holds is not known: the next
            # one writes every file again (NSD would otherwise read a file left from a failed one).
            self.served = {}
            self.topology.hosts[DNS_ROLE].put_files("/etc/nsd/harness", changed)
        return sorted(changed)

    def _reload_dns(self, files: Mapping[str, str]) -> None:
        """Write ``files`` and have NSD reload its zones: the server never stops answering."""
        dns = self.topology.hosts[DNS_ROLE]
        HostCommands(dns)(["dns-reload", *self._written(files)])
        self.served = dict(files)

    def _restart_dns(self, files: Mapping[str, str]) -> None:
        """Write ``files`` and have new server processes serve them (``dns-restart``: NSD takes a new
        zones.conf only at its start, and dnsdist runs in front of it or not by what dnsdist.conf
        says). The container, its address and interfaces stay. Back once it answers for its own zone (a
        scenario's zone may be the one that fails on purpose)."""
        dns = self.topology.hosts[DNS_ROLE]
        # Returns once the old servers are gone: no later answer is theirs.
        HostCommands(dns)(["dns-restart", *self._written(files)])
        try:
            wait_until_answering(dns.address, HARNESS_ZONE, timeout_s=DNS_READY_TIMEOUT_S)
        except ReadinessTimeoutError as exc:
            # Its own words say why (a zone NSD refused, dnsdist's configuration).
            state = container_state(dns.container.get_wrapped_container())
            how = f"; the dns container {state.describe()}" if state is not None and state.ended else ""
            raise ReadinessTimeoutError(f"{exc}{how}; its last log lines:\n" + dns.logs(tail=12).rstrip()) from None
        self.served = dict(files)

    def serve_dns(self, served: ServedDns) -> None:
        """``served`` (a scenario's records, as its dns_fault and dns_change steps left them) on the dns
        container: nothing when it serves that already, a reload when only zone contents changed, else new
        server processes. Done when every record no fault touches answers as declared."""
        dns = self.topology.hosts[DNS_ROLE]
        files = served.files(ns_address=dns.address)
        if all(files.get(name, "") == self.served.get(name, "") for name in files.keys() | self.served.keys()):
            return  # the same records (and faults) as before: nothing to reload
        if any(files.get(name, "") != self.served.get(name, "") for name in ("zones.conf", DNSDIST_CONF)):
            self._restart_dns(files)
        else:
            self._reload_dns(files)
        self._wait_served(served.answering())
        resolver = self.topology.hosts.get(RESOLVER_ROLE)
        if resolver is not None:
            # The validating resolver may still hold an answer of the zones replaced for up to a second
            # (a scenario's TLSA record for the mx its DANE scenario before had): forgotten now, as a
            # fresh topology's resolver has nothing cached.
            HostCommands(resolver)(resolver_flush(RESOLVER_CONF_PATH))

    def _wait_served(self, records: Sequence[ResolvedRecord]) -> None:
        """NSD reloads in the background: wait until every record in ``records`` answers as declared."""
        server = self.topology.address("dns")

        def served() -> bool:
            try:
                check_records(server, records, timeout_s=1.0)
            except DnsPreflightError:
                return False
            return True

        if not poll_until(DNS_RELOAD_TIMEOUT_S, served, interval=0.05):
            check_records(server, records)  # raises, naming the record that is not served

    def close(self, *, keep: bool) -> None:
        if keep:
            self.topology.close_shells()  # destroy() closes them otherwise
            # Kept for poking at: the containers keep their keys, the host forgets its copies now.
            self.topology.forget_keys()
            for line in debugging_lines(self.run_id, run_containers(self.ctx.client, self.run_id)):
                self.ctx.progress.line(line)
            return
        self.topology.destroy()


def _reset(host: Host, *, quiet_outbound: int | None = None) -> None:
    DRIVERS[str(host.mta)].reset(HostCommands(host), quiet_outbound=quiet_outbound)


def verify_on(shared: SharedTopology, plan: ScenarioPlan, scenario: Scenario, mta: str) -> ScenarioResult:
    """One scenario on a topology ``shared.prepare(plan)`` made ready, its hops read from its own window."""
    started = time.monotonic()
    # Capture timestamps are wall-clock; the client's clock is monotonic from the same instant.
    shared.window_start = time.time()
    result = ScenarioResult(file=str(scenario.path), name=scenario.name, mta=mta, run_id=shared.run_id,
                            started_at=shared.window_start)
    hops = shared.hops.since(shared.window_start, names=shared.names())
    steps = StepRunner(shared.topology, scenario, result, started, mta=mta, hops=hops,
                       dns=ServedDns(list(plan.records), signer=shared.topology.signer),
                       mail_events=shared.mail_events, serve_dns=shared.serve_dns)
    try:
        steps.run_all()
        result.status = FAILED if result.failures else PASSED
    except HarnessError as exc:
        result.status, result.error = ERROR, str(exc)
    except Exception as exc:  # a harness bug must not end the other scenarios' runs, nor leak containers
        result.status = ERROR
        result.error = f"internal error (a bug in the harness: please report it): {exc!r}\n" + traceback.format_exc()
    finally:
        shared.faulted |= steps.faulted  # undone before the next scenario (SharedTopology.prepare)
        _add_hop_exchanges(result, hops)
        if result.status != PASSED:
            # The MTAs' own explanation: read only when something went wrong (one logs call per role).
            result.logs = role_logs(shared.topology.hosts, shared.window_start, result.exchanges)
        result.config_warnings = {h.role: list(h.check_warnings) for h in shared.topology.hosts.values()
                                  if h.check_warnings}
        result.duration_s = time.monotonic() - started
    return result


class ScenarioSequence:
    """Scenarios of one sharing key, one after another on one shared topology, started with the
    first. A role configuration the MTA refuses is reported in full once: a later scenario needing the
    same one ends at once, referring to that report, and the others still run. A topology that cannot
    start at all is reported once too: every later scenario refers to it. Used by ``run_all`` and by
    the pytest plugin (one per sharing key and process)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.shared: SharedTopology | None = None
        self.statuses: list[str] = []
        self.not_started: str | None = None  # the scenario whose topology did not start
        self.refused: list[tuple[str, HostPlan, str]] = []  # (role, its plan, the scenario reporting it)
        self._created = time.monotonic()

    def run(self, scenario: Scenario, mta: str) -> ScenarioResult:
        began = time.monotonic()
        label = f"{scenario.path} [{mta}]"

        def ended(status: str, error: str, *, took: bool = True) -> ScenarioResult:
            result = ScenarioResult(file=str(scenario.path), name=scenario.name, mta=mta, status=status, error=error,
                                    duration_s=time.monotonic() - began if took else 0.0)
            self.statuses.append(status)
            return result

        if self.not_started is not None:
            return ended(ERROR, f"the topology did not start (reported with {self.not_started})", took=False)
        plan: ScenarioPlan | None = None
        try:
            plan = plan_scenario(scenario, self.ctx.compose_dir, mta=mta)
            earlier = next(((r, where) for r, host, where in self.refused if host in plan.topology.hosts), None)
            if earlier is not None:
                return ended(CONFIG_ERROR, f"configuration error: {earlier[0]}'s configuration did not start "
                                           f"(reported with {earlier[1]})", took=False)
            first = self.shared is None
            shared = self.ready(plan, label)
        except ConfigurationError as exc:
            host = next((h for h in plan.topology.hosts if h.role == exc.role), None) if plan else None
            if host is not None:
                self.refused.append((exc.role, host, label))
            return ended(CONFIG_ERROR, str(exc))
        except HarnessError as exc:
            return ended(ERROR, str(exc))
        result = verify_on(shared, plan, scenario, mta)
        if first:
            result.duration_s = time.monotonic() - self._created  # it also waited for the topology
        self.statuses.append(result.status)
        return result

    def ready(self, plan: ScenarioPlan, label: str) -> SharedTopology:
        """The topology, started on first use (its images built if missing), prepared for ``plan``."""
        if self.not_started is not None:
            raise InfrastructureError(f"the topology did not start (reported with {self.not_started})")
        if self.shared is None:
            try:
                build_images(self.ctx.images, plan.topology)
                self.shared = SharedTopology(self.ctx, plan)
            except ConfigurationError:
                raise  # that role's configuration, not the topology: the next scenario tries again
            except HarnessError:
                self.not_started = label  # the same cause for every scenario that needs this topology
                raise
        try:
            self.shared.prepare(plan)
        except ConfigurationError:
            raise
        except HarnessError as exc:
            # The reset between two scenarios is the harness's own work, not a verdict: a topology it
            # could not reset is replaced, said once, and no later scenario inherits what it left.
            why = "\n".join("  " + line for line in (str(exc).strip() or type(exc).__name__).splitlines())
            self.ctx.progress.line(f"{label}: the shared topology could not be reset; a new one runs this "
                                   f"scenario and the rest. Why:\n{why}")
            self.shared.close(keep=False)
            self.shared = None
            return self.ready(plan, label)
        return self.shared

    def close(self) -> None:
        """Remove the topology, or keep it (``ctx.keep``) when a scenario asks for it."""
        if self.shared is not None:
            self.shared.close(keep=any(_keep(self.ctx.keep, s) for s in self.statuses))
            self.shared = None


def _add_hop_exchanges(result: ScenarioResult, hops: CapturedHops) -> None:
    """Every hop's exchanges join the client's, as one timeline."""
    try:
        timeline = hops.timeline()
    except HarnessError as exc:
        result.error = (result.error + "\n" if result.error else "") + f"hop capture unreadable: {exc}"
        return
    merged = list(result.exchanges) + timeline
    result.exchanges = sorted(merged, key=lambda e: e.at_s)


def _keep(keep: str, status: str) -> bool:
    return keep == KEEP_ALWAYS or (keep == KEEP_ON_FAILURE and status != PASSED)


def run_all(ctx: RunContext, scenarios: Sequence[Scenario],
            on_result: Callable[[ScenarioResult], None] | None = None,
            mtas: Sequence[str] | None = None,
            pairs: Sequence[tuple[Scenario, str]] | None = None) -> list[ScenarioResult]:
    """Every scenario on every implementation it runs on (``mtas``: the command line's selection), or
    exactly ``pairs``; results in that order whatever order they finished in."""
    ctx.reap()
    if pairs is None:
        pairs = [(s, m) for s in scenarios for m in implementations_for(s, mtas or [ctx.mta])]
    # Images first, in this thread: groups started side by side must not build the same image twice.
    # Independent ones build side by side.
    with ctx.images.parallel():
        variants = {topology_key(s, m): (s, m) for s, m in reversed(pairs)}
        for scenario, mta in variants.values():
            build_images(ctx.images, plan_scenario(scenario, ctx.compose_dir, mta=mta).topology)
    lock = threading.Lock()
    schedule = Schedule(pairs, fresh=ctx.fresh)
    placed: list[tuple[int, ScenarioResult]] = []
    ran_on: list[list[int]] = []  # what each topology ran

    def slot() -> None:
        sequence: ScenarioSequence | None = None
        last: int | None = None  # the pair the slot's topology ran last
        ran: list[int] = []
        try:
            while (lane := schedule.next_lane(warm=None if last is None else schedule.pairs[last])) is not None:
                first = schedule.pairs[lane.queue[0]]
                # No pair to go on from (fresh mode, or a topology that did not run): a new topology.
                if sequence is not None and (last is None or sharing_key(*first) != sharing_key(*schedule.pairs[last])):
                    sequence.close()
                    sequence, last = None, None
                if sequence is None:
                    sequence = ScenarioSequence(ctx)  # a new topology, started with its first scenario
                    with lock:
                        ran_on.append(ran := [])
                while not CANCELLED.is_set() and (i := schedule.take(lane)) is not None:
                    result = sequence.run(*schedule.pairs[i])
                    healthy = sequence.not_started is None and not sequence.refused
                    schedule.ran(lane, healthy=healthy)
                    # Only a topology that runs, with every configuration accepted, takes on more work.
                    last = i if healthy and not ctx.fresh else None
                    with lock:
                        ran.append(i)
                        placed.append((i, result))
                        if on_result is not None:
                            on_result(result)
                if CANCELLED.is_set():
                    schedule.close()  # this lane stays unfinished: no slot may wait for it
                    return
        except BaseException:
            schedule.close()
            raise
        finally:
            if sequence is not None:
                sequence.close()

    # More slots than groups is useful: an idle slot takes the back of a long group's queue.
    jobs = max(1, min(ctx.jobs, len(pairs)))
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="topology")
    try:
        for future in [pool.submit(slot) for _ in range(jobs)]:
            future.result()
    except BaseException:
        # Ctrl-C / SIGTERM: stop every group's waits at once, so their topologies are removed now.
        CANCELLED.set()
        schedule.close()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    ctx.lanes = [[schedule.pairs[i] for i in ran] for ran in ran_on if ran]
    return [result for _, result in sorted(placed, key=lambda p: p[0])]


def implementations_for(scenario: Scenario, selected: Sequence[str]) -> list[str]:
    """The scenario's own list (or every implementation) narrowed to the selection, in its order."""
    return [m for m in selected if not scenario.mtas or m in scenario.mtas]
