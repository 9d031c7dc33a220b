"""The shell lines that replay a failed client session by hand: the scenario's own topology started
with ``harness up SCENARIO --env`` (its DNS, its roles, its configuration), then swaks with the same
EHLO, envelope and message. Pure: text in, text out.

swaks cannot send arbitrary ESMTP parameters on MAIL and RCPT (``SIZE=``, ``NOTIFY=``): those are named
in a comment line instead, so nobody mistakes the replay for an exact copy.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Mapping
from pathlib import Path

from harness.mta import ROLES
from harness.scenario.model import Scenario, SmtpSessionStep

__all__ = ["INLINE_MESSAGE_LIMIT", "address_variable", "env_lines", "reproduction"]

# A message bigger than this is not printed inside the command (a size-limit scenario sends megabytes).
INLINE_MESSAGE_LIMIT = 16 * 1024
_END = "MAILFLOW_MESSAGE"


def address_variable(role: str) -> str:
    """The shell variable ``harness up --env`` sets to a role's address."""
    return "MAILFLOW_" + "".join(c if c.isalnum() else "_" for c in role).upper()


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


def _up_command(scenario: Scenario, mta: str) -> list[str]:
    """``harness up`` for this scenario on ``mta``; the role configuration it ran with is restated as
    options, so a configuration given on the command line (``--role``, ``--set``) is replayed too."""
    words = ["harness", "up", _shown(scenario.path), "--mta", mta]
    for role, override in sorted(scenario.roles.items()):
        if role not in ROLES:
            continue  # a role the scenario adds comes with the scenario file
        directory = override.config_dirs.get(mta)
        if directory is not None:
            words.append(f"--role={role}={mta}:{_shown(directory)}")
        for name, value in sorted(override.settings.get(mta, {}).items()):
            words.append(f"--set={mta}:{role}.{name}={value}")
    return [*words, "--env"]


def reproduction(scenario: Scenario, mta: str, step: SmtpSessionStep, message: bytes,
                 *, source_file: Path | None = None) -> str:
    """The lines to type: start the topology, replay the session with swaks, remove the topology."""
    swaks = ["swaks", "--server", f"${address_variable(step.host)}", "--port", "25", "--ehlo", step.ehlo,
             "--from", step.mail_from or "<>", "--to", ",".join(step.rcpt_to),
             "--timeout", f"{step.timeout_s:g}"]
    if step.starttls:
        swaks.append("--tls")  # STARTTLS or nothing, as the harness's client
    text = message.decode("utf-8", errors="replace").replace("\r\n", "\n")
    lines = [f'eval "$({shlex.join(_up_command(scenario, mta))})"']
    unsent = [*step.mail_options, *step.rcpt_options]
    if unsent:
        lines.append(f"# swaks sends no ESMTP parameters; the harness also sent: {' '.join(unsent)}")
    if step.starttls:
        # The run's CA lives only as long as the run: there is nothing on the host to verify against.
        lines.append("# swaks does not verify the certificate; the harness's client checked it against the run's CA")
    quoted = " ".join(shlex.quote(w) if not w.startswith("$") else f'"{w}"' for w in swaks)
    if source_file is not None:
        lines.append(f"{quoted} --data {shlex.quote(_shown(source_file))}")
    elif len(message) > INLINE_MESSAGE_LIMIT or f"\n{_END}\n" in f"\n{text}":
        lines.append(f"{quoted} --data MESSAGE_FILE   # the message ({len(message)} bytes) is too big to print")
    else:
        lines.append(f"{quoted} --data - <<'{_END}'")
        lines.append(text.removesuffix("\n"))
        lines.append(_END)
    lines.append('harness down --run "$MAILFLOW_RUN"')
    return "\n".join(lines)


def env_lines(run_id: str, addresses: Mapping[str, str]) -> list[str]:
    """What ``harness up --env`` prints: shell assignments of the run id and each role's address."""
    out = [f"export MAILFLOW_RUN={shlex.quote(run_id)}"]
    out += [f"export {address_variable(role)}={shlex.quote(address)}" for role, address in sorted(addresses.items())]
    return out
