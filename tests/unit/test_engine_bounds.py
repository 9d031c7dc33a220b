"""An engine that accepts connections but never answers: reported as an infrastructure error (exit 3)
within seconds, never waited for, never "fixed" by starting another engine; engine calls the SDK makes
without any bound (builds, pulls, imports) get one. No Docker: a unix socket that says nothing plays
the engine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from harness.errors import EXIT_INFRA, ImageBuildError, InfrastructureError
from harness.report.progress import Progress
from harness.topology import engine, images
from harness.topology.engine import EngineNotAnsweringError, bounded, ensure_engine
from harness.topology.images import BuildContext, ImageStore

ROOT = Path(__file__).resolve().parents[2]
# What the user waits for at most (the probe's bound plus the interpreter's start, with margin).
REPORTED_WITHIN_S = 15.0


class MuteEngine:
    """A unix socket that accepts every connection, reads what is sent, and answers ``reply`` (raw
    bytes, once per connection) or nothing at all."""

    def __init__(self, path: Path, reply: bytes = b"") -> None:
        self.path = path
        self.reply = reply
        self.connections = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(64)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        replied = False
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.reply and not replied:
                replied = True
                conn.sendall(self.reply)

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def mute_engine(tmp_path: Path) -> Iterator[MuteEngine]:
    # Unix socket paths are short (108 bytes): pytest's tmp_path can be longer.
    path = Path(f"/tmp/mailflow-mute-{os.getpid()}-{time.monotonic_ns()}.sock")
    server = MuteEngine(path)
    yield server
    server.close()
    path.unlink(missing_ok=True)


@pytest.mark.parametrize("argv", [["status"], ["run", "scenarios/01-direct-354.yaml"]], ids=["status", "run"])
def test_a_silent_engine_is_an_infrastructure_error_within_seconds(mute_engine: MuteEngine,
                                                                    argv: list[str]) -> None:
    env = {**os.environ, "DOCKER_HOST": mute_engine.url}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "harness", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    took = time.monotonic() - started
    assert done.returncode == EXIT_INFRA, done.stderr
    assert took < REPORTED_WITHIN_S, f"reported after {took:.1f} s"
    assert "accepts connections but does not answer" in done.stderr
    assert mute_engine.url in done.stderr
    assert "Traceback" not in done.stderr
    assert mute_engine.connections >= 1  # it did knock


def test_a_silent_engine_is_never_replaced_by_a_started_one(mute_engine: MuteEngine,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Even where the harness could install and start dockerd (root on Debian), a silent engine is
    reported: a second dockerd would not answer on that socket either."""
    monkeypatch.setenv("DOCKER_HOST", mute_engine.url)
    monkeypatch.setattr(engine, "_can_install", lambda: True)

    def no_start(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"tried to start an engine: {args}")

    monkeypatch.setattr(engine.subprocess, "Popen", no_start)
    monkeypatch.setattr(engine, "run_checked", no_start)
    started = time.monotonic()
    with pytest.raises(EngineNotAnsweringError, match="does not answer"):
        ensure_engine(Progress(quiet=True))
    assert time.monotonic() - started < engine.PROBE_TIMEOUT_S + 3


def test_nothing_listening_is_told_apart_from_a_silent_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(InfrastructureError, match="no Docker engine answers") as caught:
        ensure_engine(Progress(quiet=True), may_start=False)
    assert not isinstance(caught.value, EngineNotAnsweringError)


def test_bounded_gives_up_on_a_call_that_never_returns() -> None:
    never = threading.Event()
    started = time.monotonic()
    with pytest.raises(InfrastructureError, match=r"pulling x: .* did not finish it within 0 s"):
        bounded(lambda: never.wait(), 0.3, "pulling x")
    assert time.monotonic() - started < 2
    assert bounded(lambda: 42, 5, "answer") == 42
    with pytest.raises(KeyError):
        bounded(lambda: {}["missing"], 5, "lookup")


def test_a_build_the_engine_goes_silent_on_is_given_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine starts the build, says one line, then nothing: given up after the stall bound, with
    what it said so far, as an ImageBuildError (exit 3), not an endless wait nor a traceback."""
    first_line = b'{"stream":"Step 1/2 : FROM debian"}\r\n'
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
             + f"{len(first_line):x}\r\n".encode() + first_line + b"\r\n")
    path = Path(f"/tmp/mailflow-stall-{os.getpid()}-{time.monotonic_ns()}.sock")
    server = MuteEngine(path, reply)
    try:
        monkeypatch.setattr(images, "BUILD_STALL_S", 1.0)
        client = docker.DockerClient(base_url=server.url, version="1.41", timeout=30)
        (tmp_path / "Dockerfile").write_text("FROM debian\nRUN sleep 3600\n")
        store = ImageStore(client, Progress(quiet=True), tmp_path)
        started = time.monotonic()
        with pytest.raises(ImageBuildError, match="sent nothing for 1 s") as caught:
            store._stream_build(BuildContext.from_dir(tmp_path), "mailflow-harness/stall:test", {}, "0" * 16)
        assert time.monotonic() - started < 10
        assert "Step 1/2" in str(caught.value)
    finally:
        server.close()
        path.unlink(missing_ok=True)


def test_an_engine_call_past_its_bound_is_exit_3_without_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Seen for real: the engine hung on a container whose exec a pause had frozen; a removal ran into
    # the SDK's 90 s read bound. That is the engine's trouble, reported as such, not as a harness bug.
    import requests

    from harness import cli, commands

    def hangs(args: object) -> int:
        raise requests.exceptions.ReadTimeout("Read timed out. (read timeout=90.0)")

    monkeypatch.setattr(commands, "dispatch", hangs)
    monkeypatch.setattr(commands, "cleanup_own_runs", lambda: 0)
    assert cli.main(["validate", "scenarios"]) == EXIT_INFRA
    err = capsys.readouterr().err
    assert "the Docker engine did not answer a call in time (Read timed out" in err
    assert "Traceback" not in err and "internal error" not in err


def test_leftovers_the_engine_will_not_remove_do_not_stop_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    from harness.topology import labels

    runs = [labels.RunLeftovers(run_id=r, pid=None, machine="", kept=False, containers=(), networks=())
            for r in ("stuck", "fine")]
    monkeypatch.setattr(labels, "list_runs", lambda client: runs)
    monkeypatch.setattr(labels.RunLeftovers, "owner_gone", lambda self: True)

    def remove(client: object, run_id: str) -> int:
        if run_id == "stuck":
            raise requests.exceptions.ReadTimeout("Read timed out.")
        return 3

    monkeypatch.setattr(labels, "remove_run", remove)
    assert labels.reap_abandoned(object()) == ["fine"]  # type: ignore[arg-type]
