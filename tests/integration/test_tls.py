"""STARTTLS on a real MTA: scenario 23 passes as bundled, a copy whose mx does not require TLS fails
where it should (MAIL in clear is accepted), and no key or certificate outlives the run on the host:
the run's temporary directory existed while its containers ran and is gone afterwards, on a pass and
on a failure alike."""

from __future__ import annotations

import json
from pathlib import Path

from harness.runner import RunContext, run_all
from harness.scenario.loader import load_scenario

from .conftest import SCENARIOS, WatchedRunTls, harness

SCENARIO = SCENARIOS / "23-mx-requires-starttls.yaml"
MTA = "exim"


def test_starttls_required_and_its_mutant_and_no_key_left(run_context: RunContext, tmp_path: Path,
                                                          run_keys: list[WatchedRunTls]) -> None:
    text = SCENARIO.read_text(encoding="utf-8")
    assert "mx: {certificate: valid, require: true}" in text
    mutant_path = tmp_path / "23-mx-offers-starttls-only.yaml"
    mutant_path.write_text(text.replace("require: true", "require: false"), encoding="utf-8")
    before = set(Path("/tmp").glob("mailflow-tls-*"))

    scenarios = [load_scenario(SCENARIO), load_scenario(mutant_path)]
    run_context.fresh = False
    bundled, mutant = run_all(run_context, scenarios, mtas=[MTA])

    assert bundled.status == "passed", bundled.failures or bundled.error
    # require: false: STARTTLS is offered, MAIL in clear accepted: the 530 expectation must fail.
    assert mutant.status == "failed"
    mail = [f for f in mutant.failures if f.stage == "MAIL"]
    assert mail and mail[0].expected.startswith("530") and mail[0].observed.startswith("250"), mutant.failures
    assert mail[0].mark is not None and mail[0].mark.line == 17
    # The mutant's session over TLS still works: only the refusal in clear is gone.
    assert not [f for f in mutant.failures if f.step >= 3], mutant.failures

    # One topology: the mutant's mx (require: false) replaced the bundled one's, with a certificate of
    # its own from the same CA, in the same key directory, gone with the run.
    assert bundled.run_id == mutant.run_id
    assert len(run_keys) == 1
    for lab in run_keys:
        assert lab.issued == ["mx", "mx"]
        assert lab.held == ["ca.pem", "mx/cert.pem", "mx/key.pem"]
        assert not lab.directory.exists(), f"{lab.directory} outlived its run"
    assert set(Path("/tmp").glob("mailflow-tls-*")) == before
    for result in (bundled, mutant):
        left = run_context.client.containers.list(all=True, filters={"label": f"mailflow-harness.run={result.run_id}"})
        assert left == []


def test_a_failing_start_leaves_no_key(run_context: RunContext, tmp_path: Path,
                                       run_keys: list[WatchedRunTls]) -> None:
    """A TLS role that never greets (its configuration refused) still takes the run's keys with it."""
    config = tmp_path / "broken"
    config.mkdir()
    source = (SCENARIOS.parent / "compose" / MTA / "mx" / "exim4.conf").read_text(encoding="utf-8")
    (config / "exim4.conf").write_text(source + "\nthis_is_no_option = 1\n", encoding="utf-8")
    path = tmp_path / "broken.yaml"
    path.write_text(SCENARIO.read_text(encoding="utf-8").replace(
        "tls:\n", f"mta: [{MTA}]\nroles:\n  mx: {{config: {{{MTA}: broken}}}}\ntls:\n", 1), encoding="utf-8")
    (result,) = run_all(run_context, [load_scenario(path)], mtas=[MTA])
    assert result.status == "config-error", result.error
    assert run_keys and all(not lab.directory.exists() for lab in run_keys)


def _mutated(tmp_path: Path, scenario: str, edits: list[tuple[str, str]]) -> Path:
    text = (SCENARIOS / scenario).read_text(encoding="utf-8")
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / f"mutant-{scenario}"
    n = 1
    while path.exists():  # a second mutant of the same scenario
        n += 1
        path = tmp_path / f"mutant{n}-{scenario}"
    path.write_text(text, encoding="utf-8")
    return path


