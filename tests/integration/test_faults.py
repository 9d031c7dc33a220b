"""Fault steps on real containers: a fault Docker refuses fails its step with Docker's words, and a
paused role really answers nothing until it is unpaused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import docker

from .conftest import COMPOSE, ROOT

REFUSED = """\
name: unpause a role that is not paused
description: Docker refuses; the step must fail with its words, not pass
mta: [postfix]
steps:
  - fault: {role: mx, action: unpause}
"""

PAUSED = """\
name: a paused mx answers nothing, then greets again
description: the client's session to a paused mx times out; after unpause it is accepted
mta: [postfix]
steps:
  - fault: {role: mx, action: pause}
  - smtp:
      host: mx
      mail_from: alice@origin.test
      rcpt_to: bob@example.test
      timeout: 3
      expect:
        connect: 220
  - fault: {role: mx, action: unpause}
  - smtp:
      host: mx
      mail_from: alice@origin.test
      rcpt_to: bob@example.test
      expect:
        end_of_data: 250
"""


def _run(tmp_path: Path, text: str) -> tuple[int, dict[str, object], str]:
    scenario = tmp_path / "fault.yaml"
    scenario.write_text(text)
    out = tmp_path / "r.json"
    done = subprocess.run([sys.executable, "-m", "harness", "--compose", str(COMPOSE), "run", str(scenario),
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    return done.returncode, json.loads(out.read_text())["scenarios"][0], done.stdout + done.stderr


def test_a_fault_docker_refuses_fails_its_step(engine: docker.DockerClient, tmp_path: Path) -> None:
    code, result, output = _run(tmp_path, REFUSED)
    assert code == 1, output
    [failure] = result["failures"]  # type: ignore[index]
    assert failure["kind"] == "fault" and failure["expected"] == "mx unpaused and greeting"
    assert "Docker refused to unpause mx" in failure["observed"] and "fault.yaml:5:5" in output


def test_a_paused_role_answers_nothing_until_unpaused(engine: docker.DockerClient, tmp_path: Path) -> None:
    code, result, output = _run(tmp_path, PAUSED)
    assert code == 1, output  # the session to the paused mx cannot get its 220
    [failure] = result["failures"]  # type: ignore[index]
    assert failure["step"] == 2 and failure["stage"] == "CONNECT", failure
    steps = result["steps"]  # type: ignore[index]
    assert [s["status"] for s in steps] == ["passed", "failed", "passed", "passed"], steps
