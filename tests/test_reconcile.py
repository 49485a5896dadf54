"""Table-driven tests of the pure decisions, with a fixed clock: no server, no kopf."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from certsync import reconcile as rc
from certsync.reconcile import cdn, orders, targets
from certsync.reconcile import deploymenttls as rd
from certsync.reconcile.record import Intent, new_intent

from devkit.factory import issue

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
EXPIRE = NOW + dt.timedelta(days=60)
UTC8 = EXPIRE + dt.timedelta(hours=8)  # what a remote in UTC+8 reports for the same leaf
TARGET = "https://emqx.example/api|ge6a1a75"
WANT = rd.Desired(TARGET, "D2", "one-way", "mqtt.example.com", EXPIRE)
SYNCED = rd.Record(TARGET, "D2", "running", "2027-01-24T20:00:00Z", last_sync=NOW - dt.timedelta(hours=1))
RUNNING = rd.Remote(False, "one-way", "running", UTC8, "mqtt.example.com")
JUST_WROTE = rd.Record(TARGET, "D1", "pending", None, last_write=NOW - dt.timedelta(seconds=2))


def plan(record: rd.Record, remote: rd.Remote | None, forced: bool = False, want: rd.Desired = WANT) -> rd.Plan:
    return rd.plan(rd.Observed(want, record, remote, NOW, 6 * 3600, forced))


def with_(record: rd.Record, **changes: Any) -> rd.Record:
    return rd.Record(**{**record.__dict__, **changes})


@pytest.mark.parametrize(
    ("record", "remote", "forced", "action", "reason"),
    [
        # in sync, drift check not due: no call at all (a restart makes none either)
        (SYNCED, None, False, "done", "Synced"),
        (SYNCED, None, True, "read", "Pending"),
        (with_(SYNCED, last_sync=NOW - dt.timedelta(hours=7)), None, False, "read", "Pending"),
        # a new resource reads first; absent -> create
        (rd.Record(), None, False, "read", "Pending"),
        (rd.Record(), rd.Remote(True), False, "create", "Pending"),
        # an unfinished write is always settled by a read first
        (with_(SYNCED, intent=Intent("update", TARGET, "D2", "x")), None, False, "read", "Pending"),
        # expire in another time zone is an observation: equal to what was observed after our write -> in sync
        (with_(SYNCED, observed_expire="2027-01-24T20:00:00Z"), RUNNING, False, "done", "Synced"),
        # expire changed since our write: someone replaced the certificate -> restore it
        (with_(SYNCED, observed_expire="2027-01-01T00:00:00Z"), RUNNING, False, "update", "Pending"),
        # the chain, key, tlsType or client CA changed (the digest) -> update
        (with_(SYNCED, applied_digest="D1"), RUNNING, False, "update", "Pending"),
        # the target changed (endpoint edit): re-verified by reading; the remote already holds the leaf -> adopt
        (with_(SYNCED, target="https://old|ge6a1a75"), RUNNING, False, "adopt", "Synced"),
        (
            with_(SYNCED, target="https://old|ge6a1a75"),
            rd.Remote(False, "one-way", "running", EXPIRE + dt.timedelta(days=3), "other"),
            False,
            "update",
            "Pending",
        ),
        # a newer certificate waits while our previous write is pending (a burst coalesces)
        (JUST_WROTE, rd.Remote(False, "one-way", "pending", UTC8), False, "wait", "Pending"),
        (
            with_(JUST_WROTE, last_write=NOW - dt.timedelta(minutes=10)),
            rd.Remote(False, "one-way", "pending", UTC8),
            False,
            "update",
            "Pending",
        ),
        (JUST_WROTE, rd.Remote(False, "one-way", "running", UTC8), False, "update", "Pending"),
        # terminal and transitional remote statuses
        (SYNCED, rd.Remote(False, "one-way", "failed", UTC8, message="bad chain"), False, "done", "RemoteFailed"),
        (with_(SYNCED, applied_digest="D1"), rd.Remote(False, "one-way", "failed", UTC8), False, "update", "Pending"),
        (SYNCED, rd.Remote(True, status="terminated"), False, "wait", "Pending"),
        (SYNCED, rd.Remote(False, "one-way", "weird", UTC8), False, "wait", "Pending"),
        (with_(SYNCED, poll_attempt=3), rd.Remote(False, "one-way", "weird", UTC8), False, "done", "RemoteRejected"),
        (SYNCED, rd.Remote(False, "two-way", "running", UTC8), False, "update", "Pending"),
    ],
)
def test_deployment_tls_plan(
    record: rd.Record, remote: rd.Remote | None, forced: bool, action: str, reason: str
) -> None:
    result = plan(record, remote, forced)
    assert (result.action, result.state.reason) == (action, reason)


def test_pending_write_is_not_polled_before_its_time() -> None:
    """A Secret change while a write is pending costs no read: the poll keeps its schedule."""
    waiting = with_(JUST_WROTE, poll_attempt=1, last_read=NOW - dt.timedelta(seconds=3))
    result = plan(waiting, None)
    assert result.action == "wait" and result.requeue_after == pytest.approx(8)  # 10 s after the last call


def test_never_writes_because_expire_differs_from_not_after() -> None:
    """The first sync against a UTC+8 remote is one write; the reads after it plan none."""
    assert plan(with_(SYNCED, observed_expire=None), RUNNING).action == "done"


@pytest.mark.parametrize(
    ("remote", "landed"),
    [
        (RUNNING, True),
        (rd.Remote(False, "one-way", "pending", EXPIRE), True),
        (rd.Remote(True), False),
        (rd.Remote(False, "one-way", "running", EXPIRE + dt.timedelta(days=30)), False),
        (rd.Remote(False, "one-way", "running", EXPIRE + dt.timedelta(hours=5, minutes=7)), False),
        (rd.Remote(False, "two-way", "running", EXPIRE), False),
        (rd.Remote(False, "one-way", "running", EXPIRE, "someone.else"), False),
    ],
)
def test_an_unfinished_write_is_settled_by_what_the_remote_holds(remote: rd.Remote, landed: bool) -> None:
    intent = new_intent("create", TARGET, "D2", NOW, cn="mqtt.example.com", notAfter="2027-01-24T12:00:00Z",
                        tlsType="one-way")  # fmt: skip
    assert rd.intent_landed(intent, remote) is landed
    assert Intent.from_status(intent.to_status()) == intent


CDN_TARGET = "https://cdn.example|acct1"
CDN_WANT = cdn.Desired(CDN_TARGET, "D2", ("AA", "BB"), "www.shop.example", None)
CYCLE = 6 * 3600
THIS_CYCLE = cdn.drift_cycle_start(CDN_TARGET, NOW, CYCLE)


@pytest.mark.parametrize(
    ("desired", "record", "forced", "action"),
    [
        # checked since the account's drift cycle began: nothing to do; checked before it: due
        (CDN_WANT, cdn.Record(CDN_TARGET, 4, "D2", THIS_CYCLE + dt.timedelta(seconds=1)), False, "done"),
        (CDN_WANT, cdn.Record(CDN_TARGET, 4, "D2", THIS_CYCLE - dt.timedelta(seconds=1)), False, "get"),
        (CDN_WANT, cdn.Record(CDN_TARGET, 4, "D2", NOW), True, "get"),
        (CDN_WANT, cdn.Record(CDN_TARGET, 4, "D1", NOW), False, "get"),
        (CDN_WANT, cdn.Record(), False, "find"),
        # the account or endpoint changed: the old seq is not ours there
        (CDN_WANT, cdn.Record("https://other|acct1", 4, "D2", NOW), False, "find"),
        # spec.seq wins over status.seq
        (cdn.Desired(CDN_TARGET, "D2", ("AA",), "x", 9), cdn.Record(CDN_TARGET, 4, "D2", NOW), False, "get"),
        (CDN_WANT, cdn.Record(CDN_TARGET, 4, "D2", NOW, Intent("add", CDN_TARGET, "D2", "x")), False, "resolve"),
    ],
)
def test_cdn_plan_without_read(desired: cdn.Desired, record: cdn.Record, forced: bool, action: str) -> None:
    assert cdn.plan_without_read(desired, record, NOW, CYCLE, forced).action == action


def test_an_accounts_certificates_fall_due_together_whenever_they_were_checked() -> None:
    """Created or written at any time, every certificate of an account is next checked at the same moment:
    the start of the account's next cycle, never more than one interval after its last check."""
    moments = [NOW + dt.timedelta(seconds=s) for s in (0, 1, 59, 3600, 4 * 3600 + 7, CYCLE - 1, CYCLE, 3 * CYCLE + 5)]
    for at in moments:
        wait = cdn.until_next_drift_check(CDN_TARGET, at, CYCLE)
        due = at + dt.timedelta(seconds=wait)
        assert cdn.MIN_WAIT_S <= wait <= CYCLE
        assert due == cdn.drift_cycle_start(CDN_TARGET, at, CYCLE) + dt.timedelta(seconds=CYCLE)
        assert cdn.drift_cycle_start(CDN_TARGET, due, CYCLE) == due  # a cycle's start
        checked = cdn.Record(CDN_TARGET, 4, "D2", at)
        assert cdn.plan_without_read(CDN_WANT, checked, at, CYCLE, False).action == "done"
        assert cdn.plan_without_read(CDN_WANT, checked, due, CYCLE, False).action == "get"
    same_cycle = {cdn.until_next_drift_check(CDN_TARGET, THIS_CYCLE + dt.timedelta(seconds=s), CYCLE) + s
                  for s in (0, 10, 600, CYCLE - 2)}  # fmt: skip
    assert len(same_cycle) == 1


