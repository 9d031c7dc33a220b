"""The scenario's DNS is the only truth about names, the roles' own host names included. Docker's
embedded resolver (127.0.0.11) answers every container's host name from the endpoint aliases the
engine adds (mx.example.test -> mx's address, TTL 600) before asking our server: with it on the MTAs'
path, a scenario that points mx.example.test elsewhere would see its relay deliver to mx anyway.
Here the relay must follow the scenario's record to nomail (its 521), on every implementation."""

from __future__ import annotations

import json
from pathlib import Path

import docker

from .conftest import harness

SCENARIO = """\
name: a role's host name follows the scenario's DNS
description: mx.example.test is pointed at nomail; the relay must connect there, not to mx.
steps:
  - dns_change:
      set:
        - {name: mx.example.test, type: A, address_of: nomail}
  - smtp:
      host: relay
      mail_from: alice@origin.test
      rcpt_to: [bob@example.test]
      expect:
        end_of_data: 250
  - hop:
      hop: relay->nomail
      expect: {connect: 521}
  - no_connection:
      from: relay
      to: mx
      within: 2
"""


def test_a_role_host_name_resolves_as_the_scenario_says(engine: docker.DockerClient, tmp_path: Path) -> None:
    path = tmp_path / "role-name.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    out = tmp_path / "r.json"
    done = harness("run", str(path), "--matrix", "-j", "3", "--json", str(out), timeout=400)
    results = json.loads(out.read_text())["scenarios"]
    assert [r["status"] for r in results] == ["passed"] * 3, done.stdout + done.stderr
