"""The rate budgets: sliding windows, 429s, and state that survives a restart."""

from __future__ import annotations

import pytest
from certsync.budget import (
    CDN_UNPROVEN_FRACTION,
    EMQX_READ,
    EMQX_UNPROVEN_FRACTION,
    EMQX_WRITE,
    UNPROVEN_QUOTA,
    BudgetExhausted,
    RateBudget,
    Scope,
    Window,
    unproven_share,
)


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


CDN = Scope("cdn", "https://cdn.example", "acct", "all")
PER_MINUTE = Window(20, 60.0)


def test_unproven_callers_hold_at_most_their_share_and_count_in_the_window() -> None:
    budget = RateBudget(FakeClock())
    for _ in range(5):
        budget.acquire(CDN, PER_MINUTE, unproven_share=5)
    with pytest.raises(BudgetExhausted) as exhausted:
        budget.acquire(CDN, PER_MINUTE, unproven_share=5)
    assert exhausted.value.delay == 60
    for _ in range(15):  # proven callers keep the rest: the window, the unproven sends included, is 20
        budget.acquire(CDN, PER_MINUTE)
    with pytest.raises(BudgetExhausted):
        budget.acquire(CDN, PER_MINUTE)
    assert budget.export(CDN, PER_MINUTE)["sent"] == [1_000_000.0] * 20


def test_a_send_that_proved_its_caller_leaves_the_share_but_not_the_window() -> None:
    clock = FakeClock()
    budget = RateBudget(clock)
    first = budget.acquire(CDN, Window(2, 60.0), unproven_share=1)
    with pytest.raises(BudgetExhausted):
        budget.acquire(CDN, Window(2, 60.0), unproven_share=1)
    budget.prove(CDN, Window(2, 60.0), first)
    budget.acquire(CDN, Window(2, 60.0), unproven_share=1)
    with pytest.raises(BudgetExhausted):  # both still count against the remote's limit
        budget.acquire(CDN, Window(2, 60.0))


def test_a_refund_gives_the_send_back_and_idle_scopes_are_forgotten() -> None:
    clock = FakeClock()
    quotas = RateBudget(clock)
    quota = Scope("cdn", "https://cdn.example", "unproven ns", "all")
    sent = quotas.acquire(quota, UNPROVEN_QUOTA)
    with pytest.raises(BudgetExhausted):
        quotas.acquire(quota, UNPROVEN_QUOTA)
    quotas.refund(quota, UNPROVEN_QUOTA, sent)
    quotas.acquire(quota, UNPROVEN_QUOTA)
    quotas.forget_idle()
    assert len(list(quotas.scopes())) == 1  # still inside its minute
    clock.now += 61
    quotas.forget_idle()
    assert list(quotas.scopes()) == []


@pytest.mark.parametrize(
    ("window", "fraction", "share"),
    [
        (Window(20, 60.0), CDN_UNPROVEN_FRACTION, 5),
        (EMQX_WRITE, EMQX_UNPROVEN_FRACTION, 1),
        (EMQX_READ, EMQX_UNPROVEN_FRACTION, 10),
        (Window(2, 60.0), CDN_UNPROVEN_FRACTION, 1),  # a tiny window still lets a new tenant prove itself
        (Window(1, 60.0), CDN_UNPROVEN_FRACTION, 1),
    ],
)
def test_unproven_shares(window: Window, fraction: float, share: int) -> None:
    assert unproven_share(window, fraction) == share


async def test_the_gate_forgets_turns_and_bounds_its_proofs(monkeypatch: pytest.MonkeyPatch) -> None:
    from certsync import remote

    monkeypatch.setattr(remote, "MAX_PROOFS", 3)
    gate = remote.BudgetGate(RateBudget(FakeClock()))
    for n in range(5):
        async with gate.attempt(("ns", f"uid-{n}:1"), CDN, PER_MINUTE, 5) as go:
            go.send()
            go.proved()
    assert len(gate._turns) == 0  # no lock left behind
    assert [gate.is_proven(("ns", f"uid-{n}:1"), CDN.target) for n in range(5)] == [False, False, True, True, True]
    assert gate.quotas.export(Scope("cdn", CDN.endpoint, "unproven ns", "all"), UNPROVEN_QUOTA)["sent"] == []
    gate.forget_owner(("ns", "uid-4:1"))
    assert not gate.is_proven(("ns", "uid-4:1"), CDN.target)


def test_restored_send_times_are_bounded_to_the_window_and_its_limit() -> None:
    """A status is written by the operator, or by whoever may write /status: times ahead of the clock, or more of
    them than the window holds, would block the scope for ever."""
    now = [1_000_000.0]
    budget = RateBudget(clock=lambda: now[0])
    scope, window = Scope("emqx", "https://e", "d1", "write"), Window(6, 3600.0)
    forged = [1e12] * 6 + [now[0] + 3] + [now[0] - 10 * n for n in range(1, 20)] + [now[0] - 7200]
    budget.restore(scope, window, {"sent": forged, "blockedUntil": 1e15})
    sent = budget.export(scope, window)["sent"]
    assert isinstance(sent, list) and len(sent) == 6 and max(sent) <= now[0] + 5  # the six latest plausible ones
    assert budget.next_allowed(scope, window) <= now[0] + 3600 + 5  # a 429's longest block, no more
    now[0] += 3600 + 10
    assert budget.remaining(scope, window) == 6  # all gone an hour later
