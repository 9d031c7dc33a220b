"""What the harness needs from an MTA implementation, behind one small interface. Each implementation is
one module beside this one; the list of implementations, the schema's enums and the CLI's choices all
come from ``harness.mta.DRIVERS``.

Drivers are pure descriptions plus the commands they run; the container I/O goes through a
``CommandRunner`` the caller supplies (``harness.observe.queue`` adapts a running host to it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness.errors import InfrastructureError, UsageError
from harness.observe.observations import QueuedMessage

__all__ = ["ROLES", "TLS_CA", "TLS_CERT", "TLS_DIR", "TLS_KEY", "CommandRunner", "MtaDriver", "TlsOffer", "gone_or",
           "json_lines", "mentions", "own_message_id"]

# The standard roles every implementation plays (roles are listed here and nowhere else).
ROLES = ("mx", "relay", "nomail")

# Message-IDs named anywhere in a queued message: its own header, and a DSN's returned headers.
_MENTION = re.compile(r"^(?:Message-ID|References|In-Reply-To):[ \t]*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)
_OWN_ID = re.compile(r"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


# Where a TLS role's certificate (chain), key and the run's CA are put in its container before it starts.
# Never in an image: images outlive runs, keys must not.
TLS_DIR = "/etc/mailflow-tls"
TLS_CERT = f"{TLS_DIR}/cert.pem"
TLS_KEY = f"{TLS_DIR}/key.pem"
TLS_CA = f"{TLS_DIR}/ca.pem"


@dataclass(frozen=True)
class TlsOffer:
    """A role offers STARTTLS with the certificate at TLS_CERT for ``hostname``; ``require``: no MAIL
    before STARTTLS (530); ``outbound``: its TLS policy toward its next hop (model.OUTBOUND_TLS), the
    run's CA at TLS_CA; None: as its role directory says."""

    hostname: str
    require: bool
    outbound: str | None = None


class CommandRunner(Protocol):
    """Runs a command in the MTA's container and returns its standard output; raises
    InfrastructureError when it cannot be run or exits non-zero."""

    def __call__(self, argv: list[str]) -> str: ...


def mentions(content: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_MENTION.findall(content)))


def own_message_id(content: str) -> str | None:
    m = _OWN_ID.search(content)
    return m.group(1) if m else None


def gone_or(run: CommandRunner, argv: list[str]) -> str | None:
    """The output of a command about one queue entry, or None when it failed: the entry was delivered
    or removed between listing the queue and looking at it (the MTA keeps working meanwhile)."""
    try:
        return run(argv)
    except InfrastructureError:
        return None


