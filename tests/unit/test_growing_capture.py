"""A capture file read while tcpdump appends to it: each read parses only what is new, and what it
gives is what parsing the whole file gives (harness.observe.tcpflows.GrowingCapture, and the hop
reader's use of it in harness.observe.hops)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dpkt  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import harness.observe.hops as hops_module
import harness.observe.tcpflows as tcpflows
from harness.observe.capture import CAPTURE_FILE, CaptureError, HopCapture
from harness.observe.hops import CapturedHops
from harness.observe.tcpflows import GrowingCapture, read_capture
from harness.topology.topology import PREVIOUS

FIXTURES = Path(__file__).parent / "fixtures" / "pcap"
FILES = sorted(FIXTURES.glob("*.pcap"))
# Every fixture one after another, as one file (each one's file header dropped but the first's).
JOINED = FILES[0].read_bytes() + b"".join(f.read_bytes()[24:] for f in FILES[1:])
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
NAMES: dict[str, str] = MANIFEST["names"]
GATEWAY: str = MANIFEST["gateway"]


def _fed(data: bytes, cuts: list[int]) -> GrowingCapture:
    """``data`` fed as a file that grew to each cut in turn, each feed given the file from ``offset``."""
    growing = GrowingCapture()
    for end in [*sorted(cuts), len(data)]:
        growing.feed(data[growing.offset:end])
    return growing


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_read_as_it_grows_a_fixture_gives_what_the_whole_file_gives(path: Path) -> None:
    data = path.read_bytes()
    whole = read_capture(data)
    # Cut inside the file header, inside a record header and inside a record's bytes.
    for cuts in ([], [10], [24, 30], list(range(0, len(data), 7)), [len(data) - 1]):
        growing = _fed(data, cuts)
        assert (growing.segments, growing.requests) == whole
        assert growing.offset == len(data)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(JOINED)), max_size=12))
def test_any_points_the_file_grew_at_give_the_same_packets(cuts: list[int]) -> None:
    assert (lambda g: (g.segments, g.requests))(_fed(JOINED, cuts)) == read_capture(JOINED)


def test_a_record_not_yet_written_in_full_is_left_for_the_next_read() -> None:
    data = FILES[0].read_bytes()
    first_record_end = 24 + 16 + int.from_bytes(data[24 + 8:24 + 12], "little")
    growing = GrowingCapture()
    assert growing.feed(data[:first_record_end - 1]) is False  # the packet's last byte not there yet
    assert growing.offset == 24 and growing.segments == []
    assert growing.feed(data[24:first_record_end]) is True
    assert growing.offset == first_record_end and len(growing.segments) == 1
    assert growing.feed(b"") is False


def test_each_packet_is_parsed_once_however_often_the_file_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[float] = []
    original = tcpflows._read_frame

    def counting(linktype: int, ts: float, frame: bytes, *rest: object) -> None:
        parsed.append(ts)
        original(linktype, ts, frame, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(tcpflows, "_read_frame", counting)
    data = JOINED
    _fed(data, list(range(0, len(data), 97)))
    packets = len(list(dpkt.pcap.Reader(io.BytesIO(data))))
    assert len(parsed) == packets


def test_pcapng_is_parsed_whole_on_every_read_with_the_same_result() -> None:
    out = io.BytesIO()
    writer = dpkt.pcapng.Writer(out, linktype=276)
    for ts, frame in dpkt.pcap.Reader(io.BytesIO(FIXTURES.joinpath("relay_mx_pipelined.mx.pcap").read_bytes())):
        writer.writepkt(frame, ts=ts)
    data = out.getvalue()
    growing = _fed(data, [len(data) // 3, 2 * len(data) // 3])
    assert (growing.segments, growing.requests) == read_capture(data)
    assert growing.segments


class _Growing:
    """A hop capture whose file grows by the test's hand; records where each read began."""

    def __init__(self, data: bytes, earlier: tuple[bytes, ...] = ()) -> None:
        self.data = data
        self.earlier = list(earlier)
        self.reads: list[int] = []

    def read_pcap_from(self, offset: int) -> bytes:
        self.reads.append(offset)
        return self.data[offset:]


