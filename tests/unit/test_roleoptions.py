"""--role / --set: parsed strictly (exit 2 naming the option), laid over scenarios without touching
what they say for other roles and implementations."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import EXIT_USAGE, UsageError
from harness.scenario.loader import load_scenarios
from harness.scenario.roleoptions import apply_role_options, parse_role_options
from harness.shard import topology_key

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"


def test_directory_recognised_by_its_main_file() -> None:
    options = parse_role_options([f"relay={COMPOSE / 'postfix' / 'relay'}", f"mx={COMPOSE / 'exim' / 'mx'}"])
    assert options.config_dirs == {"relay": {"postfix": COMPOSE / "postfix" / "relay"},
                                   "mx": {"exim": COMPOSE / "exim" / "mx"}}


def test_relative_directory_and_named_implementation(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    options = parse_role_options(["relay=opensmtpd:cfg"], base=tmp_path)
    assert options.config_dirs == {"relay": {"opensmtpd": tmp_path / "cfg"}}


@pytest.mark.parametrize(("roles", "sets", "says"), [
    (["relay"], [], "expected ROLE=DIR"),
    (["relay=/no/such/dir"], [], "is not a directory"),
    (["dns=/tmp"], [], "'dns' is not a role the command line can change"),
    (["relay=sendmail:/tmp"], [], "'sendmail' is not an implementation"),
    ([], ["relay=1"], "expected ROLE.PARAM=VALUE"),
    ([], ["relay.bad-name=1"], "expected ROLE.PARAM=VALUE"),
    ([], ["opensmtpd:relay.x=1"], "opensmtpd roles take no settings"),
])
def test_malformed_options_are_usage_errors(roles: list[str], sets: list[str], says: str) -> None:
    with pytest.raises(UsageError, match=says) as info:
        parse_role_options(roles, sets)
    assert info.value.exit_code == EXIT_USAGE


def test_directory_without_a_main_file_asks_for_the_implementation(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="none of the main files"):
        parse_role_options([f"relay={tmp_path}"])


def test_the_same_role_twice_for_one_implementation() -> None:
    relay = COMPOSE / "postfix" / "relay"
    with pytest.raises(UsageError, match="already has a postfix directory"):
        parse_role_options([f"relay={relay}", f"relay={relay}"])


def test_options_replace_the_scenario_for_their_role_and_implementation_only() -> None:
    scenarios = {s.path.stem[:2]: s for s in load_scenarios([ROOT / "scenarios"])}
    nullmx = scenarios["09"]  # relay settings for postfix and exim
    options = parse_role_options([f"relay={COMPOSE / 'postfix' / 'relay'}"],
                                 ["relay.message_size_limit=1000", "postfix:relay.smtpd_recipient_restrictions=x"])
    changed = apply_role_options([nullmx], options)[0]
    relay = changed.roles["relay"]
    assert relay.config_dirs == {"postfix": COMPOSE / "postfix" / "relay"}
    assert relay.settings["postfix"] == {"smtpd_recipient_restrictions": "x", "message_size_limit": "1000"}
    assert relay.settings["exim"] == {"RELAY_VERIFY_RECIPIENT": "no", "message_size_limit": "1000"}
    assert "opensmtpd" not in relay.settings
    assert changed.steps == nullmx.steps and changed.dns == nullmx.dns
    # A different configuration is a different topology; OpenSMTPD, untouched, keeps its own.
    assert topology_key(changed, "postfix") != topology_key(nullmx, "postfix")
    assert topology_key(changed, "opensmtpd") == topology_key(nullmx, "opensmtpd")


def test_no_options_change_nothing() -> None:
    scenarios = load_scenarios([ROOT / "scenarios"])
    assert apply_role_options(scenarios, parse_role_options()) == scenarios
