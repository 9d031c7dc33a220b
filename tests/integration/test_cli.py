"""The `harness` command on real containers: exit codes, failure output, cleanup, up/down."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import docker
import pytest

from harness.topology.labels import PID_LABEL, RUN_LABEL, list_runs, reap_abandoned

from .conftest import COMPOSE, ROOT, harness

WRONG_354 = """\
name: expects 250 where mx says 354
description: a deliberately wrong expectation; the run must fail and show what was observed
steps:
  - smtp:
      host: mx
      mail_from: alice@origin.test
      rcpt_to: bob@example.test
      expect:
        data: 250
"""

WRONG_HOP = """\
name: expects 250 where mx answers the relay's DATA with 354
description: a deliberately wrong hop expectation; the run must fail and show the hop
steps:
  - smtp:
      host: relay
      mail_from: alice@origin.test
      rcpt_to: bob@example.test
  - hop:
      hop: relay->mx
      expect:
        data: 250
"""

WRONG_GREETING = """\
name: expects 220 from the 521 host
description: deliberately wrong; later stages must be reported as not reached, never as passed
steps:
  - smtp:
      host: nomail
      mail_from: alice@origin.test
      rcpt_to: a@sendonly.test
      expect:
        connect: 220
        rcpt: 250
"""


def test_wrong_data_expectation_fails_with_exit_1_and_shows_the_354(engine: docker.DockerClient,
                                                                   tmp_path: Path) -> None:
    scenario = tmp_path / "wrong.yaml"
    scenario.write_text(WRONG_354)
    out = tmp_path / "results.json"
    junit = tmp_path / "junit.xml"
    before = time.time()
    done = harness("run", str(scenario), "--json", str(out), "--junit", str(junit))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout
    # The failing transcript marks the DATA reply, which was the real 354.
    marked = [line for line in done.stdout.splitlines() if "<<< expected 250" in line]
    assert marked and "354" in marked[0], done.stdout
    assert f"{scenario}:9:15:" in done.stdout  # the expectation's file:line:col
    doc = json.loads(out.read_text())
    (result,) = doc["scenarios"]
    assert result["status"] == "failed"
    (failure,) = result["failures"]
    assert failure["stage"] == "DATA" and failure["expected"] == "250" and failure["observed"].startswith("354")
    data = next(e for e in result["exchanges"] if e["command"] == "DATA")
    assert data == {**data, "hop": "client->mx", "session": 1, "code": 354}
    # The step's time on the scenario's clock brackets its exchanges; the clock's zero is wall time.
    (step,) = result["steps"]
    assert step["at_s"] <= data["at_s"] <= step["at_s"] + step["took_s"], (step, data)
    assert before <= result["started_at"] <= time.time()
    assert "<failure" in junit.read_text()


def test_wrong_hop_expectation_fails_with_exit_1_and_shows_the_hop(engine: docker.DockerClient,
                                                                  tmp_path: Path) -> None:
    scenario = tmp_path / "wrong-hop.yaml"
    scenario.write_text(WRONG_HOP)
    out = tmp_path / "results.json"
    done = harness("run", str(scenario), "--json", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{scenario}:11:15: step 2 (hop DATA): expected 250, observed 354" in done.stdout, done.stdout
    assert "relay->mx session 1" in done.stdout
    marked = [line for line in done.stdout.splitlines() if "<<< expected 250" in line]
    assert marked and "354" in marked[0], done.stdout
    (result,) = json.loads(out.read_text())["scenarios"]
    (failure,) = result["failures"]
    assert (failure["hop"], failure["stage"], failure["kind"]) == ("relay->mx", "DATA", "hop")
    hops = {e["hop"] for e in result["exchanges"]}
    assert {"client->relay", "relay->mx"} <= hops


def test_not_reached_stages_fail(engine: docker.DockerClient, tmp_path: Path) -> None:
    scenario = tmp_path / "greeting.yaml"
    scenario.write_text(WRONG_GREETING)
    out = tmp_path / "r.json"
    done = harness("run", str(scenario), "--json", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    failures = json.loads(out.read_text())["scenarios"][0]["failures"]
    by_stage = {f["stage"]: f for f in failures}
    assert by_stage["CONNECT"]["observed"].startswith("521")
    assert by_stage["RCPT <a@sendonly.test>"]["observed"].startswith("not reached")


def test_bad_scenario_exits_2_before_any_container(engine: docker.DockerClient, tmp_path: Path) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text("name: x\ndescription: y\nsteps:\n  - smtp:\n      host: mx\n      rcpt_to: a@b\n")
    before = len(list_runs(engine))
    done = harness("run", str(scenario))
    assert done.returncode == 2
    assert done.stderr.startswith(f"harness: {scenario}:5:7: "), done.stderr
    assert "Traceback" not in done.stderr
    assert len(list_runs(engine)) == before


SLOW = """\
name: slow
description: waits long enough to be interrupted
steps:
  - smtp: {host: mx, mail_from: a@origin.test, rcpt_to: b@example.test}
  # Nothing can settle this early: the message is delivered, but to bob, never to carol.
  - delivery: {host: mx, mailbox: carol@example.test, within: 60}