def json_lines(output: str) -> list[dict[str, Any]]:
    """One JSON object per line (``postqueue -j``, ``mta-queue list``); anything else is not ours."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


class MtaDriver:
    """One MTA implementation: where its configuration goes, how settings are laid over it, and its
    queue (list, flush). Subclasses set the class attributes and implement the queue."""

    name: str = ""
    config_target: str = ""  # where a role's configuration directory is copied in the image
    main_file: str = ""  # the file every configuration directory of this implementation has
    # The file in the role directory that scenario settings go into; None: the MTA takes no settings.
    settings_file: str | None = None
    # "append" (main.cf: a later definition wins) or "macros" (a file of its own the config includes).
    settings_style: str = "none"
    roles: tuple[str, ...] = ROLES
    # The Linux capabilities a role container keeps; every other one is dropped (cap_drop ALL). Each is
    # needed: without it a bundled scenario fails, or a common configuration (README, "Container limits").
    capabilities: tuple[str, ...] = ()
    # no-new-privileges: a setuid or setgid program gains nothing. Off where the MTA relies on one.
    no_new_privileges: bool = True
    # The user that reads a TLS role's key, when not root (the key arrives owned by root, mode 0600).
    tls_key_owner: str | None = None

    def default_config(self, compose_dir: Path, role: str) -> Path:
        return compose_dir / self.name / role

    def ready_code(self, role: str) -> int:
        return 521 if role == "nomail" else 220

    def settings_files(self, config_dir: Path, settings: Mapping[str, str]) -> dict[str, bytes]:
        """Files that replace or join the role directory's to apply ``settings``."""
        if not settings:
            return {}
        if self.settings_file is None:
            raise UsageError(f"{self.name} roles take no settings: use a configuration directory instead")
        lines = ["", "# Settings from the scenario (mailflow-harness): a later definition wins."]
        lines += [f"{key} = {value}" for key, value in sorted(settings.items())]
        added = ("\n".join(lines) + "\n").encode()
        if self.settings_style == "append":
            original = (config_dir / self.settings_file).read_bytes()
            return {self.settings_file: original + added}
        return {self.settings_file: added}

    def role_files(self, config_dir: Path, settings: Mapping[str, str], tls: TlsOffer | None) -> dict[str, bytes]:
        """Files that replace or join the role directory's: ``settings`` laid over it, and with ``tls``
        the configuration that offers STARTTLS. Without ``tls`` exactly ``settings_files``: a role that
        asks for no TLS runs the image it always ran."""
        files = self.settings_files(config_dir, settings)
        if tls is not None:
            files.update(self.tls_files(config_dir, files, tls))
        return files

    def tls_files(self, config_dir: Path, generated: Mapping[str, bytes], tls: TlsOffer) -> dict[str, bytes]:
        """The files that make the role offer STARTTLS (``generated``: what settings already replaced)."""
        raise UsageError(f"{self.name} roles cannot offer STARTTLS yet")

    def config_text(self, config_dir: Path, generated: Mapping[str, bytes], name: str) -> str:
        """A configuration file as the role will have it: generated, else the role directory's."""
        if name in generated:
            return generated[name].decode("utf-8")
        try:
            return (config_dir / name).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {config_dir / name} to add STARTTLS to it: {exc}") from exc

    def started_commands(self, tls: TlsOffer | None) -> list[list[str]]:
        """Commands run in a role's container once it has started and its resolv.conf names the scenario's
        DNS, before its greeting is awaited (a companion daemon that resolves names: see Postfix)."""
        return []

    # The implementation's own check of a running role's configuration (shell, output on stdout).
    check_command: str = ""
    # A shell script that makes a running role serve with the configuration and TLS files the harness has
    # just rewritten in its container (a role whose next scenario changes only its TLS): returns once
    # every process of the old configuration is gone, or fails saying why. "": the implementation cannot,
    # and such a role gets a new container instead.
    reconfigure_command: str = ""

    def check(self, run: CommandRunner) -> list[str]:
        """The lines of the implementation's own configuration check that warn or complain."""
        if not self.check_command:
            return []
        output = run(["sh", "-c", self.check_command])
        # postconf repeats a warning for every parameter that expands the one it is about.
        return list(dict.fromkeys(line.strip() for line in output.splitlines() if COMPLAINT.search(line)))

    def flush(self, run: CommandRunner) -> None:
        """Retry every queued message now."""
        raise NotImplementedError

    def queued(self, run: CommandRunner) -> list[QueuedMessage]:
        """Every queue entry, with its sender, recipients and the Message-IDs its content names."""
        raise NotImplementedError

    def reset(self, run: CommandRunner, *, quiet_outbound: int | None = None) -> None:
        """Between two scenarios on a shared topology: forget everything one scenario could leak into the
        next (queued mail, delivered mail, retry and dead-destination state). What the reset covers is
        listed per implementation; the isolation test (tests/integration/test_isolation.py) proves it.

        ``quiet_outbound``, when given: the role's network namespace had opened that many TCP connections
        (``ACTIVE_OPENS``, attempts included) when its last reset began, and none since. Its outbound state
        (routes, next-hop sessions, retry delays) is then as that reset left it; an implementation that
        would restart only to forget it may keep its process, if the count is still that once done."""
        raise NotImplementedError


# A line of an MTA's check or start-up output that says something is wrong.
COMPLAINT = re.compile(r"\b(warn(?:ing)?|error|fatal|panic|unmatched|unused parameter|not found|no such|"
                       r"unknown|invalid|syntax|missing|cannot|can't|unable|failed)\b", re.IGNORECASE)


# Delivered mail, in every implementation's Maildirs (the directories stay: MTAs create them once).
EMPTY_MAILDIRS = "find /var/mail -type f -delete"
# TCP connections the network namespace has opened (ActiveOpens in /proc/net/snmp), attempts included:
# a connect(2) counts when its SYN is sent, whether or not anything answers.
ACTIVE_OPENS = "awk '/^Tcp:/ { if (n++) print $6 }' /proc/net/snmp"
