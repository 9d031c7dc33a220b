"""A run that selects nothing is a usage error (exit 2, before any container starts), never a green run."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.commands import check_selection
from harness.errors import UsageError
from harness.scenario.loader import load_scenario

STEPS = "steps:\n  - smtp: {host: mx, mail_from: a@origin.test, rcpt_to: b@example.test}\n"


def scenario_file(tmp_path: Path, name: str, mta: str | None) -> Path:
    path = tmp_path / name
    path.write_text(f"name: {name}\ndescription: d\n" + (f"mta: {mta}\n" if mta else "") + STEPS)
    return path


def test_run_on_an_implementation_no_scenario_runs_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario_file(tmp_path, "a.yaml", "[postfix]")
    scenario_file(tmp_path, "b.yaml", "[postfix, opensmtpd]")
    # Exit 2 before the engine is asked for anything.
    assert main(["run", "--mta", "exim", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert ("nothing to run: exim selected (--mta exim), but none of the 2 scenario(s) runs on it:\n"
            f"  {tmp_path / 'a.yaml'}: mta: [postfix]\n"
            f"  {tmp_path / 'b.yaml'}: mta: [postfix, opensmtpd]\n"
            "select what they run on with --mta postfix,opensmtpd, or widen their mta: lists") in err


def test_default_selection_that_matches_nothing(tmp_path: Path) -> None:
    scenarios = [load_scenario(scenario_file(tmp_path, "a.yaml", "exim"))]
    with pytest.raises(UsageError, match=r"nothing to run: postfix selected \(the default implementation"):
        check_selection(scenarios, ["postfix"], "the default implementation, without --mta")


def test_selection_with_something_to_run(tmp_path: Path) -> None:
    scenarios = [load_scenario(scenario_file(tmp_path, "a.yaml", "exim")),
                 load_scenario(scenario_file(tmp_path, "b.yaml", None))]
    check_selection(scenarios, ["postfix"], "--mta postfix")  # b runs everywhere
    check_selection(scenarios[:1], ["postfix", "exim"], "--mta postfix,exim")


def test_mta_option_naming_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario_file(tmp_path, "a.yaml", None)
    assert main(["run", "--mta", ",", str(tmp_path)]) == 2
    assert "--mta ',' names no MTA implementation" in capsys.readouterr().err
