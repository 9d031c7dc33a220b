"""`harness report A.json B.json ...`: the results files of CI shards merged into one report (no Docker)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.errors import UsageError
from harness.expect.results import result_from_json
from harness.report.merge import load_results, merge_results, mta_order

SAMPLE = Path(__file__).parent / "fixtures" / "results" / "matrix-sample.json"
ORDER = [("scenarios/04-nullmx-recipient.yaml", m) for m in ("postfix", "exim", "opensmtpd")] + \
        [("scenarios/08-relay-to-521-bounced.yaml", m) for m in ("postfix", "exim", "opensmtpd")]


def entries() -> list[dict[str, Any]]:
    return list(json.loads(SAMPLE.read_text())["scenarios"])


def write(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"scenarios": items}))
    return path


def split(tmp_path: Path) -> tuple[Path, Path]:
    """The sample in two shards, each in an order of its own (the merge must not depend on it)."""
    items = entries()
    a = [items[5], items[0], items[3]]  # 08 opensmtpd, 04 postfix, 08 postfix
    b = [items[4], items[2], items[1]]  # 08 exim, 04 opensmtpd, 04 exim
    return write(tmp_path / "results-2.json", b), write(tmp_path / "results-1.json", a)


def order(path: Path) -> list[tuple[str, str]]:
    return [(e["file"], e["mta"]) for e in json.loads(path.read_text())["scenarios"]]


def test_merge_orders_by_file_then_implementation(tmp_path: Path) -> None:
    b, a = split(tmp_path)
    for inputs in ([a, b], [b, a]):
        merged = merge_results([(p, load_results(p)) for p in inputs])
        assert [(r.file, r.mta) for r in merged] == ORDER


def test_implementation_order_from_the_drivers() -> None:
    assert mta_order(["opensmtpd", "zzz", "exim", "postfix", "exim", "aaa"]) == \
        ["postfix", "exim", "opensmtpd", "aaa", "zzz"]


def test_report_merges_into_the_same_report_as_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the missing out/ is made only inside the working directory
    b, a = split(tmp_path)
    out = tmp_path / "out"
    code = main(["-q", "report", str(b), str(a), "--json", str(out / "merged.json"),
                 "--junit", str(out / "junit.xml"), "--markdown", str(out / "matrix.md")])
    assert code == 0
    text = capsys.readouterr().out
    assert "6 scenario(s): 6 passed, 0 failed, 0 error(s)" in text
    header = next(line for line in text.splitlines() if line.startswith("scenario "))
    assert header.split() == ["scenario", "postfix", "exim", "opensmtpd"]
    assert "null MX recipient refused at RCPT" in text
    # The merged file is the unsplit sample, in the report's order, field for field.
    assert order(out / "merged.json") == ORDER
    merged = json.loads((out / "merged.json").read_text())["scenarios"]
    by = {(e["file"], e["mta"]): e for e in entries()}
    assert merged == [result_from_json(by[k]).to_json() for k in ORDER]
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("tests") == "6"
    assert [c.get("name") for c in suite.iter("testcase")][:3] == [
        f"null MX recipient refused at RCPT [{m}]" for m in ("postfix", "exim", "opensmtpd")]
    md = (out / "matrix.md").read_text()
    assert md.startswith("# Compatibility matrix")
    assert "| scenario | postfix | exim | opensmtpd |" in md


def test_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = entries()
    failed = dict(items[1], status="failed", failures=[{
        "step": 1, "kind": "smtp", "stage": "rcpt", "expected": "556", "observed": "250 2.1.5 Ok",
        "location": "scenarios/04-nullmx-recipient.yaml:12:14", "hop": None, "session": None}])
    errored = dict(items[4], status="error", error="engine gone")
    ok = write(tmp_path / "ok.json", [items[0]])
    bad = write(tmp_path / "bad.json", [failed])
    worse = write(tmp_path / "worse.json", [errored])
    assert main(["report", str(ok)]) == 0
    assert main(["report", str(ok), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  null MX recipient refused at RCPT [exim]" in out  # the failure's details, then the summary
    assert "expected 556, observed 250 2.1.5 Ok" in out
    assert main(["report", str(ok), str(bad), str(worse)]) == 3
    assert "error: engine gone" in capsys.readouterr().out


def test_an_empty_shard_merges(tmp_path: Path) -> None:
    b, a = split(tmp_path)
    empty = write(tmp_path / "results-3.json", [])
    assert main(["-q", "report", str(a), str(b), str(empty), "--json", str(tmp_path / "m.json")]) == 0
    assert order(tmp_path / "m.json") == ORDER


def test_only_empty_inputs_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = write(tmp_path / "results-3.json", [])
    assert main(["report", str(empty)]) == 2
    assert f"no results in {empty}" in capsys.readouterr().err


def test_duplicates_rejected_naming_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b, a = split(tmp_path)
    again = write(tmp_path / "again.json", [entries()[3]])  # 08 on postfix, also in results-1.json
    assert main(["report", str(a), str(b), str(again)]) == 2
    err = capsys.readouterr().err
    assert f"scenarios/08-relay-to-521-bounced.yaml on postfix is in both {a} and {again}" in err
    # The same file twice.
    assert main(["report", str(a), str(a)]) == 2
    assert f"on opensmtpd is in {a}, given twice" in capsys.readouterr().err
    # Twice in one file.
    twice = write(tmp_path / "twice.json", [entries()[0], entries()[0]])
    with pytest.raises(UsageError, match=f"postfix is in {twice} twice"):
        merge_results([(twice, load_results(twice))])


@pytest.mark.parametrize(("content", "what"), [
    (None, "cannot read the results file"),
    ("{not json", "not a results file of `harness run --json`"),
    ("[]", "not a results file"),
    ('{"runs": []}', "not a results file"),
    ('{"scenarios": {}}', "not a results file"),
    ('{"scenarios": [{"name": "x"}]}', "not a results file"),
    ('{"scenarios": [{"file": "a.yaml", "name": "x", "status": "maybe"}]}', "status 'maybe'"),
])
def test_bad_inputs_are_usage_errors_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    content: str | None, what: str) -> None:
    b, a = split(tmp_path)
    broken = tmp_path / "broken.json"
    if content is not None:
        broken.write_text(content)
    assert main(["report", str(a), str(broken), str(b)]) == 2
    err = capsys.readouterr().err
    assert f"harness: {broken}: " in err
    assert what in err


def test_report_needs_an_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["report"])
    assert exc.value.code == 2