# What would make each hop TLS scenario pass falsely, and the expectations that must catch it.
HOP_MUTANTS = [
    # mx offers no STARTTLS: the relay's opportunistic TLS sends in clear.
    ("27-relay-opportunistic-tls-to-mx.yaml", [("  mx: {certificate: valid}\n", "")],
     {("hop", "TLS"), ("hop", "STARTTLS"), ("hop", "MAIL")}),
    # The relay no longer requires TLS: the message goes out in clear and arrives.
    ("28-relay-requires-tls-next-hop-offers-none.yaml", [("  relay: {outbound: encrypt}\n", "  relay: {}\n")],
     {("queue_state", None), ("hop", "MAIL"), ("no_delivery", None)}),
    # The relay only tries TLS: it takes the expired certificate, and delivers.
    ("29-relay-verify-expired-certificate-deferred.yaml", [("relay: {outbound: verify}", "relay: {outbound: may}")],
     {("queue_state", None), ("no_delivery", None)}),
    # A certificate for another name: the relay's verification must fail, nothing is delivered.
    ("30-relay-verify-valid-certificate-delivered.yaml",
     [("mx: {certificate: valid}", "mx: {certificate: wrong-name}")],
     {("hop", "TLS"), ("delivery", None)}),
    # A TLSA record that matches no key: DANE must fail, nothing is delivered.
    ("31-relay-dane-valid-tlsa-delivered.yaml", [("tlsa: valid", "tlsa: wrong")],
     {("hop", "TLS"), ("delivery", None)}),
    # The relay verifies by the run's CA and the name instead of DANE: verified, but no TLSA record matched.
    ("31-relay-dane-valid-tlsa-delivered.yaml", [("relay: {outbound: dane}", "relay: {outbound: verify}")],
     {("hop", "TLS")}),
    # The zone unsigned: the TLSA record is insecure, the relay falls back to "may" and never says verified.
    ("31-relay-dane-valid-tlsa-delivered.yaml", [("dnssec:\n  signed: [example.test]\n", "")],
     {("hop", "TLS")}),
    # The TLSA record right: DANE succeeds, the message is delivered.
    ("32-relay-dane-wrong-tlsa-deferred.yaml", [("tlsa: wrong", "tlsa: valid")],
     {("queue_state", None), ("no_delivery", None)}),
    # The zone unsigned: the wrong TLSA record is insecure, ignored, and the message is delivered.
    ("32-relay-dane-wrong-tlsa-deferred.yaml", [("dnssec:\n  signed: [example.test]\n", "")],
     {("queue_state", None), ("no_delivery", None)}),
    # A certificate that names mx: the enforced policy is met, the message is delivered.
    ("33-relay-mta-sts-enforce-certificate-mismatch-deferred.yaml",
     [("mx: {certificate: wrong-name}", "mx: {certificate: valid}")],
     {("queue_state", None), ("no_delivery", None)}),
    # The policy only in testing mode: nothing is enforced, the message is delivered.
    ("33-relay-mta-sts-enforce-certificate-mismatch-deferred.yaml", [("  mode: enforce\n", "  mode: testing\n")],
     {("queue_state", None), ("no_delivery", None)}),
    # The policy host's own certificate expired: no policy can be fetched, so there is none to enforce.
    ("33-relay-mta-sts-enforce-certificate-mismatch-deferred.yaml",
     [("  mode: enforce\n", "  mode: enforce\n  certificate: expired\n")],
     {("queue_state", None), ("no_delivery", None)}),
    # The relay does not consult MTA-STS: at "may" it takes the mismatching certificate, and delivers.
    ("33-relay-mta-sts-enforce-certificate-mismatch-deferred.yaml",
     [("relay: {outbound: mta-sts}", "relay: {outbound: may}")],
     {("queue_state", None), ("no_delivery", None)}),
    # The same policy enforced: the message is deferred, not delivered.
    ("34-relay-mta-sts-testing-certificate-mismatch-delivered.yaml", [("  mode: testing\n", "  mode: enforce\n")],
     {("delivery", None)}),
]


def test_the_hop_tls_scenarios_fail_when_the_hop_does_otherwise(tmp_path: Path) -> None:
    paths = [_mutated(tmp_path, scenario, edits) for scenario, edits, _ in HOP_MUTANTS]
    out = tmp_path / "r.json"
    done = harness("run", *map(str, paths), "--mta", "postfix", "-j", "4", "--json", str(out), timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    results = {Path(r["file"]).name: r for r in json.loads(out.read_text())["scenarios"]}
    for (scenario, _, must_fail), path in zip(HOP_MUTANTS, paths, strict=True):
        result = results[path.name]
        failed = {(f["kind"], f["stage"]) for f in result["failures"]}
        assert result["status"] == "failed" and must_fail <= failed, (scenario, failed, done.stdout)
