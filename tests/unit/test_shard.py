"""`harness run --shard K/N`: a deterministic 1/N of the (scenario, implementation) pairs, pairs that
share a topology kept together (no Docker: pure functions, and the CLI up to where a run would start)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.cli import main
from harness.errors import UsageError
from harness.mta import NAMES
from harness.runner import implementations_for
from harness.scenario.loader import load_scenario, load_scenarios
from harness.scenario.model import Scenario
from harness.shard import (
    Pair,
    ShardSpec,
    assign,
    groups,
    key_text,
    parse_shard,
    restrict,
    shard,
    sharing_key,
    topology_key,
)

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "scenarios"
STEPS = "steps:\n  - smtp: {host: mx, mail_from: a@origin.test, rcpt_to: b@example.test}\n"


@functools.cache
def bundled() -> tuple[Scenario, ...]:
    return tuple(load_scenarios([BUNDLED]))


def bundled_pairs() -> list[Pair]:
    scenarios = bundled()
    return [(s, m) for s in scenarios for m in implementations_for(s, list(NAMES))]


def synthetic(sizes: Sequence[int]) -> list[Pair]:
    """Pairs in groups of the given sizes (``fake_key``: the part of the "mta" before the dash),
    interleaved so that groups are not contiguous in the input."""
    scenario = bundled()[0]
    return [(scenario, f"g{g:02d}-{i}") for i in range(max(sizes, default=0))
            for g, size in enumerate(sizes) if i < size]


def fake_key(scenario: Scenario, mta: str) -> Hashable:
    return mta.split("-")[0]


def check_partition(pairs: list[Pair], n: int, key: Any = topology_key) -> list[list[Pair]]:
    shards = [shard(pairs, k, n, key=key) for k in range(1, n + 1)]
    seen = Counter(id(p) for s in shards for p in s)
    assert set(seen) == {id(p) for p in pairs}, "the union of the shards is every pair"
    assert set(seen.values()) == {1} or not pairs, "every pair is in exactly one shard"
    for s in shards:  # each shard keeps the input order
        positions = [next(i for i, q in enumerate(pairs) if q is p) for p in s]
        assert positions == sorted(positions)
    # Groups are never split.
    shard_of_key: dict[str, int] = {}
    for k, s in enumerate(shards):
        for p in s:
            assert shard_of_key.setdefault(key_text(key(*p)), k) == k
    # Balanced to within one group's size.
    largest = max((len(g) for g in groups(pairs, key)), default=0)
    loads = [len(s) for s in shards]
    assert max(loads) - min(loads) <= largest
    return shards


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 13, 20, 60])
def test_bundled_pairs_partitioned(n: int) -> None:
    pairs = bundled_pairs()
    shards = check_partition(pairs, n)
    # Every bundled scenario runs on all three implementations.
    assert sum(len(s) for s in shards) == len(pairs) == 3 * len(list(BUNDLED.glob("*.yaml")))


@pytest.mark.parametrize("sizes", [[1], [5, 1, 1, 1, 1, 1], [3, 3, 3], [10, 2, 2, 2, 2, 2, 2, 2, 2], [1] * 17,
                                   [7, 6, 5, 4, 3, 2, 1], []])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_synthetic_groups_partitioned(sizes: list[int], n: int) -> None:
    pairs = synthetic(sizes)
    check_partition(pairs, n, key=fake_key)


def test_greedy_largest_first_to_least_loaded_ties_by_shard_number() -> None:
    # Groups in key order a(2) b(5) c(3) d(3) e(1): 5->1, 3 (c)->2, 3 (d)->3, 2->2, 1->3.
    assert assign([2, 5, 3, 3, 1], 3) == [2, 1, 2, 3, 3]
    assert assign([1, 1, 1], 5) == [1, 2, 3]  # shards 4 and 5 stay empty
    assert assign([], 2) == []


def test_groups_ordered_by_key_text_pairs_in_input_order() -> None:
    pairs = synthetic([1, 3, 2])
    got = groups(list(reversed(pairs)), fake_key)
    assert [[m for _, m in g] for g in got] == [["g00-0"], ["g01-2", "g01-1", "g01-0"], ["g02-1", "g02-0"]]


def test_more_shards_than_groups_gives_empty_shards() -> None:
    pairs = synthetic([2, 1])
    assert [len(shard(pairs, k, 4, key=fake_key)) for k in range(1, 5)] == [2, 1, 0, 0]


def test_topology_key_of_bundled_scenarios() -> None:
    by_name = {s.path.stem[:2]: s for s in bundled()}
    # No role changes: the implementation alone.
    assert topology_key(by_name["01"], "exim") == ("exim", ())
    # Settings for the implementation under test; none for another (the standard relay then).
    assert topology_key(by_name["08"], "postfix") == (
        "postfix", (("relay", None, (("smtp_skip_5xx_greeting", "no"),), None, None),))
    assert topology_key(by_name["08"], "opensmtpd") == ("opensmtpd", ())
    # A role on a fixed implementation: a change, except where that implementation is under test.
    assert topology_key(by_name["11"], "exim") == ("exim", (("mx", None, (), None, "postfix"),))
    assert topology_key(by_name["11"], "postfix") == ("postfix", ())
    # An added role.
    assert topology_key(by_name["10"], "postfix") == ("postfix", (("backup", None, (), "nomail", None),))
    # A role offering TLS, nothing else changed: a topology of its own all the same.
    assert topology_key(by_name["23"], "exim") == (
        "exim", (("tls:mx", None, (("certificate", "valid"), ("require", "yes")), None, None),))
    for s in by_name.values():
        for m in NAMES:
            hash(topology_key(s, m))  # hashable
            json.dumps(topology_key(s, m))  # and plain data


def test_sharing_key_leaves_out_what_starting_replacing_or_removing_a_role_changes() -> None:
    by_name = {s.path.stem[:2]: s for s in bundled()}
    # A standard role's settings, its TLS or another implementation, an added role: the standard
    # topology's key.
    # An MTA-STS policy host too.
    for name, mta in (("08", "postfix"), ("11", "exim"), ("23", "exim"), ("27", "exim"), ("30", "postfix"),
                      ("10", "postfix"), ("10", "opensmtpd"), ("33", "exim"), ("34", "postfix")):
        assert sharing_key(by_name[name], mta) == (mta, ()), (name, mta)
    # DNSSEC's keys and resolver: kept, and nothing else of those scenarios.
    assert [r[0] for r in sharing_key(by_name["31"], "postfix")[1]] == ["dnssec"]
    assert sharing_key(by_name["31"], "postfix") == sharing_key(by_name["32"], "postfix")
    # Faults are undone between scenarios, the neighbour caches emptied: the standard topology.
    assert sharing_key(by_name["19"], "opensmtpd") == ("opensmtpd", ())


def test_topology_key_sorted_and_paths_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "configs" / "relay"
    config.mkdir(parents=True)
    (config / "main.cf").write_text("# the relay's own configuration\n")
    one = tmp_path / "one.yaml"
    one.write_text("name: one\ndescription: d\nmta: [postfix]\nroles:\n"
                   "  relay: {config: configs/relay, settings: {postfix: {b: '2', a: '1'}}}\n"
                   "  backup: {like: nomail}\n" + STEPS)
    two = tmp_path / "two.yaml"
    two.write_text("name: two\ndescription: d\nmta: [postfix]\nroles:\n"
                   "  backup: {like: nomail}\n"
                   "  relay: {settings: {postfix: {a: '1', b: '2'}}, config: configs/relay}\n" + STEPS)
    monkeypatch.chdir(tmp_path)
    a, b = load_scenario(one), load_scenario(two)
    key = topology_key(a, "postfix")
    assert key == topology_key(b, "postfix")  # the order in the file does not matter
    assert key == ("postfix", (("backup", None, (), "nomail", None),
                               ("relay", "configs/relay", (("a", "1"), ("b", "2")), None, None)))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # outside the working directory: the absolute path
    assert topology_key(a, "postfix")[1][1][1] == config.resolve().as_posix()


def test_same_assignment_in_another_process() -> None:
    """No hash randomisation: a fresh interpreter (another PYTHONHASHSEED) computes the same shards."""
    code = ("import sys; from pathlib import Path; from harness.mta import NAMES; "
            "from harness.runner import implementations_for; from harness.scenario.loader import load_scenarios; "
            "from harness.shard import shard\n"
            "s = load_scenarios([Path('scenarios')]); p = [(x, m) for x in s for m in implementations_for(x, NAMES)]\n"
            "print([[(x.path.name, m) for x, m in shard(p, k, 4)] for k in range(1, 5)])")
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout
    here = [[(x.path.name, m) for x, m in shard(bundled_pairs(), k, 4)] for k in range(1, 5)]
    assert out.strip() == str(here)


def test_restrict_runs_exactly_the_pairs() -> None:
    scenarios = list(bundled())
    pairs = [(s, m) for s in scenarios for m in implementations_for(s, list(NAMES))]
    for k in (1, 2, 3):
        selected = shard(pairs, k, 3)
        narrowed = restrict(scenarios, selected)
        again = [(s.path, m) for s in narrowed for m in implementations_for(s, list(NAMES))]
        assert again == [(s.path, m) for s, m in selected]


@pytest.mark.parametrize("text", ["1/1", "2/3", "3/3", " 2 / 3 "])
def test_good_specs(text: str) -> None:
    spec = parse_shard(text)
    assert 1 <= spec.index <= spec.total
    assert str(spec) == text.replace(" ", "")


@pytest.mark.parametrize(("text", "message"), [
    ("0/3", "shard K must be between 1 and 3"),
    ("4/3", "shard K must be between 1 and 3"),
    ("1/0", "the number of shards N must be at least 1"),
    ("x", "expected K/N"),
    ("1/3/5", "expected K/N"),
    ("-1/3", "expected K/N"),
    ("", "expected K/N"),
])
def test_bad_specs(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_shard(text)


@pytest.mark.parametrize("spec", ["0/3", "4/3", "x"])
@pytest.mark.parametrize("command", ["run", "matrix"])
def test_bad_shard_on_the_command_line_exits_2(spec: str, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--shard", spec, str(BUNDLED)]) == 2
    assert f"harness: --shard {spec!r}:" in capsys.readouterr().err


def test_shard_with_from_json_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "--from-json", str(tmp_path / "r.json"), "--shard", "1/2"]) == 2
    assert "--from-json runs nothing" in capsys.readouterr().err


def test_empty_selection_before_sharding_still_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text("name: a\ndescription: d\nmta: [postfix]\n" + STEPS)
    assert main(["run", "--mta", "exim", "--shard", "2/3", str(tmp_path)]) == 2
    assert "nothing to run: exim selected" in capsys.readouterr().err


def test_empty_shard_exits_0_with_empty_results(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the missing out/ is made only inside the working directory
    (tmp_path / "a.yaml").write_text("name: a\ndescription: d\n" + STEPS)
    out = tmp_path / "out"
    # One scenario on postfix: one group, in shard 1; shard 2 of 2 is empty. No engine is needed.
    assert main(["run", "--shard", "2/2", "--json", str(out / "r.json"), "--junit", str(out / "j.xml"),
                 str(tmp_path / "a.yaml")]) == 0
    assert "shard 2/2: nothing to run in this shard (1 topology group(s) over 2 shards)" in capsys.readouterr().out
    assert json.loads((out / "r.json").read_text()) == {"scenarios": []}
    assert 'tests="0"' in (out / "j.xml").read_text()
    assert main(["matrix", "--mta", "postfix", "--shard", "2/2", "--json", str(out / "m.json"),
                 "--markdown", str(out / "m.md"), str(tmp_path / "a.yaml")]) == 0
    assert json.loads((out / "m.json").read_text()) == {"scenarios": []}
    assert (out / "m.md").read_text().startswith("# Compatibility matrix")


def test_cli_runs_exactly_the_shards_pairs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """What `harness run --matrix --shard K/3` hands to the runner, over K = 1..3: every pair once."""
    import harness.commands
    import harness.runner

    ran: list[tuple[str, str]] = []

    def fake_run_all(ctx: object, scenarios: Sequence[Scenario], on_result: object = None,
                     mtas: Sequence[str] | None = None, **kw: object) -> list[object]:
        ran.extend((s.path.name, m) for s in scenarios for m in implementations_for(s, mtas or []))
        return []

    monkeypatch.setattr(harness.commands, "_context", lambda *a, **k: SimpleNamespace(fresh=False, jobs=1))
    monkeypatch.setattr(harness.runner, "run_all", fake_run_all)
    monkeypatch.setattr(harness.commands, "_selected_mtas", lambda args, compose: list(NAMES))
    per_shard = []
    for k in (1, 2, 3):
        before = len(ran)
        assert main(["-q", "run", "--matrix", "--shard", f"{k}/3", str(BUNDLED)]) == 0
        per_shard.append(len(ran) - before)
    capsys.readouterr()
    assert sorted(ran) == sorted((s.path.name, m) for s, m in bundled_pairs())
    # The same split as shard_pairs makes, through the CLI (balanced: the bundled groups are small).
    assert per_shard == [len(s) for s in check_partition(bundled_pairs(), 3)]
    assert max(per_shard) - min(per_shard) <= 3, per_shard


def test_spec_type() -> None:
    assert parse_shard("2/5") == ShardSpec(2, 5)
