"""``--role ROLE=DIR`` and ``--set ROLE.PARAM=VALUE`` from the command line: the same scenario files
run against any configuration. Pure: parsed into ``RoleOptions``, then laid over loaded scenarios.

A directory is for one implementation, recognised by its main file (``main.cf``: Postfix,
``exim4.conf``: Exim, ``smtpd.conf``: OpenSMTPD); ``--role relay=exim:DIR`` names it explicitly. It
replaces what a scenario says for that role and implementation; other implementations keep theirs.
``--set`` applies to every implementation that takes settings (Postfix main.cf parameters, Exim
macros) unless written ``--set postfix:relay.PARAM=VALUE``; it wins over the scenario's own settings.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UsageError
from harness.mta import DRIVERS, ROLES
from harness.scenario.model import Mark, RoleOverride, Scenario

__all__ = ["RoleOptions", "apply_role_options", "parse_role_options"]

_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class RoleOptions:
    """Per role: a configuration directory per implementation, and settings per implementation."""

    config_dirs: Mapping[str, Mapping[str, Path]] = field(default_factory=dict)
    settings: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.config_dirs or self.settings)

    def describe(self) -> list[str]:
        """One line per option, for progress lines and reports."""
        out = [f"{role}={mta}:{path}" for role, dirs in sorted(self.config_dirs.items())
               for mta, path in sorted(dirs.items())]
        out += [f"{mta}:{role}.{k}={v}" for role, per in sorted(self.settings.items())
                for mta, values in sorted(per.items()) for k, v in sorted(values.items())]
        return out


def _implementation_of(directory: Path, option: str) -> str:
    found = [name for name, d in DRIVERS.items() if d.main_file and (directory / d.main_file).is_file()]
    if len(found) == 1:
        return found[0]
    if not found:
        wanted = ", ".join(f"{d.main_file} ({name})" for name, d in DRIVERS.items())
        raise UsageError(f"{option}: {directory} has none of the main files {wanted}; "
                         f"say which implementation it is for: ROLE=IMPLEMENTATION:DIR")
    raise UsageError(f"{option}: {directory} has the main files of {', '.join(found)}; "
                     f"say which one it is for: ROLE=IMPLEMENTATION:DIR")


def _role(name: str, option: str) -> str:
    if name not in ROLES:
        raise UsageError(f"{option}: {name!r} is not a role the command line can change ({', '.join(ROLES)})")
    return name


def _split_mta(text: str, option: str) -> tuple[str | None, str]:
    head, colon, rest = text.partition(":")
    if colon and head in DRIVERS:
        return head, rest
    if colon and "/" not in head and "." not in head and "=" not in head:
        raise UsageError(f"{option}: {head!r} is not an implementation ({', '.join(DRIVERS)})")
    return None, text


def parse_role_options(roles: Sequence[str] = (), sets: Sequence[str] = (), *,
                       base: Path | None = None) -> RoleOptions:
    """``roles``: ``ROLE=DIR`` or ``ROLE=IMPLEMENTATION:DIR``; ``sets``: ``[IMPLEMENTATION:]ROLE.PARAM=VALUE``.
    Relative directories are taken from ``base`` (default: the working directory). UsageError (exit 2)
    naming the option for anything malformed, a directory that does not exist, or one given twice."""
    base = base or Path.cwd()
    dirs: dict[str, dict[str, Path]] = {}
    for text in roles:
        option = f"--role {text}"
        role, eq, rest = text.partition("=")
        if not eq or not rest:
            raise UsageError(f"{option}: expected ROLE=DIR (e.g. --role relay=./my-relay)")
        role = _role(role.strip(), option)
        mta, path_text = _split_mta(rest, option)
        path = (base / path_text).resolve()
        if not path.is_dir():
            raise UsageError(f"{option}: {path} is not a directory")
        mta = mta or _implementation_of(path, option)
        if mta in dirs.get(role, {}):
            raise UsageError(f"{option}: {role} already has a {mta} directory ({dirs[role][mta]})")
        dirs.setdefault(role, {})[mta] = path
    settings: dict[str, dict[str, dict[str, str]]] = {}
    for text in sets:
        option = f"--set {text}"
        mta, rest = _split_mta(text, option)
        target, eq, value = rest.partition("=")
        role, dot, param = target.partition(".")
        if not eq or not dot or not _PARAM.fullmatch(param.strip()):
            raise UsageError(f"{option}: expected ROLE.PARAM=VALUE (e.g. --set relay.message_size_limit=1000)")
        role = _role(role.strip(), option)
        if "\n" in value:
            raise UsageError(f"{option}: a value is one line")
        targets = [mta] if mta else [n for n, d in DRIVERS.items() if d.settings_file]
        for name in targets:
            if DRIVERS[name].settings_file is None:
                raise UsageError(f"{option}: {name} roles take no settings: use --role {role}={name}:DIR")
            settings.setdefault(role, {}).setdefault(name, {})[param.strip()] = value.strip()
    return RoleOptions(dirs, settings)


def apply_role_options(scenarios: Sequence[Scenario], options: RoleOptions) -> list[Scenario]:
    """The scenarios with ``options`` laid over their roles (what a scenario says for a role and
    implementation the options also name is replaced; settings are merged, the options winning)."""
    if not options:
        return list(scenarios)
    out = []
    for scenario in scenarios:
        roles = dict(scenario.roles)
        for role in sorted(set(options.config_dirs) | set(options.settings)):
            current = roles.get(role) or RoleOverride(role, {}, {}, Mark(str(scenario.path), 1, 1))
            config_dirs = {**current.config_dirs, **options.config_dirs.get(role, {})}
            settings = {m: dict(v) for m, v in current.settings.items()}
            for mta, values in options.settings.get(role, {}).items():
                settings.setdefault(mta, {}).update(values)
            roles[role] = dataclasses.replace(current, config_dirs=config_dirs, settings=settings)
        out.append(dataclasses.replace(scenario, roles=roles))
    return out