def test_accounts_have_their_own_cycles_and_an_early_timer_waits_a_little() -> None:
    starts = {cdn.drift_cycle_start(f"https://cdn.example|acct{n}", NOW, CYCLE) for n in range(20)}
    assert len(starts) > 15  # spread over the interval, not all at once
    almost = cdn.drift_cycle_start(CDN_TARGET, NOW, CYCLE) + dt.timedelta(seconds=CYCLE) - dt.timedelta(seconds=0.01)
    assert cdn.until_next_drift_check(CDN_TARGET, almost, CYCLE) == cdn.MIN_WAIT_S


@pytest.mark.parametrize(
    ("desired", "remote_chain", "action", "reason"),
    [
        (CDN_WANT, ("AA", "BB"), "adopt", "Synced"),
        (CDN_WANT, ("AA", "BB", "ROOT"), "adopt", "Synced"),  # the remote may add the root it trusts
        (CDN_WANT, ("AA", "OLD-INTERMEDIATE"), "patch", "Pending"),  # a chain-only change is a write
        (CDN_WANT, ("AA",), "patch", "Pending"),
        (CDN_WANT, None, "find", "Pending"),
        (cdn.Desired(CDN_TARGET, "D2", ("AA",), "x", 9), None, "stall", "RemoteNotFound"),
    ],
)
def test_cdn_plan_for_the_named_certificate(
    desired: cdn.Desired, remote_chain: tuple[str, ...] | None, action: str, reason: str
) -> None:
    result, state = cdn.plan_for_seq(desired, cdn.Record(CDN_TARGET, 4, "D1", NOW), remote_chain)
    assert (result, state.reason) == (action, reason)


