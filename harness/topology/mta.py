"""The MTA implementations, as the topology sees them: their drivers (``harness.mta``)."""

from __future__ import annotations

from harness.mta import DRIVERS, ROLES, MtaDriver, available

__all__ = ["IMPLEMENTATIONS", "MTA_ROLES", "MtaImplementation", "available"]

MTA_ROLES = ROLES
MtaImplementation = MtaDriver
IMPLEMENTATIONS = DRIVERS
