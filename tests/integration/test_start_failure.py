"""A container that exits during start-up is reported at once, with the MTA's own words, instead of
after the 30 s greeting bound: as a configuration error (exit 2)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import docker
import pytest

from harness.errors import ContainerExitedError
from harness.runner import RunContext
from harness.topology.labels import RUN_LABEL
from harness.topology.readiness import wait_for_greeting
from harness.topology.topology import READY_TIMEOUT_S

from .conftest import harness

# Postfix refuses to start with a queue directory that does not exist: `postfix start-fg` prints
#   postfix[1]: fatal: chdir(/nonexistent): No such file or directory
# and exits 1 (checked on the image: nothing ever listens on port 25).
BROKEN_RELAY = """\
name: the relay cannot start
description: a relay setting Postfix refuses at start; the run must end as an error at once
mta: [postfix]
roles:
  relay:
    settings:
      postfix: {queue_directory: /nonexistent}
steps:
  - smtp:
      host: mx
      mail_from: alice@origin.test
      rcpt_to: bob@example.test
"""


def test_a_relay_that_exits_at_start_is_reported_at_once_with_its_log(engine: docker.DockerClient,
                                                                      tmp_path: Path) -> None:
    scenario = tmp_path / "broken.yaml"
    scenario.write_text(BROKEN_RELAY)
    out = tmp_path / "r.json"
    started = time.monotonic()
    done = harness("run", str(scenario), "--mta", "postfix", "--json", str(out))
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    # A configuration the MTA refuses: exit 2 (the configuration must change), never 3 (infrastructure,
    # which CI may retry).
    assert done.returncode == 2, output
    (result,) = json.loads(out.read_text())["scenarios"]
    assert result["status"] == "config-error", result
    error = result["error"] or ""
    assert error.startswith("configuration error: relay ("), error
    assert "relay (relay.origin.test) exited with code 1" in error, error
    # The MTA's own log line, not only ours.
    assert "fatal: chdir(/nonexistent): No such file or directory" in error, error
    # Known as soon as the relay exited: the whole run (network, dns, four containers, removal) takes
    # a few seconds, where waiting out the greeting bound alone took READY_TIMEOUT_S (30 s). On a loaded
    # engine starting containers can take seconds each, so the bound is what is asserted here; the
    # test below measures the detection itself.
    assert result["duration_s"] < READY_TIMEOUT_S, result["duration_s"]
    assert took < READY_TIMEOUT_S + 10, (took, output)
    # And nothing of the run is left behind.
    run_id = result.get("run_id")
    if run_id:
        left = engine.api.containers(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})
        assert left == [], left


def test_the_greeting_wait_notices_an_exit_within_a_fraction_of_a_second(engine: docker.DockerClient,
                                                                         run_context: RunContext) -> None:
    """wait_for_greeting on a container that exits 0.5 s after it started (and never listens): the
    wait ends with its exit code and log right after the exit, not at the bound."""
    image = run_context.images.image("postfix")
    container = engine.containers.run(
        image, ["sh", "-c", "echo 'starting'; sleep 0.5; echo 'fatal: no way'; exit 3"], detach=True,
        network_mode="none")
    with socket.socket() as free:  # a port nobody listens on: refused at once, like a starting MTA's
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(ContainerExitedError) as caught:
            wait_for_greeting("127.0.0.1", 220, what="probe", port=port, timeout_s=20,
                              logs=lambda: bytes(container.logs(tail=20)).decode(), container=container)
        took = time.monotonic() - started
    finally:
        container.remove(force=True)
    text = str(caught.value)
    assert text.startswith("probe exited with code 3 after "), text
    assert "fatal: no way" in text and "starting" in text, text
    print(f"exit noticed {took:.2f} s after the wait began")
    assert took < 0.5 + 3.0, took  # the exit, one state period (0.2 s), the inspect and logs calls
