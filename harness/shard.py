"""Sharding for CI runners: `harness run --shard K/N` runs a deterministic 1/N of the (scenario,
implementation) pairs.

Pairs that would share a topology (the same *sharing key*: the implementation under test and what of
the scenario's topology cannot be changed on a running one) stay in one shard, so a shard starts each
of its topologies once. Groups are ordered by their key's text and assigned greedily, the largest
first, to the shard with the fewest pairs so far (ties: the lowest shard number). Everything here is
a pure function of the pairs as given: no ``hash()`` (randomised per process), no clock, no
machine-specific paths, so every runner of a CI matrix computes the same assignment and the N shards
together run every pair exactly once.

A shard can be empty (more shards than groups): that is not an error, the run says so and writes
empty results, since CI matrices have a fixed N."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError
from harness.mta import DRIVERS, ROLES
from harness.plan import role_changes
from harness.scenario.model import Scenario

Pair = tuple[Scenario, str]
# (implementation under test, ((role, config dir, ((setting, value), ...), like, role mta), ...))
TopologyKey = tuple[str, tuple[tuple[str, str | None, tuple[tuple[str, str], ...], str | None, str | None], ...]]

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` (1-based) of ``total``."""

    index: int
    total: int

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


def parse_shard(text: str) -> ShardSpec:
    """``K/N`` with 1 <= K <= N; anything else is a usage error saying what is expected."""
    m = _SPEC.fullmatch(text)
    if m is None:
        raise UsageError(f"--shard {text!r}: expected K/N, shard K of N with 1 <= K <= N (e.g. --shard 2/3)")
    index, total = int(m.group(1)), int(m.group(2))
    if total < 1:
        raise UsageError(f"--shard {text!r}: the number of shards N must be at least 1")
    if not 1 <= index <= total:
        raise UsageError(f"--shard {text!r}: shard K must be between 1 and {total}")
    return ShardSpec(index, total)


def _path_text(path: Path | None) -> str | None:
    """A configuration directory as text that is the same on every runner: relative to the working
    directory when below it (CI runs from the checkout's root), else absolute, in POSIX form."""
    if path is None:
        return None
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def topology_key(scenario: Scenario, mta: str) -> TopologyKey:
    """What decides the topology a scenario runs on with ``mta`` under test: the implementation and
    the scenario's role changes (configuration directory, settings, added roles, a role's own MTA).
    DNS records are not part of it: they are applied to a running topology. A standard role whose
    change is empty for ``mta`` (settings given for another implementation only, or its own ``mta:``
    being the one under test) is the standard role, and left out."""
    standard = DRIVERS[mta].roles if mta in DRIVERS else ROLES
    roles: list[tuple[str, str | None, tuple[tuple[str, str], ...], str | None, str | None]] = []
    for role, c in sorted(role_changes(scenario, mta).items()):
        role_mta = c.mta if c.mta != mta else None  # `mta: postfix` with Postfix under test: no change
        settings = tuple(sorted((str(k), str(v)) for k, v in c.settings.items()))
        if c.tls is not None:
            # Its own entry, so a key without TLS roles is what it always was.
            outbound = (("outbound", c.tls.outbound),) if c.tls.outbound else ()
            # A TLSA record is served from the topology's own certificate: part of what the run is.
            tlsa = (("tlsa", c.tls.tlsa),) if c.tls.tlsa else ()
            roles.append((f"tls:{role}", None, (("certificate", c.tls.certificate), *outbound, *tlsa,
                                                 ("require", "yes" if c.tls.require else "no")), None, None))
        if role in standard and c.config_dir is None and not settings and c.like is None and role_mta is None:
            continue
        roles.append((role, _path_text(c.config_dir), settings, c.like, role_mta))
    if scenario.dnssec is not None:
        # The zones' keys and the resolver's trust anchors are made when the topology starts.
        roles.append(("dnssec", None, (("signed", ",".join(scenario.dnssec.signed)),
                                       ("bogus", ",".join(scenario.dnssec.bogus))), None, None))
    if scenario.mta_sts is not None:
        # The policy host serves the policy it was started with, from a certificate issued then.
        policy = scenario.mta_sts
        roles.append(("mta_sts", None, (("domain", policy.domain), ("mode", policy.mode), ("mx", ",".join(policy.mx)),
                                        ("max_age", str(policy.max_age)), ("certificate", policy.certificate)),
                      None, None))
    # Faults are not part of it: what they leave (a role stopped, paused, off the network; DNS failing)
    # is undone before the next scenario, and the neighbour caches emptied (SharedTopology.prepare).
    return (mta, tuple(roles))


