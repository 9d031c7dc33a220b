"""`harness diff` on real containers: a candidate relay configuration that no longer refuses null-MX
recipients, against the bundled one, on two scenarios; only the null-MX one changes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import docker

from .conftest import COMPOSE, ROOT, SCENARIOS


def test_diff_names_exactly_the_scenario_whose_replies_changed(engine: docker.DockerClient, tmp_path: Path) -> None:
    candidate = tmp_path / "relay"
    shutil.copytree(COMPOSE / "postfix" / "relay", candidate)
    main_cf = candidate / "main.cf"
    lines = main_cf.read_text().splitlines()
    assert "smtpd_recipient_restrictions = reject_unknown_recipient_domain" in lines
    main_cf.write_text("\n".join("smtpd_recipient_restrictions =" if line.startswith("smtpd_recipient_restrictions")
                                 else line for line in lines) + "\n")
    markdown, baseline_json = tmp_path / "diff.md", tmp_path / "baseline.json"

    done = subprocess.run(
        [sys.executable, "-m", "harness", "--compose", str(COMPOSE), "diff",
         "--baseline", f"relay={COMPOSE / 'postfix' / 'relay'}", "--candidate", f"relay={candidate}",
         "--mta", "postfix", "--markdown", str(markdown), "--json-baseline", str(baseline_json),
         str(SCENARIOS / "04-nullmx-recipient.yaml"), str(SCENARIOS / "02-relay-354.yaml")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)

    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "04-nullmx-recipient" in out and "02-relay-354" not in out, out
    assert "null MX recipient refused at RCPT [postfix]: RCPT 556 5.1.10 -> 250" in out, out
    assert "1 changed, 0 added, 0 removed, 1 unchanged" in out, out
    rows = [line for line in markdown.read_text().splitlines() if line.startswith("| null MX")]
    assert len(rows) == 1 and "RCPT 556 5.1.10" in rows[0] and "RCPT 250" in rows[0], markdown.read_text()
    # The baseline's results are those of a plain run: both scenarios pass, under their own file names.
    kept = json.loads(baseline_json.read_text())["scenarios"]
    assert sorted((Path(r["file"]).name, r["status"]) for r in kept) == [
        ("02-relay-354.yaml", "passed"), ("04-nullmx-recipient.yaml", "passed")]
