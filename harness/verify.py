"""The verify phase: each step of a scenario in order. A step is observed (I/O, a typed observation
about the scenario's own message) and judged (pure, ``harness.expect.judge``); both are recorded.
Expectation failures are results; only infrastructure trouble raises.

Waits end when the answer is known: a positive step ("delivered", "bounced", "queued") as soon as its
judge passes, a negative one ("no delivery", "no bounce", "no connection") as soon as it fails, a hop
once the message's transaction has its outcome; the step's bound is the upper limit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol, TypeVar

from harness.dns.served import ServedDns
from harness.dns.zones import resolve_records
from harness.errors import HarnessError
from harness.expect.judge import judge
from harness.expect.results import FAILED, PASSED, SKIPPED, ScenarioResult, StepOutcome
from harness.expect.summary import summarize
from harness.observe.dsn import parse_dsn
from harness.observe.hopmatch import select_on_hop
from harness.observe.maildir import MAIL_ROOT, messages_in, same_message_id
from harness.observe.mtalogs import SenderLog
from harness.observe.observations import (
    BounceObservation,
    ConnectionAttempt,
    ConnectionObservation,
    DeliveredCopy,
    FaultObservation,
    FlushObservation,
    FoundDsn,
    HopObservation,
    MailboxObservation,
    Observation,
    QueuedMessage,
    QueueObservation,
    SentMessage,
    SessionObservation,
    tls_decided,
)
from harness.observe.polling import CANCELLED, POLL_INTERVAL_S, poll_until
from harness.observe.queue import flush, queue_entries
from harness.report.reproduce import reproduction
from harness.scenario.model import (
    UNREACHABLE_ROLE,
    BounceStep,
    DeliveryStep,
    DnsChangeStep,
    DnsFaultStep,
    HopStep,
    NoBounceStep,
    NoConnectionStep,
    NoDeliveryStep,
    QueueFlushStep,
    QueueStateStep,
    RoleFaultStep,
    Scenario,
    SmtpSessionStep,
    Step,
)
from harness.smtp.client import TlsTrust, run_session
from harness.smtp.message import render_message
from harness.smtp.transcript import Exchange, Transcript
from harness.topology.faults import do_fault
from harness.topology.readiness import container_state
from harness.topology.topology import Host, Topology

__all__ = ["ConnectionAttempt", "HopSource", "NoHops", "StepRunner"]

# How far a capture can trail the wire: tcpdump gets each packet as it arrives (--immediate-mode,
# compose/capture/capture-start; measured 2-4 ms), and is scheduled late on a busy machine.
CAPTURE_LAG_S = 0.5

_O = TypeVar("_O", bound=Observation)
HOP_POLL_S = 0.1


class HopSource(Protocol):
    """What the hop captures offer the verify phase (decoded on demand, so each call is current)."""

    def sessions(self) -> list[Transcript]: ...

    def attempts(self) -> list[ConnectionAttempt]: ...

    def dropped(self) -> dict[str, int]: ...

    def settle(self, role: str) -> None: ...

    def resume(self, role: str) -> None: ...

    def rejoined(self, role: str) -> None: ...


class NoHops:
    """Where no capture runs: no hop is ever seen."""

    def sessions(self) -> list[Transcript]:
        return []

    def attempts(self) -> list[ConnectionAttempt]:
        return []

    def dropped(self) -> dict[str, int]:
        return {}

    def settle(self, role: str) -> None:
        pass

    def resume(self, role: str) -> None:
        pass

    def rejoined(self, role: str) -> None:
        pass


class StepRunner:
    def __init__(self, topology: Topology, scenario: Scenario, result: ScenarioResult, started: float,
                 *, mta: str, hops: HopSource | None = None,
                 dns: ServedDns | None = None,
                 mail_events: Mapping[str, threading.Event] | None = None,
                 serve_dns: Callable[[ServedDns], None] | None = None) -> None:
        self.topology = topology
        self.scenario = scenario
        self.result = result
        self.started = started
        self.mta = mta
        self.hops: HopSource = hops or NoHops()
        # What the scenario's DNS server serves, as its dns_fault and dns_change steps leave it, and who
        # makes the server serve it.
        self.dns = dns if dns is not None else ServedDns([])
        self.serve_dns = serve_dns
        self.sent: list[SentMessage] = []
        # Per host: set when a file is written under its mail root (MailWatch), to end waits early.
        self.mail_events = dict(mail_events or {})
        self.session_counter: dict[str, int] = {}
        self.faulted: set[str] = set()  # roles a fault step acted on: their state is the scenario's doing
        # The role whose queue last held each message (by its Message-ID), listed first next time (``_nowhere``).
        self._holder: dict[str, str] = {}

    def clock(self) -> float:
        return time.monotonic() - self.started

    def run_all(self) -> None:
        for index, step, override in self.scenario.steps_for(self.mta):
            if override is not None and override.skip:
                self.result.steps.append(StepOutcome(index, step.kind, SKIPPED, f"skipped on {self.mta}",
                                                     override.reason))
                continue
            at = self.clock()
            observation = self.observe(index, step)
            took = self.clock() - at
            failures = judge(index, step, observation)
            self.result.failures.extend(failures)
            self.result.steps.append(StepOutcome(
                index, step.kind, FAILED if failures else PASSED, summarize(step, observation),
                override.reason if override is not None else None, observation,
                self._replay(step) if failures else None, at, took))

    def _replay(self, step: Step) -> str | None:
        """For a failed client session, the swaks lines that replay it against ``harness up``."""
        if not isinstance(step, SmtpSessionStep) or not self.sent:
            return None
        return reproduction(self.scenario, self.mta, step, self.sent[-1].content,
                            source_file=step.message.source_file)

    def observe(self, index: int, step: Step) -> Observation:
        observers: dict[type, Callable[[int, Step], Observation]] = {
            SmtpSessionStep: self.smtp, DeliveryStep: self.mailbox, NoDeliveryStep: self.mailbox,
            HopStep: self.hop, NoConnectionStep: self.no_connection, BounceStep: self.bounces,
            NoBounceStep: self.bounces, QueueFlushStep: self.queue_flush, QueueStateStep: self.queue_state,
            RoleFaultStep: self.fault, DnsFaultStep: self.dns_fault, DnsChangeStep: self.dns_change,
        }
        return observers[type(step)](index, step)

    def _look_until(self, within_s: float, look: Callable[[float], _O], done: Callable[[_O], bool], *,
                    interval: float = POLL_INTERVAL_S, wake: threading.Event | None = None) -> _O:
        """Look until ``done`` holds for what was seen, or ``within_s`` has passed; the last observation."""
        began = time.monotonic()
        last: list[_O] = []

        def probe() -> bool:
            last[:] = [look(time.monotonic() - began)]
            return done(last[0])

        poll_until(within_s, probe, interval=interval, wake=wake)
        return last[0]

    def _watch(self, index: int, step: Step, within_s: float, look: Callable[[float], _O], *,
               until_pass: bool, settled: Callable[[_O], bool] | None = None,
               gone: Callable[[], bool] | None = None, interval: float = POLL_INTERVAL_S,
               wake: threading.Event | None = None, absent: Callable[[_O], bool] | None = None) -> _O:
        """Look until the step's verdict is known, or ``within_s`` has passed; the last observation.

        A positive step (``until_pass``) is known once its judge passes (and ``settled`` holds for it), or
        once it fails on a look that saw nothing (``absent``) taken after ``gone`` said the outcome can no
        longer change: asked only then, as listing every queue costs a command per host. A negative one
        ("no ...") once its judge fails, or once ``gone`` says so; there ``gone`` is asked before each
        look, so a copy delivered in between is still seen by that look."""
        finished = [False]
        hopeless = [False]  # a positive step's last look failed and saw nothing: ask ``gone`` next

        def look_after_gone(waited: float) -> _O:
            if not until_pass or hopeless[0]:
                finished[0] = gone is not None and gone()
            return look(waited)

        def done(obs: _O) -> bool:
            failures = judge(index, step, obs)
            if until_pass:
                if not failures:
                    return settled is None or settled(obs)
                hopeless[0] = absent is not None and absent(obs)
                return finished[0] and hopeless[0]
            return bool(failures) or finished[0]

        return self._look_until(within_s, look_after_gone, done, interval=interval, wake=wake)

    def _bound(self, within_s: float, message: SentMessage | None) -> float:
        """A message the MTA refused (or never got) cannot be delivered, bounced, queued or relayed:
        steps about it are decided by one look, not by waiting out their bound."""
        return 0.0 if message is not None and message.refused else within_s

    def _nowhere(self, message: SentMessage, *, bounces: bool = False) -> Callable[[], bool]:
        """True once neither the message (nor, with ``bounces``, a DSN about it) is queued anywhere.

        Hosts are listed one after another, so a message handed from one to the next between the two
        listings could be missed by both (the receiver listed before it got it, the sender after it let
        go). A sender keeps a message until the receiver has it, so two rounds in opposite orders
        cannot both miss it: in one of them the sender is listed first. That holds for each round on
        its own, so the two run side by side."""
        subjects = ("message", "bounce") if bounces else ("message",)

        def gone() -> bool:
            # A host a fault step stopped or paused may hold it: not gone while it cannot be listed.
            # The role that held it last time is listed first: while a message waits in one queue
            # (deferred, for a "no delivery" bound) one listing per look says so. Only the two full
            # rounds can say it is gone.
            held_by = self._holder.get(message.message_id)
            if any(self._queued_on(h, message, *subjects) != [] for h in self._mta_hosts() if h.role == held_by):
                return False
            holding = [host for host, entries in self._listings(message, *subjects, until_found=True) if entries != []]
            if holding:
                self._holder[message.message_id] = holding[0].role
            return not holding

        return gone

    def _listings(self, message: SentMessage, *subjects: str,
                  until_found: bool = False) -> list[tuple[Host, list[QueuedMessage] | None]]:
        """Every MTA host's entries that are the message (or a DSN about it), listed in two rounds in
        opposite orders (see ``_nowhere``), side by side: each round lists its hosts one after another,
        which is all the argument needs. ``until_found``: both rounds stop at the first host holding it.
        The listings in the rounds' order, the first round's first."""
        hosts = self._mta_hosts()
        found = threading.Event()

        def listed(order: list[Host]) -> list[tuple[Host, list[QueuedMessage] | None]]:
            out: list[tuple[Host, list[QueuedMessage] | None]] = []
            for host in order:
                if until_found and found.is_set():
                    break
                entries = self._queued_on(host, message, *subjects)
                out.append((host, entries))
                if entries != []:
                    found.set()
            return out

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="queue-round") as pool:
            rounds = [pool.submit(listed, hosts), pool.submit(listed, hosts[::-1])]
            return [listing for done in rounds for listing in done.result()]

    def _queued_on(self, host: Host, message: SentMessage, *subjects: str) -> list[QueuedMessage] | None:
        """``host``'s entries that are the message (or a DSN about it); None when its queue cannot be listed
        because a fault step of this scenario stopped or paused its container (it holds whatever it held)."""
        if host.role in self.faulted:
            state = container_state(host.container.get_wrapped_container())
            if state is not None and state.status != "running":
                return None
        return queue_entries(host, message, *subjects)

    # -- the client's own sessions -----------------------------------------------------------------
    def smtp(self, index: int, step: Step) -> Observation:
        assert isinstance(step, SmtpSessionStep)
        hop = f"client->{step.host}"
        number = self.session_counter.get(hop, 0) + 1
        self.session_counter[hop] = number
        domain = step.mail_from.rpartition("@")[2] or "mailflow-harness.test"
        message_bytes, message_id = render_message(step.message, mail_from=step.mail_from,
                                                   rcpt_to=step.rcpt_to, domain=domain)
        opened = self.clock()
        down = self._not_serving(step.host)
        if down is not None:
            # Not a 30 s SMTP timeout: what the container is, at once, with its last lines.
            exchange = Exchange(hop, number, "CONNECT", None, None, None, down, at_s=opened)
            self.result.exchanges.append(exchange)
            self.sent.append(SentMessage(step.id, hop, number, message_id, step.mail_from, step.rcpt_to, None,
                                         message_bytes, None, opened))
            return SessionObservation(hop, number, (exchange,), message_id)
        # The client trusts the run's CA only, and checks the certificate names the role's host.
        trust = TlsTrust(self.topology.tls.ca_pem if self.topology.tls is not None else None,
                         self.topology.hosts[step.host].hostname)
        transcript = asyncio.run(run_session(
            self.topology.address(step.host), 25, step, hop=hop, session=number, clock=self.clock,
            message_bytes=message_bytes, message_id=message_id, trust=trust))
        self.result.exchanges.extend(transcript.exchanges)
        envelope_id = next((o.partition("=")[2] for o in step.mail_options if o.upper().startswith("ENVID=")), None)
        self.sent.append(SentMessage(step.id, hop, number, message_id, step.mail_from, step.rcpt_to, envelope_id,
                                     message_bytes, transcript.first("END-OF-DATA"), opened))
        return SessionObservation(hop, number, tuple(transcript.exchanges), message_id)

    def _not_serving(self, role: str) -> str | None:
        """Why ``role``'s container cannot answer (exited, paused, removed) when no fault step of this
        scenario made it so; None when it runs, or when a fault step stopped it on purpose (the session
        then meets what a client would: a refused or unanswered connection)."""
        if role in self.faulted:
            return None
        host = self.topology.hosts[role]
        state = container_state(host.container.get_wrapped_container())
        if state is None or state.status in ("running", "restarting", "created"):
            return None
        what = f"{role}'s container {state.describe()}" + (" (no fault step paused it)" if state.status == "paused"
                                                           else "")
        tail = host.logs(tail=10).strip() if state.status != "removed" else ""
        return what + (f"; its last log lines:\n{tail}" if tail else "")

    def _message(self, message_of: str | None) -> SentMessage:
        for sent in reversed(self.sent):
            if message_of is None or sent.step_id == message_of:
                return sent
        raise AssertionError(f"the loader guarantees an earlier smtp session {message_of or ''}")

    # -- mailboxes ------------------------------------------------------------------------------------
    def mailbox(self, index: int, step: Step) -> Observation:
        assert isinstance(step, DeliveryStep | NoDeliveryStep)
        message = self._message(step.message_of)
        host = self.topology.hosts[step.host]

        def read() -> tuple[DeliveredCopy, ...]:
            return tuple(DeliveredCopy(m.mailbox, m.path, m.raw)
                         for m in messages_in(step.host, host.read_tree(MAIL_ROOT))
                         if same_message_id(m.message_id, message.message_id)
                         and (step.mailbox is None or m.mailbox == step.mailbox.lower()))

        def look(waited: float) -> MailboxObservation:
            copies = read()
            still: tuple[str, ...] = ()
            if isinstance(step, DeliveryStep) and step.copies is not None and len(copies) >= step.copies:
                # "Exactly N" is only known once no MTA of the topology holds the message any more. The
                # mailbox is read again after the queues: a copy written, and let go of by its queue, after
                # the first read and before the listing is in the second.
                still = self._queued_anywhere(message)
                if not still:
                    copies = read()
            return MailboxObservation(step.host, step.mailbox, message, copies, waited, still)

        def no_copy_pending(obs: MailboxObservation) -> bool:
            return not obs.still_queued

        if isinstance(step, DeliveryStep):
            settled = no_copy_pending if step.copies else None
            return self._watch(index, step, self._bound(step.within_s, message), look, until_pass=True,
                               settled=settled, wake=self.mail_events.get(step.host))
        return self._watch(index, step, self._bound(step.within_s, message), look, until_pass=False,
                           gone=self._nowhere(message), wake=self.mail_events.get(step.host))

    def _queued_anywhere(self, message: SentMessage) -> tuple[str, ...]:
        """Where the message is queued; in two rounds of listings in opposite orders, as ``_nowhere``
        does, so a message handed from one host to the next between two listings is still seen."""
        out: list[str] = []
        for host, entries in self._listings(message, "message"):
            found = [f"{host.role} (its container stopped or paused by a fault step: its queue unknown)"] \
                if entries is None else [f"{host.role} {q.summary()}" for q in entries]
            out += [f for f in found if f not in out]
        return tuple(out)

    def _mta_hosts(self) -> list[Host]:
        return [h for h in self.topology.hosts.values() if h.mta is not None]

    def bounces(self, index: int, step: Step) -> Observation:
        assert isinstance(step, BounceStep | NoBounceStep)
        message = self._message(step.message_of)
        host = self.topology.hosts[step.host]

        def look(waited: float) -> BounceObservation:
            found = []
            for m in messages_in(step.host, host.read_tree(MAIL_ROOT)):
                if m.mailbox != step.mailbox.lower():
                    continue
                status = parse_dsn(m.raw)
                if status is None:
                    continue
                why = status.about(message.message_id, envelope_id=message.envelope_id, recipients=message.rcpt_to)
                if why:
                    found.append(FoundDsn(m.path, str(why), dict(status.per_message), tuple(status.recipients)))
            return BounceObservation(step.host, step.mailbox, message.message_id, tuple(found), waited)

        wake = self.mail_events.get(step.host)
        if isinstance(step, BounceStep):
            return self._watch(index, step, self._bound(step.within_s, message), look, until_pass=True, wake=wake)
        return self._watch(index, step, self._bound(step.within_s, message), look, until_pass=False,
                           gone=self._nowhere(message, bounces=True), wake=wake)

    # -- faults ----------------------------------------------------------------------------------------
    def fault(self, index: int, step: Step) -> Observation:
        assert isinstance(step, RoleFaultStep)
        at = self.clock()

        self.faulted.add(step.role)

        error = do_fault(self.topology, step.role, step.action, resume_capture=lambda host: self.hops.resume(host.role),
                         rejoined=lambda host: self.hops.rejoined(host.role),
                         ending=lambda host: self.hops.settle(host.role))
        return FaultObservation(step.role, step.action, at, self.clock() - at, error)

    def dns_fault(self, index: int, step: Step) -> Observation:
        assert isinstance(step, DnsFaultStep)
        at = self.clock()
        self.dns.fault(step.name, step.rtype, step.answer)
        what = f"{step.name} {step.rtype}" if step.rtype else step.name
        error = self._serve_dns()
        return FaultObservation(what, step.answer, at, self.clock() - at, error)

    def dns_change(self, index: int, step: Step) -> Observation:
        assert isinstance(step, DnsChangeStep)
        at = self.clock()
        addresses = {role: host.address for role, host in self.topology.hosts.items()}
        if self.topology.unreachable is not None:
            addresses[UNREACHABLE_ROLE] = self.topology.unreachable
        changed = ", ".join(sorted({f"{r.name.rstrip('.')} {r.rtype}" for r in step.replace}
                                   | {f"{n.rstrip('.')} {t}" for n, t in step.remove}))
        try:
            self.dns.change(resolve_records(step.replace, addresses), step.remove)
        except HarnessError as exc:  # checked at load time with stand-in addresses: not expected here
            return FaultObservation(changed, "changed", at, self.clock() - at, str(exc))
        error = self._serve_dns()
        return FaultObservation(changed, "changed", at, self.clock() - at, error)

    def _serve_dns(self) -> str | None:
        """Make the DNS server serve ``self.dns``; None when it does, else why not."""
        if self.serve_dns is None:
            return "this run has no DNS server the harness may change"
        try:
            self.serve_dns(self.dns)
        except HarnessError as exc:
            return str(exc)
        return None

    # -- queues ----------------------------------------------------------------------------------------
    def queue_flush(self, index: int, step: Step) -> Observation:
        assert isinstance(step, QueueFlushStep)
        host = self.topology.hosts[step.host]
        flush(host)
        return FlushObservation(step.host)

    def queue_state(self, index: int, step: Step) -> Observation:
        assert isinstance(step, QueueStateStep)
        message = self._message(step.message_of)
        host = self.topology.hosts[step.host]

        def look(waited: float) -> QueueObservation:
            return QueueObservation(step.host, step.of, tuple(queue_entries(host, message, step.of)), waited)

        # The message in no queue of the topology: delivered or returned, it never comes back to one, so
        # a state still expected of it is known not to come (a bounce may yet be made: ``of: bounce``
        # waits out its bound).
        gone = self._nowhere(message) if step.of == "message" else None
        return self._watch(index, step, self._bound(step.within_s, message), look, until_pass=True, interval=0.5,
                           gone=gone, absent=lambda obs: not obs.entries)

    # -- hops between hosts ----------------------------------------------------------------------------
    def hop(self, index: int, step: Step) -> Observation:
        assert isinstance(step, HopStep)
        message = self._message(step.message_of) if self.sent else None

        sender = step.hop.split("->", 1)[0]
        log = SenderLog(self.topology.hosts[sender], message, time.time() - self.clock()) \
            if step.tls is not None and sender in self.topology.hosts and message is not None else None

        def look(waited: float) -> HopObservation:
            sessions = self.hops.sessions()
            obs = select_on_hop(sessions, step.hop, message, session=step.session,
                                rivals=[m for m in self.sent if m is not message])
            in_clear = tuple(t.session for t in sessions if t.hop == step.hop and t.first("MAIL") is not None)
            return replace(obs, in_clear=in_clear,
                           tls_log=log.facts(decided=tls_decided(obs)) if log is not None else None)

        def settled(obs: HopObservation) -> bool:
            # Judged once the transaction has its outcome: a capture read mid-transaction would see a
            # reply "not yet" given. An encrypted session shows no transaction: its handshake's outcome,
            # and what the sender logged about the message, decide instead. What the sender logged is
            # part of the observation (reported, and in docs/compatibility.md) whenever it is read:
            # waited for too, or a run that looked a moment sooner would report less.
            if obs.matched_by is None:
                return False
            logged = log is None or (obs.tls_log is not None and obs.tls_log.final)
            if step.tls is not None and step.tls.outcome != "none":
                return tls_decided(obs) and logged
            return obs.complete and logged

        return self._look_until(self._bound(step.within_s, message), look, settled, interval=HOP_POLL_S)

    def no_connection(self, index: int, step: Step) -> Observation:
        assert isinstance(step, NoConnectionStep)
        if step.target is not None:
            addresses = {self.topology.address(step.target)}
            what = step.target
        else:
            assert step.domain is not None
            addresses = self.dns.domain_addresses(step.domain)
            what = f"any address serving {step.domain}" if addresses else \
                f"anything (no address serves {step.domain})"

        def look(waited: float) -> ConnectionObservation:
            offending = tuple(a for a in self.hops.attempts() if a.source == step.source
                              and (not addresses or a.destination_address in addresses))
            return ConnectionObservation(step.source, what, offending, waited)

        # Any message of the scenario still held somewhere (or a DSN about one) may yet connect: the step
        # ends early only once none is, and at once only when the MTAs accepted none of them.
        accepted = [m for m in self.sent if not m.refused]
        held = [self._nowhere(m, bounces=True) for m in accepted]
        gone = (lambda: all(nowhere() for nowhere in held)) if self.sent else None
        bound = step.within_s if accepted or not self.sent else 0.0
        observed = self._watch(index, step, bound, look, until_pass=False, gone=gone, interval=0.25)
        if observed.attempts:
            return observed
        # A packet is in the capture file up to CAPTURE_LAG_S after it crossed the wire: an attempt made
        # in the last moments before this verdict is only in the file a moment later. "No connection" is
        # said only once the capture has caught up.
        if CANCELLED.wait(CAPTURE_LAG_S):
            raise KeyboardInterrupt("the run was interrupted")
        final = look(observed.waited_s)
        # "None" holds only if every packet is in the captures: a full ring loses some, the SYN maybe.
        return replace(final, lost=tuple(sorted(self.hops.dropped().items()))) if not final.attempts else final

