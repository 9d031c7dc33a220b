"""Postfix 3.7: main.cf settings appended (a later definition wins); queue through postqueue/postcat."""

from __future__ import annotations

from harness.mta.base import EMPTY_MAILDIRS, CommandRunner, MtaDriver, gone_or, json_lines, mentions, own_message_id
from harness.observe.observations import QueuedMessage


class Postfix(MtaDriver):
    name = "postfix"
    main_file = "main.cf"
    # `postfix check`: files, permissions, tables, and (through postconf) parameters nothing uses (a
    # misspelt one) and values it cannot parse.
    check_command = "postfix check 2>&1"
    config_target = "/etc/postfix/"
    settings_file = "main.cf"
    settings_style = "append"
    # master starts its daemons as user postfix and pipe(8) as vmail (SETUID, SETGID); root reads and
    # writes the queue and the Maildirs of those users (DAC_OVERRIDE: postqueue, postsuper, the reset).
    # SYS_CHROOT: a master.cf from a Debian server runs smtpd & co chrooted (its default), and must start
    # here as it does there.
    capabilities = ("DAC_OVERRIDE", "SETGID", "SETUID", "SYS_CHROOT")

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

    def reset(self, run: CommandRunner) -> None:
        # Every queue (incoming, active, deferred, hold) purged; `postfix reload` restarts qmgr (its
        # in-memory dead-destination and backoff state) and the connection cache (scache).
        run(["sh", "-c", f"postsuper -d ALL >/dev/null 2>&1; {EMPTY_MAILDIRS}; postfix reload >/dev/null 2>&1"])
