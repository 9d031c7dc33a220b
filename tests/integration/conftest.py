"""Real-container tests. They need a Docker engine: in CI (CI=true) a missing engine fails the
test loudly; elsewhere it skips with the reason. They never start an engine themselves: `make test`
does that before pytest runs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import docker
import pytest

import harness.topology.topology as topology_module
from harness.expect.results import ScenarioResult
from harness.plan import ScenarioPlan, plan_scenario
from harness.report.files import write_json
from harness.report.progress import Progress
from harness.runner import RunContext, ScenarioSequence, SharedTopology, default_jobs, implementations_for, run_all
from harness.scenario.loader import load_scenario, load_scenarios
from harness.tls.ca import RunTls
from harness.topology.engine import ensure_engine
from harness.topology.images import ImageStore
from harness.topology.mta import available

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
SCENARIOS = ROOT / "scenarios"


def harness(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``harness --compose compose/ ARGS`` in a process of its own, as a user runs it; never raises on
    its exit status."""
    return subprocess.run([sys.executable, "-m", "harness", "--compose", str(COMPOSE), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


class WatchedRunTls(RunTls):
    """The run's key directory, noted when made, with what it held once the roles started."""

    made: ClassVar[list[WatchedRunTls]] = []

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.held: list[str] = []
        self.issued: list[str] = []  # the role of every certificate issued, in order
        WatchedRunTls.made.append(self)

    def issue(self, role: str, hostname: str, kind: str) -> Any:
        credentials = super().issue(role, hostname, kind)
        self.issued.append(role)
        self.held = sorted(str(p.relative_to(self.directory)) for p in self.directory.rglob("*.pem"))
        return credentials


@contextmanager
def scenario_ran(run_context: RunContext, name: str, mta: str = "postfix"
                 ) -> Iterator[tuple[ScenarioResult, SharedTopology, ScenarioPlan]]:
    """``scenarios/<name>`` run once on a shared topology: its result, the topology (still running
    inside the block, removed after it) and the scenario's plan with its records resolved on it, as
    the scenario's steps see them."""
    scenario = load_scenario(SCENARIOS / name)
    sequence = ScenarioSequence(run_context)
    try:
        result = sequence.run(scenario, mta)
        shared = sequence.shared
        assert shared is not None
        plan = plan_scenario(scenario, run_context.compose_dir, mta=mta)
        shared.zones_for(plan)  # plan.records filled
        yield result, shared, plan
    finally:
        sequence.close()


@pytest.fixture
def run_keys(monkeypatch: pytest.MonkeyPatch) -> list[WatchedRunTls]:
    """Every run's key directory made during the test (the topologies' RunTls watched)."""
    monkeypatch.setattr(topology_module, "RunTls", WatchedRunTls)
    WatchedRunTls.made.clear()
    return WatchedRunTls.made


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


@pytest.fixture(scope="session")
def shuffle_seed() -> int:
    seed = int(os.environ.get("HARNESS_SHUFFLE_SEED", random.randrange(1 << 16)))
    print(f"\nbundled scenarios in shared mode, shuffled with HARNESS_SHUFFLE_SEED={seed}")
    sys.stderr.write(f"bundled scenarios in shared mode, shuffled with HARNESS_SHUFFLE_SEED={seed}\n")
    return seed


@pytest.fixture(scope="session")
def matrix(run_context: RunContext, shuffle_seed: int) -> dict[tuple[str, str], ScenarioResult]:
    """Every bundled scenario on every implementation, the way `make scenarios` runs them: shared
    topologies, side by side; here in a shuffled order (the seed is printed, HARNESS_SHUFFLE_SEED
    repeats it), so no scenario's verdict depends on which one ran before it on the same topology."""
    scenarios = load_scenarios([SCENARIOS])
    pairs = [(s, m) for s in scenarios for m in implementations_for(s, available(COMPOSE))]
    random.Random(shuffle_seed).shuffle(pairs)
    run_context.fresh, run_context.jobs = False, default_jobs()
    results = run_all(run_context, scenarios, pairs=pairs)
    # For a post-mortem of a failure seen only in this order (the summary says which seed it was).
    write_json(results, ROOT / "build" / f"shared-matrix-{shuffle_seed}.json")
    return {(Path(r.file).stem, r.mta): r for r in results}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.docker)
