"""The replay of a failed client session: shell lines that start the scenario's topology and run swaks
with the same EHLO, envelope and message. Run here against stand-ins for `harness` and `swaks` that
record what they were given, so the lines are checked as a shell reads them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from harness.expect.results import StepOutcome, result_from_json
from harness.report.reproduce import INLINE_MESSAGE_LIMIT, address_variable, env_lines, reproduction
from harness.scenario.loader import load_scenario
from harness.scenario.model import SmtpSessionStep
from harness.smtp.message import render_message

SCENARIO = """\
name: replay
description: a session to replay
mta: [postfix, exim]
roles:
  relay:
    config: {postfix: relaycfg}
    settings:
      postfix: {smtpd_banner: "$myhostname says hi"}
steps:
  - smtp:
      host: relay
      ehlo: helo.origin.test
      mail_from: ""
      rcpt_to: [bob@example.test, "carol@example.test"]
      mail_options: [SIZE=auto]
      message:
        headers: {Subject: "it's $HOME and `date`"}
        body: "line one\\n.dot line\\nMAILFLOW_MESSAGE-not-the-end\\n"
"""

_RECORDER = """#!/bin/sh
# Records its arguments (one per line) and, for swaks, its standard input.
printf '%s\\n' "$@" > "$RECORD/$(basename "$0").args"
if [ "$(basename "$0")" = swaks ]; then cat > "$RECORD/swaks.stdin"; fi
if [ "$(basename "$0")" = harness ] && [ "$1" != down ]; then
  echo "export MAILFLOW_RUN=run-1"; echo "export MAILFLOW_RELAY=10.9.8.7"
fi
"""


def _scenario(tmp_path: Path) -> Path:
    (tmp_path / "relaycfg").mkdir()
    (tmp_path / "relaycfg" / "main.cf").write_text("myhostname = relay.origin.test\n")
    path = tmp_path / "replay.yaml"
    path.write_text(SCENARIO)
    return path


def _run_replay(tmp_path: Path, lines: str) -> Path:
    """Run the lines with bash, `harness` and `swaks` being recorders; the directory of the records."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    for name in ("harness", "swaks"):
        (bin_dir / name).write_text(_RECORDER)
        (bin_dir / name).chmod(stat.S_IRWXU)
    # harness's own calls: the up line, then the down line; keep both.
    (bin_dir / "harness").write_text(_RECORDER.replace('"$RECORD/$(basename "$0").args"',
                                                       '"$RECORD/harness-$1.args"'))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record)}
    done = subprocess.run(["bash", "-c", lines], env=env, cwd=tmp_path, capture_output=True, text=True,
                          check=False, timeout=30)
    assert done.returncode == 0, done.stderr
    return record


def test_replay_runs_swaks_with_the_sessions_ehlo_envelope_and_message(tmp_path: Path) -> None:
    path = _scenario(tmp_path)
    scenario = load_scenario(path)
    step = scenario.steps[0]
    assert isinstance(step, SmtpSessionStep)
    message, _ = render_message(step.message, mail_from=step.mail_from, rcpt_to=step.rcpt_to, domain="origin.test")
    cwd = Path.cwd()
    try:
        os.chdir(tmp_path)  # paths in the replay are relative to where the harness ran
        lines = reproduction(scenario, "postfix", step, message)
    finally:
        os.chdir(cwd)
    record = _run_replay(tmp_path, lines)

    up = (record / "harness-up.args").read_text().splitlines()
    assert up == ["up", "replay.yaml", "--mta", "postfix", "--role=relay=postfix:relaycfg",
                  "--set=postfix:relay.smtpd_banner=$myhostname says hi", "--env"]
    assert (record / "harness-down.args").read_text().splitlines() == ["down", "--run", "run-1"]
    args = (record / "swaks.args").read_text().splitlines()
    assert args == ["--server", "10.9.8.7", "--port", "25", "--ehlo", "helo.origin.test", "--from", "<>",
                    "--to", "bob@example.test,carol@example.test", "--timeout", "30", "--data", "-"]
    # The message as the session sent it (swaks turns the line ends back into CRLF and dot-stuffs).
    assert (record / "swaks.stdin").read_bytes() == message.replace(b"\r\n", b"\n")
    assert "# swaks sends no ESMTP parameters; the harness also sent: SIZE=auto" in lines


def test_replay_of_a_message_file_names_the_file(tmp_path: Path) -> None:
    path = _scenario(tmp_path)
    (tmp_path / "message.eml").write_text("Subject: from a file\n\nbody\n")
    path.write_text(SCENARIO.replace('      message:\n        headers: {Subject: "it\'s $HOME and `date`"}\n'
                                     '        body: "line one\\n.dot line\\nMAILFLOW_MESSAGE-not-the-end\\n"\n',
                                     "      message: {file: message.eml}\n"))
    scenario = load_scenario(path)
    step = scenario.steps[0]
    assert isinstance(step, SmtpSessionStep) and step.message.source_file is not None
    lines = reproduction(scenario, "postfix", step, b"Subject: x\r\n\r\nbody\r\n", source_file=step.message.source_file)
    swaks = next(line for line in lines.splitlines() if line.startswith("swaks"))
    assert swaks.endswith(f"--data {step.message.source_file}") or swaks.endswith("--data message.eml")


def test_a_message_too_big_to_print_is_named_not_printed(tmp_path: Path) -> None:
    scenario = load_scenario(_scenario(tmp_path))
    step = scenario.steps[0]
    assert isinstance(step, SmtpSessionStep)
    big = b"Subject: big\r\n\r\n" + b"x" * (INLINE_MESSAGE_LIMIT + 1)
    lines = reproduction(scenario, "exim", step, big)
    assert "x" * 100 not in lines
    assert f"the message ({len(big)} bytes) is too big to print" in lines


def test_env_lines_quote_what_the_shell_reads(tmp_path: Path) -> None:
    lines = env_lines("run-1", {"relay": "10.0.0.2", "second-mx": "10.0.0.3"})
    assert lines == ["export MAILFLOW_RUN=run-1", "export MAILFLOW_RELAY=10.0.0.2",
                     "export MAILFLOW_SECOND_MX=10.0.0.3"]
    assert address_variable("second-mx") == "MAILFLOW_SECOND_MX"


def test_the_replay_survives_a_results_file() -> None:
    outcome = StepOutcome(1, "smtp", "failed", "RCPT 556", reproduce="eval x\nswaks y")
    doc = {"file": "a.yaml", "name": "a", "steps": [json.loads(json.dumps(outcome.to_json()))], "status": "failed"}
    assert result_from_json(doc).steps[0].reproduce == "eval x\nswaks y"
