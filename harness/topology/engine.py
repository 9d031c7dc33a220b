"""Find a Docker engine that answers, or start one on a Debian machine where we are root."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import docker
from docker.errors import DockerException

from harness.errors import EngineUnavailableError
from harness.report.progress import Progress
from harness.topology.hostcmd import run_checked

DOCKERD_LOG = Path("/var/log/mailflow-harness-dockerd.log")
START_TIMEOUT_S = 60.0


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def _ping() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except DockerException:
        return None
    except OSError:
        return None


def _can_install() -> bool:
    return os.geteuid() == 0 and Path("/etc/debian_version").exists() and "DOCKER_HOST" not in os.environ


def ensure_engine(progress: Progress, *, may_start: bool = True) -> docker.DockerClient:
    """Return a client for an engine that answers. Where none answers and we are root on Debian,
    install Debian's docker.io if needed and start dockerd in the background (it outlives us, so
    later commands reuse it)."""
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
            client = _ping()
            if client is not None:
                return client
            time.sleep(0.25)
    raise EngineUnavailableError(
        f"started dockerd but it did not answer at {engine_address()} within {START_TIMEOUT_S:.0f} s; "
        f"see {DOCKERD_LOG}"
    )

