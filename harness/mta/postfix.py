"""Postfix 3.7: main.cf settings appended (a later definition wins); queue through postqueue/postcat."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from harness.mta.base import (
    EMPTY_MAILDIRS,
    TLS_CA,
    TLS_CERT,
    TLS_KEY,
    CommandRunner,
    MtaDriver,
    TlsOffer,
    gone_or,
    json_lines,
    mentions,
    own_message_id,
)
from harness.observe.observations import QueuedMessage

# master.cf's TLS session cache and entropy service, as Debian's default master.cf has it (not chrooted).
_TLSMGR = re.compile(r"^tlsmgr[ \t]", re.MULTILINE)
_TLSMGR_LINE = "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n"
# postfix-mta-sts-resolver's daemon (compose/postfix/mta-sts-start): its configuration, where it listens.
MTA_STS_CONF = "mta-sts-daemon.yml"
MTA_STS_START = "/usr/local/bin/mta-sts-start"
MTA_STS_DIR = "/etc/postfix"
MTA_STS_PIDFILE = "/run/mta-sts-daemon.pid"
_MTA_STS_MAP = "socketmap:inet:127.0.0.1:8461:postfix"
# What `postfix reload` does, without its postfix-script and postconf runs (0.14 s of CPU each time):
# SIGHUP to master (PID 1: mta-start execs `postfix start-fg`, which execs master), which rereads
# main.cf and master.cf and has every daemon end (qmgr with its in-memory dead-destination and backoff
# state, the connection cache, an idle smtpd); back once each daemon of before that takes connections
# or mail or keeps state has ended, so that none takes the next scenario's with the old configuration
# or state, and a new qmgr runs (as in a new container once it greets; without the wait a reset
# could return before master had started it). Measured: they end within milliseconds. (A delivery
# agent still trying a host ends when its attempt does, as after `postfix reload`: it takes no new work.)
# Master's daemons are its children in its session (1); an orphan reparented to PID 1 (the policy
# daemon) is in another and stays.
RELOAD = (
    "kids() { for p in /proc/[0-9]*; do read -r pid comm state ppid pgrp sid rest < \"$p/stat\" 2>/dev/null || "
    "continue; [ \"$ppid\" = 1 ] && [ \"$sid\" = 1 ] && [ \"$state\" != Z ] || continue; case $comm in "
    "'(smtpd)'|'(postscreen)'|'(qmgr)'|'(scache)'|'(tlsmgr)'|'(pickup)'|'(anvil)') echo \"$pid\";; esac; done; }; "
    "[ \"$(cat /proc/1/comm)\" = master ] || { echo 'postfix master is not PID 1' >&2; exit 1; }; "
    "old=$(kids); kill -HUP 1 || exit 1; "
    "for p in $old; do i=0; while [ -d /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null; do "
    "i=$((i + 1)); [ $i -lt 500 ] || { echo \"postfix daemon $p did not end within 10 s of the reload\" >&2; "
    "exit 1; }; sleep 0.02; done; done; "
    # Then a new qmgr, as a fresh container has one once it greets: the old one has ended, so any is new.
    "qmgr() { for p in /proc/[0-9]*; do read -r pid comm state ppid rest < \"$p/stat\" 2>/dev/null || continue; "
    "[ \"$comm\" = '(qmgr)' ] && [ \"$ppid\" = 1 ] && [ \"$state\" != Z ] && echo \"$pid\"; done; }; "
    "i=0; until [ -n \"$(qmgr)\" ]; do i=$((i + 1)); [ $i -lt 2000 ] || "
    "{ echo 'postfix qmgr did not start again within 10 s of the reload' >&2; exit 1; }; sleep 0.005; done")
# An in-memory cache (emptied with the daemon at every reset); testing-mode policies are not enforced
# (strict_testing: false, the default, spelled out: it is what "testing" means in a scenario).
_MTA_STS_DAEMON = """# postfix-mta-sts-resolver for tls: outbound: mta-sts (mailflow-harness)
host: 127.0.0.1
port: 8461
cache:
  type: internal
  options:
    cache_size: 100
default_zone:
  strict_testing: false
  timeout: 4
