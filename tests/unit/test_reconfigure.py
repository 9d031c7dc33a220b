"""A role whose next scenario changes only its TLS is reconfigured in its running container instead of
being replaced (``topology.reconfigurable``, ``topology.rewritten_files``): after the rewrite its
configuration directory is, file for file, what a new container made from the new plan would have."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from harness.mta import DRIVERS
from harness.scenario.model import RoleTls
from harness.topology.topology import HostPlan, reconfigurable, rewritten_files

COMPOSE = Path(__file__).resolve().parents[2] / "compose"

# Every kind of TLS change the bundled scenarios make, and some they do not.
TLS_VARIANTS = [
    None,
    RoleTls("relay", "valid", require=False),
    RoleTls("relay", "expired", require=False),
    RoleTls("relay", "valid", require=True),
    RoleTls("relay", "valid", require=False, tlsa="wrong"),
    RoleTls("relay", "valid", require=False, outbound="may"),
    RoleTls("relay", "valid", require=False, outbound="encrypt"),
    RoleTls("relay", "valid", require=False, outbound="verify"),
    RoleTls("relay", "valid", require=False, outbound="dane"),
    RoleTls("relay", "valid", require=False, outbound="mta-sts"),
    RoleTls("relay", "wrong-name", require=True, outbound="mta-sts"),
]


def _plan(mta: str, tls: RoleTls | None, **other: object) -> HostPlan:
    driver = DRIVERS[mta]
    plan = HostPlan("relay", "relay.hosts.test", driver, driver.default_config(COMPOSE, "relay"), tls=tls)
    return replace(plan, **other) if other else plan


def _container_files(plan: HostPlan) -> dict[str, bytes]:
    """The configuration directory of a container made from ``plan``: the role directory with the
    generated files over it (the role image's COPY)."""
    assert plan.mta is not None and plan.config_dir is not None
    files = {p.name: p.read_bytes() for p in plan.config_dir.iterdir() if p.is_file()}
    files.update(plan.mta.role_files(plan.config_dir, plan.settings, plan.tls_offer))
    return files


@pytest.mark.parametrize("mta", sorted(DRIVERS))
def test_rewriting_a_running_role_gives_it_the_new_plans_files(mta: str) -> None:
    for old_tls, new_tls in itertools.permutations(TLS_VARIANTS, 2):
        if mta != "postfix" and any(t is not None and t.outbound == "mta-sts" for t in (old_tls, new_tls)):
            continue  # Postfix alone writes a file of its own for MTA-STS; the others treat it as "may"
        old, new = _plan(mta, old_tls), _plan(mta, new_tls)
        files = _container_files(old)
        written, removed = rewritten_files(old, new)
        files.update(written)
        for name in removed:
            del files[name]
        assert files == _container_files(new), (mta, old_tls, new_tls)


def test_a_file_only_the_old_plan_generated_is_restored_or_removed() -> None:
    """Postfix with MTA-STS: master.cf (tlsmgr added) comes back as the role directory has it; the policy
    daemon's file, which the role directory does not have, goes."""
    old = _plan("postfix", RoleTls("relay", "valid", require=False, outbound="mta-sts"))
    written, removed = rewritten_files(old, _plan("postfix", None))
    assert removed == ["mta-sts-daemon.yml"]
    assert written["master.cf"] == (COMPOSE / "postfix" / "relay" / "master.cf").read_bytes()
    assert written["main.cf"] == (COMPOSE / "postfix" / "relay" / "main.cf").read_bytes()


def test_a_tlsa_change_rewrites_no_configuration_file() -> None:
    old = _plan("postfix", RoleTls("relay", "valid", require=False, tlsa="valid"))
    assert rewritten_files(old, replace(old, tls=RoleTls("relay", "valid", require=False, tlsa="wrong"))) == ({}, [])


@pytest.mark.parametrize("mta", sorted(DRIVERS))
def test_only_a_tls_change_is_made_in_place(mta: str, tmp_path: Path) -> None:
    plain = _plan(mta, None)
    assert reconfigurable(plain, _plan(mta, RoleTls("relay", "valid", require=True)))
    assert reconfigurable(_plan(mta, RoleTls("relay", "valid", require=True)), plain)
    # Anything else can change what the container is (its host name, another implementation's image, a
    # setting such as a queue directory or a listening address): a new container.
    other_mta = next(name for name in sorted(DRIVERS) if name != mta)
    assert not reconfigurable(plain, replace(plain, settings={"some_parameter": "1"}))
    assert not reconfigurable(plain, replace(plain, config_dir=tmp_path))
    assert not reconfigurable(plain, replace(plain, hostname="relay2.hosts.test"))
    assert not reconfigurable(plain, replace(plain, like="mx"))
    assert not reconfigurable(plain, _plan(other_mta, RoleTls("relay", "valid", require=True)))


def test_an_implementation_that_cannot_reload_gets_a_new_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DRIVERS["postfix"], "reconfigure_command", "")
    assert not reconfigurable(_plan("postfix", None), _plan("postfix", RoleTls("relay", "valid", require=True)))