LE = "Emulated Let's Encrypt R3"


@pytest.mark.parametrize(
    ("listing", "before", "domains", "expected"),
    [
        # a certificate that existed before the order is never its outcome
        ([orders.Listed(3, LE, ("www.shop.example",), 1)], {3}, [], None),
        ([orders.Listed(3, LE, ("www.shop.example",), 1), orders.Listed(5, LE, ("img.shop.example",), 1)], {3}, [], 5),
        # a resource order (HTTP-01) never gets a wildcard certificate, nor one of another issuer
        ([orders.Listed(6, LE, ("*.d.example", "d.example"), 1)], set(), [], None),
        ([orders.Listed(7, "Some CA", ("www.shop.example",), 1)], set(), [], None),
        # a wildcard order's certificate covers its domains
        ([orders.Listed(6, LE, ("*.d.example", "d.example"), 1)], set(), ["*.d.example"], 6),
        ([orders.Listed(6, LE, ("*.e.example",), 1)], set(), ["*.d.example"], None),
    ],
)
def test_an_order_claims_only_the_certificate_that_appeared_after_it(
    listing: list[orders.Listed], before: set[int], domains: list[str], expected: int | None
) -> None:
    found = orders.pick_certificate(listing, before, domains, ())
    assert (found.seq if found else None) == expected


