"""Load scenario files: YAML with source marks -> JSON Schema validation -> semantic checks -> frozen models.

Every check on a scenario's content runs here, before anything starts: what the SMTP client, the zone
renderer or the topology would refuse at run time is refused at load time, at the offending node. Every
problem in a file is a ScenarioError (``file:line:col: message``); nothing here lets a YAML, jsonschema
or OS exception escape. The only I/O is reading the scenario file, reading the message files it names
and looking at the role configuration directories it names.

The parts: ``yamlmarks`` (YAML with marks), ``validate`` (the schema), ``steps`` (step models),
``overrides`` (per_mta), ``messages`` (inline and file messages), ``checks`` (pure value checks); this
module builds the scenario around them: implementations, roles and DNS records.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from harness.dns.zones import STANDARD_ZONE_NAMES, standard_mx_hosts, zone_origin
from harness.errors import ScenarioError, UsageError
from harness.mta import DRIVERS
from harness.scenario.context import KNOWN_MTAS, STANDARD_ROLES, one_of
from harness.scenario.inputs import config_tree_problem, outside_problem, trusted_roots
from harness.scenario.messages import DEFAULT_BODY
from harness.scenario.model import (
    POLICY_ROLE,
    RESOLVER_ROLE,
    UNREACHABLE_ROLE,
    Dnssec,
    MtaSts,
    RoleOverride,
    RoleTls,
    Scenario,
)
from harness.scenario.steps import DEFAULT_EHLO, DSN_FIELDS, StepBuilder, build_steps
from harness.scenario.validate import JsonPath, SourceMap, load_schema, schema_path, validate_document
from harness.scenario.yamlmarks import read_yaml

__all__ = [
    "DEFAULT_BODY",
    "DEFAULT_EHLO",
    "DSN_FIELDS",
    "KNOWN_MTAS",
    "STANDARD_ROLES",
    "load_scenario",
    "load_scenarios",
    "load_schema",
    "scenario_files",
    "schema_path",
]

SCENARIO_SUFFIXES = (".yaml", ".yml")
# OpenSMTPD's smtpd.conf has no macro or override mechanism the harness could write settings into.
MTAS_WITHOUT_SETTINGS = tuple(name for name, impl in DRIVERS.items() if impl.settings_file is None)

# Names that are not mail roles, with why they cannot appear under roles.
_NOT_ROLES = {
    "dns": "'dns' is the scenario's DNS server, not a mail role: it cannot be changed or added under roles",
    "client": "'client' is the harness's own SMTP client, not a role: it cannot be changed or added "
              "under roles",
    RESOLVER_ROLE: f"'{RESOLVER_ROLE}' is the validating resolver of a scenario with dnssec:, not a mail role: "
                   "choose another name",
    POLICY_ROLE: f"'{POLICY_ROLE}' is the MTA-STS policy host of a scenario with mta_sts:, not a mail role: "
                 "choose another name",
    UNREACHABLE_ROLE: f"'{UNREACHABLE_ROLE}' names the address in the run's network that nothing answers "
                      f"on (address_of: {UNREACHABLE_ROLE}), not a role: choose another name",
}


def scenario_files(paths: Sequence[Path]) -> list[Path]:
    """The scenario files named by ``paths``: files as given, directories as their ``*.yaml``/``*.yml``
    files sorted by name (dotfiles skipped: editors leave them behind). A file named on the command line
    is trusted as typed; one found in a directory that is a symlink leading out of that directory's tree
    and the working directory's is a ScenarioError (``file:1:1``), as for the paths a scenario names."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            in_dir = sorted(
                p for p in path.iterdir()
                if p.suffix in SCENARIO_SUFFIXES and not p.name.startswith(".") and p.is_file()
            )
            if not in_dir:
                # A run that silently checks nothing would look like a pass.
                raise UsageError(f"no scenario files (*.yaml, *.yml) in directory {path}")
            roots = trusted_roots(path / "any.yaml")
            for file in in_dir:
                problem = outside_problem(file.resolve(), roots) if file.is_symlink() else None
                if problem is not None:
                    raise ScenarioError(file, 1, 1, f"the scenario file is a symlink that {problem}")
            found.extend(in_dir)
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"no such scenario file or directory: {path}")
    return found


