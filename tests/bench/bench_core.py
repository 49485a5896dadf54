"""Benchmarks of the hot pure paths: certificate validation, budget decisions, reconcile plans.

Run: `python -m tests.bench.bench_core`. Prints operations per second and peak memory;
no goal is set yet, so nothing fails: the figures are for comparing changes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import tracemalloc
from collections.abc import Callable

from certsync import pki
from certsync.budget import EMQX_WRITE, BudgetExhausted, RateBudget, Scope
from certsync.reconcile import deploymenttls as rd

from devkit.factory import three_level


def measure(name: str, action: Callable[[], object], seconds: float = 1.0) -> None:
    tracemalloc.start()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        action()
        count += 1
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{name:<40} {count / elapsed:>12,.0f} ops/s   peak {peak / 1024:>8,.0f} KiB")


def main() -> None:
    now = dt.datetime.now(dt.UTC)
    rsa_chain, ec_chain = three_level("bench.example", key_kind="rsa"), three_level("bench.example")
    measure(
        "validate_tls: RSA leaf, 3-link chain",
        lambda: pki.validate_tls(rsa_chain.full_pem, rsa_chain.leaf.key_pem(), now),
    )
    measure(
        "validate_tls: ECDSA leaf, 3-link chain",
        lambda: pki.validate_tls(ec_chain.full_pem, ec_chain.leaf.key_pem(), now),
    )

    clock = [0.0]
    budget = RateBudget(lambda: clock[0])
    scope = Scope("emqx", "https://api.example", "dep", "write")

    def acquire() -> None:
        clock[0] += 601.0  # one write every ten minutes: always inside the budget
        budget.acquire(scope, EMQX_WRITE)

    measure("budget.acquire (6/h window)", acquire)

    def refused() -> None:
        with contextlib.suppress(BudgetExhausted):
            budget.acquire(scope, EMQX_WRITE)

    for _ in range(6):
        clock[0] += 1
        refused()
    measure("budget.acquire refused (window full)", refused)

    desired = rd.Desired("e|d", "F", "one-way", "cn", now)
    record = rd.Record("e|d", "F", "running", None, last_sync=now)
    observed = rd.Observed(desired, record, None, now, 3600)
    measure("deploymenttls.plan (in sync, no call)", lambda: rd.plan(observed))


if __name__ == "__main__":
    main()
