"""Leader election: client-go's semantics with an injected clock and a fake Lease API.

Single attempts run on a manual clock (expiry, skew, transitions); the loops run on the real
clock with durations of a fraction of a second (renew deadline, supervision, standby survival).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Callable

import pytest
from certsync.leader import Conflict, Elector, LeadershipLost, LeaseRecord, Timing, lead
from certsync.metrics import Metrics
from kubernetes.client import ApiException

TIMING = Timing(lease_duration=15, renew_deadline=10, retry_period=2)
FAST = Timing(lease_duration=1.2, renew_deadline=0.6, retry_period=0.1)
EPOCH = dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.UTC)


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Store:
    """The API server's copy of the one Lease, with resource versions."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.version = 0

    def save(self, record: LeaseRecord) -> LeaseRecord:
        self.version += 1
        self.record = dataclasses.replace(record, resource_version=str(self.version))
        return self.record


class FakeLeases:
    """One replica's view of the API: `failure` is raised on every call (or "hang": never answers)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.failure: BaseException | str | None = None
        self.calls = 0

    async def _answer(self) -> None:
        self.calls += 1
        if self.failure == "hang":
            await asyncio.Event().wait()
        if isinstance(self.failure, BaseException):
            raise self.failure

    async def get(self, timeout: float) -> LeaseRecord | None:
        await self._answer()
        return self.store.record

    async def create(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        await self._answer()
        if self.store.record is not None:
            raise Conflict("exists")
        return self.store.save(record)

    async def update(self, record: LeaseRecord, timeout: float) -> LeaseRecord:
        await self._answer()
        assert self.store.record is not None
        if record.resource_version != self.store.record.resource_version:
            raise Conflict("changed")
        return self.store.save(record)


def wall_at(clock: ManualClock, skew: dt.timedelta) -> Callable[[], dt.datetime]:
    """A replica's wall clock: the shared time plus its own skew."""
    return lambda: EPOCH + dt.timedelta(seconds=clock.now - 1000.0) + skew


def replica(
    name: str, store: Store, clock: ManualClock, skew: dt.timedelta = dt.timedelta(0), timing: Timing = TIMING
) -> tuple[Elector, FakeLeases]:
    api = FakeLeases(store)
    return Elector(api, name, timing, clock=clock, wall=wall_at(clock, skew)), api


# --- single attempts on a manual clock ----------------------------------------------------------