# What a running topology cannot take on between two scenarios: zones signed with keys made at its
# start, and a resolver trusting them.
_FIXED_AT_START = frozenset({"dnssec"})


def container_key(scenario: Scenario, mta: str) -> TopologyKey:
    """``topology_key`` without the roles' TLS: scenarios with one container key run on the same
    containers, a change of TLS alone being made in them (``SharedTopology._reconfigure``)."""
    implementation, roles = topology_key(scenario, mta)
    return implementation, tuple(r for r in roles if not r[0].startswith("tls:"))


def sharing_key(scenario: Scenario, mta: str) -> TopologyKey:
    """What decides the topology a scenario can share: ``topology_key`` without its roles (a standard
    role's configuration directory, settings, TLS or other implementation; an added role) and its
    MTA-STS policy. Those are made between two scenarios by starting, replacing or removing just
    those containers (``SharedTopology.prepare``); DNSSEC's keys and resolver need a topology of
    their own."""
    implementation, roles = topology_key(scenario, mta)
    return implementation, tuple(r for r in roles if r[0] in _FIXED_AT_START)


def key_text(key: Hashable) -> str:
    """A key as text, for ordering groups the same way on every machine."""
    return json.dumps(key, separators=(",", ":"), ensure_ascii=True)


def _grouped_indices(pairs: Sequence[Pair], key: Callable[[Scenario, str], Hashable]) -> list[list[int]]:
    by_key: dict[str, list[int]] = {}
    for i, (scenario, mta) in enumerate(pairs):
        by_key.setdefault(key_text(key(scenario, mta)), []).append(i)
    return [by_key[k] for k in sorted(by_key)]


def groups(pairs: Sequence[Pair], key: Callable[[Scenario, str], Hashable] = sharing_key) -> list[list[Pair]]:
    """The pairs grouped by ``key``, groups ordered by key text, pairs in each group in input order."""
    return [[pairs[i] for i in g] for g in _grouped_indices(pairs, key)]


def assign(sizes: Sequence[int], total: int) -> list[int]:
    """The 1-based shard of each group: largest group first (ties: the earlier group) to the shard
    with the fewest pairs so far (ties: the lowest shard number)."""
    loads = [0] * total
    shard_of = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        target = min(range(total), key=lambda s: (loads[s], s))
        loads[target] += sizes[i]
        shard_of[i] = target + 1
    return shard_of


def shard(pairs: Sequence[Pair], k: int, n: int,
          key: Callable[[Scenario, str], Hashable] = sharing_key) -> list[Pair]:
    """The pairs of shard ``k`` of ``n`` (1-based), in their input order."""
    if not 1 <= k <= n:
        raise ValueError(f"shard {k}/{n}: need 1 <= k <= n")
    grouped = _grouped_indices(pairs, key)
    shard_of = assign([len(g) for g in grouped], n)
    chosen = {i for g, s in zip(grouped, shard_of, strict=True) if s == k for i in g}
    return [p for i, p in enumerate(pairs) if i in chosen]


def restrict(scenarios: Sequence[Scenario], pairs: Sequence[Pair]) -> list[Scenario]:
    """The scenarios that have a pair in ``pairs``, each narrowed (its ``mta:`` list) to the
    implementations of its pairs, so that running them on the same selection runs exactly ``pairs``."""
    wanted: dict[int, list[str]] = {}
    for scenario, mta in pairs:
        wanted.setdefault(id(scenario), []).append(mta)
    return [dataclasses.replace(s, mtas=tuple(wanted[id(s)])) for s in scenarios if id(s) in wanted]


def describe(selected: Sequence[Pair], pairs: Sequence[Pair], spec: ShardSpec,
             key: Callable[[Scenario, str], Hashable] = sharing_key) -> str:
    """One line saying what this shard runs, e.g. ``shard 2/3: 17 of 54 run(s), 4 of 11 topology group(s)``."""
    mine = len(groups(selected, key))
    total = len(groups(pairs, key))
    if not selected:
        return (f"shard {spec}: nothing to run in this shard ({total} topology group(s) over {spec.total} "
                "shards); writing empty results")
    return f"shard {spec}: {len(selected)} of {len(pairs)} run(s), {mine} of {total} topology group(s)"


__all__ = ["Pair", "ShardSpec", "TopologyKey", "assign", "describe", "groups", "key_text", "parse_shard",
           "restrict", "shard", "sharing_key", "topology_key"]
