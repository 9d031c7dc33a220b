"""mailflow-harness benchmark: the floor of the matrix, the warm matrix in shared + parallel mode and in
fresh mode, and their ratios, all measured in this one run; plus what each implementation's topology
costs (start, SMTP transaction, the captures' readiness, teardown) and how fast the hop decoder is.

Run: ``.venv/bin/python bench/bench.py [--only floor,shared,fresh]`` (or ``make bench``). The table goes
to stdout, progress to stderr, every measurement to build/bench.json. Absolute timings depend on the
machine and its load; the ratios between parts measured in the same run much less. See bench/README.md
for what each number means and how the floor is computed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import dpkt  # type: ignore[import-untyped]

from harness.expect.results import PASSED, ScenarioResult
from harness.observe.capture import start_captures
from harness.observe.maildir import MAIL_ROOT
from harness.observe.observations import MailboxObservation
from harness.observe.smtpstream import decode_sessions
from harness.plan import plan_scenario
from harness.report.progress import Progress
from harness.runner import RunContext, ScenarioSequence, bring_up, default_jobs, implementations_for, run_all
from harness.scenario.loader import load_scenario, load_scenarios
from harness.scenario.model import Scenario, SmtpSessionStep
from harness.shard import container_key, topology_key
from harness.smtp.client import run_session
from harness.smtp.message import render_message
from harness.topology.engine import ensure_engine
from harness.topology.images import ImageStore
from harness.topology.labels import RUN_LABEL, list_runs, new_run_id, remove_run
from harness.topology.topology import Topology, build_images

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose"
SCENARIOS = ROOT / "scenarios"
# The floor's SMTP transaction: this scenario's session (client -> mx, one recipient, 354 and 250).
PROBE = SCENARIOS / "01-direct-354.yaml"
# The one-message scenarios run again and again on a running topology: one direct, one relayed.
RESIDENT = (PROBE, SCENARIOS / "02-relay-354.yaml")
RESIDENT_TARGETS_S = {"beyond_mail_work": 0.150, "noticed_after_written": 0.050}  # issue 8's targets
FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "pcap"
OUTPUT = ROOT / "build" / "bench.json"
MTAS = ("postfix", "exim", "opensmtpd")
PARTS = ("decoder", "floor", "resident", "shared", "fresh")
DLT_LINUX_SLL2 = 276
DECODER_TARGET_S = 1.0  # each decoder measurement repeats its loop for about this long per round
DECODER_SLICES = 20  # ... in this many slices, the variants taking turns


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def rotated(items: list[Any], by: int) -> list[Any]:
    if not items:
        return []
    by %= len(items)
    return items[by:] + items[:by]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and every sample (seconds), for the JSON."""
    return {"median": round(median(values), 6), "min": round(min(values), 6), "max": round(max(values), 6),
            "n": len(values), "samples": [round(v, 6) for v in values]}


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of the per-round ratios a/b (both measured in the same round)."""
    return median([x / y for x, y in zip(a, b, strict=True)])


def lanes(durations: Sequence[float], jobs: int) -> float:
    """The shortest time ``durations`` can take on ``jobs`` lanes when each runs whole on one lane
    (longest first onto the least loaded lane; exact for 3 items): the max when jobs >= len, the sum
    when jobs == 1."""
    load = [0.0] * max(1, min(jobs, len(durations)))
    for d in sorted(durations, reverse=True):
        load[load.index(min(load))] += d
    return max(load)


def spread_rounds(rounds: int, slots: int) -> list[int]:
    """``rounds`` spread over ``slots`` as evenly as possible, the earlier slots taking the remainder."""
    return [rounds // slots + (1 if i < rounds % slots else 0) for i in range(slots)]


def fmt_s(seconds: float) -> str:
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    return f"{seconds:.1f} s"


# -- the floor ------------------------------------------------------------------------------------

class FloorBench:
    """Per implementation: the bare standard topology to all greetings, SMTP transactions on it, the
    captures' readiness, teardown; and the three implementations' topologies started side by side."""

    def __init__(self, ctx: RunContext, transactions: int) -> None:
        self.ctx = ctx
        self.transactions = transactions
        probe = load_scenario(PROBE)
        step = next((s for s in probe.steps if isinstance(s, SmtpSessionStep)), None)
        if step is None or step.host != "mx":
            raise SystemExit(f"{PROBE}: its first smtp step (client -> mx) is the floor's transaction")
        self.step: SmtpSessionStep = step
        self.samples: dict[str, list[float]] = {}

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def prepare(self) -> None:
        for mta in MTAS:
            build_images(self.ctx.images, plan_scenario(None, COMPOSE, mta=mta).topology)

    def transaction(self, topology: Topology, session: int) -> tuple[float, float]:
        """One SMTP transaction against the mx, connect to QUIT, as the harness's client runs it; and
        how much of it was the wait for QUIT's reply."""
        step = self.step
        message, message_id = render_message(step.message, mail_from=step.mail_from, rcpt_to=step.rcpt_to,
                                             domain=step.mail_from.rpartition("@")[2])
        address = topology.address("mx")
        t0 = time.perf_counter()
        transcript = asyncio.run(run_session(address, 25, step, hop="client->mx", session=session,
                                             clock=lambda: time.perf_counter() - t0, message_bytes=message,
                                             message_id=message_id))
        elapsed = time.perf_counter() - t0
        eod, quit_ = transcript.first("END-OF-DATA"), transcript.first("QUIT")
        if eod is None or eod.code != 250 or quit_ is None:
            raise SystemExit("the floor's SMTP transaction did not complete (250 after the message, then QUIT): "
                             + "; ".join(f"{e.command} {e.code} {e.text}" for e in transcript.exchanges))
        return elapsed, quit_.at_s - eod.at_s

    def topology(self, mta: str, record: bool) -> None:
        plan = plan_scenario(None, COMPOSE, mta=mta)
        run_id = new_run_id()
        t0 = time.perf_counter()
        topology = bring_up(self.ctx, plan, run_id=run_id, keep_label=False)
        try:
            t1 = time.perf_counter()
            transactions = [self.transaction(topology, i + 1) for i in range(self.transactions)]
            t2 = time.perf_counter()
            mtas = [h for h in topology.hosts.values() if h.mta is not None]
            # Each MTA's capture runs in its own container, started by its entrypoint before the MTA (so
            # within "start"): this is the harness's look that each listens.
            start_captures(mtas)
            t3 = time.perf_counter()
        finally:
            t4 = time.perf_counter()
            topology.destroy()
            t5 = time.perf_counter()
        if record:
            self.add(f"start:{mta}", t1 - t0)
            self.add(f"first_transaction:{mta}", transactions[0][0])
            # The first after a start can be slower (the MTA's first connection); later ones are what
            # a running topology answers, the floor's figure. With one transaction, that one.
            later = transactions[1:] or transactions
            self.add(f"transaction:{mta}", median([t for t, _ in later]))
            self.add(f"quit_reply:{mta}", median([q for _, q in later]))
            self.add(f"capture:{mta}", t3 - t2)
            self.add(f"teardown:{mta}", t5 - t4)

    def side_by_side(self, record: bool) -> None:
        """The three implementations' bare topologies started at once, as run_all's threads do."""
        plans = {mta: plan_scenario(None, COMPOSE, mta=mta) for mta in MTAS}
        started: list[Topology] = []
        lock = threading.Lock()

        def up(mta: str) -> float:
            t0 = time.perf_counter()
            topology = bring_up(self.ctx, plans[mta], run_id=new_run_id(), keep_label=False)
            with lock:
                started.append(topology)
            return time.perf_counter() - t0

        t0 = time.perf_counter()
        try:
            with ThreadPoolExecutor(max_workers=len(MTAS), thread_name_prefix="side-by-side") as pool:
                futures = {mta: pool.submit(up, mta) for mta in MTAS}
                took = {mta: f.result() for mta, f in futures.items()}
            wall = time.perf_counter() - t0
        finally:
            with ThreadPoolExecutor(max_workers=len(MTAS)) as pool:
                list(pool.map(lambda t: t.destroy(), started))
        if record:
            self.add("side_by_side", wall)
            for mta, value in took.items():
                self.add(f"side_by_side:{mta}", value)

    def round(self, index: int, record: bool) -> None:
        variants: list[tuple[str, Callable[[], None]]] = [
            *[(mta, (lambda m=mta: self.topology(m, record))) for mta in MTAS],
            ("side by side", lambda: self.side_by_side(record)),
        ]
        order = rotated(variants, index)
        log(f"floor {'warm-up' if not record else f'round {index + 1}'}: " + ", ".join(name for name, _ in order))
        for _, run in order:
            run()

    def floor(self, pairs_per_mta: dict[str, int], jobs: int) -> dict[str, Any]:
        """The floor of the matrix: the implementations' topology starts packed onto ``jobs`` lanes,
        plus one SMTP transaction per (scenario, implementation) pair."""
        s = self.samples
        starts = {mta: median(s[f"start:{mta}"]) for mta in MTAS}
        txn = {mta: median(s[f"transaction:{mta}"]) for mta in MTAS}
        rule = ("max" if jobs >= len(MTAS) else "sum" if jobs == 1 else f"packed onto {jobs} lanes")
        topology_term = lanes(list(starts.values()), jobs)
        transactions_term = sum(n * txn[mta] for mta, n in pairs_per_mta.items())
        return {
            "floor_s": topology_term + transactions_term,
            "topology_term_s": topology_term,
            "topology_rule": rule,
            "transactions_term_s": transactions_term,
            "start_median_s": starts,
            "transaction_median_s": txn,
            "pairs_per_mta": pairs_per_mta,
        }


