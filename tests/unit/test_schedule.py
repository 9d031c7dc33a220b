"""How the run's job slots get their work: whole groups first, longest first; then an idle slot takes
the back of the longest queue onto a topology of its own. Simulated on a clock (the cost model's
estimates as durations) and with real threads; no engine."""

from __future__ import annotations

import contextlib
import heapq
import random
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

import harness.runner as runner
from harness.expect.results import ScenarioResult
from harness.scenario.model import Scenario
from harness.schedule import (
    TOPOLOGY_COST_S,
    Lane,
    Schedule,
    estimated_s,
    group_estimated_s,
    groups_of,
    queue_estimated_s,
)
from harness.shard import sharing_key

from .test_groups import bundled_pairs

ROOT = Path(__file__).resolve().parents[2]


def simulate(schedule: Schedule, slots: int, *, healthy: bool = True, reuse: bool = False,
             started: list[int] | None = None) -> float:
    """Run the schedule on ``slots`` simulated slots, each pair taking its estimate (plus a topology
    start for a lane's first); after each pair, its lane is reported ``healthy`` and idle slots look for
    work again. With ``reuse``, an idle slot offers the topology it ran last (as run_all's slots do), and
    a lane of that sharing key starts none. The simulated wall time; ``started`` gets each topology start's slot."""
    events: list[tuple[float, int, Lane]] = []
    idle = list(range(slots))
    last: dict[int, int] = {}  # slot -> the pair its topology ran last
    now = 0.0

    def run_next(n: int, lane: Lane, *, first: bool) -> None:
        i = schedule.take(lane)
        assert i is not None
        if first and started is not None:
            started.append(n)
        took = estimated_s(*schedule.pairs[i]) + 0.1 + (TOPOLOGY_COST_S if first else 0.0)
        last[n] = i
        heapq.heappush(events, (now + took, n, lane))

    def look_for_work() -> None:
        for n in list(idle):
            warm = schedule.pairs[last[n]] if reuse and n in last else None
            lane = schedule.next_lane(wait=False, warm=warm)
            if lane is None:
                continue
            idle.remove(n)
            same = warm is not None and sharing_key(*warm) == sharing_key(*schedule.pairs[lane.queue[0]])
            run_next(n, lane, first=not same)

    look_for_work()
    while events:
        now, n, lane = heapq.heappop(events)
        schedule.ran(lane, healthy=healthy)
        if lane.queue:
            run_next(n, lane, first=False)
        else:
            idle.append(n)
        look_for_work()
    return now


def test_every_pair_runs_once_and_a_lane_keeps_one_sharing_key() -> None:
    pairs = bundled_pairs()
    schedule = Schedule(pairs, fresh=False)
    simulate(schedule, 4)
    taken = [i for lane in schedule.lanes for i in lane.taken]
    assert sorted(taken) == list(range(len(pairs)))
    for lane in schedule.lanes:
        assert len({sharing_key(*pairs[i]) for i in lane.taken}) == 1
        assert not lane.queue


def test_an_idle_slot_takes_the_back_of_the_longest_queue_and_the_run_ends_sooner() -> None:
    pairs = bundled_pairs()
    groups = groups_of(pairs, fresh=False)
    whole = simulate(Schedule(pairs, fresh=False), 6, healthy=False)  # unhealthy lanes are never split
    schedule = Schedule(pairs, fresh=False)
    split = simulate(schedule, 6)
    assert len(schedule.lanes) > len(groups)
    assert split < whole
    # A split lane is a contiguous back part of its group's order: the front stayed with the slot
    # that had it, in order.
    by_group = {sharing_key(*g[0]): [pairs.index(p) for p in g] for g in groups}
    for key, order in by_group.items():
        lanes = [lane.taken for lane in schedule.lanes if sharing_key(*pairs[lane.taken[0]]) == key]
        assert sorted(i for taken in lanes for i in taken) == sorted(order)
        for taken in lanes:
            start = order.index(taken[0])
            assert taken == order[start:start + len(taken)]


def test_a_lane_whose_topology_did_not_start_is_not_split() -> None:
    pairs = bundled_pairs()
    schedule = Schedule(pairs, fresh=False)
    simulate(schedule, 8, healthy=False)
    assert len(schedule.lanes) == len(groups_of(pairs, fresh=False))


