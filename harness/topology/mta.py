"""The MTA implementations the harness can run, and where each keeps its role configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MTA_ROLES = ("mx", "relay", "nomail")


@dataclass(frozen=True)
class MtaImplementation:
    name: str
    config_target: str  # where a role's configuration directory is copied in the image
    roles: tuple[str, ...]
    # The greeting code each role answers with when it is ready.
    greeting: tuple[tuple[str, int], ...] = (("mx", 220), ("relay", 220), ("nomail", 521))

    def default_config(self, compose_dir: Path, role: str) -> Path:
        return compose_dir / self.name / role

    def ready_code(self, role: str) -> int:
        return dict(self.greeting).get(role, 220)


POSTFIX = MtaImplementation("postfix", "/etc/postfix/", MTA_ROLES)
IMPLEMENTATIONS = {m.name: m for m in (POSTFIX,)}