# -- one scenario on a running topology ----------------------------------------------------------

class ResidentBench:
    """One-message scenarios run again and again on one running topology per implementation, as a
    shared topology runs them: what a scenario costs beyond its mail work, and how soon after the MTA
    wrote the message's file the harness noticed it. The implementations run one after another, on a
    machine doing nothing else of this benchmark's.

    Per run: ``total`` is the scenario on the running topology, its reset included (ScenarioSequence.run);
    ``mail_work`` from the client's connect (its first step's start) to the delivered file written
    (its ctime in the container, set when the MTA renames it into ``new/``); ``beyond_mail_work`` is
    ``total - mail_work``; ``noticed_after_written`` from that ctime to the end of the delivery step
    that saw it. Container and harness share this machine's clock (a remote engine would not)."""

    def __init__(self, ctx: RunContext, runs: int) -> None:
        self.ctx = ctx
        self.runs = runs
        self.scenarios = [load_scenario(path) for path in RESIDENT]
        self.samples: dict[str, list[float]] = {}

    def measure(self) -> dict[str, Any]:
        for mta in MTAS:
            log(f"resident: {mta}, {len(self.scenarios)} scenarios x {self.runs} runs on one topology")
            sequence = ScenarioSequence(self.ctx)
            try:
                # The first run of each also starts (or first uses) the topology: not measured.
                for n in range(self.runs + 1):
                    for scenario in self.scenarios:
                        self.run(sequence, scenario, mta, record=n > 0)
            finally:
                sequence.close()
        return {key: summary(values) for key, values in sorted(self.samples.items())}

    def run(self, sequence: ScenarioSequence, scenario: Scenario, mta: str, *, record: bool) -> None:
        t0 = time.perf_counter()
        result = sequence.run(scenario, mta)
        total = time.perf_counter() - t0
        if result.status != PASSED:
            raise SystemExit(f"resident: {scenario.path.name} [{mta}] did not pass ({result.status}): "
                             + "; ".join([result.error or ""] + [f"{f.expected} / {f.observed}" for f in result.failures]))
        if not record:
            return
        first = result.steps[0]
        delivery = next(s for s in result.steps if s.kind == "delivery")
        obs = delivery.observation
        if (result.started_at is None or first.at_s is None or delivery.at_s is None or delivery.took_s is None
                or not isinstance(obs, MailboxObservation) or not obs.copies or sequence.shared is None):
            raise SystemExit(f"resident: {scenario.path.name} [{mta}]: no timed delivery step in its result")
        host = sequence.shared.topology.hosts[obs.host]
        # Copies are named as `docker cp` names them: the mail root's last component first.
        path = f"{MAIL_ROOT.rpartition('/')[0]}/{obs.copies[0].path}"
        done = host.shell.run(["stat", "-c", "%.9Z", path])
        if done.exit_code != 0:
            raise SystemExit(f"resident: stat {path} on {obs.host}: {done.stderr.decode(errors='replace')}")
        written = float(done.stdout.decode().strip())
        mail_work = written - (result.started_at + first.at_s)
        key = f"{scenario.path.stem}:{mta}"
        self.samples.setdefault(f"total:{key}", []).append(total)
        self.samples.setdefault(f"mail_work:{key}", []).append(mail_work)
        self.samples.setdefault(f"beyond_mail_work:{key}", []).append(total - mail_work)
        self.samples.setdefault(f"noticed_after_written:{key}", []).append(
            result.started_at + delivery.at_s + delivery.took_s - written)


