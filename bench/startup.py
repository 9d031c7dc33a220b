"""Startup benchmark: what a scenario's containers cost, what hop capture adds, how fast the decoder is.

Run: ``.venv/bin/python bench/startup.py [--rounds N]`` (or ``make bench``). Everything is reported as
medians plus RATIOS measured in this one run: absolute timings depend on the machine and its load,
ratios between variants measured side by side much less. Each round runs every variant once, in an
order rotated from round to round, so all variants see the same machine load; a ratio is the median
of the per-round ratios (paired measurements). See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import signal
import socket
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dpkt

from harness.expect.results import PASSED
from harness.observe.capture import CAPTURE_IMAGE, start_captures
from harness.observe.smtpstream import decode_sessions
from harness.plan import plan_scenario
from harness.report.progress import Progress
from harness.runner import RunContext, bring_up, run_scenario
from harness.scenario.loader import load_scenario
from harness.topology.engine import ensure_engine
from harness.topology.images import ImageStore
from harness.topology.labels import list_runs, new_run_id, remove_run, run_labels
from harness.topology.topology import build_images

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose"
SCENARIO = ROOT / "scenarios" / "02-relay-354.yaml"
FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "pcap"
MTAS = ("postfix", "exim", "opensmtpd")
REFERENCE = "postfix"
DLT_LINUX_SLL2 = 276
DECODER_TARGET_S = 1.0  # each decoder measurement repeats its loop for about this long per round
DECODER_SLICES = 20  # ... in this many slices, the variants taking turns


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def rotated(items: list[Any], by: int) -> list[Any]:
    by %= len(items)
    return items[by:] + items[:by]


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return f"{min(values):.3g}-{max(values):.3g}"


# -- containers -----------------------------------------------------------------------------------

class ContainerBench:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.capture_image = ""
        self.scenario = load_scenario(SCENARIO)
        self.samples: dict[str, list[float]] = {}

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def prepare(self) -> None:
        """Resolve every image once (content hashes, cached per process), so no timing includes it."""
        for mta in MTAS:
            build_images(self.ctx.images, plan_scenario(None, COMPOSE, mta=mta).topology)
            build_images(self.ctx.images, plan_scenario(self.scenario, COMPOSE, mta=mta).topology)
        self.capture_image = self.ctx.images.image(CAPTURE_IMAGE)

    def topology(self, mta: str, record: bool) -> None:
        """The standard topology of ``mta`` (bring_up: network, dns answering, three MTAs greeting,
        records checked), then the capture companions on its MTAs, then teardown; each timed."""
        plan = plan_scenario(None, COMPOSE, mta=mta)
        run_id = new_run_id()
        t0 = time.perf_counter()
        topology = bring_up(self.ctx, plan, run_id=run_id, keep_label=False)
        try:
            t1 = time.perf_counter()
            mtas = [h for h in topology.hosts.values() if h.mta is not None]
            start_captures(mtas, self.capture_image, run_labels(run_id))
            t2 = time.perf_counter()
        finally:
            t3 = time.perf_counter()
            topology.destroy()
            t4 = time.perf_counter()
        if record:
            self.add(f"topology:{mta}", t1 - t0)
            self.add(f"capture:{mta}", t2 - t1)
            self.add(f"destroy:{mta}", t4 - t3)

    def scenario_run(self, record: bool) -> None:
        """The whole scenario through the runner, as `harness run` does it (captures included)."""
        t0 = time.perf_counter()
        result = run_scenario(self.ctx, self.scenario, REFERENCE)
        wall = time.perf_counter() - t0
        if result.status != PASSED:
            raise SystemExit(f"{SCENARIO.name} did not pass ({result.status}): the benchmark would measure a "
                             f"failure\n{result.error or ''}{[f.message for f in result.failures]}")
        if record:
            self.add("scenario", result.duration_s)
            self.add("scenario_wall", wall)

    def round(self, index: int, record: bool) -> None:
        variants: list[tuple[str, Callable[[], None]]] = [
            *[(mta, (lambda m=mta: self.topology(m, record))) for mta in MTAS],
            ("scenario", lambda: self.scenario_run(record)),
        ]
        order = rotated(variants, index)
        log(f"{'warm-up' if not record else f'round {index + 1}'}: " + ", ".join(name for name, _ in order))
        for _, run in order:
            run()


# -- decoder --------------------------------------------------------------------------------------

class DecoderBench:
    def __init__(self) -> None:
        manifest = json.loads((FIXTURES / "manifest.json").read_text())
        self.names: dict[str, str] = manifest["names"]
        self.cases = [([(FIXTURES / f).read_bytes() for f in case["files"].values()], case["start_wall"])
                      for case in manifest["cases"].values()]
        self.files = [data for pcaps, _ in self.cases for data in pcaps]
        # dpkt_parse below reads Linux cooked v2 frames, what the capture companions' "tcpdump -i any" writes.
        if any(dpkt.pcap.UniversalReader(io.BytesIO(d)).datalink() != DLT_LINUX_SLL2 for d in self.files):
            raise SystemExit(f"a fixture in {FIXTURES} is not a Linux cooked v2 capture (link type 276)")
        self.packets = sum(1 for data in self.files for _ in dpkt.pcap.UniversalReader(io.BytesIO(data)))
        self.pcap_bytes = sum(len(d) for d in self.files)
        self.sessions = len(self.decode())
        self.samples: dict[str, list[float]] = {}
        self.reps: dict[str, int] = {}

    # One pass over every fixture, three ways. --------------------------------------------------------
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
                ip = dpkt.sll2.SLL2(frame).data
                tcp = ip.data
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


def max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# -- report ---------------------------------------------------------------------------------------

def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of the per-round ratios a/b (both measured in the same round)."""
    return median([x / y for x, y in zip(a, b, strict=True)])


