"""The MTA implementations the harness can run: where each keeps its role configuration, and how a
scenario's settings are laid over it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError

MTA_ROLES = ("mx", "relay", "nomail")


@dataclass(frozen=True)
class MtaImplementation:
    name: str
    config_target: str  # where a role's configuration directory is copied in the image
    roles: tuple[str, ...]
    settings_file: str | None  # the file in the role directory that scenario settings go into
    settings_style: str  # "append" (main.cf: a later definition wins) or "macros" (a file of its own)

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


POSTFIX = MtaImplementation("postfix", "/etc/postfix/", MTA_ROLES, "main.cf", "append")
EXIM = MtaImplementation("exim", "/etc/exim4/", MTA_ROLES, "settings.conf", "macros")
OPENSMTPD = MtaImplementation("opensmtpd", "/etc/smtpd/", MTA_ROLES, None, "none")
IMPLEMENTATIONS = {m.name: m for m in (POSTFIX, EXIM, OPENSMTPD)}


def available(compose_dir: Path) -> list[str]:
    """Implementations whose image directory exists in ``compose_dir``."""
    return [name for name in IMPLEMENTATIONS if (compose_dir / name / "Dockerfile").is_file()]
