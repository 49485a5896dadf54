"""The rate budgets: sliding windows, 429s, and state that survives a restart."""

from __future__ import annotations

import pytest
from certsync.budget import EMQX_WRITE, BudgetExhausted, RateBudget, Scope, Window


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


SCOPE = Scope("emqx", "https://api.example", "dep1", "write")


def test_sliding_window_frees_one_slot_at_a_time() -> None:
    clock = FakeClock()
    budget = RateBudget(clock)
    for i in range(6):
        clock.now += 60 * i
        budget.acquire(SCOPE, EMQX_WRITE)
    first = 1_000_000.0
    with pytest.raises(BudgetExhausted) as exhausted:
        budget.acquire(SCOPE, EMQX_WRITE)
    assert exhausted.value.retry_at == first + 3600
    assert budget.remaining(SCOPE, EMQX_WRITE) == 0
    clock.now = first + 3600
    budget.acquire(SCOPE, EMQX_WRITE)
    with pytest.raises(BudgetExhausted):
        budget.acquire(SCOPE, EMQX_WRITE)


def test_scopes_are_independent() -> None:
    budget = RateBudget(FakeClock())
    window = Window(1, 60)
    budget.acquire(SCOPE, window)
    budget.acquire(Scope("emqx", "https://api.example", "dep2", "write"), window)
    budget.acquire(Scope("emqx", "https://api.example", "dep1", "read"), window)
    with pytest.raises(BudgetExhausted):
        budget.acquire(SCOPE, window)


@pytest.mark.parametrize(("retry_after", "expected"), [(30.0, 30.0), (None, 3600.0)])
def test_429_blocks_until_retry_after_or_the_window_frees(retry_after: float | None, expected: float) -> None:
    clock = FakeClock()
    budget = RateBudget(clock)
    budget.acquire(SCOPE, EMQX_WRITE)
    until = budget.record_rate_limited(SCOPE, EMQX_WRITE, retry_after)
    assert until - clock.now == expected
    with pytest.raises(BudgetExhausted):
        budget.acquire(SCOPE, EMQX_WRITE)
    clock.now += expected
    budget.acquire(SCOPE, EMQX_WRITE)


def test_export_and_restore_survive_a_restart() -> None:
    clock = FakeClock()
    before = RateBudget(clock)
    for _ in range(6):
        before.acquire(SCOPE, EMQX_WRITE)
        clock.now += 1
    saved = before.export(SCOPE, EMQX_WRITE)
    assert len(saved["sent"]) == 6  # type: ignore[arg-type]
    after = RateBudget(clock)  # a new process
    after.restore(SCOPE, EMQX_WRITE, saved)
    with pytest.raises(BudgetExhausted):
        after.acquire(SCOPE, EMQX_WRITE)
    after.restore(SCOPE, EMQX_WRITE, saved)  # restoring twice does not double count
    clock.now += 3600
    after.acquire(SCOPE, EMQX_WRITE)
    assert after.remaining(SCOPE, EMQX_WRITE) == 5


async def test_concurrency_bounds_each_scope_and_the_whole_and_serves_in_order() -> None:
    import asyncio

    from certsync.budget import Concurrency

    limits = Concurrency(per_scope=2, overall=3)
    peak: dict[str, int] = {}
    running: dict[str, int] = {}
    order: list[int] = []
    gate = asyncio.Event()

    async def call(scope: str, n: int) -> None:
        async with limits.slot(scope):
            running[scope] = running.get(scope, 0) + 1
            peak[scope] = max(peak.get(scope, 0), running[scope])
            peak["all"] = max(peak.get("all", 0), sum(running.values()))
            order.append(n)
            await gate.wait()
            running[scope] -= 1

    tasks = [asyncio.create_task(call("a" if n % 2 else "b", n)) for n in range(10)]
    while len(order) < 3:
        await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    assert peak["a"] <= 2 and peak["b"] <= 2 and peak["all"] <= 3
    assert sorted(order) == list(range(10)) and order[:3] == [0, 1, 2]
    assert limits.in_flight() == 0 and not limits._scopes  # nothing left behind


async def test_a_failing_call_gives_its_slot_back() -> None:
    import pytest
    from certsync.budget import Concurrency

    limits = Concurrency(per_scope=1, overall=1)
    with pytest.raises(RuntimeError):
        async with limits.slot("x"):
            raise RuntimeError("remote exploded")
    async with limits.slot("x"):
        assert limits.in_flight() == 1