"""


def _outbound(policy: str | None) -> dict[str, str]:
    """main.cf parameters for the role's TLS toward its next hop (model.OUTBOUND_TLS); none for None,
    the role directory's own choice (the harness roles: Postfix's default level, none: in clear)."""
    if policy is None:
        return {}
    # The level says it all: "may" (STARTTLS when offered, any certificate, else in clear; a failed
    # handshake defers the message, and it goes in clear only once it has waited minimal_backoff_time),
    # "encrypt" (STARTTLS or defer; any certificate), "verify" (STARTTLS with a certificate from
    # smtp_tls_CAfile, or defer).
    # "mta-sts" (RFC 8461): "may", unless the next hop's domain has a policy in enforce mode, which
    # postfix-mta-sts-resolver turns into "secure match=<the policy's mx patterns>": STARTTLS with a
    # certificate from smtp_tls_CAfile that names a host the policy allows, or the message is deferred.
    params = {"smtp_tls_security_level": "may" if policy == "mta-sts" else policy,
              # One line per handshake: "<Trust> TLS connection established to <host>[<addr>]:25: TLSv1.3
              # with cipher ...", Verified / Trusted (chain ok, name not checked) / Untrusted /
              # Anonymous, or why verification failed: the sender's own account of the hop's TLS.
              # "certmatch": also how the certificate matched ("Matched DANE EE certificate at depth 0"
              # or "matched peername"), the one line that tells DANE from the CA and the name.
              "smtp_tls_loglevel": "1, certmatch"}
    if policy == "verify":
        # The name the certificate must carry: the MX host name (from the MX lookup, so DNS decides,
        # as at "verify" it must). Postfix's default for verify, set here so a changed default
        # cannot change what "verify" means in a scenario; "nexthop"/"dot-nexthop" (the recipient
        # domain) is what "secure" matches.
        params["smtp_tls_verify_cert_match"] = "hostname"
    if policy == "dane":
        # RFC 7672: the next hop's TLSA records, when its MX and A lookups were DNSSEC-secure (the AD
        # bit from the resolver), else "may". A TLSA record that matches nothing defers the message.
        params["smtp_dns_support_level"] = "dnssec"
    if policy == "mta-sts":
        params["smtp_tls_policy_maps"] = _MTA_STS_MAP
    return params


class Postfix(MtaDriver):
    name = "postfix"
    main_file = "main.cf"
    # `postfix check`: files, permissions, tables, and (through postconf) parameters nothing uses (a
    # misspelt one) and values it cannot parse.
    check_command = "postfix check 2>&1"
    # A new configuration read and new daemons (RELOAD), then a role that no longer asks for MTA-STS has
    # its policy daemon stopped (the set-up starts it for one that does).
    reconfigure_command = (
        f"{RELOAD}; if [ ! -f {MTA_STS_DIR}/{MTA_STS_CONF} ] && [ -f {MTA_STS_PIDFILE} ]; then "
        f"kill -TERM \"-$(cat {MTA_STS_PIDFILE})\" 2>/dev/null; rm -f {MTA_STS_PIDFILE}; fi; true")
    config_target = "/etc/postfix/"
    settings_file = "main.cf"
    settings_style = "append"
    # master starts its daemons as user postfix and pipe(8) as vmail (SETUID, SETGID); root reads and
    # writes the queue and the Maildirs of those users (DAC_OVERRIDE: postqueue, postsuper, the reset).
    # SYS_CHROOT: a master.cf from a Debian server runs smtpd & co chrooted (its default), and must start
    # here as it does there.
    capabilities = ("DAC_OVERRIDE", "SETGID", "SETUID", "SYS_CHROOT")

    def role_files(self, config_dir: Path, settings: Mapping[str, str], tls: TlsOffer | None) -> dict[str, bytes]:
        if tls is None:
            return self.settings_files(config_dir, settings)
        # main.cf parameters like any settings; the scenario's own settings win over these.
        offered = {
            "smtpd_tls_cert_file": TLS_CERT,
            "smtpd_tls_key_file": TLS_KEY,
            # encrypt: "530 5.7.0 Must issue a STARTTLS command first" to MAIL in clear.
            "smtpd_tls_security_level": "encrypt" if tls.require else "may",
            # The run's CA: what the smtp client trusts when the role sends with TLS (outbound below).
            "smtp_tls_CAfile": TLS_CA,
            # One line per handshake ("Anonymous TLS connection established from ..."): the log says
            # what the capture cannot.
            "smtpd_tls_loglevel": "1",
            **_outbound(tls.outbound),
        }
        files = self.settings_files(config_dir, {**offered, **settings})
        master = self.config_text(config_dir, files, "master.cf")
        if not _TLSMGR.search(master):
            # Without tlsmgr smtpd finds "no entropy for TLS key generation: disabling TLS support" and
            # answers STARTTLS with 454: the harness roles' master.cf runs no TLS service of its own.
            files["master.cf"] = (master.rstrip("\n") + "\n" + _TLSMGR_LINE).encode("utf-8")
        if tls.outbound == "mta-sts":
            files[MTA_STS_CONF] = _MTA_STS_DAEMON.encode("utf-8")
        return files

    def started_commands(self, tls: TlsOffer | None) -> list[list[str]]:
        # The daemon's resolver (c-ares) reads resolv.conf once: it starts after the harness wrote it.
        return [[MTA_STS_START]] if tls is not None and tls.outbound == "mta-sts" else []

    def flush(self, run: CommandRunner) -> None:
        run(["postqueue", "-f"])

    def queued(self, run: CommandRunner) -> list[QueuedMessage]:
        found = []
        for entry in json_lines(run(["postqueue", "-j"])):
            queue_id = str(entry["queue_id"])
            recipients = entry.get("recipients", [])
            reasons = tuple(str(r["delay_reason"]) for r in recipients if r.get("delay_reason"))
            # Headers and body: a queued DSN names the message it is about in its returned headers.
            content = gone_or(run, ["postcat", "-bh", "-q", queue_id])
            if content is None:
                continue
            # postqueue -j names the null reverse-path of a bounce "MAILER-DAEMON".
            sender = str(entry.get("sender", ""))
            found.append(QueuedMessage(queue_id, str(entry["queue_name"]), own_message_id(content), reasons,
                                       "" if sender == "MAILER-DAEMON" else sender,
                                       tuple(str(r.get("address", "")) for r in recipients), mentions(content)))
        return found

    def reset(self, run: CommandRunner, *, quiet_outbound: int | None = None) -> None:
        # Every queue (incoming, active, deferred, hold) purged; the reload restarts qmgr (its in-memory
        # dead-destination and backoff state) and the connection cache (scache).
        # An MTA-STS role's policy daemon restarts with an empty cache (a no-op for every other role).
        run(["sh", "-c", f"postsuper -d ALL >/dev/null 2>&1; {EMPTY_MAILDIRS}; {RELOAD}; {MTA_STS_START}"])
