"""An implementation's own configuration check runs once per image and plan: in a process, and across
runs through the check cache on disk (keyed by the image's id, not its tag). A second container made
from the same ones gets the same lines without running it; another image, a rebuilt one, another
setting, TLS offer or host name runs it again; a cache that cannot be read or written only costs time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import harness.topology.topology as topology
from harness.mta import DRIVERS
from harness.scenario.model import RoleTls
from harness.topology.topology import HostPlan


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    ran: list[str] = []
    driver = DRIVERS["postfix"]

    def check(run: Any) -> list[str]:
        ran.append("check")
        return [f"postfix/postconf: warning: /etc/postfix/main.cf: unused parameter: n{len(ran)}=1"]

    monkeypatch.setattr(driver, "check", check)
    monkeypatch.setattr(topology, "_CHECKED", {})
    monkeypatch.setenv(topology.CACHE_ENV, str(tmp_path / "cache"))
    return ran


def _host(image_id: str = "sha256:1") -> Any:
    container = SimpleNamespace(attrs={"Image": image_id})
    return SimpleNamespace(container=SimpleNamespace(get_wrapped_container=lambda: container))


def _new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topology, "_CHECKED", {})


def test_the_same_image_and_plan_are_checked_once(checks: list[str], tmp_path: Path) -> None:
    plan = HostPlan("mx", "mx.example.test", DRIVERS["postfix"], tmp_path / "mx")
    first = topology._checked(_host(), plan)
    again = topology._checked(_host(), plan)
    assert checks == ["check"]
    assert first == again
    assert first == (f"postfix/postconf: warning: {tmp_path / 'mx'}/main.cf: unused parameter: n1=1",)


@pytest.mark.parametrize("other", [
    {"image_id": "sha256:2"},
    {"settings": {"message_size_limit": "1000"}},
    {"tls": RoleTls(role="mx", certificate="valid", require=False)},
    {"config_dir": Path("/elsewhere"), "image_id": "sha256:2"},
    {"hostname": "mx2.example.test"},
])
def test_another_image_or_plan_is_checked_again(checks: list[str], tmp_path: Path, other: dict[str, Any]) -> None:
    plan = HostPlan("mx", "mx.example.test", DRIVERS["postfix"], tmp_path / "mx")
    topology._checked(_host(), plan)
    image_id = other.pop("image_id", "sha256:1")
    changed = replace(plan, **other)
    second = topology._checked(_host(image_id), changed)
    assert checks == ["check", "check"]
    assert second[0].endswith("n2=1")


def test_a_later_run_takes_the_lines_from_the_cache_on_disk(checks: list[str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    plan = HostPlan("mx", "mx.example.test", DRIVERS["postfix"], tmp_path / "mx")
    first = topology._checked(_host(), plan)
    _new_process(monkeypatch)
    elsewhere = replace(plan, config_dir=tmp_path / "copy")  # the same image built from another directory
    again = topology._checked(_host(), elsewhere)
    assert checks == ["check"]
    assert again == (first[0].replace(str(tmp_path / "mx"), str(tmp_path / "copy")),)


def test_a_rebuilt_image_under_the_same_tag_is_checked_again(checks: list[str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    plan = HostPlan("mx", "mx.example.test", DRIVERS["postfix"], tmp_path / "mx")
    topology._checked(_host("sha256:1"), plan)
    _new_process(monkeypatch)
    topology._checked(_host("sha256:9"), plan)
    assert checks == ["check", "check"]


def test_a_broken_or_unwritable_cache_only_costs_time(checks: list[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    plan = HostPlan("mx", "mx.example.test", DRIVERS["postfix"], tmp_path / "mx")
    topology._checked(_host(), plan)
    [stored] = (tmp_path / "cache" / "checks").glob("*.json")
    stored.write_text("{not json")
    _new_process(monkeypatch)
    assert topology._checked(_host(), plan)[0].endswith("n2=1")
    assert '"lines"' in stored.read_text(), "the broken entry is written again"
    stored.write_text("[]")  # JSON, but not an entry
    _new_process(monkeypatch)
    assert topology._checked(_host(), plan)[0].endswith("n3=1")
    (tmp_path / "blocked").write_text("a file where the cache directory would be")
    monkeypatch.setenv(topology.CACHE_ENV, str(tmp_path / "blocked"))
    _new_process(monkeypatch)
    assert topology._checked(_host(), plan)[0].endswith("n4=1")
