"""Files copied into a role's container before its start go in as one archive (the engine extracts each
archive in a process of its own), with their modes and the time they were copied in (NSD skips a zone
file whose mtime is 1970)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import docker
import pytest
from docker.models.containers import Container
from testcontainers.core.docker_client import DockerClient

from harness.observe.capture import CAPTURE_IMAGE
from harness.runner import RunContext
from harness.topology.engine import ENGINE_CLIENT
from harness.topology.labels import RUN_LABEL
from harness.topology.topology import RoleContainer

FILES = {"/etc/mailflow-test/a.zone": (b"a\n", 0o644), "/etc/mailflow-test/key.pem": (b"secret\n", 0o600),
         "/srv/other/b.txt": (b"b" * 70000, 0o640)}


@pytest.fixture
def archive_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    calls: list[str] = []
    original = Container.put_archive

    def counted(self: Container, path: str, data: bytes) -> bool:
        calls.append(path)
        return bool(original(self, path, data))

    monkeypatch.setattr(Container, "put_archive", counted)
    yield calls


def test_files_go_in_as_one_archive_with_their_modes_and_a_fresh_mtime(
        run_context: RunContext, archive_calls: list[str]) -> None:
    image = run_context.images.image(CAPTURE_IMAGE)
    container = RoleContainer(image, name=f"mailflow-test-files-{int(time.time() * 1000)}",
                              docker_client_kw=ENGINE_CLIENT).with_kwargs(
        labels={RUN_LABEL: "test-role-files"}, entrypoint=["sleep", "30"], network_mode="none")
    for path, (content, mode) in FILES.items():
        container.with_copy_into_container(content, path, mode)
    before = time.time()
    container.start()
    try:
        wrapped = container.get_wrapped_container()
        listing = wrapped.exec_run(["stat", "-c", "%n %a %s %Y", *FILES]).output.decode().split("\n")
    finally:
        wrapped.remove(force=True)
    assert archive_calls == ["/"], archive_calls
    seen = {line.split()[0]: line.split()[1:] for line in listing if line}
    for path, (content, mode) in FILES.items():
        got_mode, size, mtime = seen[path]
        assert (int(got_mode, 8), int(size)) == (mode, len(content)), (path, seen[path])
        assert int(mtime) >= int(before) - 1, f"{path} has mtime {mtime}, copied in at {before:.0f}"


def test_testcontainers_clients_speak_the_engines_api_version_without_asking_it(
        engine: docker.DockerClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every container and network testcontainers makes has a client of its own; each used to ask the
    # engine for its version first (a GET /version per container).
    assert ENGINE_CLIENT["version"] == engine.api.api_version

    def asked(self: object) -> str:
        raise AssertionError("a client asked the engine for its API version")

    monkeypatch.setattr(docker.api.client.APIClient, "_retrieve_server_version", asked)
    client = DockerClient(**ENGINE_CLIENT).client
    assert client.api.api_version == engine.api.api_version and client.ping()
