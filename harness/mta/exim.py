"""Exim 4.96: settings are macros in a file of their own; queue through the image's ``mta-queue``
(compose/exim/mta-queue) and ``exim4 -Mvh/-Mvb``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from harness.errors import UsageError
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
)
from harness.observe.observations import QueuedMessage

# A main option may be set once only: the role's own line is replaced. The ACL line goes first in the
# MAIL ACL, so nothing the role accepts can come before it.
_ADVERTISE = re.compile(r"^tls_advertise_hosts[ \t]*=.*$", re.MULTILINE)
_MAIL_ACL = re.compile(r"^acl_check_mail:[ \t]*$", re.MULTILINE)
_TLS_OPTIONS = (f"tls_advertise_hosts = *\ntls_certificate = {TLS_CERT}\ntls_privatekey = {TLS_KEY}\n"
                f"tls_verify_certificates = {TLS_CA}")
# The smtp transport's line that keeps the role's deliveries in clear (the harness roles' remote_smtp).
_AVOID_TLS = re.compile(r"^([ \t]+)hosts_avoid_tls[ \t]*=.*$", re.MULTILINE)
# The harness roles' transport says `hosts_try_dane = :` (no DANE); an option may be set once only.
_TRY_DANE = re.compile(r"^[ \t]+hosts_try_dane[ \t]*=.*\n", re.MULTILINE)
# Local SMTP (exim4 -bs inside the container, hosts = :) is not a network client and stays in clear.
_REQUIRE = ("  deny    !encrypted = *\n"
            "          !hosts = :\n"
            "          message = 530 5.7.0 Must issue a STARTTLS command first")


def _outbound(policy: str, indent: str) -> str:
    """The smtp transport's options for the role's TLS toward its next hop (model.OUTBOUND_TLS), in
    place of its ``hosts_avoid_tls``. Exim 4.96's defaults do the rest: STARTTLS whenever offered,
    tls_try_verify_hosts = * (verification tried, need not succeed) and tls_verify_cert_hostnames = *
    (the MX host name is part of that verification)."""
    # The run's CA, for every policy: the delivery line's CV=yes/no then says whether the next hop's
    # certificate verified against it (with "system", Debian's store, it never would).
    options = [f"tls_verify_certificates = {TLS_CA}"]
    if policy in ("encrypt", "verify"):
        # No delivery in clear: not offered or a failed handshake defers (without it Exim retries in
        # clear on a new connection, tls_tempfail_tryclear).
        options.append("hosts_require_tls = *")
    if policy == "dane":
        # RFC 7672 where the next hop's TLSA lookup is DNSSEC-secure (dns_dnssec_ok in the main part
        # asks for it), as Postfix's "dane": else Exim's defaults (STARTTLS when offered). A TLSA
        # record that matches no certificate defers the message; the delivery line says CV=dane.
        options.append("hosts_try_dane = *")  # in place of the role's own line, if it has one
    # "mta-sts": Exim 4.96 has no MTA-STS (RFC 8461); it sends as at "may", and the bundled MTA-STS
    # scenarios say so in their Exim overrides.
    if policy == "verify":
        # Verification must succeed (this list wins over tls_try_verify_hosts), the certificate's names
        # checked against the host name the MX lookup gave (the default, spelled out: it is the point).
        options += ["tls_verify_hosts = *", "tls_verify_cert_hostnames = *"]
    return "\n".join(indent + option for option in options)


class Exim(MtaDriver):
    name = "exim"
    main_file = "exim4.conf"
    check_command = "exim4 -bV 2>&1"
    # SIGHUP: the daemon re-executes itself and reads the configuration again (a connection it takes
    # is answered by a process forked from it, with what it read). Back once it has logged its new
    # start, which it does once it listens again. The daemon runs as Debian-exim, and root has no KILL
    # capability here: the signal is sent as the daemon's own user.
    reconfigure_command = (
        "log=/var/log/exim4/mainlog; n=$(grep -c 'daemon started' $log); pid=$(cat /run/exim4/exim.pid); "
        "uid=$(awk '/^Uid:/{print $2}' /proc/$pid/status); gid=$(awk '/^Gid:/{print $2}' /proc/$pid/status); "
        "setpriv --reuid=$uid --regid=$gid --clear-groups sh -c \"kill -HUP $pid\" || exit 1; i=0; "
        "until [ \"$(grep -c 'daemon started' $log)\" -gt \"$n\" ]; do i=$((i + 1)); "
        "[ $i -lt 500 ] || { echo 'the exim daemon did not start again within 10 s of SIGHUP' >&2; exit 1; }; "
        "sleep 0.02; done")
    config_target = "/etc/exim4/"
    settings_file = "settings.conf"
    settings_style = "macros"
    # The daemon receives as Debian-exim and delivers as vmail (SETUID, SETGID); mta-start gives the log
    # files to Debian-exim (CHOWN, and FOWNER to chmod them); root's commands (exim4 -Mrm, the Maildir
    # reset) work in the spool and the Maildirs of other users (DAC_OVERRIDE).
    capabilities = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID")
    # Exim re-executes its setuid-root binary to deliver what a process running as Debian-exim received.
    no_new_privileges = False
    # The process that answers STARTTLS runs as Debian-exim and reads the key then ("cert/key setup:
    # ... Error while reading file" with root's 0600 key); CHOWN is among the capabilities above.
    tls_key_owner = "Debian-exim"

    def tls_files(self, config_dir: Path, generated: Mapping[str, bytes], tls: TlsOffer) -> dict[str, bytes]:
        text = self.config_text(config_dir, generated, self.main_file)
        if len(_ADVERTISE.findall(text)) != 1:
            raise UsageError(f"{config_dir / self.main_file}: STARTTLS (tls:) needs exactly one "
                             "`tls_advertise_hosts =` line to replace")
        main = _TLS_OPTIONS + ("\n# DNSSEC: the DO bit on every query, the AD bit read (tls: outbound: dane)"
                               "\ndns_dnssec_ok = 1" if tls.outbound == "dane" else "")
        text = _ADVERTISE.sub(lambda _: main, text)
        if tls.require:
            if len(_MAIL_ACL.findall(text)) != 1:
                raise UsageError(f"{config_dir / self.main_file}: tls: require needs an `acl_check_mail:` ACL "
                                 "(acl_smtp_mail) to refuse MAIL before STARTTLS in")
            text = _MAIL_ACL.sub(lambda m: f"{m.group(0)}\n{_REQUIRE}", text)
        policy = tls.outbound
        if policy is not None:
            if len(_AVOID_TLS.findall(text)) != 1:
                raise UsageError(f"{config_dir / self.main_file}: tls: outbound needs exactly one "
                                 "`hosts_avoid_tls =` line (in the smtp transport) to replace")
            if policy == "dane":
                text = _TRY_DANE.sub("", text)
            text = _AVOID_TLS.sub(lambda m: _outbound(policy, m.group(1)), text)
        return {self.main_file: text.encode("utf-8")}

    def flush(self, run: CommandRunner) -> None:
        # exim4 -qff: retry hints and frozen state notwithstanding; returns when the run ends.
        run(["mta-queue", "flush"])

    def queued(self, run: CommandRunner) -> list[QueuedMessage]:
        found = []
        for entry in json_lines(run(["mta-queue", "list"])):
            reasons = [str(r["delay_reason"]) for r in entry.get("recipients", []) if r.get("delay_reason")]
            if entry.get("last_error"):
                reasons.append(str(entry["last_error"]))
            state = "frozen" if entry.get("frozen") else str(entry["queue_name"])
            queue_id = str(entry["queue_id"])
            head, body = gone_or(run, ["exim4", "-Mvh", queue_id]), gone_or(run, ["exim4", "-Mvb", queue_id])
            if head is None or body is None:
                continue
            content = head + body
            sender = str(entry.get("sender") or "")
            found.append(QueuedMessage(queue_id, state, entry.get("message_id"), tuple(reasons),
                                       "" if sender == "<>" else sender,
                                       tuple(str(r.get("address", "")) for r in entry.get("recipients", [])),
                                       mentions(content)))
        return found

    def reset(self, run: CommandRunner, *, quiet_outbound: int | None = None) -> None:
        # Each queued message removed by Exim itself (-Mrm: safe while a queue runner works); the hints
        # databases (retry records for a host that answered 521, wait-* connection reuse) deleted.
        run(["sh", "-c", "ids=$(exim4 -bp | awk '/^ *[0-9]+[mhd]? /{print $3}'); "
             "[ -z \"$ids\" ] || exim4 -Mrm $ids >/dev/null 2>&1; "
             f"rm -f /var/spool/exim4/db/*; {EMPTY_MAILDIRS}"])
