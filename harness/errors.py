"""The whole exception tree. Every error the harness raises on purpose is a HarnessError
carrying the process exit code it maps to; expectation failures are results, never exceptions."""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INFRA = 3


class HarnessError(Exception):
    exit_code = EXIT_INFRA

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(HarnessError):
    exit_code = EXIT_USAGE


class ScenarioError(UsageError):
    """A bad scenario file, reported like a compiler error: ``file:line:col: message``."""

    def __init__(self, path: str | Path, line: int, col: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.col = col
        self.detail = message
        super().__init__(f"{self.path}:{line}:{col}: {message}")


class ConfigurationError(UsageError):
    """An MTA refused a role's configuration (it exited at start, or its own check says fatal). Not an
    infrastructure failure that a retry could fix: the configuration must change. ``role`` and the MTA's
    first line of complaint (``cause``) are kept for reports."""

    def __init__(self, role: str, cause: str, message: str) -> None:
        self.role = role
        self.cause = cause
        super().__init__(message)


class InfrastructureError(HarnessError):
    exit_code = EXIT_INFRA


class ContainerExitedError(InfrastructureError):
    """The container stopped (or vanished) before it was ready; the message has its exit code and log."""

    def __init__(self, message: str, *, exit_code: int | None = None, log: str = "") -> None:
        super().__init__(message)
        self.container_exit_code = exit_code
        self.log = log


class EngineUnavailableError(InfrastructureError):
    """No Docker engine answers and the harness could not start one."""


class ImageBuildError(InfrastructureError):
    pass


class ReadinessTimeoutError(InfrastructureError, TimeoutError):
    """A bounded wait gave up; the message says what it waited for."""


class DnsPreflightError(InfrastructureError):
    """A record the scenario declared does not resolve as declared on the dns container."""