def test_the_oldest_resource_owns_a_target() -> None:
    older = targets.Claim("2026-01-01T00:00:00Z", "b", "x")
    newer = targets.Claim("2026-02-01T00:00:00Z", "a", "y")
    twin = targets.Claim("2026-01-01T00:00:00Z", "a", "z")
    assert targets.owner([newer, older]) == older
    assert targets.owner([older, twin]) == twin  # same time: namespace/name decides
    assert "b/x" in targets.conflict_message("deployment 'd'", older, "b")
    # Told to another tenant, the holder is not named: neither its namespace nor its name.
    elsewhere = targets.conflict_message("deployment 'd'", older, "a")
    assert "a resource in another namespace" in elsewhere and "b/x" not in elsewhere and "x " not in elsewhere


def test_conditions_follow_kstatus_and_keep_transition_times() -> None:
    first = rc.conditions([], rc.State("reconciling", "Pending", "writing"), 3, NOW)
    assert {c["type"]: c["status"] for c in first} == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert all(c["observedGeneration"] == 3 and c["reason"] == "Pending" for c in first)
    later = NOW + dt.timedelta(minutes=5)
    second = rc.conditions(first, rc.State("ready", "Synced", "ok"), 3, later)
    times = {c["type"]: c["lastTransitionTime"] for c in second}
    assert times == {
        "Ready": "2026-11-25T12:05:00Z",
        "Reconciling": "2026-11-25T12:05:00Z",
        "Stalled": "2026-11-25T12:00:00Z",
    }


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        (None, "SecretNotFound"),
        (rc.SecretView("Opaque", {}), "InvalidSecret"),
        (rc.SecretView("kubernetes.io/tls", {"tls.crt": b"x"}), "InvalidSecret"),
        (rc.SecretView("kubernetes.io/tls", {"tls.crt": b"junk", "tls.key": b"junk"}), "InvalidCertificate"),
    ],
)
def test_tls_secret_problems(secret: rc.SecretView | None, reason: str) -> None:
    result = rc.check_tls_secret("tls", secret, NOW)
    assert isinstance(result, rc.Problem) and result.reason == reason


def test_good_tls_secret_and_credentials() -> None:
    cert = issue("ok.example.com")
    material = rc.check_tls_secret(
        "tls",
        rc.SecretView("kubernetes.io/tls", {"tls.crt": cert.cert_pem, "tls.key": cert.key_pem()}),
        dt.datetime.now(dt.UTC),
    )
    assert isinstance(material, rc.TLSMaterial) and "BEGIN" not in repr(material)
    not_utf8 = rc.SecretView("kubernetes.io/tls", {"tls.crt": cert.cert_pem, "tls.key": b"\xff\xfe"})
    bad = rc.check_tls_secret("tls", not_utf8, dt.datetime.now(dt.UTC))
    assert isinstance(bad, rc.Problem) and bad.reason == "InvalidSecret" and "byte 0" in bad.message
    creds = rc.credentials("c", rc.SecretView("Opaque", {"token": b"t0k\n"}), [("token",), ("username", "password")])
    assert creds == {"token": "t0k"}
    missing = rc.credentials("c", rc.SecretView("Opaque", {"username": b"u"}), [("token",), ("username", "password")])
    assert (
        isinstance(missing, rc.Problem)
        and missing.message == "credentials Secret 'c' must hold token or username+password"
    )
