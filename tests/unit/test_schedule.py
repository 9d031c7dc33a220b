"""How the run's job slots get their work: whole groups first, longest first; then an idle slot takes
the back of the longest queue onto a topology of its own. Simulated on a clock (the cost model's
estimates as durations) and with real threads; no engine."""

from __future__ import annotations

import heapq
import random
import threading
import time

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


def simulate(schedule: Schedule, slots: int, *, healthy: bool = True) -> float:
    """Run the schedule on ``slots`` simulated slots, each pair taking its estimate (plus a topology
    start for a lane's first); after each pair, its lane is reported ``healthy`` and idle slots look for
    work again. The simulated wall time."""
    events: list[tuple[float, int, Lane]] = []
    idle = list(range(slots))
    now = 0.0

    def run_next(n: int, lane: Lane, *, first: bool) -> None:
        i = schedule.take(lane)
        assert i is not None
        took = estimated_s(*schedule.pairs[i]) + 0.1 + (TOPOLOGY_COST_S if first else 0.0)
        heapq.heappush(events, (now + took, n, lane))

    def look_for_work() -> None:
        while idle and (lane := schedule.next_lane(wait=False)) is not None:
            run_next(idle.pop(0), lane, first=True)

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
