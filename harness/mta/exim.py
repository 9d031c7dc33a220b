"""Exim 4.96: settings are macros in a file of their own; queue through the image's ``mta-queue``
(compose/exim/mta-queue) and ``exim4 -Mvh/-Mvb``."""

from __future__ import annotations

from harness.mta.base import EMPTY_MAILDIRS, CommandRunner, MtaDriver, gone_or, json_lines, mentions
from harness.observe.observations import QueuedMessage


class Exim(MtaDriver):
    name = "exim"
    main_file = "exim4.conf"
    check_command = "exim4 -bV 2>&1"
    config_target = "/etc/exim4/"
    settings_file = "settings.conf"
    settings_style = "macros"
    # The daemon receives as Debian-exim and delivers as vmail (SETUID, SETGID); mta-start gives the log
    # files to Debian-exim (CHOWN, and FOWNER to chmod them); root's commands (exim4 -Mrm, the Maildir
    # reset) work in the spool and the Maildirs of other users (DAC_OVERRIDE).
    capabilities = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID")
    # Exim re-executes its setuid-root binary to deliver what a process running as Debian-exim received.
    no_new_privileges = False

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

    def reset(self, run: CommandRunner) -> None:
        # Each queued message removed by Exim itself (-Mrm: safe while a queue runner works); the hints
        # databases (retry records for a host that answered 521, wait-* connection reuse) deleted.
        run(["sh", "-c", "ids=$(exim4 -bp | awk '/^ *[0-9]+[mhd]? /{print $3}'); "
             "[ -z \"$ids\" ] || exim4 -Mrm $ids >/dev/null 2>&1; "
             f"rm -f /var/spool/exim4/db/*; {EMPTY_MAILDIRS}"])
