"""Fair shares between namespaces: round-robin pools, workers lent out during remote calls, the remote share cap."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from certsync import emqx
from certsync.budget import RateBudget, Window
from certsync.fairshare import NAMESPACE, FairPool, RemoteSlots, WorkerPool, locked, released
from certsync.remote import NO_RETRY

from tests.test_remote_concurrency import HeldServer, until


async def ticks(n: int = 5) -> None:
    """Let every ready task run (no time passes: these pools never sleep)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def served_order(pool: FairPool, waiters: list[str]) -> list[str]:
    """Queue one waiter per entry (in order) behind a full pool, then free it: each served waiter frees its slot."""
    order: list[str] = []

    async def wait(label: str) -> None:
        namespace = label.split("-")[0]
        await pool.acquire(namespace)
        order.append(label)
        pool.release(namespace)

    for _ in range(pool.size):
        await pool.acquire("holder")
    tasks = [asyncio.create_task(wait(label)) for label in waiters]
    await ticks()
    assert pool.waiting() == len(waiters)
    for _ in range(pool.size):
        pool.release("holder")
    await asyncio.gather(*tasks)
    return order


async def test_waiters_are_served_round_robin_by_namespace() -> None:
    pool = FairPool(1)
    attacker = [f"attacker-{n}" for n in range(10)]
    order = await served_order(pool, [*attacker, "victim-0", "other-0"])
    # One attacker waiter was first in line; then every namespace gets its turn before the attacker's second.
    assert order[:4] == ["attacker-0", "victim-0", "other-0", "attacker-1"]
    assert order[4:] == attacker[2:]  # and a namespace's own waiters keep their order
    assert pool.in_use() == 0 and pool.namespaces() == 0


async def test_a_thousand_waiters_of_one_namespace_delay_another_by_one_turn() -> None:
    pool = WorkerPool(4)
    started: list[str] = []
    gate = asyncio.Event()

    async def a_pass(namespace: str) -> None:
        async with pool.serve(namespace):
            started.append(namespace)
            await gate.wait()

    attacker = [asyncio.create_task(a_pass("attacker")) for _ in range(1000)]
    await until("the attacker to take every worker", lambda: len(started) == 4)
    victim = asyncio.create_task(a_pass("victim"))
    await ticks()
    gate.set()  # the four running passes end: the first worker freed is the victim's
    await until("the victim to start", lambda: "victim" in started)
    assert started.index("victim") == 5  # one attacker pass was first in line: the victim is next
    await asyncio.gather(victim, *attacker)
    assert pool.in_use() == 0 and pool.pool.namespaces() == 0


async def test_a_namespace_never_holds_more_than_its_share_of_remote_slots() -> None:
    slots = RemoteSlots(per_scope=100, overall=6)  # the default share: half, so 3 slots a namespace
    assert slots.per_namespace == 3
    hung = asyncio.Event()
    inside: list[str] = []

    async def call(namespace: str, target: str) -> None:
        NAMESPACE.set(namespace)
        async with slots.slot(target):
            inside.append(namespace)
            await hung.wait()

    attacker = [asyncio.create_task(call("attacker", f"t{n}")) for n in range(40)]
    await until("the attacker's share to be in flight", lambda: len(inside) == 3)
    await ticks()
    assert slots.held("attacker") == 3 and slots.in_flight() == 3  # the other 37 queue: the rest stays free
    victim = asyncio.create_task(call("victim", "v"))
    await until("the victim's call to be in flight", lambda: "victim" in inside)
    assert slots.in_flight() == 4
    hung.set()
    await asyncio.gather(victim, *attacker)
    assert slots.in_flight() == 0 and not slots._scopes


@pytest.mark.parametrize(("overall", "share", "cap"), [(1, 0.5, 1), (3, 0.5, 1), (32, 0.5, 16), (4, 1.0, 4)])
def test_the_share_is_at_least_one_slot(overall: int, share: float, cap: int) -> None:
    assert RemoteSlots(overall=overall, share=share).per_namespace == cap


def test_limits_below_one_are_refused() -> None:
    for make in (lambda: RemoteSlots(per_scope=0), lambda: RemoteSlots(overall=0), lambda: RemoteSlots(share=0)):
        with pytest.raises(ValueError):
            make()
    with pytest.raises(ValueError):
        FairPool(0)


