"""The pytest plugin (harness.pytest_plugin, entry point ``mailflow_harness``): collection and options
through pytester, in process, no containers; then one real run in a subprocess with ``-n 2``: a
scenario that passes, a copy with a wrong expectation that fails with the file:line:col and the
observed reply, and a Python test using the ``mailflow_topology`` fixture. Three items on two workers:
two Postfix topologies, one of them used by two items in turn."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from harness.topology.labels import list_runs

from .conftest import COMPOSE, SCENARIOS

pytest_plugins = ["pytester"]

DIRECT = "01-direct-354.yaml"
NOMAIL = "03-nomail-521.yaml"
# 01-direct-354's own expectation (the first `data: 354`; the per_mta overrides follow it).
EXPECTATION = "        data: 354"


def _layout(root: Path) -> None:
    """Scenarios where the plugin looks, and YAML where it must not: like this project's tests/."""
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "scenarios").mkdir()
    for name in (DIRECT, NOMAIL):
        shutil.copy(SCENARIOS / name, root / "scenarios" / name)
    (root / "other").mkdir()
    shutil.copy(SCENARIOS / DIRECT, root / "other" / "not-a-scenario-dir.yaml")
    data = root / "tests" / "fixtures" / "scenarios"
    data.mkdir(parents=True)
    (data / "broken.yaml").write_text("name: [unclosed\n")
    (root / "tests" / "test_nothing.py").write_text("def test_nothing():\n    pass\n")


def _ids(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines if "::" in line]


def test_collects_one_item_per_scenario_and_implementation(pytester: pytest.Pytester) -> None:
    _layout(pytester.path)
    result = pytester.runpytest("scenarios", "--co", "-q", "--mta", "postfix,exim", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    # 03-nomail-521 runs everywhere; the order is the files', then --mta's.
    assert _ids(result) == [f"scenarios/{DIRECT}::postfix", f"scenarios/{DIRECT}::exim",
                            f"scenarios/{NOMAIL}::postfix", f"scenarios/{NOMAIL}::exim"]
    selected = pytester.runpytest("scenarios", "--co", "-q", "-k", "nomail", "-p", "no:cacheprovider")
    assert _ids(selected) == [f"scenarios/{NOMAIL}::postfix"]


def test_yaml_elsewhere_only_when_named(pytester: pytest.Pytester) -> None:
    _layout(pytester.path)
    # A bare pytest (and `pytest tests`) recurses past scenarios directories: no YAML is collected.
    for args in ((), ("tests",)):
        result = pytester.runpytest(*args, "--co", "-q", "-p", "no:cacheprovider")
        assert _ids(result) == ["tests/test_nothing.py::test_nothing"], result.stdout.str()
    named = pytester.runpytest("other/not-a-scenario-dir.yaml", "--co", "-q", "-p", "no:cacheprovider")
    assert _ids(named) == ["other/not-a-scenario-dir.yaml::postfix"]


def test_a_file_that_does_not_load_is_one_failing_item(pytester: pytest.Pytester) -> None:
    (pytester.path / "pytest.ini").write_text("[pytest]\n")
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "bad.yaml").write_text(
        "name: bad\ndescription: a reply code that cannot be\nsteps:\n"
        "  - smtp: {host: mx, mail_from: a@origin.test, rcpt_to: b@example.test, expect: {data: 99}}\n")
    result = pytester.runpytest("scenarios", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["scenarios/bad.yaml:4:*: expected an integer reply code between 200 and 599*",
                                 "FAILED scenarios/bad.yaml::load - scenarios/bad.yaml:4:*"])
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(("args", "message"), [
    (["--mta", "postfix,sendmail"], "--mta: unknown MTA implementation(s) sendmail"),
    (["--mta", ","], "names no MTA implementation"),
    (["--role", "relay=does-not-exist"], "does-not-exist is not a directory"),
    (["--set", "relay.no equals"], "expected ROLE.PARAM=VALUE"),
])
def test_bad_options_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    result = pytester.runpytest("--co", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


# -- one real run ---------------------------------------------------------------------------------

FIXTURE_TEST = '''
import pytest


def test_send_to_mx(mailflow_topology):
    transcript = mailflow_topology.send("mx", rcpt_to=["bob@example.test"], headers={"Subject": "fixture"})
    assert transcript.first("DATA").code == 354
    assert transcript.first("END-OF-DATA").code == 250
    assert mailflow_topology.address("mx") != mailflow_topology.client_address
'''


@dataclass
class RealRun:
    result: subprocess.CompletedProcess[str]
    junit: ET.Element
    wrong_location: str  # file:line:col of the changed expectation


@pytest.fixture(scope="module")
def real_run(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> RealRun:
    root = tmp_path_factory.mktemp("plugin-run")
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "scenarios").mkdir()
    shutil.copy(SCENARIOS / DIRECT, root / "scenarios" / DIRECT)
    lines = (SCENARIOS / DIRECT).read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if line.rstrip("\n") == EXPECTATION)
    lines[index] = lines[index].replace("354", "250")
    (root / "scenarios" / "wrong.yaml").write_text("".join(lines))
    (root / "test_fixture.py").write_text(FIXTURE_TEST)
    env = {**os.environ, "MAILFLOW_COMPOSE_DIR": str(COMPOSE)}
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "scenarios", "test_fixture.py", "-n", "2", "--mta", "postfix", "-v",
         "-p", "no:cacheprovider", "--junitxml", str(root / "junit.xml")],
        cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False)
    print(result.stdout[-20000:], result.stderr[-5000:], sep="\n")
    assert (root / "junit.xml").is_file(), result.stderr
    column = lines[index].index("250") + 1
    return RealRun(result, ET.parse(root / "junit.xml").getroot(), f"scenarios/wrong.yaml:{index + 1}:{column}")