async def test_a_standby_waits_a_lease_duration_from_the_last_change_it_saw() -> None:
    store, clock = Store(), ManualClock()
    a, _ = replica("a", store, clock)
    b, _ = replica("b", store, clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()  # b first sees the record now
    clock.advance(14.9)
    assert not await b.try_acquire_or_renew()
    clock.advance(0.2)
    assert await b.try_acquire_or_renew()
    assert store.record is not None and store.record.holder == "b" and store.record.transitions == 1


async def test_renewals_keep_a_standby_waiting_however_old_they_look() -> None:
    store, clock = Store(), ManualClock()
    a, _ = replica("a", store, clock)
    b, _ = replica("b", store, clock)
    await a.try_acquire_or_renew()
    for _ in range(20):
        clock.advance(10)  # less than a lease duration between two renewals
        assert not await b.try_acquire_or_renew()
        assert await a.try_acquire_or_renew()
    assert store.record is not None and store.record.holder == "a"


@pytest.mark.parametrize("skew_hours", [-3, 3])
async def test_clock_skew_between_replicas_changes_nothing(skew_hours: int) -> None:
    """The holder's renewTime is hours off the standby's wall clock: the standby neither takes over early
    (holder's clock behind) nor waits longer (holder's clock ahead)."""
    store, clock = Store(), ManualClock()
    a, _ = replica("a", store, clock, skew=dt.timedelta(hours=skew_hours))
    b, _ = replica("b", store, clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.advance(8)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()  # b sees the renewal (8 s after the first)
    clock.advance(14.9)
    assert not await b.try_acquire_or_renew()
    clock.advance(0.1)  # 15 s since b saw the last change
    assert await b.try_acquire_or_renew()


async def test_a_new_candidate_waits_a_full_lease_duration_even_for_an_old_looking_record() -> None:
    """A restarted replica has seen nothing yet: an hours-old renewTime is no proof of expiry."""
    store, clock = Store(), ManualClock()
    store.save(LeaseRecord("a", 15, EPOCH - dt.timedelta(hours=5), EPOCH - dt.timedelta(hours=5), 3))
    b, _ = replica("b", store, clock)
    assert not await b.try_acquire_or_renew()
    clock.advance(14)
    assert not await b.try_acquire_or_renew()
    clock.advance(1)
    assert await b.try_acquire_or_renew()
    assert store.record is not None and store.record.transitions == 4


async def test_a_released_lease_is_taken_at_once() -> None:
    store, clock = Store(), ManualClock()
    a, _ = replica("a", store, clock)
    b, _ = replica("b", store, clock)
    await a.try_acquire_or_renew()
    a.set_leading(True)
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert store.record is not None and store.record.holder == ""
    assert await b.try_acquire_or_renew()


async def test_a_lost_race_is_a_conflict_not_a_second_leader() -> None:
    """Both see an expired lease; the update that comes second carries a stale resourceVersion."""
    store, clock = Store(), ManualClock()
    store.save(LeaseRecord("gone", 15, EPOCH, EPOCH, 0))
    b, _ = replica("b", store, clock)
    c, _ = replica("c", store, clock)
    assert not await b.try_acquire_or_renew()
    assert not await c.try_acquire_or_renew()
    clock.advance(15)
    original_get = c.api.get

    async def get_then_let_b_win(timeout: float) -> LeaseRecord | None:
        record = await original_get(timeout)
        assert await b.try_acquire_or_renew()
        return record

    c.api.get = get_then_let_b_win  # type: ignore[method-assign]
    with pytest.raises(Conflict):
        await c.try_acquire_or_renew()
    assert store.record is not None and store.record.holder == "b"


async def test_metrics_follow_leadership() -> None:
    store, clock = Store(), ManualClock()
    metrics = Metrics()
    a = Elector(FakeLeases(store), "a", TIMING, clock=clock, wall=wall_at(clock, dt.timedelta(0)), metrics=metrics)
    b, _ = replica("b", store, clock)
    await b.try_acquire_or_renew()
    assert not await a.try_acquire_or_renew()
    clock.advance(15)
    assert await a.try_acquire_or_renew()
    a.set_leading(True)
    assert metrics.registry.get_sample_value("certsync_leader") == 1
    assert metrics.registry.get_sample_value("certsync_leader_transitions_total") == 1
    renewed = metrics.registry.get_sample_value("certsync_leader_last_renewal_timestamp_seconds")
    assert renewed == (EPOCH + dt.timedelta(seconds=15)).timestamp()
    await a.release()
    assert metrics.registry.get_sample_value("certsync_leader") == 0


# --- the loops, on the real clock with short durations ------------------------------------------


async def leader_and_api(timing: Timing = FAST) -> tuple[Elector, FakeLeases]:
    api = FakeLeases(Store())
    elector = Elector(api, "a", timing)
    await elector.acquire()
    assert elector.leading
    return elector, api


@pytest.mark.parametrize(
    "failure",
    [
        "hang",
        ConnectionRefusedError("refused"),
        TimeoutError(),
        ApiException(status=500),
        ApiException(status=503),
        Conflict("changed"),
        RuntimeError("anything else"),
    ],
    ids=["hang", "refused", "timeout", "500", "503", "409", "other"],
)
async def test_the_leader_stops_acting_by_the_renew_deadline_whatever_the_error(failure: BaseException | str) -> None:
    elector, api = await leader_and_api()
    api.failure = failure
    work_cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            work_cancelled.set()
            raise

    with pytest.raises(LeadershipLost):
        await asyncio.wait_for(lead(elector, work()), timeout=5)
    stopped = time.monotonic()
    assert elector.renewed_at is not None
    assert stopped - elector.renewed_at < FAST.renew_deadline + 0.15  # the deadline, plus the loop's latency
    assert stopped - elector.renewed_at < FAST.lease_duration  # before any standby may take over
    await asyncio.wait_for(work_cancelled.wait(), timeout=1)
    assert not elector.leading


async def test_a_renewal_loop_that_dies_stops_the_leader_at_once() -> None:
    elector, _ = await leader_and_api(Timing(lease_duration=30, renew_deadline=20, retry_period=0.05))
    elector.inject("crash")
    started = time.monotonic()
    with pytest.raises(LeadershipLost, match="died"):
        await asyncio.wait_for(lead(elector, asyncio.Event().wait()), timeout=5)
    assert time.monotonic() - started < 1  # not at the deadline: at once


async def test_a_stuck_renewal_loop_cannot_keep_the_leader_acting() -> None:
    """The watchdog does not depend on the renewal loop."""
    elector, _ = await leader_and_api()
    elector.inject("stall")
    with pytest.raises(LeadershipLost):
        await asyncio.wait_for(lead(elector, asyncio.Event().wait()), timeout=5)
    assert elector.renewed_at is not None
    assert time.monotonic() - elector.renewed_at < FAST.renew_deadline + 0.15


async def test_the_leader_stops_at_once_when_another_replica_holds_the_lease() -> None:
    elector, api = await leader_and_api(Timing(lease_duration=30, renew_deadline=20, retry_period=0.05))
    assert api.store.record is not None
    api.store.save(dataclasses.replace(api.store.record, holder="intruder"))
    with pytest.raises(LeadershipLost, match="intruder"):
        await asyncio.wait_for(lead(elector, asyncio.Event().wait()), timeout=5)


async def test_a_leader_keeps_leading_through_errors_shorter_than_the_deadline() -> None:
    elector, api = await leader_and_api(Timing(lease_duration=3, renew_deadline=2, retry_period=0.05))
    done = asyncio.Event()

    async def work() -> None:
        api.failure = ConnectionRefusedError("refused")
        await asyncio.sleep(0.5)
        api.failure = None
        calls = api.calls
        while api.calls < calls + 4:  # renewals succeed again
            await asyncio.sleep(0.05)
        done.set()

    await asyncio.wait_for(lead(elector, work()), timeout=5)
    assert done.is_set() and elector.leading


async def test_after_a_refused_renewal_the_next_try_comes_sooner() -> None:
    """An API server shedding load (429) refuses a few renewals: a retry period each would leave few tries."""
    store, clock = Store(), ManualClock()
    elector, api = replica("a", store, clock)
    assert await elector.try_acquire_or_renew()
    waits: list[float] = []

    class Enough(Exception):
        pass

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)
        api.failure = ConnectionRefusedError("429") if len(waits) in (1, 2) else None
        if len(waits) == 5:
            raise Enough

    elector.sleep = sleep
    with pytest.raises(Enough):
        await elector.renew()
    assert waits == [2.0, 0.5, 0.5, 2.0, 2.0]  # refused twice: two quick tries, then the usual period
    assert store.record is not None and store.record.holder == "a"


async def test_work_that_fails_is_reported_and_renewal_stops() -> None:
    elector, api = await leader_and_api()

    async def work() -> None:
        raise ValueError("kopf died")

    with pytest.raises(ValueError, match="kopf died"):
        await lead(elector, work())
    calls = api.calls
    await asyncio.sleep(FAST.retry_period * 3)
    assert api.calls == calls  # no renewal after the work stopped


@pytest.mark.parametrize(
    "failure", ["hang", ConnectionRefusedError("refused"), ApiException(status=500), RuntimeError("x")]
)
async def test_a_standby_survives_an_unreachable_api_server_and_keeps_trying(failure: BaseException | str) -> None:
    store = Store()
    store.save(LeaseRecord("a", 1, EPOCH, EPOCH, 0))  # held, never renewed again
    api = FakeLeases(store)
    api.failure = failure
    standby = Elector(api, "b", FAST)
    campaign = asyncio.create_task(standby.acquire())
    deadline = time.monotonic() + 5
    while api.calls < 5:
        assert time.monotonic() < deadline and not campaign.done()
        await asyncio.sleep(0.05)
    assert standby.alive() and not standby.leading
    api.failure = None  # the API server is back: the standby takes over once the record has not changed
    await asyncio.wait_for(campaign, timeout=5)
    assert standby.leading and store.record is not None and store.record.holder == "b"


async def test_a_stuck_election_loop_is_not_alive() -> None:
    clock = ManualClock()
    standby = Elector(FakeLeases(Store()), "b", TIMING, clock=clock)
    assert standby.alive()
    clock.advance(TIMING.stalled_after)
    assert not standby.alive()


def test_timing_needs_retry_below_deadline_below_duration() -> None:
    with pytest.raises(ValueError):
        Timing(lease_duration=10, renew_deadline=10, retry_period=2)
    with pytest.raises(ValueError):
        Timing(lease_duration=15, renew_deadline=2, retry_period=2)


async def test_a_leader_may_act_only_until_its_renew_deadline() -> None:
    """Asked before every remote call: a leader held up past its deadline sends nothing, watchdog or not."""
    store, clock = Store(), ManualClock()
    a, _ = replica("a", store, clock)
    assert not a.may_act()
    assert await a.try_acquire_or_renew()
    a.set_leading(True)
    assert a.may_act()
    clock.advance(TIMING.renew_deadline - 0.1)
    assert a.may_act()
    clock.advance(0.1)
    assert not a.may_act()
    with pytest.raises(TimeoutError):  # too late to renew: leadership is lost, never resumed
        await a.try_acquire_or_renew()