"""


def _own_objects(client: docker.DockerClient, pid: int) -> int:
    label = f"{PID_LABEL}={pid}"
    # sparse: no inspect per container, which raises NotFound for one removed in between.
    return (len(client.containers.list(all=True, sparse=True, filters={"label": label}))
            + len(client.networks.list(filters={"label": label})))


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupt_removes_everything(engine: docker.DockerClient, tmp_path: Path, sig: int, code: int) -> None:
    scenario = tmp_path / "slow.yaml"
    scenario.write_text(SLOW)
    # As from an interactive shell: a test run started in the background (`make test &`) hands its
    # children SIGINT ignored, and a program started so keeps ignoring it.
    proc = subprocess.Popen([sys.executable, "-m", "harness", "--compose", str(COMPOSE), "run", str(scenario)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while _own_objects(engine, proc.pid) < 5 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert _own_objects(engine, proc.pid) >= 5, "the run never started its containers"
        time.sleep(1.5)  # inside the delivery wait now
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert _own_objects(engine, proc.pid) == 0
    assert "Traceback" not in err


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_repeated_interrupts_do_not_cut_the_cleanup_short(engine: docker.DockerClient, tmp_path: Path,
                                                          first: int) -> None:
    """Ctrl-C pressed again and again while the run removes its containers: no traceback, nothing left,
    the exit code of the first signal."""
    scenario = tmp_path / "slow.yaml"
    scenario.write_text(SLOW)
    proc = subprocess.Popen([sys.executable, "-m", "harness", "--compose", str(COMPOSE), "run", str(scenario),
                             "--mta", "postfix,exim,opensmtpd"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    extra = 0
    try:
        deadline = time.monotonic() + 120
        # Three topologies: removing them takes long enough for the signals to land in the cleanup.
        while _own_objects(engine, proc.pid) < 15 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert _own_objects(engine, proc.pid) >= 15, "the run never started its containers"
        time.sleep(1.0)
        proc.send_signal(first)
        for pause in (0.1, 0.3, 0.2):
            time.sleep(pause)
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGINT)
            extra += 1
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert extra >= 2, f"the cleanup ended before the repeated signals landed ({extra} sent):\n{err}"
    assert proc.returncode == (130 if first == signal.SIGINT else 143), err
    assert "Traceback" not in err, err
    assert _own_objects(engine, proc.pid) == 0


def test_leftovers_of_a_dead_process_are_reaped(engine: docker.DockerClient) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    labels = {RUN_LABEL: "test-abandoned-" + str(dead.pid), PID_LABEL: str(dead.pid),
              "mailflow-harness.machine": os.uname().nodename, "mailflow-harness.keep": "0"}
    kept = {**labels, RUN_LABEL: "test-kept-" + str(dead.pid), "mailflow-harness.keep": "1"}
    net = engine.networks.create(f"mailflow-test-abandoned-{dead.pid}", internal=True, labels=labels)
    kept_net = engine.networks.create(f"mailflow-test-kept-{dead.pid}", internal=True, labels=kept)
    try:
        reaped = reap_abandoned(engine)
        assert labels[RUN_LABEL] in reaped
        assert kept[RUN_LABEL] not in reaped
        assert not engine.networks.list(filters={"label": f"{RUN_LABEL}={labels[RUN_LABEL]}"})
        assert engine.networks.list(filters={"label": f"{RUN_LABEL}={kept[RUN_LABEL]}"})
    finally:
        for n in (net, kept_net):
            with contextlib.suppress(docker.errors.NotFound):
                n.remove()


def test_up_then_down(engine: docker.DockerClient) -> None:
    from harness.topology.readiness import read_greeting

    done = harness("up", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    run_id = info["run_id"]
    try:
        roles = {h["role"]: h for h in info["hosts"]}
        assert set(roles) == {"dns", "mx", "relay", "nomail"}
        assert read_greeting(roles["mx"]["address"])[0] == 220
        assert read_greeting(roles["nomail"]["address"])[0] == 521
        # A later run must not reap a kept topology.
        assert run_id not in reap_abandoned(engine)
    finally:
        down = harness("down", "--run", run_id)
    assert down.returncode == 0, down.stderr
    assert not engine.containers.list(all=True, sparse=True, filters={"label": f"{RUN_LABEL}={run_id}"})


def test_two_runs_at_once_do_not_collide(engine: docker.DockerClient, tmp_path: Path) -> None:
    scenario = str(ROOT / "scenarios" / "01-direct-354.yaml")
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    procs = [subprocess.Popen([sys.executable, "-m", "harness", "-q", "--compose", str(COMPOSE), "run", scenario,
                               "--json", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for out in outs]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    run_ids = {json.loads(out.read_text())["scenarios"][0]["run_id"] for out in outs}
    assert len(run_ids) == 2
    for run_id in run_ids:
        assert not engine.containers.list(all=True, sparse=True, filters={"label": f"{RUN_LABEL}={run_id}"})


def test_keep_on_failure_keeps_the_topology_until_down(engine: docker.DockerClient, tmp_path: Path) -> None:
    scenario = tmp_path / "wrong.yaml"
    scenario.write_text(WRONG_354)
    out = tmp_path / "r.json"
    done = harness("run", str(scenario), "--keep", "on-failure", "--json", str(out))
    assert done.returncode == 1, done.stderr
    run_id = json.loads(out.read_text())["scenarios"][0]["run_id"]
    try:
        kept = engine.containers.list(filters={"label": f"{RUN_LABEL}={run_id}"})
        assert len(kept) >= 4, "the failed scenario's containers should still run"
        assert f"harness down --run {run_id}" in done.stderr
        # A later run's reaping leaves a kept topology alone even though its process is gone.
        assert run_id not in reap_abandoned(engine)
    finally:
        down = harness("down", "--run", run_id)
    assert down.returncode == 0, down.stderr
    assert not engine.containers.list(all=True, sparse=True, filters={"label": f"{RUN_LABEL}={run_id}"})


REUSED_CONNECTION_WRONG = """\
name: the refused message's hop judged with the other message's DATA
description: >
  Issue 7, verdict 1, on the wire: OpenSMTPD carries both messages over one relay->mx connection.
  The first message is refused at RCPT; expecting DATA 354 and END-OF-DATA 250 for it must fail
  (those replies belong to the second message's transaction), not pass as it did on a session basis.
steps:
  - smtp: {id: refused, host: relay, mail_from: alice@origin.test, rcpt_to: no/such@example.test}
  - smtp: {id: accepted, host: relay, mail_from: alice@origin.test, rcpt_to: bob@example.test}
  - hop:
      hop: relay->mx
      message_of: refused
      expect: {rcpt: 550, data: 354, end_of_data: 250}
  - hop:
      hop: relay->mx
      message_of: accepted
      expect: {data: 354, end_of_data: 250}
"""

NO_BOUNCE_WRONG = """\
name: no bounce expected where Postfix bounces at once
description: Issue 7, verdict 2, on the wire; a null MX recipient accepted by the relay is bounced at once.
roles:
  relay:
    settings:
      postfix: {smtpd_recipient_restrictions: ""}
steps:
  - smtp: {host: relay, mail_from: alice@origin.test, rcpt_to: someone@nullmx.test}
  - no_bounce: {host: relay, mailbox: alice@origin.test, within: 10}
"""


def test_hop_of_a_refused_message_is_not_judged_on_the_other_messages_transaction(
        engine: docker.DockerClient, tmp_path: Path) -> None:
    scenario = tmp_path / "reused.yaml"
    scenario.write_text(REUSED_CONNECTION_WRONG)
    out = tmp_path / "r.json"
    done = harness("run", str(scenario), "--mta", "opensmtpd", "--json", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    (result,) = json.loads(out.read_text())["scenarios"]
    failures = {(f["step"], f["stage"]): f["observed"] for f in result["failures"]}
    assert set(failures) == {(3, "DATA"), (3, "END-OF-DATA")}, result["failures"]
    assert all(o.startswith("not reached") for o in failures.values())
    hops = [s["observation"] for s in result["steps"] if s["kind"] == "hop"]
    # Same connection, two transactions: the second message's DATA was there, and was not ours.
    assert hops[0]["session"] == hops[1]["session"] and hops[0]["transaction"] != hops[1]["transaction"]
    assert hops[1]["matched_by"].startswith("Message-ID")


def _failed_run(tmp_path: Path, text: str, mta: str) -> dict[str, Any]:
    """The result of a one-scenario run that must fail (exit 1)."""
    scenario = tmp_path / "s.yaml"
    scenario.write_text(text)
    out = tmp_path / "r.json"
    done = harness("run", str(scenario), "--mta", mta, "--json", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    (result,) = json.loads(out.read_text())["scenarios"]
    return cast(dict[str, Any], result)


def test_no_bounce_fails_when_a_dsn_about_the_message_arrives(engine: docker.DockerClient, tmp_path: Path) -> None:
    result = _failed_run(tmp_path, NO_BOUNCE_WRONG, "postfix")
    (failure,) = result["failures"]
    assert failure["kind"] == "no_bounce" and "Status: 5.1.0" in failure["observed"], failure
    (observation,) = [s["observation"] for s in result["steps"] if s["kind"] == "no_bounce"]
    assert observation["dsns"][0]["about"].startswith("Message-ID")
    assert observation["waited_s"] < 10, "the step ends as soon as the DSN is there"


NO_CONNECTION_WRONG = """\
name: no connection expected where the relay delivers at once
description: the relay hands the message to mx within milliseconds; "no connection to mx" must fail
steps:
  - smtp: {host: relay, mail_from: alice@origin.test, rcpt_to: bob@example.test}
  - no_connection: {from: relay, to: mx, within: 5}
"""


@pytest.mark.parametrize("mta", ["postfix", "exim", "opensmtpd"])
def test_no_connection_fails_on_a_connection_made_just_before_the_verdict(
        engine: docker.DockerClient, tmp_path: Path, mta: str) -> None:
    """The message leaves every queue within milliseconds, which ends the wait at once; the capture
    hands packets over up to a second late, so the verdict must wait for it or it passes falsely."""
    result = _failed_run(tmp_path, NO_CONNECTION_WRONG, mta)
    (failure,) = result["failures"]
    assert failure["kind"] == "no_connection", failure
    (observation,) = [s["observation"] for s in result["steps"] if s["kind"] == "no_connection"]
    assert [a["destination"] for a in observation["attempts"]] == ["mx"]


QUEUE_STATE_WRONG = """\
name: deferred expected where the relay delivers at once
description: the relay hands the message to mx within milliseconds; "deferred in the relay's queue" must fail
steps:
  - smtp: {host: relay, mail_from: alice@origin.test, rcpt_to: bob@example.test}
  - queue_state: {host: relay, state: deferred, within: 30}
"""


@pytest.mark.parametrize("mta", ["postfix", "exim", "opensmtpd"])
def test_a_queue_state_fails_once_the_message_has_left_every_queue(
        engine: docker.DockerClient, tmp_path: Path, mta: str) -> None:
    """Delivered, the message never returns to a queue: the expected state is known not to come, and the
    step says so at once instead of at its bound."""
    result = _failed_run(tmp_path, QUEUE_STATE_WRONG, mta)
    (failure,) = result["failures"]
    assert failure["kind"] == "queue_state" and failure["observed"] == "not in the queue", failure
    (observation,) = [s["observation"] for s in result["steps"] if s["kind"] == "queue_state"]
    assert observation["entries"] == [] and observation["waited_s"] < 10, observation