def test_real_run_passes_and_fails_like_harness_run(real_run: RealRun) -> None:
    out = real_run.result.stdout
    assert real_run.result.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert re.search(rf"PASSED scenarios/{re.escape(DIRECT)}::postfix", out), out
    assert re.search(r"FAILED scenarios/wrong\.yaml::postfix", out), out
    # What `harness run` prints: the scenario line, the expectation's file:line:col, the transcript.
    assert "FAIL  354 direct to mx [postfix]" in out
    assert f"{real_run.wrong_location}: step 1 (smtp DATA): expected 250, observed 354" in out
    assert re.search(r"S: 354 .*<<< expected 250", out), out
    # The short summary names the failure, not just the scenario.
    assert f"FAILED scenarios/wrong.yaml::postfix - {real_run.wrong_location}:" in out


def test_real_run_under_xdist(real_run: RealRun) -> None:
    out = real_run.result.stdout
    assert "created: 2/2 workers" in out, out
    assert set(re.findall(r"\[(gw\d)\] .*(?:PASSED|FAILED) ", out)) == {"gw0", "gw1"}, out
    cases = sorted((c.get("classname"), c.get("name")) for c in real_run.junit.iter("testcase"))
    assert cases == [(f"scenarios.{DIRECT}", "postfix"), ("scenarios.wrong.yaml", "postfix"),
                     ("test_fixture", "test_send_to_mx")]
    failure = real_run.junit.find(".//testcase/failure")
    assert failure is not None and failure.get("message", "").startswith(real_run.wrong_location)
    run_ids = {p.get("value") for p in real_run.junit.iter("property") if p.get("name") == "run_id"}
    assert 1 <= len(run_ids) <= 2, run_ids  # at most one Postfix topology per worker


def test_fixture_sends_to_mx(real_run: RealRun) -> None:
    assert re.search(r"PASSED test_fixture\.py::test_send_to_mx", real_run.result.stdout), real_run.result.stdout


def test_real_run_removed_its_topology(real_run: RealRun, engine: docker.DockerClient) -> None:
    run_ids = {p.get("value") for p in real_run.junit.iter("property") if p.get("name") == "run_id"}
    assert run_ids
    left = [r.run_id for r in list_runs(engine) if r.run_id in run_ids]
    assert left == [], left
