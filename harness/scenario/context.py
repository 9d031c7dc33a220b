"""What every part of the model building shares: the file, its marks, the roles a step can name, and
the small checks that point at a node (``file:line:col: message``)."""

from __future__ import annotations

import re
from pathlib import Path

from harness.errors import ScenarioError
from harness.mta import NAMES, ROLES
from harness.scenario.inputs import InputRefused, Root, outside_problem, resolve_named, trusted_roots
from harness.scenario.model import Mark
from harness.scenario.validate import JsonPath, SourceMap

__all__ = ["KNOWN_MTAS", "STANDARD_ROLES", "BuildContext", "one_of"]

# Roles every scenario can use without declaring them (the dns container is infrastructure, not a host).
# A scenario can change them under roles, and add roles that copy one of them (like: nomail).
STANDARD_ROLES: tuple[str, ...] = ROLES

# The MTA implementations a scenario can name (mta:, per_mta:, per-implementation config and settings).
KNOWN_MTAS: tuple[str, ...] = NAMES


class BuildContext:
    """Marks by JSON path and the roles of one scenario file, with the checks that need them."""

    def __init__(self, path: Path, source: SourceMap) -> None:
        self.path = path
        self.base = path.parent
        self.source = source
        self.roles: tuple[str, ...] = STANDARD_ROLES
        # Where the files and directories the scenario names may be (see harness.scenario.inputs).
        self.roots: tuple[Root, ...] = trusted_roots(path)

    def at(self, *path: str | int) -> Mark:
        return self.source.value(path)

    def at_key(self, *path: str | int) -> Mark:
        return self.source.key(path)

    def fail(self, mark: Mark, message: str) -> ScenarioError:
        return self.source.error(mark, message)

    def check(self, problem: str | None, *path: str | int) -> None:
        """Raise ``problem`` (from a checks.* function) at the value under ``path``, if there is one."""
        if problem is not None:
            raise self.fail(self.at(*path), problem)

    def confined(self, name: str, what: str, mark: Mark) -> Path:
        """``name`` as written at ``mark`` (relative to the scenario's directory), resolved, symlinks
        followed; a ScenarioError when it leads out of the trusted roots. ``what`` names it in messages
        ("config directory")."""
        try:
            resolved = resolve_named(self.base, name)
        except InputRefused as exc:
            raise self.fail(mark, f"{what} {name!r} {exc.problem}") from None
        problem = outside_problem(resolved, self.roots)
        if problem is not None:
            raise self.fail(mark, f"{what} {name!r} {problem}")
        return resolved

    def known_role(self, role: str, *path: str | int) -> str:
        if role not in self.roles:
            raise self.fail(self.at(*path), f"unknown role {role!r} in {path[-1]} "
                            f"(expected one of: {', '.join(self.roles)})")
        return role

    def regex(self, pattern: str, *path: str | int) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise self.fail(self.at(*path), f"invalid regular expression {pattern!r}: {exc.msg} "
                            f"at position {exc.pos}") from None
        return pattern

    def as_written(self, value: str | float | bool | None, path: JsonPath) -> str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        # `X-Test: yes`, `X-Version: 1.10` or `smtp_skip_5xx_greeting: no` mean the text, not YAML's
        # boolean or float.
        return self.source.raw.get(path, str(value))


def one_of(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