def test_the_hop_reader_reads_only_new_bytes_and_rebuilds_connections_only_when_a_file_grew(
        monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    original = hops_module.connections_of

    def counting(segments: list[tcpflows.Segment]) -> list[tcpflows.Connection]:
        built.append(len(segments))
        return original(segments)

    monkeypatch.setattr(hops_module, "connections_of", counting)
    relay = (FIXTURES / "relay_mx_pipelined.relay.pcap").read_bytes()
    mx = (FIXTURES / "relay_mx_pipelined.mx.pcap").read_bytes()
    half = len(relay) // 2
    captures = {"relay": _Growing(relay[:half]), "mx": _Growing(mx)}
    hops = CapturedHops(captures, NAMES, client_address=GATEWAY, start_wall=0.0)  # type: ignore[arg-type]
    first = [t.hop for t in hops.sessions()]
    assert built and len(built) == 2  # each file once
    assert captures["relay"].reads == [0] and captures["mx"].reads == [0]
    reread = captures["relay"].reads
    hops.sessions()
    assert len(built) == 2  # nothing grew: nothing rebuilt
    captures["relay"].data = relay  # the relay's file grew
    whole = [(t.hop, [(e.command, e.code) for e in t.exchanges]) for t in hops.sessions()]
    assert len(built) == 3  # only the relay's file again
    assert reread[-1] > 0 and reread[-1] == reread[-2]  # read on from where the parsed records ended
    fresh = CapturedHops({"relay": _Growing(relay), "mx": _Growing(mx)}, NAMES,  # type: ignore[dict-item]
                         client_address=GATEWAY, start_wall=0.0)
    assert whole == [(t.hop, [(e.command, e.code) for e in t.exchanges]) for t in fresh.sessions()]
    assert first == ["relay->mx"]


def test_a_file_kept_from_before_a_restart_is_read_to_its_end_once() -> None:
    relay = (FIXTURES / "relay_mx_pipelined.relay.pcap").read_bytes()
    nomail = (FIXTURES / "nomail_521.relay.pcap").read_bytes()
    capture = _Growing(relay[: len(relay) // 2])
    hops = CapturedHops({"relay": capture}, NAMES, client_address=GATEWAY,  # type: ignore[dict-item]
                        start_wall=0.0)
    hops.sessions()
    # The role's container restarted: the file it had, now complete, is kept; a new one begins.
    capture.earlier.append(relay)
    capture.data = nomail
    assert sorted(t.hop for t in hops.sessions()) == ["relay->mx", "relay->nomail"]
    whole = CapturedHops({"relay": _Growing(nomail, earlier=(relay,))}, NAMES,  # type: ignore[dict-item]
                         client_address=GATEWAY, start_wall=0.0)
    assert [(t.hop, len(t.exchanges)) for t in hops.sessions()] == [(t.hop, len(t.exchanges))
                                                                     for t in whole.sessions()]


def test_a_restart_whose_old_file_could_not_be_kept_loses_nothing_already_read_nor_the_new_files_start() -> None:
    relay = (FIXTURES / "relay_mx_pipelined.relay.pcap").read_bytes()
    nomail = (FIXTURES / "nomail_521.relay.pcap").read_bytes()
    capture = _Growing(relay)
    hops = CapturedHops({"relay": capture}, NAMES, client_address=GATEWAY,  # type: ignore[dict-item]
                        start_wall=0.0)
    assert [t.hop for t in hops.sessions()] == ["relay->mx"]
    capture.earlier.append(b"")  # HopCapture.resume could not read the old file: an empty entry
    capture.data = nomail
    assert sorted(t.hop for t in hops.sessions()) == ["relay->mx", "relay->nomail"]
    assert capture.reads[-1] == 0  # the new file from its first byte


def test_a_restart_leaves_one_entry_in_earlier_even_when_its_old_file_cannot_be_read() -> None:
    waited: list[float] = []
    read: list[str] = []
    capture = HopCapture.__new__(HopCapture)
    capture.earlier = []
    capture.host = SimpleNamespace(role="relay", address="172.31.232.11")  # type: ignore[assignment]
    capture._wait_listening = lambda started, timeout_s: waited.append(timeout_s) or 0.0  # type: ignore[method-assign]
    old_files = [CaptureError("no /capture/smtp.pcap.previous"), b"old file"]

    def previous(path: str) -> bytes:
        read.append(path)
        content = old_files.pop(0)
        if isinstance(content, CaptureError):
            raise content
        return content

    capture._read = previous  # type: ignore[method-assign]
    capture.resume()
    capture.resume()
    # The last start's file, which the entrypoint moved aside before the new tcpdump began its own.
    assert read == [CAPTURE_FILE + PREVIOUS] * 2
    assert capture.earlier == [b"", b"old file"]
    assert len(waited) == 2  # each time until the new tcpdump listens


@pytest.mark.parametrize("status", ["exited", "paused", "running"])
def test_a_container_that_does_not_run_reports_what_its_tcpdump_said_before_it_ended(
        monkeypatch: pytest.MonkeyPatch, status: str) -> None:
    from harness.observe import capture as capture_module
    capture = HopCapture.__new__(HopCapture)
    capture.earlier = []
    capture.dropped_before = 7  # asked by settle() just before a stop
    capture.host = SimpleNamespace(role="mx", container=SimpleNamespace(  # type: ignore[assignment]
        get_wrapped_container=lambda: "the container"))
    monkeypatch.setattr(capture_module, "container_state", lambda container: SimpleNamespace(status=status))
    asked: list[list[str]] = []
    logs = iter(["", "9 packets dropped by kernel\n"])
    capture._log = lambda: next(logs)  # type: ignore[method-assign]
    capture.host.shell = SimpleNamespace(  # type: ignore[attr-defined]
        run=lambda argv: asked.append(argv) or SimpleNamespace(exit_code=0, stdout=b"", stderr=b""))
    if status == "running":  # what the running one says now, when more than an ended one said
        assert capture.dropped() == 9 and len(asked) == 1
        capture.dropped_before = 12
        logs = iter(["", "9 packets dropped by kernel\n"])
        assert capture.dropped() == 12
    else:  # nothing to ask (a paused tcpdump would never answer): what it said before stands
        assert capture.dropped() == 7 and asked == []