def test_the_back_of_a_queue_moves_only_when_that_shortens_it() -> None:
    postfix = [p for p in bundled_pairs() if p[1] == "postfix"]
    by_number = {s.path.name[:2]: (s, m) for s, m in postfix}
    short = [by_number[n] for n in ("01", "02", "03")]
    long = [by_number[n] for n in ("01", "24", "25", "19")]
    for queue, moves in ((short, False), (long, True)):
        schedule = Schedule(queue, fresh=False)
        lane = schedule.next_lane()
        assert lane is not None and schedule.take(lane) == 0
        assert schedule.next_lane(wait=False) is None  # not before its topology runs scenarios
        schedule.ran(lane, healthy=True)
        rest = [queue[i] for i in lane.queue]
        assert queue_estimated_s(rest) > 0
        back = schedule.next_lane(wait=False)
        assert (back is not None) == moves
        if back is not None:
            assert list(lane.queue) + list(back.queue) == [1, 2, 3]
            assert lane.queue and back.queue
            assert max(queue_estimated_s([queue[i] for i in lane.queue]),
                       group_estimated_s([queue[i] for i in back.queue])) < queue_estimated_s(rest)


def test_fresh_mode_is_one_lane_per_pair() -> None:
    pairs = bundled_pairs()
    schedule = Schedule(pairs, fresh=True)
    simulate(schedule, 3)
    assert sorted(lane.taken for lane in schedule.lanes) == [[i] for i in range(len(pairs))]