def load_scenarios(paths: Sequence[Path]) -> list[Scenario]:
    """Load every scenario named by ``paths`` (see ``scenario_files``), stopping at the first bad file."""
    return [load_scenario(path) for path in scenario_files(paths)]


def load_scenario(path: Path) -> Scenario:
    """Load and check one scenario file. Marks and messages name the file as ``path`` was given."""
    data, source = read_yaml(path)
    validate_document(data, source)
    return _Builder(path, source).scenario(cast(dict[str, Any], data))


class _Builder(StepBuilder):
    """Builds the scenario from schema-valid data, with the checks the schema cannot express."""

    def __init__(self, path: Path, source: SourceMap) -> None:
        super().__init__(path, source)
        self.mta_list: tuple[str, ...] = ()

    def scenario(self, data: dict[str, Any]) -> Scenario:
        name: str = data["name"]
        self.mta_list = self.mtas(data.get("mta"))
        roles = self.role_overrides(data.get("roles", {}))
        self.roles = STANDARD_ROLES + tuple(r for r in roles if r not in STANDARD_ROLES)
        dns = tuple(self.dns_record(("dns", i), rec) for i, rec in enumerate(data.get("dns", [])))
        if dns:
            self.check_zones(dns)
        self.records = dns
        tls = self.role_tls(data.get("tls", {}))
        dnssec = self.dnssec(data["dnssec"]) if "dnssec" in data else None
        mta_sts = self.mta_sts(data["mta_sts"]) if "mta_sts" in data else None
        steps, overrides = build_steps(self, data["steps"], name)
        return Scenario(
            path=self.path,
            name=name,
            description=data["description"],
            dns=dns,
            roles=roles,
            steps=steps,
            mark=self.at(),
            mtas=self.mta_list,
            overrides=overrides,
            tls=tls,
            dnssec=dnssec,
            mta_sts=mta_sts,
        )

    def dnssec(self, raw: dict[str, Any]) -> Dnssec:
        """The zones to sign: each a zone the scenario serves (a standard one, or the zone of a record
        it declares), once, and either signed or bogus."""
        served = self.served_zones()
        seen: dict[str, str] = {}
        lists: dict[str, list[str]] = {}
        for kind in ("signed", "bogus"):
            lists[kind] = []
            for i, name in enumerate(raw.get(kind, [])):
                origin = name.lower().rstrip(".") + "."
                if origin in seen:
                    also = "" if seen[origin] == kind else f" (already under {seen[origin]})"
                    raise self.fail(self.at("dnssec", kind, i), f"zone {name!r} is listed twice in dnssec{also}")
                if origin not in served:
                    raise self.fail(self.at("dnssec", kind, i),
                                    f"zone {name!r} is not served in this scenario (served: "
                                    f"{', '.join(sorted(z.rstrip('.') for z in served))})")
                seen[origin] = kind
                lists[kind].append(origin)
        if not seen:
            raise self.fail(self.at_key("dnssec"), "dnssec lists no zone: name one under signed (or bogus)")
        return Dnssec(signed=tuple(lists["signed"]), bogus=tuple(lists["bogus"]), mark=self.at_key("dnssec"))

    def served_zones(self) -> set[str]:
        """Zone origins this scenario serves: the standard ones, its records' and its added roles'."""
        served = {zone_origin(name) for name in STANDARD_ZONE_NAMES}
        served |= {zone_origin(r.name) for r in self.records}
        served |= {zone_origin(f"{role}.hosts.test.") for role in self.roles if role not in STANDARD_ROLES}
        return served

    def mta_sts(self, raw: dict[str, Any]) -> MtaSts:
        """A destination's MTA-STS policy. Its domain must be one the scenario serves (the TXT record and
        the policy host's name go into that zone); its mx patterns default to the domain's MX hosts."""
        domain = str(raw.get("domain", "example.test")).lower().rstrip(".")
        served = self.served_zones()
        if zone_origin(f"{domain}.") not in served:
            raise self.fail(self.at("mta_sts", "domain") if "domain" in raw else self.at_key("mta_sts"),
                            f"domain {domain!r} is not served in this scenario (served: "
                            f"{', '.join(sorted(z.rstrip('.') for z in served))})")
        if "mx" in raw:
            mx = tuple(str(m).lower().rstrip(".") for m in raw["mx"])
        else:
            # A declared null MX ("0 .") names no host.
            declared = [r.value.split()[-1].rstrip(".").lower() for r in self.records
                        if r.rtype == "MX" and r.value and r.name.lower().rstrip(".") == domain]
            mx = tuple(dict.fromkeys(h for h in [*standard_mx_hosts(f"{domain}."), *declared] if h))
            if not mx:
                raise self.fail(self.at_key("mta_sts"), f"{domain} has no MX host in this scenario to put in "
                                "its policy: list the policy's patterns under mta_sts: mx")
        return MtaSts(domain=domain, mode=raw["mode"], mx=mx, max_age=raw.get("max_age", 86400),
                      certificate=raw.get("certificate", "valid"), mark=self.at_key("mta_sts"))

    def role_tls(self, raw: dict[str, Any]) -> dict[str, RoleTls]:
        result: dict[str, RoleTls] = {}
        for role, spec in raw.items():
            if role in _NOT_ROLES:
                raise self.fail(self.at_key("tls", role), _NOT_ROLES[role].replace("under roles", "under tls"))
            if role not in self.roles:
                raise self.fail(self.at_key("tls", role), f"unknown role {role!r} in tls (expected one of: "
                                f"{', '.join(self.roles)}; a role the scenario adds is declared under roles)")
            result[role] = RoleTls(role=role, certificate=spec.get("certificate", "valid"),
                                   require=spec.get("require", False), mark=self.at_key("tls", role),
                                   outbound=spec.get("outbound"), tlsa=spec.get("tlsa"))
        return result

    def mtas(self, raw: str | list[str] | None) -> tuple[str, ...]:
        if raw is None:
            return ()
        if isinstance(raw, str):
            return (raw,)
        for i, mta in enumerate(raw):
            if mta in raw[:i]:
                raise self.fail(self.at("mta", i), f"MTA implementation {mta!r} is listed twice in mta")
        return tuple(raw)

    # --- roles ---

    def role_overrides(self, roles: dict[str, Any]) -> dict[str, RoleOverride]:
        result: dict[str, RoleOverride] = {}
        for role, spec in roles.items():
            here = ("roles", role)
            if role in _NOT_ROLES:
                raise self.fail(self.at_key(*here), _NOT_ROLES[role])
            like: str | None = spec.get("like")
            if role in STANDARD_ROLES and like is not None:
                raise self.fail(self.at_key(*here, "like"), f"'like' is only for a role the scenario adds: "
                                f"{role} is a standard role (change it with config and settings)")
            if role not in STANDARD_ROLES and like is None:
                raise self.fail(self.at_key(*here), f"{role!r} is not a standard role "
                                f"({one_of(STANDARD_ROLES)}): a role the scenario adds needs "
                                "'like: <standard role>', the role it copies (e.g. like: nomail for a "
                                "second host that answers 521)")
            role_mta: str | None = spec.get("mta")
            config_dirs = self.config_dirs(here, role, role_mta, spec.get("config"))
            settings = self.settings(here, role, role_mta, spec.get("settings", {}))
            self.check_settings_files(here, config_dirs, settings, isinstance(spec.get("config"), str))
            result[role] = RoleOverride(
                role=role,
                config_dirs=config_dirs,
                settings=settings,
                mark=self.at_key(*here),
                like=like,
                mta=role_mta,
            )
        return result

    def runs_on(self, role_mta: str | None) -> tuple[str, ...]:
        """The implementations a role can run on in this scenario."""
        if role_mta is not None:
            return (role_mta,)
        return self.mta_list or KNOWN_MTAS

    def why_runs_on(self, here: JsonPath, role: str, role_mta: str | None) -> str:
        if role_mta is not None:
            return f"{role} always runs {role_mta} (mta: {role_mta} at line {self.at(*here, 'mta').line})"
        if self.mta_list:
            return (f"{role} runs on {one_of(list(self.mta_list))} only (the scenario's mta: at line "
                    f"{self.at('mta').line})")
        return f"{role} runs on {one_of(KNOWN_MTAS)} (the scenario has no mta: list, so every one)"

    def config_dirs(
        self, here: JsonPath, role: str, role_mta: str | None, config: str | dict[str, str] | None
    ) -> dict[str, Path]:
        if config is None:
            return {}
        runs_on = self.runs_on(role_mta)
        if isinstance(config, str):
            directory = self.directory(config, (*here, "config"))
            if len(runs_on) != 1:
                # A plain path used to configure Postfix alone, leaving the others on their stock
                # configuration without a word: it is only unambiguous for a single implementation.
                why = self.why_runs_on(here, role, role_mta)
                raise self.fail(self.at(*here, "config"), (
                    f"a plain config directory is for one MTA implementation, but {why}: write "
                    f"config: {{{runs_on[0]}: {config}}} (a directory per implementation), or restrict "
                    f"the scenario to one implementation with mta: [{runs_on[0]}]"))
            self.check_main_file(directory, runs_on[0], config, (*here, "config"))
            return {runs_on[0]: directory}
        dirs: dict[str, Path] = {}
        for mta, name in config.items():
            dirs[mta] = self.directory(name, (*here, "config", mta))
            if mta not in runs_on:
                raise self.fail(self.at_key(*here, "config", mta),
                                f"the {mta} configuration is never used: {self.why_runs_on(here, role, role_mta)}")
            self.check_main_file(dirs[mta], mta, name, (*here, "config", mta))
        return dirs

    def directory(self, name: str, path: JsonPath) -> Path:
        # Confined before anything else is said about it: "does not exist" would tell about the host.
        directory = self.confined(name, "role config directory", self.at(*path))
        if not directory.is_dir():
            problem = "is not a directory" if directory.exists() else "does not exist"
            raise self.fail(self.at(*path), f"role config directory {name!r} {problem} "
                            f"(resolved to {directory})")
        tree = config_tree_problem(directory, self.roots)
        if tree is not None:
            raise self.fail(self.at(*path), f"role config directory {name!r} {tree}")
        return directory

    def check_main_file(self, directory: Path, mta: str, name: str, path: JsonPath) -> None:
        """A directory without the implementation's main file would only show as an MTA that never
        answers, a readiness timeout later."""
        main_file = DRIVERS[mta].main_file
        if main_file and not (directory / main_file).is_file():
            raise self.fail(self.at(*path), f"role config directory {name!r} has no {main_file}, the main file "
                            f"of every {mta} configuration (resolved to {directory})")

    def settings(
        self, here: JsonPath, role: str, role_mta: str | None, raw: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, str]]:
        for mta in raw:
            if mta in MTAS_WITHOUT_SETTINGS:
                raise self.fail(self.at_key(*here, "settings", mta),
                                f"{mta} roles take no settings (its configuration has no parameters to lay "
                                f"over): give the role a configuration directory with `config: {{{mta}: DIR}}`")
            if mta not in self.runs_on(role_mta):
                raise self.fail(self.at_key(*here, "settings", mta),
                                f"the {mta} settings are never used: {self.why_runs_on(here, role, role_mta)}")
        return {
            mta: {name: self.as_written(value, (*here, "settings", mta, name)) for name, value in params.items()}
            for mta, params in raw.items()
        }

    def check_settings_files(self, here: JsonPath, config_dirs: dict[str, Path],
                             settings: dict[str, dict[str, str]], plain: bool) -> None:
        """Settings appended to a file of the role's own configuration need that file there."""
        for mta, params in settings.items():
            impl = DRIVERS[mta]
            directory = config_dirs.get(mta)
            if not params or directory is None or impl.settings_style != "append" or impl.settings_file is None:
                continue
            if not (directory / impl.settings_file).is_file():
                path = (*here, "config") if plain else (*here, "config", mta)
                raise self.fail(self.at(*path), f"role config directory {directory.name!r} has no "
                                f"{impl.settings_file}, which the role's {mta} settings are added to "
                                f"(resolved to {directory})")
