"""A failed client step's replay lines, typed as printed: `harness up SCENARIO --env` starts the
scenario's topology, swaks gets the reply the harness saw, `harness down` removes it all."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from harness.topology.labels import RUN_LABEL

from .conftest import ROOT, harness

WRONG_RCPT = """\
name: expects 250 where the relay refuses a null-MX recipient
description: deliberately wrong, so that the step fails and prints its replay
steps:
  - smtp:
      host: relay
      ehlo: replay.origin.test
      mail_from: alice@origin.test
      rcpt_to: someone@nullmx.test
      expect:
        rcpt: 250
"""


def test_a_failed_client_step_replays_with_swaks_against_harness_up(engine: docker.DockerClient,
                                                                      tmp_path: Path) -> None:
    if shutil.which("swaks") is None:
        pytest.fail("swaks is not installed: `make test` installs it (apt-get install swaks)", pytrace=False)
    scenario = tmp_path / "wrong-rcpt.yaml"
    scenario.write_text(WRONG_RCPT)
    results = tmp_path / "results.json"
    run = harness("run", str(scenario), "--mta", "postfix", "--json", str(results))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "replay step 1 by hand" in run.stdout
    step = json.loads(results.read_text())["scenarios"][0]["steps"][0]
    assert "556 5.1.10" in step["summary"] or "RCPT 556" in step["summary"], step["summary"]

    # `harness` as the user has it: the venv's entry point on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    replay = subprocess.run(["bash", "-c", step["reproduce"]], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    swaks = replay.stdout + replay.stderr
    assert " -> EHLO replay.origin.test" in swaks
    assert " -> MAIL FROM:<alice@origin.test>" in swaks
    assert " -> RCPT TO:<someone@nullmx.test>" in swaks
    assert "<** 556 5.1.10" in swaks, swaks
    removed = re.search(r"removed run (\S+)", swaks)
    assert removed, swaks
    assert not engine.containers.list(all=True, filters={"label": f"{RUN_LABEL}={removed.group(1)}"})