async def test_the_per_target_limit_stays() -> None:
    slots = RemoteSlots(per_scope=2, overall=32)
    release = asyncio.Event()
    running: list[int] = []
    peak = 0

    async def call(namespace: str) -> None:
        nonlocal peak
        NAMESPACE.set(namespace)
        async with slots.slot("emqx:https://e/api:dep1"):
            running.append(1)
            peak = max(peak, len(running))
            await release.wait()
            running.pop()

    tasks = [asyncio.create_task(call(ns)) for ns in ("a", "b", "c", "a", "b")]
    await until("two calls in flight", lambda: len(running) == 2)
    await ticks()
    assert slots.in_flight() == 2
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 2 and slots.in_flight() == 0 and not slots._scopes


async def test_a_pass_lends_its_worker_out_during_a_remote_call_and_takes_one_back() -> None:
    workers = WorkerPool(1)
    slots = RemoteSlots()
    in_call, answer, other_ran, other_may_end = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()
    steps: list[str] = []

    async def waiting_on_the_remote() -> None:
        async with workers.serve("slow"):
            steps.append("slow starts")
            async with slots.slot("cdn:https://slow:acct"):
                assert NAMESPACE.get() == "slow"
                in_call.set()
                await answer.wait()
            steps.append("slow resumes")  # with a worker again

    async def other() -> None:
        async with workers.serve("other"):
            steps.append("other runs")
            other_ran.set()
            await other_may_end.wait()
        steps.append("other ends")

    slow = asyncio.create_task(waiting_on_the_remote())
    await in_call.wait()
    assert workers.in_use() == 0  # the only worker is free while the call is in flight
    fast = asyncio.create_task(other())
    await other_ran.wait()
    answer.set()  # the slow pass's answer arrives while the other pass holds the only worker
    await ticks()
    assert workers.in_use() == 1 and steps == ["slow starts", "other runs"]  # it waits for a worker
    other_may_end.set()
    await asyncio.gather(slow, fast)
    assert steps == ["slow starts", "other runs", "other ends", "slow resumes"]
    assert workers.in_use() == 0 and slots.in_flight() == 0


async def test_a_real_client_call_lends_the_worker_out() -> None:
    """Through the EMQX client as the controllers call it: a hung remote holds a remote slot, not the worker."""
    server = HeldServer(lambda _: httpx.Response(200, json={"tlsType": "one-way", "status": "running"}))
    workers, slots = WorkerPool(1), RemoteSlots(per_scope=2, overall=4)
    client = emqx.EmqxClient(transport=server.transport(), concurrency=slots, retry=NO_RETRY, budget=RateBudget(),
                             read_window=Window(limit=100, period=3600.0))  # fmt: skip
    accesses = {
        ns: emqx.EmqxAccess("https://emqx.test/api", "key", "secret", ns, "uid:1") for ns in ("attacker", "victim")
    }
    for access in accesses.values():  # proven credentials: no quota of unproven ones serialises their calls
        for deployment in [*(f"dep{n}" for n in range(5)), "mine"]:
            client.gate.prove(emqx.owner(access), client.scope(access, deployment, "GET")[0].target)

    async def a_pass(namespace: str, deployment: str) -> None:
        async with workers.serve(namespace):
            await client.get_tls(accesses[namespace], deployment)

    hung = [asyncio.create_task(a_pass("attacker", f"dep{n}")) for n in range(5)]
    await until("the attacker's share of calls at the server", lambda: server.running["all"] == 2)
    await ticks()
    assert workers.in_use() == 0 and slots.held("attacker") == 2  # three more queue without a worker
    victim = asyncio.create_task(a_pass("victim", "mine"))
    await until("the victim's call at the server", lambda: server.running["deployments/mine"] == 1)
    server.release.set()
    await asyncio.gather(victim, *hung)
    await client.aclose()
    assert server.served == 6 and workers.in_use() == 0 and slots.in_flight() == 0


async def test_passes_coming_back_from_a_remote_go_before_new_passes_of_their_namespace() -> None:
    workers = WorkerPool(1)
    order: list[str] = []
    answered = asyncio.Event()
    in_call = asyncio.Event()

    async def resuming() -> None:
        async with workers.serve("ns"):
            async with released():
                in_call.set()
                await answered.wait()
            order.append("resumed")

    async def new(label: str) -> None:
        async with workers.serve("ns"):
            order.append(label)
            await answered.wait()

    first = asyncio.create_task(resuming())
    await in_call.wait()
    holder = asyncio.create_task(new("holder"))
    await until("the holder to run", lambda: order == ["holder"])
    queued = [asyncio.create_task(new(f"new{n}")) for n in range(3)]
    await ticks()
    answered.set()
    await asyncio.gather(first, holder, *queued)
    assert order == ["holder", "resumed", "new0", "new1", "new2"]


