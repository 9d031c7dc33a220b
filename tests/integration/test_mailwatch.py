"""The mail watch (harness.observe.mailwatch) wakes a waiting delivery step for each way an MTA puts a
message into a Maildir: written in place, renamed into new/ (Exim, OpenSMTPD), linked into new/
(Postfix). A way it missed cost the step a whole poll interval."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest
from docker.models.containers import Container

from harness.observe.mailwatch import MailWatch
from harness.runner import RunContext
from harness.topology.labels import new_run_id, remove_run, run_labels

WOKEN_WITHIN_S = 2.0


@pytest.fixture
def mta_container(engine: docker.DockerClient, run_context: RunContext) -> Iterator[Container]:
    run_id = new_run_id()
    container = engine.containers.run(run_context.images.image("postfix"), entrypoint=["sleep", "300"],
                                      detach=True, network_mode="none", labels=run_labels(run_id))
    try:
        yield container
    finally:
        remove_run(engine, run_id)


def _sh(container: Container, script: str) -> None:
    code, out = container.exec_run(["sh", "-ec", script])
    assert code == 0, out


@pytest.mark.parametrize("how, script", [
    ("written", "echo hi > /var/mail/bob/new/written"),
    ("renamed", "echo hi > /var/mail/bob/tmp/r && mv /var/mail/bob/tmp/r /var/mail/bob/new/renamed"),
    ("linked", "ln /var/mail/bob/tmp/ready /var/mail/bob/new/linked"),
])
def test_every_way_of_putting_a_message_into_new_wakes_the_waiter(engine: docker.DockerClient,
                                                                  mta_container: Container, how: str,
                                                                  script: str) -> None:
    _sh(mta_container, "mkdir -p /var/mail/bob/new /var/mail/bob/tmp && echo hi > /var/mail/bob/tmp/ready")
    watch = MailWatch(engine, str(mta_container.id), "mx").start()
    assert watch.running
    # Whatever the set-up above still makes the watch report is over before the step's wait begins.
    while watch.changed.wait(0.3):
        watch.changed.clear()
    _sh(mta_container, script)
    assert watch.changed.wait(WOKEN_WITHIN_S), f"a message {how} into new/ woke nobody"
