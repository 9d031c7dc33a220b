"""Every container of a real run is created bounded and with only the capabilities it needs, as the
engine reports it (HostConfig) and as the kernel applies it (the bounding set of the container's
first process): an MTA role's container holds the capture's capabilities too, and only its tcpdump
ever had them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import docker
import pytest

from harness.mta import DRIVERS
from harness.observe.capture import CAPTURE_CAPS
from harness.topology.labels import ROLE_LABEL, RUN_LABEL
from harness.topology.topology import DNS_CAPABILITIES, MEMORY_LIMIT, PIDS_LIMIT, UNPRIVILEGED_PORTS

from .conftest import harness

MIB = 1024 * 1024
# Bit numbers of the capabilities in /proc/<pid>/status (linux/capability.h).
CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
            "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_ADMIN": 12, "NET_RAW": 13, "SYS_CHROOT": 18,
            "SYS_PTRACE": 19, "SYS_ADMIN": 21, "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31}


def _harness(*args: str) -> subprocess.CompletedProcess[str]:
    return harness("-q", *args)


def _named(mask: int) -> set[str]:
    named = {name for name, bit in CAP_BITS.items() if mask & (1 << bit)}
    assert mask == sum(1 << CAP_BITS[name] for name in named), f"a capability outside CAP_BITS: {mask:x}"
    return named


def _capability_sets(status: str) -> dict[str, set[str]]:
    """CapInh, CapPrm, CapEff, CapBnd and CapAmb of a /proc/<pid>/status, by name."""
    return {line.split(":")[0]: _named(int(line.split()[1], 16)) for line in status.splitlines()
            if line.startswith("Cap")}


def _bounding_set(container: docker.models.containers.Container) -> set[str]:
    return _capability_sets(container.exec_run(["cat", "/proc/1/status"]).output.decode())["CapBnd"]


def _processes(container: docker.models.containers.Container) -> list[tuple[str, dict[str, set[str]]]]:
    """Every process of the container but the exec reading them: its name and capability sets."""
    script = 'for p in /proc/[0-9]*; do [ "${p#/proc/}" = $$ ] || { echo "@@ $(cat $p/comm)"; cat $p/status; }; done'
    out = container.exec_run(["sh", "-c", script]).output.decode()
    return [(chunk.split("\n", 1)[0].strip(), _capability_sets(chunk)) for chunk in out.split("@@ ")[1:]]


def _expected_capabilities(role: str, mta: str) -> tuple[tuple[str, ...], bool]:
    """The capabilities a role's container holds, and whether no-new-privileges is on."""
    if role == "dns":
        return DNS_CAPABILITIES, True
    return tuple(sorted({*DRIVERS[mta].capabilities, *CAPTURE_CAPS})), DRIVERS[mta].no_new_privileges


@pytest.mark.parametrize("mta", sorted(DRIVERS))
def test_every_container_of_a_run_is_bounded_and_confined(engine: docker.DockerClient, tmp_path: Path,
                                                          mta: str) -> None:
    out = tmp_path / "results.json"
    done = _harness("run", "scenarios/01-direct-354.yaml", "--mta", mta, "--keep", "always", "--json", str(out))
    assert done.returncode == 0, done.stderr
    run_id = json.loads(out.read_text())["scenarios"][0]["run_id"]
    try:
        containers = engine.containers.list(filters={"label": f"{RUN_LABEL}={run_id}"})
        roles = {c.labels[ROLE_LABEL]: c for c in containers}
        assert {"dns", "mx", "relay", "nomail"} <= set(roles)
        assert not [role for role in roles if role.endswith("-capture")]  # no capture container beside them
        for role, container in roles.items():
            host = container.attrs["HostConfig"]
            assert host["Memory"] == int(MEMORY_LIMIT.rstrip("m")) * MIB, role
            assert host["MemorySwap"] == host["Memory"], role
            assert host["PidsLimit"] == PIDS_LIMIT, role
            assert host["CapDrop"] == ["ALL"], role
            capabilities, no_new_privileges = _expected_capabilities(role, mta)
            assert sorted(host["CapAdd"] or []) == sorted(capabilities), role
            assert ("no-new-privileges" in (host.get("SecurityOpt") or [])) == no_new_privileges, role
            assert host["Sysctls"] == UNPRIVILEGED_PORTS, role
            assert container.status == "running", role
            if role == "dns":
                assert _bounding_set(container) == set(capabilities), role
                continue
            # The MTA (PID 1 once the capture listens) and every process it started: the MTA's own
            # capabilities at most, and none to hand on. tcpdump: none left once it switched users.
            own = set(DRIVERS[mta].capabilities)
            assert _bounding_set(container) == own, role
            processes = _processes(container)
            names = [name for name, _ in processes]
            assert "tcpdump" in names, (role, names)
            for name, sets in processes:
                if name == "tcpdump":
                    assert not sets["CapEff"] and not sets["CapPrm"], (role, sets)
                else:  # the MTA's, and the harness's own (its shell, its mail watch)
                    assert sets["CapBnd"] <= own and not sets["CapInh"] and not sets["CapAmb"], (role, name, sets)
    finally:
        down = _harness("down", "--run", run_id)
    assert down.returncode == 0, down.stderr
    assert not engine.containers.list(all=True, sparse=True, filters={"label": f"{RUN_LABEL}={run_id}"})


def test_up_starts_bounded_containers(engine: docker.DockerClient) -> None:
    done = _harness("up", "--json")
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    try:
        for container in engine.containers.list(filters={"label": f"{RUN_LABEL}={run_id}"}):
            host = container.attrs["HostConfig"]
            assert (host["Memory"], host["PidsLimit"], host["CapDrop"]) == (
                int(MEMORY_LIMIT.rstrip("m")) * MIB, PIDS_LIMIT, ["ALL"]), container.name
    finally:
        down = _harness("down", "--run", run_id)
    assert down.returncode == 0, down.stderr