@pytest.mark.parametrize("point", ["queued", "handed a slot", "holding"])
async def test_a_cancelled_waiter_never_leaks_nor_steals_a_slot(point: str) -> None:
    pool = FairPool(1)
    await pool.acquire("holder")
    got: list[str] = []

    async def wait(namespace: str) -> None:
        await pool.acquire(namespace)
        got.append(namespace)
        try:
            await asyncio.Event().wait()
        finally:
            pool.release(namespace)

    cancelled = asyncio.create_task(wait("a"))
    behind = asyncio.create_task(wait("b"))
    await ticks()
    assert pool.waiting() == 2
    if point == "queued":
        cancelled.cancel()
        await ticks()
        assert pool.waiting() == 1 and pool.in_use() == 1
        pool.release("holder")
    elif point == "handed a slot":
        pool.release("holder")  # handed to "a" at once ...
        assert pool.held("a") == 1
        cancelled.cancel()  # ... which is cancelled before it could run: the slot goes on to "b"
    else:
        pool.release("holder")
        await until("a to hold the slot", lambda: got == ["a"])
        cancelled.cancel()
    await until("b to hold the slot", lambda: "b" in got)
    assert "a" not in got or point == "holding"
    assert pool.in_use() == 1 and pool.held("b") == 1 and pool.held("a") == 0
    behind.cancel()
    await asyncio.gather(cancelled, behind, return_exceptions=True)
    assert pool.in_use() == 0 and pool.waiting() == 0 and pool.namespaces() == 0


@pytest.mark.parametrize("point", ["waiting for a worker", "running", "in the call", "taking the worker back"])
async def test_a_cancelled_pass_gives_back_everything_it_held(point: str) -> None:
    workers, slots = WorkerPool(1), RemoteSlots(per_scope=1, overall=1)
    in_call, answered, holding = asyncio.Event(), asyncio.Event(), asyncio.Event()
    blocker_may_end = asyncio.Event()

    async def a_pass() -> None:
        async with workers.serve("victim"):
            holding.set()
            if point == "running":
                await asyncio.Event().wait()
            async with slots.slot("t"):
                in_call.set()
                await answered.wait()

    async def blocker() -> None:
        async with workers.serve("other"):
            await blocker_may_end.wait()

    if point == "waiting for a worker":
        other = asyncio.create_task(blocker())
        await until("the blocker to hold the worker", lambda: workers.in_use() == 1)
        task = asyncio.create_task(a_pass())
        await ticks()
    else:
        task = asyncio.create_task(a_pass())
        await (holding.wait() if point == "running" else in_call.wait())
        other = asyncio.create_task(blocker())
        if point == "taking the worker back":
            await until("the blocker to hold the lent worker", lambda: workers.in_use() == 1)
            answered.set()
            await ticks()  # the pass waits for its worker back now
            assert slots.in_flight() == 0 and workers.pool.waiting() == 1
    task.cancel()
    await ticks()
    blocker_may_end.set()
    await asyncio.gather(task, other, return_exceptions=True)
    assert task.cancelled()
    assert workers.in_use() == 0 and workers.pool.waiting() == 0 and workers.pool.namespaces() == 0
    assert slots.in_flight() == 0 and not slots._scopes
    async with workers.serve("next"):  # and both pools still serve
        assert workers.in_use() == 1
        async with slots.slot("t"):
            assert slots.in_flight() == 1 and workers.in_use() == 0


@pytest.mark.parametrize("where", ["in the call", "after the call", "outside any call"])
async def test_no_slot_is_leaked_after_an_exception(where: str) -> None:
    workers, slots = WorkerPool(2), RemoteSlots(per_scope=1, overall=2)

    async def failing() -> None:
        async with workers.serve("ns"):
            if where != "outside any call":
                async with slots.slot("t"):
                    if where == "in the call":
                        raise OSError("the remote broke")
            raise OSError("the pass broke")

    for _ in range(3):  # more times than there are slots: a leak would block the next
        with pytest.raises(OSError):
            await asyncio.wait_for(failing(), timeout=5)
    assert workers.in_use() == 0 and slots.in_flight() == 0 and not slots._scopes
    assert workers.pool.namespaces() == 0 and NAMESPACE.get() is None


