"""What every container the harness starts is created with: memory and process bounds, every capability
dropped but the few its programs need, no-new-privileges where the MTA allows it. No Docker: the
container builders are replaced by one that records its options."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from harness.mta import DRIVERS
from harness.observe import capture
from harness.topology import topology
from harness.topology.topology import (
    DNS_CAPABILITIES,
    DNS_ROLE,
    MEMORY_LIMIT,
    PIDS_LIMIT,
    HostPlan,
    container_options,
    standard_plan,
)

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
HOSTNAMES = {DNS_ROLE: "ns.harness.test", "mx": "mx.example.test", "relay": "relay.origin.test",
             "nomail": "nomail.sendonly.test"}
# What Docker grants by default; nothing the harness starts keeps more than a part of it.
DOCKER_DEFAULT_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                       "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}


class RecordingContainer:
    """Stands in for testcontainers' DockerContainer (and the harness's RoleContainer): records what it would
    create the container with."""

    made: ClassVar[list[RecordingContainer]] = []

    def __init__(self, image: str, **kwargs: Any) -> None:
        self.image = image
        self.init_kwargs = kwargs
        self.kwargs: dict[str, Any] = {}
        RecordingContainer.made.append(self)

    def with_network(self, network: Any) -> RecordingContainer:
        return self

    def with_kwargs(self, **kwargs: Any) -> RecordingContainer:
        self.kwargs.update(kwargs)
        return self


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> type[RecordingContainer]:
    RecordingContainer.made = []
    monkeypatch.setattr(topology, "RoleContainer", RecordingContainer)
    return RecordingContainer


def _bounded(options: dict[str, Any], beyond_defaults: frozenset[str] = frozenset()) -> None:
    assert options["mem_limit"] == MEMORY_LIMIT
    assert options["memswap_limit"] == MEMORY_LIMIT  # no way around the bound through swap
    assert options["pids_limit"] == PIDS_LIMIT
    assert options["cap_drop"] == ["ALL"]
    assert set(options["cap_add"]) - DOCKER_DEFAULT_CAPS == beyond_defaults


@pytest.mark.parametrize("mta", sorted(DRIVERS))
def test_every_role_container_is_bounded_and_keeps_only_its_capabilities(recording: type[RecordingContainer],
                                                                       mta: str) -> None:
    plan = standard_plan(COMPOSE, HOSTNAMES, mta=mta)

    class Net:
        name = "mailflow-test"

    for host in plan.hosts:
        made = topology._container(Net(), host, "image:tag", "172.28.0.10",  # type: ignore[arg-type]
                                   {"mailflow-harness.run": "test"}, dns=None)
        options = made.container.kwargs  # type: ignore[attr-defined]
        # NET_ADMIN, beyond Docker's defaults, for the capture's neighbour (ARP) table alone: the MTA's
        # processes never have it (mta_entrypoint; tests/integration/test_limits.py reads their sets).
        _bounded(options, beyond_defaults=frozenset() if host.mta is None else frozenset({"NET_ADMIN"}))
        assert options["sysctls"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
        if host.mta is None:
            assert sorted(options["cap_add"]) == sorted(DNS_CAPABILITIES)
            assert options["security_opt"] == ["no-new-privileges"]
        else:
            assert sorted(options["cap_add"]) == sorted({*DRIVERS[mta].capabilities, *capture.CAPTURE_CAPS})
            assert ("security_opt" in options) == DRIVERS[mta].no_new_privileges
        # testcontainers' own client is bounded like the harness's.
        assert made.container.init_kwargs["docker_client_kw"]["timeout"] > 0  # type: ignore[attr-defined]


def test_no_role_keeps_a_capability_it_has_no_use_for() -> None:
    for driver in DRIVERS.values():
        assert {"NET_RAW", "MKNOD", "SETFCAP", "SETPCAP", "AUDIT_WRITE", "FSETID"}.isdisjoint(driver.capabilities)
        # OpenSMTPD chroots its privilege-separated processes; Postfix does where master.cf says so (Debian's
        # default for smtpd & co: configurations copied from a server must start as they would there).
        assert ("SYS_CHROOT" in driver.capabilities) == (driver.name in ("opensmtpd", "postfix"))
        # Ports below 1024 are unprivileged in the role's network namespace instead.
        assert "NET_BIND_SERVICE" not in driver.capabilities
    assert set(DNS_CAPABILITIES) == {"KILL", "SETGID", "SETUID"}


def test_no_new_privileges_where_no_setuid_program_is_needed() -> None:
    # Exim re-executes its setuid binary to deliver; smtpctl must run setgid opensmtpq.
    assert {name for name, d in DRIVERS.items() if not d.no_new_privileges} == {"exim", "opensmtpd"}
    dns = HostPlan(DNS_ROLE, "ns.harness.test", None, None)
    assert container_options(dns)["security_opt"] == ["no-new-privileges"]


def test_an_mta_role_runs_its_command_with_its_own_capabilities_alone() -> None:
    for driver in DRIVERS.values():
        entrypoint = topology.mta_entrypoint(driver.capabilities)
        prefix = topology.confined(driver.capabilities)
        # The image's command follows the entrypoint as its arguments: it runs under the prefix.
        assert entrypoint[-len(prefix):] == list(prefix)
        assert prefix[0] == "setpriv" and "--inh-caps=-all" in prefix
        bounding = next(a for a in prefix if a.startswith("--bounding-set="))
        kept = bounding.removeprefix("--bounding-set=").split(",")
        assert kept[0] == "-all"
        assert {k.removeprefix("+").upper() for k in kept[1:]} == set(driver.capabilities)
        assert all(k.startswith("+") for k in kept[1:])
