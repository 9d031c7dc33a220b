"""OpenSMTPD 6.8: no settings (a configuration directory replaces smtpd.conf); queue through smtpctl."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from harness.errors import UsageError
from harness.mta.base import (
    ACTIVE_OPENS,
    EMPTY_MAILDIRS,
    TLS_CA,
    TLS_CERT,
    TLS_KEY,
    CommandRunner,
    MtaDriver,
    TlsOffer,
    gone_or,
    mentions,
    own_message_id,
)
from harness.observe.observations import QueuedMessage

# Every listener of the role offers STARTTLS with the role's pki (smtpd.conf(5): a pki is named by host).
_LISTEN = re.compile(r"^([ \t]*listen[ \t]+on[ \t][^\n#]*?)[ \t]*$", re.MULTILINE)
# The actions that send to a next hop ("action NAME relay [options]"): the role's outbound TLS goes there.
_RELAY_ACTION = re.compile(r"^([ \t]*action[ \t]+(?:\"[^\"\n]*\"|\S+)[ \t]+relay)\b([^\n]*)$", re.MULTILINE)
# The run's CA under a name of its own (smtpd.conf(5): `ca NAME cert FILE`).
_CA_NAME = "mailflow-run"


def _outbound(text: str, policy: str, path: Path) -> str:
    """Every relay action of ``text`` with the role's TLS toward its next hop (model.OUTBOUND_TLS).

    smtpd 6.8's relay (MX lookup) starts STARTTLS whenever the next hop offers it and accepts any
    certificate: that is "may" already, and a failed handshake is retried in clear ("opportunistic
    TLS failed, downgrading to plain"). ``tls no-verify``: STARTTLS or the message stays queued
    ("encrypt"); ``tls``: also a certificate that verifies and names the MX host ("verify"). Every
    policy verifies against the run's CA through ``ca`` (the grammar of 6.8 takes it on a relay
    action; its manual documents it from 7.x on): without it smtpd checks Debian's store, and its log's
    "server-cert-check result=" would say "failure" for every certificate of the run. A message the
    policy keeps queued says only "Network error on destination MXs" (the cause is in the log: "mta
    error reason=SSL certificate check failed", "TLS required but not supported by remote host"), and
    smtpd disables the route to that MX for 15 s. smtpd 6.8 has no DANE: "dane" is "may" there (no
    TLSA lookup, STARTTLS when offered, any certificate); nor MTA-STS: "mta-sts" is "may" too. The
    bundled DANE and MTA-STS scenarios say so in their OpenSMTPD overrides."""
    actions = _RELAY_ACTION.findall(text)
    if not actions:
        raise UsageError(f"{path}: tls: outbound needs an `action ... relay` line to set TLS on")
    if any(re.search(r"(?:^|\s)(?:tls|ca)(?:\s|$)", rest) for _, rest in actions):
        raise UsageError(f"{path}: tls: outbound sets `tls` and `ca` on the relay actions itself; this "
                         "configuration already has one there")
    options = {"may": "", "encrypt": " tls no-verify", "verify": " tls", "dane": "", "mta-sts": ""}[policy]
    return _RELAY_ACTION.sub(lambda m: f"{m.group(1)}{options} ca {_CA_NAME}{m.group(2)}", text)


class OpenSmtpd(MtaDriver):
    """``smtpctl show queue`` lines: envelope id|family|type|flags|sender|orig rcpt|dest|created|expires|
    last try|attempts|state|next|last error. An envelope still pending after a try is deferred."""

    name = "opensmtpd"
    main_file = "smtpd.conf"
    check_command = "smtpd -n -f /etc/smtpd/smtpd.conf 2>&1"
    # A new smtpd, which reads the configuration and certificates (compose/opensmtpd/mta-reset; its spool,
    # already emptied by the reset, stays empty).
    reconfigure_command = "mta-reset"
    config_target = "/etc/smtpd/"
    # smtpd's privilege-separated processes chroot (SYS_CHROOT) and run as opensmtpd/opensmtpq, delivery as
    # vmail (SETUID, SETGID); mta-reset (root) empties a spool owned by opensmtpq (DAC_OVERRIDE).
    capabilities = ("DAC_OVERRIDE", "SETGID", "SETUID", "SYS_CHROOT")
    # smtpctl (queue listing, schedule) refuses to run unless it is setgid opensmtpq.
    no_new_privileges = False

    def tls_files(self, config_dir: Path, generated: Mapping[str, bytes], tls: TlsOffer) -> dict[str, bytes]:
        text = self.config_text(config_dir, generated, self.main_file)
        first = _LISTEN.search(text)
        if first is None:
            raise UsageError(f"{config_dir / self.main_file}: STARTTLS (tls:) needs a `listen on` line to add "
                             "`tls pki` to")
        # tls-require: "530 5.5.1 Invalid command: Must issue a STARTTLS command first" to MAIL in clear.
        option = "tls-require" if tls.require else "tls"
        pki = f'pki {tls.hostname} cert "{TLS_CERT}"\npki {tls.hostname} key "{TLS_KEY}"\n'
        text = _LISTEN.sub(lambda m: f"{m.group(1)} {option} pki {tls.hostname}", text)
        if tls.outbound is not None:
            text = _outbound(text, tls.outbound, config_dir / self.main_file)
            pki += f'ca {_CA_NAME} cert "{TLS_CA}"\n'
        text = text[:first.start()] + pki + text[first.start():]
        return {self.main_file: text.encode("utf-8")}

    def flush(self, run: CommandRunner) -> None:
        # Every route smtpd disabled after a failed connection ("D" second in the flags before nconn=,
        # for 15 s and longer after each failure) is resumed first: without that a message to it stays
        # deferred, where Postfix's postqueue -f and Exim's -qff try again at once. Then every envelope.
        # (A route whose delay ended between the two commands is enabled already: its resume may fail.)
        run(["sh", "-c", "for id in $(smtpctl show routes | awk '{ for (i = 2; i <= NF; i++) "
                         "if ($i ~ /^nconn=/ && substr($(i - 1), 2, 1) == \"D\") "
                         "{ sub(/\\.$/, \"\", $1); print $1 } }'); "
                         "do smtpctl resume route \"$id\" >/dev/null 2>&1 || :; done; smtpctl schedule all"])

    def queued(self, run: CommandRunner) -> list[QueuedMessage]:
        found = []
        for line in run(["smtpctl", "show", "queue"]).splitlines():
            fields = line.split("|")
            if len(fields) < 14:
                continue
            envelope, attempts, state, error = fields[0], fields[10], fields[11], "|".join(fields[13:])
            # A bounce's null reverse-path is listed as "@".
            sender, recipient = fields[4], fields[6] or fields[5]
            if state == "inflight":
                named = "active"
            else:
                named = "deferred" if attempts.isdigit() and int(attempts) > 0 else "incoming"
            shown = gone_or(run, ["smtpctl", "show", "message", envelope])
            if shown is None:
                continue
            found.append(QueuedMessage(envelope, named, own_message_id(shown), (error,) if error.strip() else (),
                                       "" if sender in ("", "@", "<>", "MAILER-DAEMON") else sender, (recipient,),
                                       mentions(shown)))
        return found

    def reset(self, run: CommandRunner, *, quiet_outbound: int | None = None) -> None:
        # A new smtpd with an empty spool (compose/opensmtpd/mta-reset): only a restart forgets the
        # routes disabled after a failure, the idle relay->mx session it keeps 10 s for more mail, and
        # the 3-5 s it waits before reconnecting to a route; smtpctl can clear none of these.
        # Each of those comes from a connection smtpd opened. A role that opened none since its last
        # reset (an mx, a 521 host: mail only came in) and has nothing queued has none of them: its
        # Maildirs are emptied and smtpd keeps running, a restart (about 0.1 s, and the CPU of six new
        # processes) saved. Restarted all the same when the queue holds anything (or cannot be listed)
        # or a connection was opened meanwhile (the count, read in the container after the listing).
        if quiet_outbound is None:
            run(["mta-reset"])
            return
        run(["sh", "-c", f'if queued=$(smtpctl show queue) && [ -z "$queued" ] '
                         f'&& [ "$({ACTIVE_OPENS})" = {int(quiet_outbound)} ]; '
                         f"then {EMPTY_MAILDIRS}; else exec mta-reset; fi"])
