"""Which topology runs which (scenario, implementation) pair, and when: no I/O, only the plan.

Pairs that can share a topology (``sharing_key``) form a group; in a group the pairs of the same
containers (``container_key``) run one after another, and among them those of one exact topology
(``topology_key``), so a role is replaced once per change of containers and reconfigured once per
change of TLS.
``Schedule`` hands groups to the run's job slots, the longest (estimated) first. A slot with no group
left does not idle while another slot still has a long queue: it takes the back part of the queue
with the most work left and runs it on a topology of its own, or on the one it still has running
when that one has the queue's sharing key (no topology start then, and the split is weighed so).
Which topology runs a pair does not change its result (tests/integration/test_isolation.py runs the
bundled scenarios in shuffled orders on shared topologies and compares them with a fresh topology
each), so this only moves wall time.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from harness.scenario.model import Scenario
from harness.shard import container_key, key_text, sharing_key, topology_key

Pair = tuple[Scenario, str]

# A rough cost model, measured on the reference machine (2 cores, three topologies side by side): a
# topology's start and removal, a role replaced between two scenarios, the reset before every scenario
# after a group's first, and what a passing scenario waits out (its "no ..." steps' bounds, which are
# upper limits) plus a little for every other step. It decides the order groups start in and whether
# taking the back of a queue onto a new topology would end the run sooner.
TOPOLOGY_COST_S = 5.0
REPLACE_COST_S = 2.0  # SharedTopology._replace: a new container, to its greeting
RECONFIGURE_COST_S = 1.0  # SharedTopology._reconfigure: a reset, new files and the MTA's reload
RESET_COST_S = 0.6  # SharedTopology.prepare when no role changes: queues, mailboxes, DNS
STEP_COST_S = {"fault": 2.0, "dns_fault": 1.5, "dns_change": 1.5}


def estimated_s(scenario: Scenario, mta: str) -> float:
    cost = 0.0
    for _, step, override in scenario.steps_for(mta):
        if override is not None and override.skip:
            continue
        if step.kind in ("no_delivery", "no_bounce", "no_connection"):
            cost += float(getattr(step, "within_s", 0.0))
        else:
            cost += STEP_COST_S.get(step.kind, 0.3)
    return cost


def between_s(a: Pair, b: Pair) -> float:
    """From pair ``a`` to pair ``b`` on one topology: a replacement when the containers change, a
    reconfiguration when only the exact topology (TLS) does, else a reset."""
    if container_key(*a) != container_key(*b):
        return REPLACE_COST_S
    return RECONFIGURE_COST_S if topology_key(*a) != topology_key(*b) else RESET_COST_S


def queue_estimated_s(queue: Sequence[Pair]) -> float:
    """Pairs run one after another on a topology that is already up: a reset before each but the
    first, a replacement for every change of containers, a reconfiguration for every other change of
    exact topology (TLS alone), and the scenarios themselves."""
    return sum(between_s(a, b) for a, b in pairwise(queue)) + sum(estimated_s(s, m) for s, m in queue)


def group_estimated_s(group: Sequence[Pair]) -> float:
    """A group on a topology of its own: its start and removal, then its queue."""
    return TOPOLOGY_COST_S + queue_estimated_s(group)


def longest_first(groups: Sequence[Sequence[Pair]]) -> list[int]:
    """Indices of ``groups`` in the order to start them: the longest estimated first (ties keep their
    order), so no long group starts last and runs alone while the other job slots idle."""
    costs = [group_estimated_s(group) for group in groups]
    return sorted(range(len(groups)), key=lambda i: -costs[i])


def groups_of(pairs: Sequence[Pair], *, fresh: bool) -> list[list[Pair]]:
    """Pairs sharing a topology (``sharing_key``), in the order their first pair appears; each pair
    alone when fresh. In a group, the pairs of the same containers (``container_key``) run one after
    another, and among them those of one exact topology (``topology_key``), each in the order the first
    of each appears: a role is replaced once per change of containers, reconfigured once per change of
    its TLS."""
    if fresh:
        return [[pair] for pair in pairs]
    groups: dict[str, dict[str, dict[str, list[Pair]]]] = {}
    for scenario, mta in pairs:
        containers = groups.setdefault(key_text(sharing_key(scenario, mta)), {})
        variants = containers.setdefault(key_text(container_key(scenario, mta)), {})
        variants.setdefault(key_text(topology_key(scenario, mta)), []).append((scenario, mta))
    return [[pair for variants in containers.values() for variant in variants.values() for pair in variant]
            for containers in groups.values()]


@dataclass
class Lane:
    """The pairs one topology runs, one after another, as indices into the run's pairs: ``queue`` what
    is still to run (the Schedule takes from both ends under its lock), ``taken`` what was handed out."""

    queue: deque[int]
    taken: list[int] = field(default_factory=list)
    # Set through ``Schedule.ran`` once its topology runs scenarios: the back of a lane whose topology
    # did not start, or refused a configuration, is not moved elsewhere to be reported a second time.
    healthy: bool = False


class Schedule:
    """Lanes for the run's job slots (thread-safe). ``next_lane`` gives a slot a whole group, the
    longest first; once none is left, the back of the running lane whose split shortens the run most
    (by the cost model). While no split would, but a lane whose first scenario is still running might
    be worth splitting once it has run (its topology started), the slot waits for that; otherwise, or
    once ``close``d, it gets None: its work is done. ``take`` gives a lane its next pair."""

    def __init__(self, pairs: Sequence[Pair], *, fresh: bool) -> None:
        self.pairs = list(pairs)
        self._changed = threading.Condition()
        self._closed = False
        index: dict[tuple[int, str], list[int]] = {}
        for i, (scenario, mta) in enumerate(self.pairs):
            index.setdefault((id(scenario), mta), []).append(i)
        groups = groups_of(self.pairs, fresh=fresh)
        # The same scenario file can be in several pairs (variants with other --role options, a file
        # named twice): a pair's place is found by its scenario object, first come first placed.
        as_indices = [[index[(id(s), m)].pop(0) for s, m in group] for group in groups]
        self._waiting = deque(Lane(deque(as_indices[i])) for i in longest_first(groups))
        self.lanes: list[Lane] = []  # every lane handed out, in that order

    def next_lane(self, *, wait: bool = True, warm: Pair | None = None) -> Lane | None:
        """The next lane for a slot; None when there is none (``wait=False``: none now). ``warm``: the
        last pair the slot ran on a topology it still has running; the back of a queue of that pair's
        sharing key can run on it, without a topology start, and is weighed so."""
        with self._changed:
            while not self._closed:
                lane = self._waiting.popleft() if self._waiting else self._split(warm)
                if lane is not None:
                    self.lanes.append(lane)
                    return lane
                if not wait or not any(not lane.healthy and len(lane.queue) >= 2 for lane in self.lanes):
                    return None
                self._changed.wait()
            return None

    def take(self, lane: Lane) -> int | None:
        with self._changed:
            if not lane.queue:
                return None
            i = lane.queue.popleft()
            lane.taken.append(i)
            self._changed.notify_all()  # a shorter queue: a waiting slot may have nothing left to wait for
            return i

    def ran(self, lane: Lane, *, healthy: bool) -> None:
        """A scenario of ``lane`` ended; ``healthy``: its topology runs (started, nothing refused)."""
        with self._changed:
            lane.healthy = healthy
            self._changed.notify_all()

    def close(self) -> None:
        """No more lanes (the run is interrupted or a slot failed): every waiting slot gets None."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _split(self, warm: Pair | None) -> Lane | None:
        best: tuple[float, Lane, int] | None = None
        for lane in self.lanes:
            if not lane.healthy or len(lane.queue) < 2:
                continue
            queue = [self.pairs[i] for i in lane.queue]
            whole = queue_estimated_s(queue)
            on_warm = warm is not None and sharing_key(*warm) == sharing_key(*queue[0])
            for k in range(1, len(queue)):
                moved = (between_s(warm, queue[k]) + queue_estimated_s(queue[k:]) if on_warm and warm is not None
                         else group_estimated_s(queue[k:]))
                longer = max(queue_estimated_s(queue[:k]), moved)
                gain = whole - longer
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, lane, k)
        if best is None:
            return None
        _, victim, k = best
        back = list(victim.queue)[k:]
        for _ in back:
            victim.queue.pop()
        return Lane(deque(back))
