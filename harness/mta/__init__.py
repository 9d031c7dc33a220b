"""The MTA implementations the harness runs, one driver module each. Adding a fourth MTA means a
module here, its ``compose/<name>/`` directory and the docs; everything else reads DRIVERS."""

from __future__ import annotations

from pathlib import Path

from harness.errors import UsageError
from harness.mta.base import ROLES, CommandRunner, MtaDriver
from harness.mta.exim import Exim
from harness.mta.opensmtpd import OpenSmtpd
from harness.mta.postfix import Postfix

__all__ = ["DRIVERS", "NAMES", "ROLES", "CommandRunner", "MtaDriver", "available", "driver", "parse_mtas"]

DRIVERS: dict[str, MtaDriver] = {d.name: d for d in (Postfix(), Exim(), OpenSmtpd())}
NAMES: tuple[str, ...] = tuple(DRIVERS)


def driver(name: str) -> MtaDriver:
    return DRIVERS[name]


def available(compose_dir: Path) -> list[str]:
    """Implementations whose image directory exists in ``compose_dir``."""
    return [name for name in DRIVERS if (compose_dir / name / "Dockerfile").is_file()]


def parse_mtas(text: str, option: str = "--mta") -> list[str]:
    """A comma-separated list of implementations (``--mta postfix,exim``), each once, in its order;
    UsageError naming ``option`` for an empty list or an unknown name."""
    names = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not names:
        raise UsageError(f"{option} {text!r} names no MTA implementation (known: {', '.join(NAMES)})")
    unknown = [m for m in names if m not in DRIVERS]
    if unknown:
        raise UsageError(f"{option}: unknown MTA implementation(s) {', '.join(unknown)} (known: {', '.join(NAMES)})")
    return names
