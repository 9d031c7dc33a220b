"""`harness check` on real containers: every implementation's roles start with the dns role and pass
their own check in seconds; a configuration the MTA refuses exits 2 with the MTA's own words."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import docker
import pytest

from .conftest import ROOT, harness


def _check(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    done = harness("check", *args)
    return done, time.monotonic() - began


@pytest.mark.parametrize("mta", ["postfix", "exim", "opensmtpd"])
def test_the_stock_roles_pass_their_check(engine: docker.DockerClient, mta: str) -> None:
    done, took = _check("--mta", mta)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split(" ")[0] for line in done.stdout.splitlines() if line.endswith(": ok")] == [
        "mx", "relay", "nomail"], done.stdout
    # Well inside the 30 s greeting bound an MTA waiting on DNS would hit (OpenSMTPD did, without dns).
    assert took < 25, took


def test_a_refused_configuration_exits_2_with_the_mtas_words(engine: docker.DockerClient, tmp_path: Path) -> None:
    relay = tmp_path / "relay"
    shutil.copytree(ROOT / "tests" / "ops" / "company-relay", relay)
    with (relay / "main.cf").open("a") as main_cf:
        main_cf.write("\nsender_canonical_maps = hash:/etc/postfix/does-not-exist\n")
    done, _ = _check("--role", f"relay={relay}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "relay (postfix" in done.stdout and "configuration error" in done.stdout
    assert "/etc/postfix/does-not-exist" in done.stdout, done.stdout
