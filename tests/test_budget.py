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
