"""Find a Docker engine that answers, or start one on a Debian machine where we are root."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import docker
import requests
from docker.constants import MINIMUM_DOCKER_API_VERSION
from docker.errors import DockerException

from harness.errors import EngineUnavailableError, InfrastructureError
from harness.report.progress import Progress
from harness.topology.hostcmd import run_checked

DOCKERD_LOG = Path("/var/log/mailflow-harness-dockerd.log")
START_TIMEOUT_S = 60.0
# Bounds on engine calls, each fitting what it waits for (an engine that stops answering is reported
# as an infrastructure error after the bound, never waited for without end):
# - the first contact (/version): an engine answers in milliseconds; one that accepts connections and
#   says nothing (hung, or not an engine at all) is reported after this, before anything starts;
PROBE_TIMEOUT_S = 5.0
# - any other single call: create, start, remove, inspect, archive copies and execs (checks, resets,
#   queue commands, tshark under its own 60 s `timeout`) end in seconds; this is the slowest, with margin;
API_TIMEOUT_S = 90.0
# - an image build takes minutes, but is never silent this long (apt-get -qq prints nothing while it
#   downloads); a pull or an import of the base image ends within the longer bound as a whole.
BUILD_STALL_S = 600.0
PULL_TIMEOUT_S = 900.0

T = TypeVar("T")


class EngineNotAnsweringError(EngineUnavailableError):
    """Something accepts connections at the engine's address but does not answer."""


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def not_answering_message(seconds: float = PROBE_TIMEOUT_S) -> str:
    return (f"the Docker engine at {engine_address()} accepts connections but does not answer (nothing within "
            f"{seconds:.0f} s): it hangs, or it is not a Docker engine. Restart it (e.g. `sudo systemctl restart "
            "docker`) or point DOCKER_HOST at one that answers")


# testcontainers makes a client of its own per container and network: its calls are bounded as ours,
# and once an engine answered (_ping) they speak its API version instead of asking it each time.
ENGINE_CLIENT: dict[str, object] = {"timeout": API_TIMEOUT_S}


def _ping() -> docker.DockerClient | None:
    """A client for the engine at engine_address() (calls bounded by API_TIMEOUT_S), or None when nothing
    listens there. EngineNotAnsweringError when something listens but does not answer within
    PROBE_TIMEOUT_S: starting another engine would not help."""
    try:
        probe = docker.from_env(version=MINIMUM_DOCKER_API_VERSION, timeout=PROBE_TIMEOUT_S)
    except DockerException:  # DOCKER_HOST unusable: no engine to talk to
        return None
    try:
        version = str(probe.api.version(api_version=False)["ApiVersion"])
    except requests.exceptions.Timeout as exc:
        raise EngineNotAnsweringError(not_answering_message()) from exc
    except (DockerException, OSError, KeyError, ValueError):  # refused, no socket, not JSON
        return None
    finally:
        probe.close()
    try:
        client = docker.from_env(version=version, timeout=API_TIMEOUT_S)
    except DockerException:
        return None
    ENGINE_CLIENT["version"] = version
    return client


def bounded(call: Callable[[], T], timeout_s: float, what: str) -> T:
    """``call()`` (an engine call the SDK sends without any time bound: pull, import), given up after
    ``timeout_s`` with an InfrastructureError saying ``what`` did not end. The call's thread is left to
    the engine (a daemon thread: it never keeps the process alive)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the waiting thread
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"bounded {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise InfrastructureError(f"{what}: the Docker engine at {engine_address()} did not finish it within "
                                  f"{timeout_s:.0f} s")
    if failure:
        raise failure[0]
    return outcome[0]


def _can_install() -> bool:
    return os.geteuid() == 0 and Path("/etc/debian_version").exists() and "DOCKER_HOST" not in os.environ


def ensure_engine(progress: Progress, *, may_start: bool = True) -> docker.DockerClient:
    """Return a client for an engine that answers. Where none answers and we are root on Debian,
    install Debian's docker.io if needed and start dockerd in the background (it outlives us, so
    later commands reuse it). An engine that accepts connections but does not answer is reported
    within PROBE_TIMEOUT_S (EngineNotAnsweringError), never replaced by another one."""
    client = _ping()
    if client is not None:
        return client
    if not may_start or not _can_install():
        raise EngineUnavailableError(
            f"no Docker engine answers at {engine_address()}: start one (e.g. `sudo systemctl start docker` "
            "or `sudo dockerd &`), or point DOCKER_HOST at one"
        )
    if shutil.which("dockerd") is None:
        with progress.task("no Docker engine answers: installing Debian's docker.io with apt-get"):
            run_checked(["apt-get", "update", "-qq"], EngineUnavailableError)
            run_checked(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io"],
                        EngineUnavailableError)
    with progress.task(f"starting dockerd (log: {DOCKERD_LOG})"):
        log = DOCKERD_LOG.open("ab")
        # A new session: dockerd must survive this process and make's, so the next command finds it.
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(EngineNotAnsweringError):  # still starting
                client = _ping()
                if client is not None:
                    return client
            time.sleep(0.25)
    raise EngineUnavailableError(
        f"started dockerd but it did not answer at {engine_address()} within {START_TIMEOUT_S:.0f} s; "
        f"see {DOCKERD_LOG}"
    )

