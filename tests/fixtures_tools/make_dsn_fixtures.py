"""Produce real DSN fixtures for tests/unit/test_dsn.py from the project's own MTA containers.

    .venv/bin/python tests/fixtures_tools/make_dsn_fixtures.py --mta exim [--out tests/unit/fixtures/dsn]

Starts the standard topology (`harness up --json --mta MTA`), sends from the host to the relay
container as alice@origin.test with an explicit Message-ID (and ENVID=, RET=HDRS, NOTIFY/ORCPT when
the relay advertises DSN), waits for the DSN in the relay's Maildir
/var/mail/origin.test/alice/new/, writes it to OUT/<mta>-<case>.eml, and always removes its own run
(`harness down --run ID`), nothing else.

Cases (what makes each MTA bounce on the standard topology, see scenarios/08 and 09):
  exim:      someone@sendonly.test (its MX greets with 521; Exim bounces at once)
  opensmtpd: a/b@example.test (the relay relays it; mx refuses a local part with "/" at RCPT
             with 550, a permanent failure OpenSMTPD bounces at once); someone@sendonly.test is
             deferred by OpenSMTPD and only returned at queue expiry (`queue ttl 60s`): --expiry
  postfix:   a/b@example.test (mx's virtual_mailbox.regexp refuses a local part with "/": 550 5.1.1
             at RCPT, which the relay bounces at once); someone@nullmx.test is refused at RCPT on the
             standard relay and someone@sendonly.test deferred (smtp_skip_5xx_greeting = yes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import aiosmtplib

ROOT = Path(__file__).resolve().parents[2]
HARNESS = str(ROOT / ".venv" / "bin" / "harness")
MAILDIR = "/var/mail/origin.test/alice/new"

CASES: dict[str, list[tuple[str, str, float]]] = {
    # (case name, recipient, seconds to wait for the DSN)
    "exim": [("relay-521", "someone@sendonly.test", 60)],
    "opensmtpd": [("rcpt-550", "a/b@example.test", 60)],
    "postfix": [("rcpt-550", "a/b@example.test", 60)],
}
EXPIRY = ("expired", "someone@sendonly.test", 150)


def message(mta: str, case: str, rcpt: str) -> tuple[str, bytes]:
    msgid = f"<dsn-fixture-{mta}-{case}@origin.test>"
    body = (f"From: alice@origin.test\r\nTo: {rcpt}\r\nSubject: mailflow-harness DSN fixture ({mta}, {case})\r\n"
            f"Date: {formatdate(localtime=False)}\r\nMessage-ID: {msgid}\r\n\r\n"
            "This message was sent by mailflow-harness to make a DSN fixture.\r\n")
    return msgid, body.encode()


async def send(host: str, rcpt: str, raw: bytes, envid: str) -> str:
    smtp = aiosmtplib.SMTP(hostname=host, port=25, timeout=20, start_tls=False, use_tls=False)
    await smtp.connect()
    try:
        await smtp.ehlo(hostname="client.origin.test")
        dsn = smtp.supports_extension("dsn")
        mail_options = [f"ENVID={envid}", "RET=HDRS"] if dsn else []
        rcpt_options = ["NOTIFY=FAILURE,DELAY", f"ORCPT=rfc822;{rcpt}"] if dsn else []
        errors, reply = await smtp.sendmail("alice@origin.test", [rcpt], raw,
                                            mail_options=mail_options, rcpt_options=rcpt_options)
        return f"DSN extension {'advertised' if dsn else 'not advertised'}; errors {errors}; {reply}"
    finally:
        await smtp.quit()


def docker_exec(container: str, script: str) -> bytes:
    return subprocess.run(["docker", "exec", container, "sh", "-c", script], check=False,
                          capture_output=True).stdout


def wait_for_dsn(container: str, before: set[str], within: float) -> bytes | None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        names = set(docker_exec(container, f"ls {MAILDIR} 2>/dev/null").decode().split())
        new = sorted(names - before)
        if new:
            return docker_exec(container, f"cat {MAILDIR}/{new[0]}")
        time.sleep(1)
    return None


def run(mta: str, out: Path, expiry: bool) -> int:
    up = subprocess.run([HARNESS, "up", "--json", "--mta", mta, "-q"], cwd=ROOT, check=True,
                        capture_output=True, text=True)
    info = json.loads(up.stdout)
    run_id = info["run_id"]
    print(f"run {run_id} up on {info['network']}", file=sys.stderr)
    try:
        relay = next(h for h in info["hosts"] if h["role"] == "relay")
        container, address = relay["container"], relay["address"]
        version = docker_exec(container, {"exim": "exim4 -bV | head -1", "opensmtpd": "smtpd -h 2>&1 | head -1",
                                          "postfix": "postconf -h mail_version"}[mta])
        print(f"relay {container} at {address}: {version.decode().strip()}", file=sys.stderr)
        cases = list(CASES.get(mta, [])) + ([EXPIRY] if expiry else [])
        for case, rcpt, within in cases:
            before = set(docker_exec(container, f"ls {MAILDIR} 2>/dev/null").decode().split())
            msgid, raw = message(mta, case, rcpt)
            envid = f"envid-{mta}-{case}"
            print(f"{case}: {msgid} ENVID {envid} to {rcpt}: "
                  f"{asyncio.run(send(address, rcpt, raw, envid))}", file=sys.stderr)
            dsn = wait_for_dsn(container, before, within)
            if dsn is None:
                print(f"{case}: no DSN within {within:g} s", file=sys.stderr)
                continue
            path = out / f"{mta}-{case}.eml"
            path.write_bytes(dsn)
            print(f"{case}: wrote {path}", file=sys.stderr)
    finally:
        subprocess.run([HARNESS, "down", "--run", run_id, "-q"], cwd=ROOT, check=False)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mta", required=True, choices=["exim", "opensmtpd", "postfix"])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "unit" / "fixtures" / "dsn")
    parser.add_argument("--expiry", action="store_true",
                        help="also wait for the queue-expiry notice about a message to sendonly.test")
    args = parser.parse_args()
    return run(args.mta, args.out, args.expiry)


if __name__ == "__main__":
    sys.exit(main())