def report(cb: ContainerBench, db: DecoderBench, rounds: int, warmup: int, rss: dict[str, int],
           traced: int, total_s: float) -> str:
    s = cb.samples
    d = db.samples
    lines = [
        f"mailflow-harness startup benchmark: {rounds} round(s) + {warmup} warm-up, {os.cpu_count()} CPUs, "
        f"medians (min-max over rounds); ratios are medians of per-round ratios",
        "",
        f"{'':50} {'median':>10} {'min-max':>13} {'ratio':>7}  ratio of",
        "1. topology start (network + dns + 3 MTAs greeting)",
    ]

    def row(label: str, values: list[float], unit: str, ratio: float | None = None, of: str = "",
            scale: float = 1.0) -> None:
        scaled = [v * scale for v in values]
        r = f"{ratio:7.2f}" if ratio is not None else " " * 7
        lines.append(f"  {label:48} {median(scaled):8.3g} {unit:2} {spread(scaled):>13} {r}  {of}".rstrip())

    for mta in MTAS:
        row(mta, s[f"topology:{mta}"], "s", paired_ratio(s[f"topology:{mta}"], s[f"topology:{REFERENCE}"]),
            f"/ {REFERENCE} topology start")
    for mta in MTAS:
        row(f"  teardown {mta} (destroy, not in any ratio)", s[f"destroy:{mta}"], "s")
    lines.append("2. hop capture and a whole scenario")
    for mta in MTAS:
        row(f"capture companions start ({mta} topology)", s[f"capture:{mta}"], "s",
            paired_ratio(s[f"capture:{mta}"], s[f"topology:{mta}"]), f"/ {mta} topology start")
    row(f"scenario {SCENARIO.stem} ({REFERENCE})", s["scenario"], "s",
        paired_ratio(s["scenario"], s[f"topology:{REFERENCE}"]), f"/ {REFERENCE} topology start")
    row("  topology start's share of the scenario", s[f"topology:{REFERENCE}"], "s",
        paired_ratio(s[f"topology:{REFERENCE}"], s["scenario"]), "topology start / scenario")
    row("  scenario incl. teardown (wall clock)", s["scenario_wall"], "s")
    lines.append(f"3. decoder, per packet ({db.packets} packets, {db.pcap_bytes} bytes in {len(db.files)} "
                 f"fixture pcaps, {db.sessions} sessions decoded per pass)")
    row("dpkt: iterate the pcap records", d["dpkt_iterate"], "us", 1.0, "reference", scale=1e6)
    row("dpkt: iterate + parse frames to TCP", d["dpkt_parse"], "us",
        paired_ratio(d["dpkt_parse"], d["dpkt_iterate"]), "/ dpkt iterate", scale=1e6)
    row("decode_sessions (dpkt + reassembly + SMTP)", d["decode"], "us",
        paired_ratio(d["decode"], d["dpkt_iterate"]), "/ dpkt iterate", scale=1e6)
    row("  same, relative to dpkt parsing to TCP", d["decode"], "us",
        paired_ratio(d["decode"], d["dpkt_parse"]), "/ dpkt parse", scale=1e6)
    lines += [
        f"   packets/s: decode_sessions {1 / median(d['decode']):,.0f}, "
        f"dpkt iterate {1 / median(d['dpkt_iterate']):,.0f}",
        "   memory (decoder part):",
        f"     peak RSS of this process before the decoder part  {rss['before'] / 1024:8.1f} MiB",
        f"     peak RSS of this process after the decoder part   {rss['after'] / 1024:8.1f} MiB"
        f"   ratio {rss['after'] / rss['before']:.2f} (growth {(rss['after'] - rss['before']) / 1024:.1f} MiB)",
        f"     peak Python allocation, one decoding pass         {traced / 1024:8.1f} KiB"
        f"   ratio {traced / db.pcap_bytes:.1f} x the pcap bytes decoded",
        "",
        f"total benchmark time {total_s:.0f} s",
    ]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------

def cleanup(client: Any) -> None:
    """Remove every run this process created (by the pid label), whatever was interrupted."""
    for run in list_runs(client):
        if run.pid == os.getpid() and run.machine == socket.gethostname():
            remove_run(client, run.run_id)
            log(f"removed leftover run {run.run_id}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured container rounds first (default 1)")
    parser.add_argument("--verbose", action="store_true", help="the harness's own progress lines too")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be at least 1 and --warmup at least 0")
    # SIGTERM unwinds like Ctrl-C, so the finally blocks remove the containers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()

    # The decoder part first, before any container work, so the peak RSS it reports is its own.
    db = DecoderBench()
    rss = {"before": max_rss_kib()}
    log(f"decoder: {db.packets} packets in {len(db.files)} pcaps; calibrating")
    db.calibrate()
    for i in range(args.rounds):
        log(f"decoder round {i + 1}: " + ", ".join(rotated(list(db.variants()), i)))
        db.round(i)
    rss["after"] = max_rss_kib()
    traced = db.traced_peak()

    progress = Progress(quiet=not args.verbose)
    client = ensure_engine(progress, may_start=False)
    ctx = RunContext(client, ImageStore(client, progress, COMPOSE), COMPOSE, progress)
    cb = ContainerBench(ctx)
    try:
        log("resolving images")
        cb.prepare()
        for i in range(args.warmup):
            cb.round(i, record=False)
        for i in range(args.rounds):
            cb.round(i, record=True)
    finally:
        cleanup(client)
    print(report(cb, db, args.rounds, args.warmup, rss, traced, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
