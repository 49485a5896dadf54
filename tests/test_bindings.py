"""The pure rules of CdnCertificate bindings: host name coverage (as TLS clients match) and rebind planning."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from certsync.reconcile import bindings as rb

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
CYCLE = NOW - dt.timedelta(minutes=30)  # the account's drift cycle began then
EARLIER = "2026-03-01T11:00:00Z"  # before the cycle
LATER = "2026-03-01T11:45:00Z"  # within it
NAMES = ("www.shop.example", "*.img.shop.example")


@pytest.mark.parametrize(
    ("certificate", "host", "covered"),
    [
        (("www.example.com",), "www.example.com", True),
        (("WWW.Example.COM",), "www.example.com.", True),  # case and a trailing dot do not matter
        (("*.example.com",), "a.example.com", True),
        (("*.example.com",), "example.com", False),  # the wildcard needs its one label
        (("*.example.com",), "a.b.example.com", False),  # and covers exactly one
        (("*.example.com",), "*.example.com", True),  # a resource's own wildcard: the same wildcard
        (("a.example.com",), "*.example.com", False),  # but no single name covers it
        (("*.*.example.com",), "a.b.example.com", False),  # only the leftmost label may be a wildcard
        (("*.com",), "example.com", False),  # never a wildcard of a single label
        (("f*.example.com",), "foo.example.com", False),  # partial wildcards: not matched
        (("*.example.com",), "a.example.org", False),
        (("xn--bcher-kva.example",), "bücher.example", True),  # international names compare in punycode
        ((), "www.example.com", False),
        (("www.example.com",), "", False),
    ],
)
def test_coverage_is_tls_hostname_matching(certificate: tuple[str, ...], host: str, covered: bool) -> None:
    assert rb.covers(certificate, host) is covered


def test_uncovered_lists_every_missing_name_in_the_resources_order() -> None:
    assert rb.uncovered(["*.shop.example"], ["www.shop.example", "shop.example", "a.b.shop.example"]) == [
        "shop.example",
        "a.b.shop.example",
    ]
    assert rb.uncovered(["*.shop.example", "shop.example"], ["www.shop.example", "shop.example"]) == []


def test_the_cn_counts_only_without_sans() -> None:
    assert rb.certificate_names("www.example.com", ()) == ("www.example.com",)
    assert rb.certificate_names("legacy.example.com", ("www.example.com",)) == ("www.example.com",)


def test_bind_to_ids_come_once_each_and_removed_ids_are_forgotten() -> None:
    assert rb.wanted(["r1", "r2", "r1", "", 7]) == ["r1", "r2", "7"]
    assert rb.wanted(None) == [] and rb.wanted("r1") == []
    recorded = [{"resourceId": "r1", "state": "Bound", "seq": 3}, {"resourceId": "gone", "state": "Bound", "seq": 3}]
    current = rb.entries(recorded, ["r1", "r2"])
    assert list(current) == ["r1", "r2"]  # "gone" is dropped: its resource is left as it is
    assert current["r1"].state == "Bound" and current["r2"] == rb.Binding("r2")


def test_status_entries_round_trip_and_forged_ones_are_read_safely() -> None:
    entry = rb.Binding("r1", "Applying", 3, "t-9", None, "task t-9 accepted", LATER, None, ("www.shop.example",))
    assert rb.Binding.from_status(entry.to_status()) == entry
    forged = rb.Binding.from_status({"resourceId": "r1", "state": "Owned", "seq": True, "taskId": 5, "names": "x"})
    assert forged == rb.Binding("r1")
    assert rb.Binding.from_status({"state": "Bound"}) is None


def binding(state: rb.BindState, **fields: object) -> rb.Binding:
    return dataclasses.replace(rb.Binding("r1", state, seq=3, checked_at=LATER, names=("www.shop.example",)), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("entry", "seq", "forced", "need"),
    [
        (binding("Bound"), 3, False, "none"),  # in sync and read this cycle: no call
        (binding("Bound", checked_at=EARLIER), 3, False, "read"),  # the drift check of the cycle
        (binding("Bound"), 3, True, "read"),  # a person asked
        (binding("Bound"), 4, False, "read"),  # a new seq moves every bound resource
        (binding("Bound", names=("shop.example",)), 3, False, "read"),  # the certificate no longer covers it
        (binding("Applying", task_id="t1"), 3, False, "task"),
        (binding("Applying", task_id="t1"), 4, False, "read"),  # a task of the old seq is not followed
        (binding("Sending", intent_at=LATER), 3, False, "read"),  # an unanswered write: read, never write blindly
        (binding("Failed"), 3, False, "none"),  # retried at the next cycle, not in a loop
        (binding("Failed", checked_at=EARLIER), 3, False, "read"),
        (binding("Error"), 3, False, "none"),
        (binding("NamesNotCovered", names=("shop.example",)), 3, False, "none"),
        (binding("NamesNotCovered", names=("www.shop.example",)), 3, False, "read"),  # now covered: look again
        (rb.Binding("r1"), 3, False, "read"),  # new
        (binding("Pending"), 3, False, "write"),  # read this cycle, not written (out of budget): no second read
        (binding("Pending", names=("shop.example",)), 3, False, "read"),  # unless its names are not covered
        (binding("Pending", checked_at=EARLIER), 3, False, "read"),
    ],
)
def test_what_a_binding_needs_before_deciding(entry: rb.Binding, seq: int, forced: bool, need: str) -> None:
    assert rb.need(entry, seq, CYCLE, forced, NAMES) == need


@pytest.mark.parametrize(
    ("entry", "hosts", "certificate", "state", "step"),
    [
        (rb.Binding("r1"), ["www.shop.example"], None, "Pending", "write"),
        (rb.Binding("r1"), ["www.shop.example"], 2, "Pending", "write"),  # another seq: rebind
        (rb.Binding("r1"), ["www.shop.example"], 3, "Bound", "none"),  # already there: nothing written
        (rb.Binding("r1"), ["www.shop.example", "shop.example"], None, "NamesNotCovered", "none"),
        (rb.Binding("r1"), ["www.shop.example", "shop.example"], 3, "NamesNotCovered", "none"),
        (binding("Sending", intent_at="2026-03-01T11:59:00Z"), ["www.shop.example"], 2, "Sending", "wait"),
        (binding("Sending", intent_at="2026-03-01T11:50:00Z"), ["www.shop.example"], 2, "Pending", "write"),
        (binding("Sending", intent_at="2026-03-01T11:59:00Z"), ["www.shop.example"], 3, "Bound", "none"),
        (binding("Applying", task_id="t1"), ["a.img.shop.example"], 3, "Bound", "none"),  # wildcard name of the cert
    ],
)
def test_what_a_read_decides(
    entry: rb.Binding, hosts: list[str], certificate: int | None, state: str, step: str
) -> None:
    after, decided = rb.after_read(entry, hosts, certificate, 3, NAMES, NOW)
    assert (after.state, decided) == (state, step)
    assert after.checked_at == "2026-03-01T12:00:00Z" and after.names == tuple(hosts)


def test_bound_at_says_since_when_and_a_rebind_restarts_it() -> None:
    bound, _ = rb.after_read(binding("Bound", bound_at=EARLIER), ["www.shop.example"], 3, 3, NAMES, NOW)
    assert bound.bound_at == EARLIER
    moved, _ = rb.after_read(binding("Bound", bound_at=EARLIER, seq=2), ["www.shop.example"], 3, 3, NAMES, NOW)
    assert moved.bound_at == "2026-03-01T12:00:00Z"


def test_a_task_completed_asks_for_a_fresh_read_and_an_error_fails_with_its_message() -> None:
    applying = binding("Applying", task_id="t1")
    assert rb.after_task(applying, "completed", "")[1] == "reread"
    assert rb.after_task(applying, "completed", "")[0].state == "Applying"  # only a read says Bound
    for state in ("pending", "process"):
        assert rb.after_task(applying, state, "")[1] == "wait"
    failed, step = rb.after_task(applying, "error", "origin unreachable")
    assert step == "none" and failed.state == "Failed" and "origin unreachable" in failed.message


def test_the_write_ahead_record_and_the_answer() -> None:
    sending = rb.intent(rb.Binding("r1"), 3, NOW)
    assert (sending.state, sending.seq, sending.intent_at, sending.task_id) == (
        "Sending",
        3,
        "2026-03-01T12:00:00Z",
        None,
    )
    applying = rb.accepted(sending, "t-7")
    assert (applying.state, applying.task_id, applying.intent_at) == ("Applying", "t-7", None)


def test_the_resources_state_and_column() -> None:
    bound = {rid: binding("Bound", resource_id=rid) for rid in ("r1", "r2")}
    assert rb.overall(bound, 3) is None and rb.column(bound, 3) == "2/2"
    assert rb.column(bound, 4) == "0/2" and rb.column({}, 3) is None
    half = {**bound, "r2": binding("Applying", resource_id="r2", task_id="t", message="task t is pending")}
    state = rb.overall(half, 3)
    assert state is not None and (state.kind, state.reason) == ("reconciling", "Pending")
    assert "1 of 2" in state.message and "r2: task t is pending" in state.message
    failing = {**half, "r1": binding("Failed", message="task t1 failed: boom")}
    state = rb.overall(failing, 3)
    assert state is not None and (state.kind, state.reason) == ("stalled", "BindingFailed")
    uncovered = {**failing, "r2": binding("NamesNotCovered", resource_id="r2", message="does not cover x")}
    state = rb.overall(uncovered, 3)  # names first: a person's fix of the certificate
    assert state is not None and state.reason == "NamesNotCovered" and "r2" in state.message
    gone = rb.refused(rb.Binding("r9"), 3, "RemoteNotFound", "404: no body", NOW)
    state = rb.overall({"r9": gone}, 3)
    assert state is not None and (state.kind, state.reason) == ("stalled", "RemoteNotFound")