async def test_a_lock_held_across_a_remote_call_does_not_deadlock_its_waiters() -> None:
    """The single-flight pattern (a login, a shared list): every waiter of the lock lends its worker out."""
    workers, slots = WorkerPool(2), RemoteSlots()
    lock = asyncio.Lock()
    answered = asyncio.Event()
    done: list[int] = []

    async def a_pass(n: int) -> None:
        async with workers.serve("ns"):
            async with locked(lock), slots.slot("login"):
                await answered.wait()
            done.append(n)

    tasks = [asyncio.create_task(a_pass(n)) for n in range(6)]  # more passes than workers, one lock
    await until("one holder in its call", lambda: slots.in_flight() == 1)
    await ticks()
    assert workers.in_use() == 0  # nobody holds a worker while waiting for the lock or the remote
    answered.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert sorted(done) == list(range(6)) and workers.in_use() == 0 and not lock.locked()


async def test_a_write_that_outlives_its_pass_takes_no_worker() -> None:
    """A shielded write (guarded_write) keeps running after its pass is cancelled: it never takes a worker."""
    workers, slots = WorkerPool(1), RemoteSlots()
    answered, in_call = asyncio.Event(), asyncio.Event()

    async def write() -> None:
        async with slots.slot("t"):
            in_call.set()
            await answered.wait()

    writes: list[asyncio.Task[None]] = []

    async def a_pass() -> None:
        async with workers.serve("ns"):
            writes.append(asyncio.create_task(write()))  # inherits the pass's context, as ensure_future does
            await asyncio.shield(writes[0])

    task = asyncio.create_task(a_pass())
    await in_call.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert workers.in_use() == 0
    answered.set()
    await writes[0]
    assert workers.in_use() == 0 and workers.pool.waiting() == 0 and slots.in_flight() == 0


async def test_outside_a_pass_nothing_is_lent_and_calls_share_one_namespace() -> None:
    slots = RemoteSlots(overall=4)
    assert NAMESPACE.get() is None
    async with released(), slots.slot("t"):
        assert slots.held("") == 1


def test_namespace_is_only_set_inside_a_pass() -> None:
    seen: list[str | None] = []

    async def main() -> None:
        workers = WorkerPool(1)
        seen.append(NAMESPACE.get())
        async with workers.serve("tenant"):
            seen.append(NAMESPACE.get())
        seen.append(NAMESPACE.get())

    asyncio.run(main())
    assert seen == [None, "tenant", None]


async def test_more_passes_of_one_account_than_workers_share_one_list_without_deadlock() -> None:
    """The controllers' shared CDN list (a lock held across the list call): 6 passes of one account, 2 workers."""
    from certsync.cdn import CdnAccess
    from certsync.controllers import cdncertificate
    from certsync.controllers.base import Resource, Runtime
    from certsync.metrics import Metrics
    from certsync.settings import Settings

    slots = RemoteSlots()
    answered = asyncio.Event()
    lists = 0

    class SlowCdn:
        async def list_certificates(self, access: CdnAccess) -> list[object]:
            nonlocal lists
            async with slots.slot("cdn:https://cdn.test:acct1"):
                lists += 1
                await answered.wait()
            return []

    rt = Runtime(settings=Settings(), budget=RateBudget(), emqx=None, cdn=SlowCdn(), kube=None, metrics=Metrics(),  # type: ignore[arg-type]
                 workers=WorkerPool(2))  # fmt: skip
    access = CdnAccess("https://cdn.test", "acct1", token="static-token", credentials_id="uid:1", namespace="ns")
    spec = {"endpoint": "https://cdn.test", "account": "acct1"}

    async def a_pass(n: int) -> None:
        r = Resource("cdncertificates", "ns", f"cert{n}", f"uid{n}", 1, "", spec, {})
        async with rt.workers.serve("ns"):
            assert await cdncertificate.listing(rt, r, access) == []

    tasks = [asyncio.create_task(a_pass(n)) for n in range(6)]
    await until("the one list call in flight", lambda: slots.in_flight() == 1)
    await ticks()
    answered.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert lists == 1 and rt.workers.in_use() == 0
