"""An ops team's own relay configuration (tests/ops/company-relay: restriction order, a size limit,
header_checks, a transport map, smtp_skip_5xx_greeting = no) with six policy scenarios
(tests/ops/scenarios), then seven realistic mistakes, one at a time. Each mistake must be caught, and
the failure output must carry its cause in the MTA's own words (its log line or its configuration
check), not only the SMTP symptom. All eight configurations run in one run, side by side."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.expect.results import PASSED, ScenarioResult
from harness.report.console import details
from harness.runner import RunContext, implementations_for, run_all
from harness.scenario.loader import load_scenarios
from harness.scenario.roleoptions import apply_role_options, parse_role_options

from .conftest import ROOT

OPS = ROOT / "tests" / "ops"


def _edit(name: str, old: str, new: str) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        path = directory / name
        text = path.read_text()
        assert re.search(old, text, re.MULTILINE), (name, old)
        path.write_text(re.sub(old, new, text, count=1, flags=re.MULTILINE))
    return change


def _remove(name: str) -> Callable[[Path], None]:
    return lambda directory: (directory / name).unlink()


# name -> (the change, the scenario that must fail, what the failure output must say: the cause)
MISTAKES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "misspelt parameter": (_edit("main.cf", r"^message_size_limit", "mesage_size_limit"),
                           "02-size-limit", "unused parameter: mesage_size_limit"),
    "broken header_checks regexp": (_edit("header_checks", r"^/\^Subject:\.\*FREE", "/^Subject:.*(FREE"),
                                    "03-spam-subject", "Unmatched ("),
    "missing transport map": (_remove("transport"), "01-delivered",
                              "names hash:/etc/postfix/transport, but /etc/postfix/transport does not exist"),
    "permit_mynetworks first": (
        _edit("main.cf", r"^smtpd_recipient_restrictions = .*$",
              "smtpd_recipient_restrictions = permit_mynetworks, reject_unknown_recipient_domain, "
              "reject_unauth_destination"),
        "04-nullmx-recipient", "nullmx.test"),
    "5xx greeting skipped": (_edit("main.cf", r"^smtp_skip_5xx_greeting = no", "smtp_skip_5xx_greeting = yes"),
                             "05-521-bounced", "521"),
    "header_checks action misspelt": (_edit("header_checks", r"REJECT", "REJCT"), "03-spam-subject", "REJCT"),
    "transport to the wrong host": (_edit("transport", r"\[mx\.example\.test\]", "[nomail.sendonly.test]"),
                                    "01-delivered", "refused to talk to me"),
}


@pytest.fixture(scope="module")
def outcomes(run_context: RunContext, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, dict[str, ScenarioResult]]:
    base = tmp_path_factory.mktemp("ops")
    dirs = {"correct": OPS / "company-relay"}
    for name, (change, _, _) in MISTAKES.items():
        copy = base / re.sub(r"\W+", "-", name)
        shutil.copytree(OPS / "company-relay", copy)
        change(copy)
        dirs[name] = copy
    scenarios = load_scenarios([OPS / "scenarios"])
    pairs, side = [], []
    for name, directory in dirs.items():
        for scenario in apply_role_options(scenarios, parse_role_options([f"relay=postfix:{directory}"])):
            for mta in implementations_for(scenario, ["postfix"]):
                pairs.append((scenario, mta))
                side.append(name)
    run_context.fresh = False
    results = run_all(run_context, [s for s, _ in pairs], pairs=pairs)
    out: dict[str, dict[str, ScenarioResult]] = {}
    for name, result in zip(side, results, strict=True):
        out.setdefault(name, {})[Path(result.file).stem] = result
    return out


def test_the_company_configuration_passes_every_policy(outcomes: dict[str, dict[str, ScenarioResult]]) -> None:
    correct = outcomes["correct"]
    assert len(correct) == 6
    assert {k: r.status for k, r in correct.items()} == dict.fromkeys(correct, PASSED), \
        "\n".join(details(r) for r in correct.values() if r.status != PASSED)


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_mistake_is_caught_with_its_cause(outcomes: dict[str, dict[str, ScenarioResult]], mistake: str) -> None:
    _, scenario, cause = MISTAKES[mistake]
    result = outcomes[mistake][scenario]
    text = details(result)
    print(f"--- {mistake}: {scenario} [{result.status}]\n{text}")
    assert result.status != PASSED, f"{mistake} was not caught by {scenario}"
    assert cause in text, f"{mistake}: the failure output does not show the cause {cause!r}:\n{text}"
