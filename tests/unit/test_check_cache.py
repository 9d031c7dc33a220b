"""An implementation's own configuration check runs once per image and plan in a process: a second
container made from the same ones gets the same lines without running it; another image, setting,
TLS offer or configuration directory runs it again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import harness.topology.topology as topology
from harness.mta import DRIVERS
from harness.scenario.model import RoleTls
from harness.topology.topology import HostPlan


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    ran: list[str] = []
    driver = DRIVERS["postfix"]

    def check(run: Any) -> list[str]:
        ran.append("check")
        return [f"postfix/postconf: warning: /etc/postfix/main.cf: unused parameter: n{len(ran)}=1"]

    monkeypatch.setattr(driver, "check", check)
    monkeypatch.setattr(topology, "_CHECKED", {})
    return ran


def test_the_same_image_and_plan_are_checked_once(checks: list[str], tmp_path: Path) -> None:
    plan = HostPlan("mx", "mx.example.test", DRIVERS["postfix"], tmp_path / "mx")
    first = topology._checked(object(), plan, "img:1")  # type: ignore[arg-type]
    again = topology._checked(object(), plan, "img:1")  # type: ignore[arg-type]
    assert checks == ["check"]
    assert first == again
    assert first == (f"postfix/postconf: warning: {tmp_path / 'mx'}/main.cf: unused parameter: n1=1",)


@pytest.mark.parametrize("other", [
    {"image": "img:2"},
    {"settings": {"message_size_limit": "1000"}},
    {"tls": RoleTls(role="mx", certificate="valid", require=False)},
    {"config_dir": Path("/elsewhere")},
    {"hostname": "mx2.example.test"},
])
def test_another_image_or_plan_is_checked_again(checks: list[str], tmp_path: Path, other: dict[str, Any]) -> None:
    plan = HostPlan("mx", "mx.example.test", DRIVERS["postfix"], tmp_path / "mx")
    topology._checked(object(), plan, "img:1")  # type: ignore[arg-type]
    image = other.pop("image", "img:1")
    changed = replace(plan, **other)
    second = topology._checked(object(), changed, image)  # type: ignore[arg-type]
    assert checks == ["check", "check"]
    assert second[0].endswith("n2=1")