# -- the matrix -----------------------------------------------------------------------------------

def prepare_matrix(ctx: RunContext, pairs: Sequence[tuple[Scenario, str]]) -> None:
    """Resolve (or build) every image the matrix needs before anything is timed: run_all's own calls
    then hit the ImageStore's cache."""
    for scenario, mta in pairs:
        build_images(ctx.images, plan_scenario(scenario, COMPOSE, mta=mta).topology)


def run_matrix(ctx: RunContext, scenarios: Sequence[Scenario], mtas: Sequence[str],
               pairs: Sequence[tuple[Scenario, str]], *, fresh: bool, jobs: int) -> dict[str, Any]:
    """run_all as `harness run --matrix` does it, wall-clocked; every result with when it finished."""
    mode = "fresh" if fresh else "shared"
    ctx.fresh, ctx.jobs = fresh, jobs
    finished: dict[tuple[str, str], float] = {}
    t0 = time.perf_counter()
    cpu_before = cpu_now()

    def on_result(r: ScenarioResult) -> None:
        finished[(r.file, r.mta)] = time.perf_counter() - t0
        log(f"{mode} {len(finished):3}/{len(pairs)} {r.status.upper():6} {Path(r.file).stem} [{r.mta}] "
            f"{r.duration_s:.2f}s")

    results = run_all(ctx, scenarios, on_result=on_result, mtas=mtas)
    wall = time.perf_counter() - t0
    cpu = cpu_spent(cpu_before, cpu_now(), wall)
    rows = []
    for r in results:
        row: dict[str, Any] = {"scenario": Path(r.file).stem, "mta": r.mta, "status": r.status,
                               "duration_s": round(r.duration_s, 4),
                               "finished_at_s": round(finished.get((r.file, r.mta), wall), 3)}
        if r.status != PASSED:
            row["error"] = r.error
            row["failures"] = [f"step {f.step} ({f.kind}{' ' + f.stage if f.stage else ''}): expected "
                               f"{f.expected}, observed {f.observed}" for f in r.failures]
        rows.append(row)
    by_pair = {(row["scenario"], row["mta"]): row for row in rows}
    groups = []
    # The topologies as they ran: a group, or the back of a group's queue an idle job slot took over.
    for group in ctx.lanes:
        members = [by_pair[(s.path.stem, m)] for s, m in group if (s.path.stem, m) in by_pair]
        scenario_time = sum(r["duration_s"] for r in members)
        entry: dict[str, Any] = {"mta": group[0][1], "scenarios": [s.path.stem for s, _ in group],
                                 # Changes of containers in the group (a role replaced for each), and
                                 # changes of TLS alone (a role reconfigured in its container).
                                 "replacements": sum(1 for a, b in pairwise(group)
                                                     if container_key(*a) != container_key(*b)),
                                 "reconfigurations": sum(1 for a, b in pairwise(group)
                                                         if container_key(*a) == container_key(*b)
                                                         and topology_key(*a) != topology_key(*b)),
                                 "scenario_time_s": round(scenario_time, 3),
                                 "finished_at_s": max((r["finished_at_s"] for r in members), default=None)}
        if members:
            # From the group's start (its first scenario's duration includes the topology start) to its
            # last result; what is not scenario time is the reset and DNS update between scenarios.
            first = min(members, key=lambda r: r["finished_at_s"])
            span = max(r["finished_at_s"] for r in members) - (first["finished_at_s"] - first["duration_s"])
            entry["started_at_s"] = round(first["finished_at_s"] - first["duration_s"], 3)
            entry["span_s"] = round(span, 3)
            entry["between_scenarios_s"] = round(max(0.0, span - scenario_time), 3)
        groups.append(entry)
    return {"wall_s": round(wall, 3), "cpu": cpu, "topologies": len(groups), "pairs": len(rows),
            "passed": sum(1 for r in rows if r["status"] == PASSED), "results": rows, "groups": groups}


