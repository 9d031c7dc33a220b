"""Real-container tests. They need a Docker engine: in CI (CI=true) a missing engine fails the
test loudly; elsewhere it skips with the reason. They never start an engine themselves: `make test`
does that before pytest runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from harness.report.progress import Progress
from harness.runner import RunContext
from harness.topology.engine import ensure_engine
from harness.topology.images import ImageStore

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
SCENARIOS = ROOT / "scenarios"


def _engine_or_fail() -> docker.DockerClient:
    try:
        return ensure_engine(Progress(quiet=True), may_start=False)
    except Exception as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and the Docker engine is unavailable: {exc}", pytrace=False)
        pytest.skip(f"no Docker engine: {exc}")


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    return _engine_or_fail()


@pytest.fixture(scope="session")
def run_context(engine: docker.DockerClient) -> Iterator[RunContext]:
    progress = Progress()
    yield RunContext(engine, ImageStore(engine, progress, COMPOSE), COMPOSE, progress)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.docker)
