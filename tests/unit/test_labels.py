"""Listing and removing runs by label while another process removes the same things (two runs at once,
or `harness down` beside a run reaping): what vanishes in between is gone, not an error."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import requests
from docker.errors import APIError, NotFound

from harness.topology import labels
from harness.topology.labels import KEEP_LABEL, PID_LABEL, RUN_LABEL, list_runs, reap_abandoned, remove_run


def _api_error(status: int, explanation: str) -> APIError:
    response = requests.models.Response()
    response.status_code = status
    response.reason = "error"
    response.url = "http://engine/x"
    return APIError("error", response=response, explanation=explanation)


class FakeApi:
    """The low-level API calls labels.py makes, over an in-memory engine. ``vanish`` names objects another
    process removes right after they were listed."""

    def __init__(self) -> None:
        self.containers_by_id: dict[str, dict[str, str]] = {}
        self.networks_by_id: dict[str, dict[str, str]] = {}
        self.vanish: set[str] = set()
        self.busy_network: dict[str, int] = {}  # network id -> removals answered "active endpoints"
        self.removed: list[str] = []

    def _matching(self, table: dict[str, dict[str, str]], filters: dict[str, str]) -> list[dict[str, Any]]:
        key, _, value = filters["label"].partition("=")
        found = [{"Id": i, "Labels": dict(labels)} for i, labels in table.items()
                 if key in labels and (not value or labels[key] == value)]
        for item in found:
            if item["Id"] in self.vanish:
                # Listed, then removed by someone else before we get to it.
                table.pop(item["Id"], None)
        return found

    def containers(self, all: bool, filters: dict[str, str]) -> list[dict[str, Any]]:
        assert all
        return self._matching(self.containers_by_id, filters)

    def networks(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        return self._matching(self.networks_by_id, filters)

    def remove_container(self, container_id: str, force: bool, v: bool) -> None:
        if container_id not in self.containers_by_id:
            raise NotFound(f"No such container: {container_id}")
        del self.containers_by_id[container_id]
        self.removed.append(container_id)

    def remove_network(self, network_id: str) -> None:
        if network_id not in self.networks_by_id:
            raise NotFound(f"network {network_id} not found")
        if self.busy_network.get(network_id, 0) > 0:
            self.busy_network[network_id] -= 1
            raise _api_error(403, f"error while removing network: network {network_id} has active endpoints")
        del self.networks_by_id[network_id]
        self.removed.append(network_id)


class FakeClient:
    """Only ``api``: any use of the SDK's high-level collections (which inspect every container and
    crash on one removed meanwhile) fails the test with AttributeError."""

    def __init__(self) -> None:
        self.api = FakeApi()


def _run_labels(run: str, *, pid: str = "999999999", keep: str = "0") -> dict[str, str]:
    return {RUN_LABEL: run, PID_LABEL: pid, labels.MACHINE_LABEL: socket.gethostname(), KEEP_LABEL: keep}


@pytest.fixture
def client() -> FakeClient:
    c = FakeClient()
    for cid in ("c1", "c2", "c3"):
        c.api.containers_by_id[cid] = _run_labels("run-a")
    c.api.containers_by_id["k1"] = _run_labels("run-kept", keep="1")
    c.api.networks_by_id["n1"] = _run_labels("run-a")
    c.api.networks_by_id["n2"] = _run_labels("run-kept", keep="1")
    return c


def test_list_runs_does_not_inspect_and_tolerates_vanishing(client: FakeClient) -> None:
    client.api.vanish = {"c2"}
    runs = list_runs(client)  # type: ignore[arg-type]
    assert [(r.run_id, r.containers, r.networks, r.kept) for r in runs] == [
        ("run-a", ("c1", "c2", "c3"), ("n1",), False),
        ("run-kept", ("k1",), ("n2",), True),
    ]


def test_a_container_vanishing_between_list_and_remove_is_gone(client: FakeClient) -> None:
    client.api.vanish = {"c2", "n1"}
    assert remove_run(client, "run-a") == 2  # type: ignore[arg-type]
    assert client.api.removed == ["c1", "c3"]
    assert set(client.api.containers_by_id) == {"k1"}
    assert set(client.api.networks_by_id) == {"n2"}


def test_removal_in_progress_elsewhere_is_not_an_error(client: FakeClient) -> None:
    def conflict(container_id: str, force: bool, v: bool) -> None:
        raise _api_error(409, f"removal of container {container_id} is already in progress")

    client.api.remove_container = conflict  # type: ignore[method-assign]
    client.api.containers_by_id = {}  # the other process finished before the network is removed
    assert remove_run(client, "run-a") == 1  # type: ignore[arg-type]
    assert client.api.removed == ["n1"]


def test_network_busy_while_another_process_removes_its_containers(client: FakeClient,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labels.time, "sleep", lambda s: None)
    client.api.busy_network["n1"] = 2
    assert remove_run(client, "run-a") == 4  # type: ignore[arg-type]
    assert "n1" not in client.api.networks_by_id


def test_network_busy_for_good_is_reported(client: FakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labels.time, "sleep", lambda s: None)
    monkeypatch.setattr(labels, "NETWORK_REMOVE_WAIT_S", 0.0)
    client.api.busy_network["n1"] = 1000
    with pytest.raises(APIError, match="active endpoints"):
        remove_run(client, "run-a")  # type: ignore[arg-type]


def test_other_errors_are_not_swallowed(client: FakeClient) -> None:
    def broken(container_id: str, force: bool, v: bool) -> None:
        raise _api_error(500, "engine trouble")

    client.api.remove_container = broken  # type: ignore[method-assign]
    with pytest.raises(APIError, match="engine trouble"):
        remove_run(client, "run-a")  # type: ignore[arg-type]


def test_reaping_a_run_another_process_is_reaping(client: FakeClient) -> None:
    # Both processes saw run-a abandoned; the other one removes everything while this one lists.
    client.api.vanish = {"c1", "c2", "c3", "n1"}
    assert reap_abandoned(client) == ["run-a"]  # type: ignore[arg-type]
    assert client.api.removed == []
    assert set(client.api.containers_by_id) == {"k1"}