# -- decoder --------------------------------------------------------------------------------------

class DecoderBench:
    def __init__(self) -> None:
        manifest = json.loads((FIXTURES / "manifest.json").read_text())
        self.names: dict[str, str] = manifest["names"]
        self.cases = [([(FIXTURES / f).read_bytes() for f in case["files"].values()], case["start_wall"])
                      for case in manifest["cases"].values()]
        self.files = [data for pcaps, _ in self.cases for data in pcaps]
        # dpkt_parse below reads Linux cooked v2 frames, what the roles' captures ("tcpdump -i any") write.
        if any(dpkt.pcap.UniversalReader(io.BytesIO(d)).datalink() != DLT_LINUX_SLL2 for d in self.files):
            raise SystemExit(f"a fixture in {FIXTURES} is not a Linux cooked v2 capture (link type 276)")
        self.packets = sum(1 for data in self.files for _ in dpkt.pcap.UniversalReader(io.BytesIO(data)))
        self.pcap_bytes = sum(len(d) for d in self.files)
        self.sessions = len(self.decode())
        self.samples: dict[str, list[float]] = {}
        self.reps: dict[str, int] = {}

    def decode(self) -> list[Any]:
        """What the harness does with a scenario's captures: reassembly + SMTP decoding, per case (a
        case's captures from several hosts together, merged, as CapturedHops does)."""
        out: list[Any] = []
        for pcaps, start_wall in self.cases:
            out.extend(decode_sessions(pcaps, names=self.names, start_wall=start_wall))
        return out

    def dpkt_iterate(self) -> int:
        """dpkt merely iterating the records (timestamp + frame bytes): the floor of reading a pcap."""
        n = 0
        for data in self.files:
            for _ts, _frame in dpkt.pcap.UniversalReader(io.BytesIO(data)):
                n += 1
        return n

    def dpkt_parse(self) -> int:
        """dpkt iterating and parsing every frame down to TCP (Linux cooked v2 -> IP -> TCP)."""
        n = 0
        for data in self.files:
            for _ts, frame in dpkt.pcap.UniversalReader(io.BytesIO(data)):
                tcp = dpkt.sll2.SLL2(frame).data.data
                if isinstance(tcp, dpkt.tcp.TCP):
                    n += len(tcp.data)
        return n

    def variants(self) -> dict[str, Callable[[], object]]:
        return {"decode": self.decode, "dpkt_iterate": self.dpkt_iterate, "dpkt_parse": self.dpkt_parse}

    def calibrate(self) -> None:
        for name, fn in self.variants().items():
            reps, elapsed = 1, 0.0
            while True:
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                elapsed = time.perf_counter() - t0
                if elapsed >= DECODER_TARGET_S / 4:
                    break
                reps *= 2
            self.reps[name] = max(1, round(reps * DECODER_TARGET_S / elapsed))

    def round(self, index: int) -> None:
        """About DECODER_TARGET_S of each variant, in short slices taken in turn, so that even within
        the round the variants share the machine's load at a fine grain."""
        variants = rotated(list(self.variants().items()), index)
        elapsed = dict.fromkeys(self.reps, 0.0)
        for _ in range(DECODER_SLICES):
            for name, fn in variants:
                reps = max(1, self.reps[name] // DECODER_SLICES)
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                elapsed[name] += (time.perf_counter() - t0) / reps
        for name, total in elapsed.items():
            self.samples.setdefault(name, []).append(total / (DECODER_SLICES * self.packets))

    def traced_peak(self) -> int:
        """Peak Python allocation (tracemalloc) during one decoding pass over every fixture."""
        tracemalloc.start()
        try:
            self.decode()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def measure(self, rounds: int) -> dict[str, Any]:
        rss_before = max_rss_kib()
        log(f"decoder: {self.packets} packets in {len(self.files)} pcaps; calibrating")
        self.calibrate()
        for i in range(rounds):
            log(f"decoder round {i + 1}: " + ", ".join(rotated(list(self.variants()), i)))
            self.round(i)
        rss_after = max_rss_kib()
        d = self.samples
        return {
            "packets": self.packets, "pcap_bytes": self.pcap_bytes, "pcaps": len(self.files),
            "sessions_per_pass": self.sessions,
            "per_packet_s": {name: summary(values) for name, values in d.items()},
            "ratios": {"parse_over_iterate": paired_ratio(d["dpkt_parse"], d["dpkt_iterate"]),
                       "decode_over_iterate": paired_ratio(d["decode"], d["dpkt_iterate"]),
                       "decode_over_parse": paired_ratio(d["decode"], d["dpkt_parse"])},
            "max_rss_kib": {"before": rss_before, "after": rss_after},
            "traced_peak_bytes": self.traced_peak(),
        }


def max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# -- the run's context ----------------------------------------------------------------------------

def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def engine_load(client: Any) -> dict[str, Any]:
    """What else runs on the engine and the machine: the bench shares them with CI and other runs."""
    own = str(os.getpid())
    containers = client.api.containers()
    harness = [c for c in containers if RUN_LABEL in (c.get("Labels") or {})]
    return {"running_containers": len(containers),
            "other_harness_containers": sum(1 for c in harness
                                            if (c.get("Labels") or {}).get("mailflow-harness.pid") != own),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


# Where the containers' CPU time is counted: cgroup v1 (this machine's engine), else v2's systemd slice.
CONTAINER_CPU = (Path("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage"), Path("/sys/fs/cgroup/system.slice/cpu.stat"))


def cpu_now() -> dict[str, float | None]:
    """CPU seconds used so far: the whole machine's (busy: not idle, not waiting for I/O, not stolen
    by a hypervisor), this process's (the harness, every thread), and the engine's containers' when
    their cgroup is readable. Differences of two readings say what a part cost."""
    with open("/proc/stat", encoding="ascii") as stat:
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in stat.readline().split()[1:8])
    ticks = os.sysconf("SC_CLK_TCK")
    own = resource.getrusage(resource.RUSAGE_SELF)
    containers: float | None = None
    v1, v2 = CONTAINER_CPU
    if v1.is_file():
        containers = int(v1.read_text()) / 1e9
    elif v2.is_file():
        usage = next((line.split()[1] for line in v2.read_text().splitlines() if line.startswith("usage_usec")), None)
        containers = int(usage) / 1e6 if usage is not None else None
    return {"machine_busy_s": (user + nice + system + irq + softirq) / ticks,
            "harness_s": own.ru_utime + own.ru_stime, "containers_s": containers}


def cpu_spent(before: dict[str, float | None], after: dict[str, float | None], wall_s: float) -> dict[str, Any]:
    """What a part cost in CPU seconds, and the shortest wall time that work could take on this
    machine's CPUs: a run busier than its CPUs can go faster only by doing less work."""
    spent: dict[str, Any] = {}
    for key, start in before.items():
        end = after[key]
        spent[key] = round(end - start, 2) if end is not None and start is not None else None
    busy = spent["machine_busy_s"] or 0.0
    cpus = os.cpu_count() or 1
    containers = spent["containers_s"]
    spent["engine_and_kernel_s"] = (round(busy - (spent["harness_s"] or 0.0) - containers, 2)
                                    if containers is not None else None)
    spent["min_wall_on_cpus_s"] = round(busy / cpus, 2)
    spent["busy_share"] = round(busy / (wall_s * cpus), 3) if wall_s > 0 else None
    return spent


class LoadMonitor:
    """Samples, every few seconds, the machine's 1-minute load average and how many containers of other
    harness runs are on the engine, so that a part measured while CI or a test run shared the machine
    says so."""

    def __init__(self, client: Any, interval_s: float = 5.0) -> None:
        self.client = client
        self.interval_s = interval_s
        self.t0 = time.perf_counter()
        self.samples: list[dict[str, Any]] = []
        self.parts: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            try:
                sample = engine_load(self.client)
            except Exception:  # the engine busy or gone for a moment: skip the sample
                sample = None
            if sample is not None:
                sample["at_s"] = round(time.perf_counter() - self.t0, 1)
                self.samples.append(sample)
            if self._stop.wait(self.interval_s):
                return

    def mark(self, part: str, start: float, end: float) -> None:
        self.parts.setdefault(part, []).extend([start - self.t0, end - self.t0])

    def during(self) -> dict[str, dict[str, float]]:
        """Per part: the highest load average and number of other harness containers while it ran."""
        out = {}
        for part, bounds in self.parts.items():
            spans = list(zip(bounds[::2], bounds[1::2], strict=True))
            inside = [x for x in self.samples if any(a <= x["at_s"] <= b for a, b in spans)]
            if inside:
                out[part] = {"max_loadavg_1m": max(x["loadavg_1m"] for x in inside),
                             "max_other_harness_containers": max(x["other_harness_containers"] for x in inside),
                             "samples": len(inside)}
        return out


def cleanup(client: Any) -> None:
    """Remove every run this process created (by the pid label), whatever was interrupted."""
    for run in list_runs(client):
        if run.pid == os.getpid() and run.machine == socket.gethostname():
            remove_run(client, run.run_id)
            log(f"removed leftover run {run.run_id}")


# -- report ---------------------------------------------------------------------------------------

def per_scenario(modes: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per scenario and mode: the median duration over its implementations (and matrix rounds)."""
    out: dict[str, dict[str, float]] = {}
    for mode, rounds in modes.items():
        durations: dict[str, list[float]] = {}
        for rnd in rounds:
            for row in rnd["results"]:
                durations.setdefault(row["scenario"], []).append(row["duration_s"])
        for scenario, values in durations.items():
            out.setdefault(scenario, {})[mode] = round(median(values), 4)
    return dict(sorted(out.items()))


def compute_ratios(doc: dict[str, Any]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    matrix = doc["matrix"]
    floor = doc.get("floor", {}).get("floor_s")
    walls = {mode: [r["wall_s"] for r in rounds] for mode, rounds in matrix.items()}
    if floor:
        for mode, values in walls.items():
            ratios[f"{mode}_over_floor"] = round(median(values) / floor, 3)
            ratios[f"{mode}_over_floor_side_by_side"] = round(median(values) / doc["floor"]["floor_side_by_side_s"], 3)
    if "shared" in walls and "fresh" in walls:
        ratios["fresh_over_shared"] = round(paired_ratio(walls["fresh"], walls["shared"]), 3)
    return ratios


def table(doc: dict[str, Any]) -> str:
    git = doc["git"]
    commit = (git["commit"] or "unknown")[:10] + ("+dirty" if git["dirty"] else "")
    lines = [f"mailflow-harness bench  {doc['date']}  commit {commit}  {doc['cpu_count']} CPUs  "
             f"jobs {doc['jobs']}  {doc['pairs']} pairs ({doc['scenarios']} scenarios x {', '.join(doc['mtas'])})",
             ""]
    ratios = doc["ratios"]
    floor = doc.get("floor")
    matrix = doc["matrix"]
    lines.append(f"{'':52} {'time':>9} {'/ floor':>8} {'/ shared':>9}")
    if floor:
        starts = floor["start_median_s"]
        lines.append(f"{'floor':52} {fmt_s(floor['floor_s']):>9} {'1.00':>8}")
        lines.append(f"  {'topology starts, ' + floor['topology_rule'] + ' of ' + str(len(starts)):50} "
                     f"{fmt_s(floor['topology_term_s']):>9}   "
                     + "  ".join(f"{m} {fmt_s(v)}" for m, v in starts.items()))
        lines.append(f"  {'+ one SMTP transaction per pair (' + str(doc['pairs']) + ')':50} "
                     f"{fmt_s(floor['transactions_term_s']):>9}   "
                     + "  ".join(f"{m} {fmt_s(v)}" for m, v in floor["transaction_median_s"].items()))
        if doc["jobs"] >= len(starts):
            side = floor["floor_side_by_side_s"]
            lines.append(f"  {'(info) the starts measured side by side instead':50} {fmt_s(side):>9}   "
                         + ", ".join(f"{mode} / that {ratios[f'{mode}_over_floor_side_by_side']:.2f}"
                                     for mode in matrix if f"{mode}_over_floor_side_by_side" in ratios))
    for mode, label in (("shared", "shared + parallel"), ("fresh", "fresh")):
        rounds = matrix.get(mode)
        if not rounds:
            continue
        wall = median([r["wall_s"] for r in rounds])
        over_floor = ratios.get(f"{mode}_over_floor")
        over_shared = ratios.get("fresh_over_shared") if mode == "fresh" else None
        passed = sum(r["passed"] for r in rounds)
        total = sum(r["pairs"] for r in rounds)
        name = f"matrix, {label} ({rounds[0]['topologies']} topologies)"
        lines.append(f"{name:52} {fmt_s(wall):>9} {f'{over_floor:.2f}' if over_floor else '':>8} "
                     f"{f'{over_shared:.2f}' if over_shared else '':>9}   "
                     + (f"{passed}/{total} passed" if passed == total else f"{passed}/{total} PASSED, see below"))
        cpu = rounds[0].get("cpu")
        if cpu:
            parts = [f"harness {cpu['harness_s']:.0f}"]
            if cpu["containers_s"] is not None:
                parts += [f"containers {cpu['containers_s']:.0f}",
                          f"engine and kernel {cpu['engine_and_kernel_s']:.0f}"]
            lines.append(f"  {'CPU (first run), machine busy':50} {cpu['machine_busy_s']:7.0f} s   "
                         f"({', '.join(parts)}): {cpu['busy_share'] * 100:.0f} % of {doc['cpu_count']} CPUs, "
                         f"no less than {fmt_s(cpu['min_wall_on_cpus_s'])} for this work")
    per = doc.get("per_scenario_median_s") or {}
    if per:
        lines += ["", f"{'per scenario, median over implementations':52} {'shared':>9} {'fresh':>8}"]
        for scenario, values in per.items():
            cells = [fmt_s(values[m]) if m in values else "" for m in ("shared", "fresh")]
            lines.append(f"  {scenario:50} {cells[0]:>9} {cells[1]:>8}")
        sums = [fmt_s(sum(r["duration_s"] for r in matrix[m][0]["results"])) if matrix.get(m) else ""
                for m in ("shared", "fresh")]
        lines.append(f"  {'all pairs, summed (first run)':50} {sums[0]:>9} {sums[1]:>8}")
    shared = matrix.get("shared")
    if shared:
        groups = shared[0]["groups"]
        lines.append(f"  shared topologies (first run): {len(groups)} for {shared[0]['pairs']} pairs")
        for label, members in (("several scenarios", [g for g in groups if len(g["scenarios"]) > 1]),
                               ("one scenario", [g for g in groups if len(g["scenarios"]) == 1])):
            if not members:
                continue
            done = [g["finished_at_s"] for g in members if g["finished_at_s"] is not None]
            lines.append(f"    {len(members):2} with {label}: scenario time "
                         + " ".join(f"{g['scenario_time_s']:.0f}" for g in members)
                         + (f" s, done {min(done):.0f}-{max(done):.0f} s into the run" if done else " s"))
            between = [g.get("between_scenarios_s", 0.0) for g in members if len(g["scenarios"]) > 1]
            if between:
                gaps = sum(len(g["scenarios"]) - 1 for g in members)
                replaced = sum(g.get("replacements", 0) for g in members)
                reconfigured = sum(g.get("reconfigurations", 0) for g in members)
                lines.append(f"       between their scenarios (reset, DNS, {replaced} role replacements, "
                             f"{reconfigured} reconfigurations): "
                             f"{' '.join(f'{b:.0f}' for b in between)} s, {sum(between) / gaps:.2f} s per scenario")
    samples = doc.get("floor_samples")
    if samples:
        lines += ["", f"{'per implementation, medians of ' + str(doc['rounds']) + ' round(s)':52} "
                  + " ".join(f"{m:>10}" for m in MTAS) + "   ratio"]

        def row(label: str, key: str, note: str = "") -> None:
            values = [samples[f"{key}:{m}"]["median"] for m in MTAS]
            lines.append(f"  {label:50} " + " ".join(f"{fmt_s(v):>10}" for v in values) + note)

        row("topology start to all greetings", "start",
            "   " + " ".join(f"{samples[f'start:{m}']['median'] / samples['start:postfix']['median']:.2f}"
                             for m in MTAS) + " / postfix")
        row("SMTP transaction, connect..QUIT", "transaction")
        row("  of which the wait for QUIT's reply", "quit_reply")
        row("  the first one after the start", "first_transaction")
        row("captures listening (checked; started with the MTA)", "capture")
        row("teardown (destroy)", "teardown")
        row("started side by side (each, to all greetings)", "side_by_side")
        side = samples["side_by_side"]["median"]
        lines.append(f"  {'three side by side, wall':50} {fmt_s(side):>10}   "
                     f"{doc['side_by_side_over_max_start']:.2f} x the slowest start alone")
    resident = doc.get("resident")
    if resident:
        lines += ["", f"{'one-message scenario on a running topology, medians of ' + str(doc['resident_runs']):52} "
                  + " ".join(f"{m:>10}" for m in MTAS) + "   target"]
        for path in RESIDENT:
            lines.append(f"  {path.stem}")
            for key, label in (("total", "the scenario, its reset included"),
                               ("mail_work", "its mail work: connect to the file written"),
                               ("beyond_mail_work", "beyond its mail work"),
                               ("noticed_after_written", "delivery noticed after the file was written")):
                values = [resident[f"{key}:{path.stem}:{m}"]["median"] for m in MTAS]
                target = RESIDENT_TARGETS_S.get(key)
                verdict = ""
                if target is not None:
                    worst = max(resident[f"{key}:{path.stem}:{m}"]["max"] for m in MTAS)
                    verdict = (f"   <= {target * 1000:.0f} ms: medians "
                               + ("met" if max(values) <= target else "NOT met")
                               + f", worst run {worst * 1000:.0f} ms")
                lines.append(f"    {label:48} " + " ".join(f"{v * 1000:>7.1f} ms" for v in values) + verdict)
    dec = doc.get("decoder")
    if dec:
        per_packet = dec["per_packet_s"]
        r = dec["ratios"]
        lines += ["", f"decoder, per packet ({dec['packets']} packets in {dec['pcaps']} fixture pcaps): "
                  f"dpkt iterate {per_packet['dpkt_iterate']['median'] * 1e6:.2f} us, "
                  f"parse to TCP {per_packet['dpkt_parse']['median'] * 1e6:.1f} us ({r['parse_over_iterate']:.2f} x), "
                  f"decode_sessions {per_packet['decode']['median'] * 1e6:.1f} us "
                  f"({r['decode_over_iterate']:.2f} x iterate, {r['decode_over_parse']:.2f} x parse)",
                  f"  peak RSS {dec['max_rss_kib']['before'] / 1024:.1f} -> "
                  f"{dec['max_rss_kib']['after'] / 1024:.1f} MiB"
                  f" across the decoder part; one pass allocates at most {dec['traced_peak_bytes'] / 1024:.1f} KiB "
                  f"({dec['traced_peak_bytes'] / dec['pcap_bytes']:.1f} x the pcap bytes)"]
    failed = [(mode, res) for mode, rounds in matrix.items() for rnd in rounds for res in rnd["results"]
              if res["status"] != PASSED]
    if failed:
        lines += ["", "NOT PASSED (the matrix times above include these):"]
        for mode, res in failed:
            reason = (res.get("error") or "").splitlines()[:1] + res.get("failures", [])[:2]
            lines.append(f"  {mode:6} {res['status'].upper():6} {res['scenario']} [{res['mta']}]: "
                         + "; ".join(reason))
    load = doc["engine_load"]
    during = load.get("during", {})
    lines += ["", f"machine load ({doc['cpu_count']} CPUs), highest while each part ran: " + (", ".join(
        f"{part} {v['max_loadavg_1m']:g} with {v['max_other_harness_containers']} other harness container(s)"
        for part, v in during.items()) or "not sampled"),
              f"total benchmark time {doc['total_s']:.0f} s (written to {doc['output']})"]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------

def parse_only(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts are {', '.join(PARTS)} (comma-separated), not {text!r}")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", type=parse_only, default=list(PARTS), metavar="PARTS",
                        help=f"comma-separated parts to run (default: all): {', '.join(PARTS)}")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measured rounds of the floor's topologies and of the decoder (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured floor rounds first (default 1)")
    parser.add_argument("--matrix-rounds", type=int, default=1,
                        help="runs of each matrix mode, shared and fresh alternating first (default 1)")
    parser.add_argument("--transactions", type=int, default=5,
                        help="SMTP transactions per floor topology; the floor uses the median of all but the "
                             "first (default 5)")
    parser.add_argument("--resident-runs", type=int, default=10,
                        help="measured runs of each one-message scenario on a running topology per "
                             "implementation (default 10)")
    parser.add_argument("--jobs", "-j", type=int, default=None,
                        help=f"topologies side by side in the matrix (default: the harness's, {default_jobs()} here)")
    parser.add_argument("--scenarios", type=Path, default=SCENARIOS, help="scenario directory or file")
    parser.add_argument("--json", type=Path, default=OUTPUT, help=f"where to write the JSON (default {OUTPUT})")
    parser.add_argument("--verbose", action="store_true", help="the harness's own progress lines too")
    args = parser.parse_args(argv)
    if (args.rounds < 1 or args.warmup < 0 or args.matrix_rounds < 1 or args.transactions < 1
            or args.resident_runs < 1):
        parser.error("--rounds, --matrix-rounds, --transactions and --resident-runs must be at least 1, "
                     "--warmup at least 0")
    parts: list[str] = args.only
    jobs = args.jobs or default_jobs()
    # SIGTERM unwinds like Ctrl-C, so the finally blocks remove the containers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()

    scenarios = load_scenarios([args.scenarios])
    pairs = [(s, m) for s in scenarios for m in implementations_for(s, MTAS)]
    doc: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_state(), "hostname": socket.gethostname(), "cpu_count": os.cpu_count(),
        "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "jobs": jobs,
        "parts": parts, "rounds": args.rounds, "warmup": args.warmup, "matrix_rounds": args.matrix_rounds,
        "transactions_per_topology": args.transactions, "resident_runs": args.resident_runs, "mtas": list(MTAS), "scenarios": len(scenarios),
        "pairs": len(pairs), "output": str(args.json), "matrix": {},
    }

    # The decoder part first, before any container work, so the peak RSS it reports is its own.
    if "decoder" in parts:
        doc["decoder"] = DecoderBench().measure(args.rounds)

    progress = Progress(quiet=not args.verbose)
    client = ensure_engine(progress, may_start=False)
    doc["engine_version"] = client.version().get("Version")
    doc["engine_load"] = {"start": engine_load(client)}
    ctx = RunContext(client, ImageStore(client, progress, COMPOSE), COMPOSE, progress)
    modes = [m for m in ("shared", "fresh") if m in parts]
    monitor = LoadMonitor(client)
    monitor.start()
    try:
        log("resolving images (not timed)")
        fb = FloorBench(ctx, args.transactions)
        fb.prepare()
        if modes:
            prepare_matrix(ctx, pairs)
        # The floor's rounds are spread between the matrix runs (warm-up first), so the floor sees the
        # load the matrix runs see, also when it drifts (CI starting or ending meanwhile).
        matrix_runs = [mode for i in range(args.matrix_rounds) for mode in rotated(modes, i)]
        floor_rounds = spread_rounds(args.rounds if "floor" in parts else 0, len(matrix_runs) + 1)
        done = 0

        def floor_slot(slot: int) -> None:
            nonlocal done
            if not floor_rounds[slot] and not (slot == 0 and "floor" in parts):
                return
            t_floor = time.perf_counter()
            if slot == 0:
                for i in range(args.warmup):
                    fb.round(i, record=False)
            for _ in range(floor_rounds[slot]):
                fb.round(done, record=True)
                done += 1
            monitor.mark("floor", t_floor, time.perf_counter())

        floor_slot(0)
        if "resident" in parts:
            # Alone on the machine, before the matrix runs: the harness's own cost per scenario.
            t_resident = time.perf_counter()
            doc["resident"] = ResidentBench(ctx, args.resident_runs).measure()
            monitor.mark("resident", t_resident, time.perf_counter())
        for n, mode in enumerate(matrix_runs):
            log(f"matrix {mode} ({len(doc['matrix'].get(mode, [])) + 1} of {args.matrix_rounds}): "
                f"{len(pairs)} pairs, jobs {jobs}")
            t_mode = time.perf_counter()
            doc["matrix"].setdefault(mode, []).append(
                run_matrix(ctx, scenarios, MTAS, pairs, fresh=mode == "fresh", jobs=jobs))
            monitor.mark(mode, t_mode, time.perf_counter())
            floor_slot(n + 1)
        if "floor" in parts:
            pairs_per_mta = {m: sum(1 for _, pm in pairs if pm == m) for m in MTAS}
            doc["floor"] = {k: (round(v, 6) if isinstance(v, float) else v)
                            for k, v in fb.floor(pairs_per_mta, jobs).items()}
            doc["floor_samples"] = {k: summary(v) for k, v in sorted(fb.samples.items())}
            # For information: the floor with the starts' term measured instead of derived, the three
            # started at once on this machine's cores (only meaningful when jobs >= 3).
            doc["floor"]["floor_side_by_side_s"] = round(
                median(fb.samples["side_by_side"]) + doc["floor"]["transactions_term_s"], 6)
            doc["side_by_side_over_max_start"] = round(
                paired_ratio(fb.samples["side_by_side"],
                             [max(fb.samples[f"start:{m}"][i] for m in MTAS) for i in range(args.rounds)]), 3)
    finally:
        monitor.stop()
        cleanup(client)
    doc["engine_load"]["during"] = monitor.during()
    doc["engine_load"]["samples"] = monitor.samples
    doc["engine_load"]["end"] = engine_load(client)
    doc["ratios"] = compute_ratios(doc)
    doc["per_scenario_median_s"] = per_scenario(doc["matrix"])
    doc["total_s"] = round(time.perf_counter() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(table(doc))
    not_passed = sum(r["pairs"] - r["passed"] for rounds in doc["matrix"].values() for r in rounds)
    return 1 if not_passed else 0


if __name__ == "__main__":
    sys.exit(main())
