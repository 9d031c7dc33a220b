"""Driver queue parsing against what the MTAs' own tools print, and entries vanishing mid-listing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from harness.errors import InfrastructureError
from harness.mta import DRIVERS

BOUNCE = ("From: MAILER-DAEMON@origin.test\nMessage-Id: <dsn@relay.origin.test>\n\n"
          "Content-Type: text/rfc822-headers\n\nMessage-ID: <ours@sendonly.test>\n")


def test_postfix_null_sender_and_returned_message_id() -> None:
    listing = json.dumps({"queue_name": "deferred", "queue_id": "324681744E5", "sender": "MAILER-DAEMON",
                          "recipients": [{"address": "someone@sendonly.test", "delay_reason": "521 5.3.2"}]})

    def run(argv: list[str]) -> str:
        return listing + "\n" if argv[0] == "postqueue" else BOUNCE

    (entry,) = DRIVERS["postfix"].queued(run)
    assert (entry.sender, entry.recipients, entry.state) == ("", ("someone@sendonly.test",), "deferred")
    assert entry.message_id == "<dsn@relay.origin.test>"
    assert entry.mentions == ("<dsn@relay.origin.test>", "<ours@sendonly.test>")


def test_opensmtpd_bounce_sender_is_at_sign() -> None:
    line = ("cbc828b420b28224|local|mta|auth|@|someone@sendonly.test|someone@sendonly.test|1796032862|"
            "1796032862|0|1|pending|377|Network error on destination MXs")

    def run(argv: list[str]) -> str:
        return line + "\n" if argv[1] == "show" and argv[2] == "queue" else BOUNCE

    (entry,) = DRIVERS["opensmtpd"].queued(run)
    assert (entry.sender, entry.state, entry.reasons) == ("", "deferred", ("Network error on destination MXs",))


def test_an_entry_gone_between_listing_and_looking_is_skipped() -> None:
    listing = "\n".join(json.dumps({"queue_name": "active", "queue_id": q, "sender": "a@b.test", "recipients": []})
                        for q in ("AAA111", "BBB222"))

    def run(argv: list[str]) -> str:
        if argv[0] == "postqueue":
            return listing
        if argv[-1] == "AAA111":
            raise InfrastructureError("`postcat -bh -q AAA111` on relay exited 1: no such file")
        return "Message-ID: <b@x>\n"

    assert [e.queue_id for e in DRIVERS["postfix"].queued(run)] == ["BBB222"]


def test_opensmtpd_flush_resumes_the_routes_smtpd_disabled_then_schedules_everything(tmp_path: Path) -> None:
    """smtpd disables a route for 15 s and longer after a failed connection; a flush that only
    schedules leaves a message to it deferred. The flush's own shell runs here, against an smtpctl that
    lists the routes as smtpd 6.8 does and records what it is asked."""
    smtpctl = tmp_path / "smtpctl"
    smtpctl.write_text(
        "#!/bin/sh\n"
        f"echo \"$*\" >> {tmp_path}/asked\n"
        "if [ \"$1 $2\" = 'show routes' ]; then\n"
        "  echo '1. [] <-> 172.28.199.10 (172.28.199.10) ND-- nconn=0 nerror=0 penalty=1 timeout=13s'\n"
        "  echo '2. [] <-> 172.28.199.11 (172.28.199.11) N-Q- nconn=0 nerror=0 penalty=0 timeout=1s'\n"
        "  echo '13. [172.28.199.4] <-> 172.28.199.12 (172.28.199.12) ND-- nconn=1 nerror=2 penalty=2 timeout=40s'\n"
        "fi\n")
    smtpctl.chmod(0o755)

    def run(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, check=False,
                              env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
        assert done.returncode == 0, done.stderr
        return done.stdout

    DRIVERS["opensmtpd"].flush(run)
    assert (tmp_path / "asked").read_text().splitlines() == [
        "show routes", "resume route 1", "resume route 13", "schedule all"]