def test_slots_on_threads_wait_for_a_lane_worth_splitting_and_take_every_pair_exactly_once() -> None:
    # One implementation: 2 groups for 5 slots. The 3 slots with no group wait until a lane's first
    # scenario has run (its topology started), then take the back of a queue.
    pairs = [p for p in bundled_pairs() if p[1] == "postfix"]
    schedule = Schedule(pairs, fresh=False)
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.004) for _ in pairs]
    done: list[int] = []
    workers: set[str] = set()
    lock = threading.Lock()

    def slot() -> None:
        while (lane := schedule.next_lane()) is not None:
            while (i := schedule.take(lane)) is not None:
                time.sleep(delays[i])
                schedule.ran(lane, healthy=True)
                with lock:
                    done.append(i)
                    workers.add(threading.current_thread().name)

    threads = [threading.Thread(target=slot) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a slot is still waiting"
    assert sorted(done) == list(range(len(pairs)))
    assert len(schedule.lanes) > len(groups_of(pairs, fresh=False))
    assert len(workers) > 2, "the slots without a group of their own ran nothing"


def test_a_waiting_slot_gets_nothing_once_the_schedule_is_closed() -> None:
    pairs = [p for p in bundled_pairs() if p[1] == "postfix"]
    schedule = Schedule(pairs, fresh=False)
    lanes = [schedule.next_lane(), schedule.next_lane()]
    assert all(lane is not None and schedule.take(lane) is not None for lane in lanes)
    got: list[Lane | None] = []
    waiting = threading.Thread(target=lambda: got.append(schedule.next_lane()))
    waiting.start()
    waiting.join(timeout=0.3)
    assert waiting.is_alive(), "no lane has run a scenario yet: the slot waits"
    schedule.close()
    waiting.join(timeout=5)
    assert not waiting.is_alive() and got == [None]


def test_the_same_scenario_twice_gets_two_places() -> None:
    pairs = bundled_pairs()
    doubled = pairs[:3] + pairs[:3]
    schedule = Schedule(doubled, fresh=False)
    simulate(schedule, 2)
    assert sorted(i for lane in schedule.lanes for i in lane.taken) == list(range(6))


def test_a_slot_with_a_topology_of_the_queues_key_still_running_takes_a_back_part_too_short_for_a_new_one() -> None:
    postfix = {s.path.name[:2]: (s, m) for s, m in bundled_pairs() if m == "postfix"}
    exim = {s.path.name[:2]: (s, m) for s, m in bundled_pairs() if m == "exim"}
    queue = [postfix[n] for n in ("01", "02", "03", "05")]
    for warm, moves in ((None, False), (exim["01"], False), (postfix["06"], True)):
        schedule = Schedule(queue, fresh=False)
        lane = schedule.next_lane()
        assert lane is not None and schedule.take(lane) == 0
        schedule.ran(lane, healthy=True)
        back = schedule.next_lane(wait=False, warm=warm)
        assert (back is not None) == moves, warm
        if back is not None:
            assert list(lane.queue) + list(back.queue) == [1, 2, 3] and lane.queue and back.queue


def test_slots_that_offer_their_running_topology_start_fewer_topologies_and_end_no_later() -> None:
    pairs = bundled_pairs()
    for mtas in (("postfix",), ("postfix", "exim"), ("postfix", "exim", "opensmtpd")):
        some = [p for p in pairs if p[1] in mtas]
        for slots in (2, 3, 4, 6, 8):
            without: list[int] = []
            alone = simulate(Schedule(some, fresh=False), slots, started=without)
            schedule = Schedule(some, fresh=False)
            started: list[int] = []
            reused = simulate(schedule, slots, reuse=True, started=started)
            assert reused <= alone and len(started) <= len(without), (mtas, slots)
            assert sorted(i for lane in schedule.lanes for i in lane.taken) == list(range(len(some)))
    # Postfix alone on 4 slots: some of its lanes run on a topology that was already up, and it ends sooner.
    postfix = [p for p in pairs if p[1] == "postfix"]
    without = []
    alone = simulate(Schedule(postfix, fresh=False), 4, started=without)
    schedule = Schedule(postfix, fresh=False)
    started = []
    reused = simulate(schedule, 4, reuse=True, started=started)
    assert len(started) < len(schedule.lanes) and len(started) < len(without) and reused < alone


class _Sequence:
    """run_all's ScenarioSequence without an engine: each pair takes a moment; records what it ran."""

    made: ClassVar[list[_Sequence]] = []

    def __init__(self, ctx: object) -> None:
        self.ran: list[tuple[Scenario, str]] = []
        self.closed = False
        self.not_started: str | None = None
        self.refused: list[object] = []
        _Sequence.made.append(self)

    def run(self, scenario: Scenario, mta: str) -> ScenarioResult:
        assert not self.closed
        time.sleep(0.0005 * estimated_s(scenario, mta))
        self.ran.append((scenario, mta))
        return ScenarioResult(file=str(scenario.path), name=scenario.name, mta=mta)

    def close(self) -> None:
        self.closed = True


def _run_all_without_engine(monkeypatch: pytest.MonkeyPatch, *, fresh: bool) -> tuple[list[ScenarioResult], Any]:
    _Sequence.made = []
    monkeypatch.setattr(runner, "ScenarioSequence", _Sequence)
    monkeypatch.setattr(runner, "build_images", lambda images, plan: {})
    images = SimpleNamespace(parallel=contextlib.nullcontext, image=lambda name: name)
    ctx = SimpleNamespace(reap=lambda: None, images=images, compose_dir=ROOT / "compose", fresh=fresh, jobs=6,
                          lanes=[])
    pairs = bundled_pairs()
    results = runner.run_all(ctx, [], pairs=pairs)  # type: ignore[arg-type]
    assert [(r.file, r.mta) for r in results] == [(str(s.path), m) for s, m in pairs]
    return results, ctx


def test_run_all_runs_the_back_of_a_queue_on_a_topology_of_its_key_still_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    handed: list[Lane] = []
    original = Schedule.next_lane

    def recording(self: Schedule, **kwargs: Any) -> Lane | None:
        lane = original(self, **kwargs)
        if lane is not None:
            handed.append(lane)
        return lane

    monkeypatch.setattr(Schedule, "next_lane", recording)
    # Whether a slot is free, with its topology running, while a lane of its key still has a queue to
    # split is up to the threads' timing: on a loaded machine it failed to happen in 1 run of 4 to 8.
    # Every run must keep each topology to one key; sharing must happen in one of three.
    shared = []
    for _ in range(3):
        handed.clear()
        _, ctx = _run_all_without_engine(monkeypatch, fresh=False)
        made = _Sequence.made
        assert all(s.closed for s in made)
        for sequence in made:
            assert len({sharing_key(*p) for p in sequence.ran}) == 1, "a topology ran pairs of two sharing keys"
        assert ctx.lanes == [s.ran for s in made if s.ran]
        shared.append(len(made) < len(handed))
        if shared[-1]:
            break
    assert any(shared), "in three runs, every lane started a topology of its own"


def test_run_all_in_fresh_mode_starts_a_topology_for_every_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    _, ctx = _run_all_without_engine(monkeypatch, fresh=True)
    assert [len(s.ran) for s in _Sequence.made] == [1] * len(bundled_pairs())
    assert len(ctx.lanes) == len(bundled_pairs())
