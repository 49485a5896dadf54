"""Table-driven tests of the pure decisions, with a fixed clock: no server, no kopf."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from certsync import reconcile as rc

from devkit.factory import issue

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
FP = "AA:BB"
EXPIRE = NOW + dt.timedelta(days=60)
SYNCED = {"fingerprint": FP, "tlsType": "one-way", "remoteStatus": "running", "lastSyncTime": "2026-11-25T11:00:00Z"}


def emqx(
    status: dict[str, Any], remote: rc.EmqxRemote | None, forced: bool = False, tls_type: str = "one-way"
) -> rc.Plan:
    return rc.plan_deployment_tls(
        rc.EmqxObserved(
            spec={"tlsType": tls_type}, status=status, generation=1, desired_fingerprint=FP, desired_expire=EXPIRE,
            has_cacert=False, remote=remote, now=NOW, drift_interval=6 * 3600, forced=forced,
        )
    )  # fmt: skip


@pytest.mark.parametrize(
    ("status", "remote", "forced", "tls_type", "action", "requeue"),
    [
        # in sync and the drift check not due: no call at all (an operator restart makes none)
        (SYNCED, None, False, "one-way", "done", 5 * 3600),
        # forced by certsync.io/requested-at, or drift check due: read
        (SYNCED, None, True, "one-way", "read", None),
        ({**SYNCED, "lastSyncTime": "2026-11-25T05:00:00Z"}, None, False, "one-way", "read", None),
        # new resource
        ({}, None, False, "one-way", "read", None),
        ({}, rc.EmqxRemote(absent=True), False, "one-way", "create", None),
        # the remote holds something else
        ({}, rc.EmqxRemote(False, "one-way", "running", EXPIRE), False, "one-way", "update", None),
        (SYNCED, rc.EmqxRemote(False, "one-way", "running", EXPIRE), False, "two-way", "update", None),
        (
            SYNCED,
            rc.EmqxRemote(False, "one-way", "running", EXPIRE + dt.timedelta(days=1)),
            False,
            "one-way",
            "update",
            None,
        ),
        # written and pending: poll with backoff
        (
            {**SYNCED, "remoteStatus": "pending", "pollAttempt": 0},
            rc.EmqxRemote(False, "one-way", "pending", EXPIRE),
            False,
            "one-way",
            "wait",
            5,
        ),
        (
            {**SYNCED, "remoteStatus": "pending", "pollAttempt": 3},
            rc.EmqxRemote(False, "one-way", "pending", EXPIRE),
            False,
            "one-way",
            "wait",
            40,
        ),
        (
            {**SYNCED, "remoteStatus": "pending", "pollAttempt": 9},
            rc.EmqxRemote(False, "one-way", "pending", EXPIRE),
            False,
            "one-way",
            "wait",
            300,
        ),
        # running and equal
        (SYNCED, rc.EmqxRemote(False, "one-way", "running", EXPIRE), False, "one-way", "done", 6 * 3600),
    ],
)
def test_deployment_tls_plan(
    status: dict[str, Any],
    remote: rc.EmqxRemote | None,
    forced: bool,
    tls_type: str,
    action: str,
    requeue: float | None,
) -> None:
    plan = emqx(status, remote, forced, tls_type)
    assert plan.action == action
    if requeue is not None:
        assert plan.requeue_after == pytest.approx(requeue)


def test_same_observed_state_gives_the_same_plan() -> None:
    remote = rc.EmqxRemote(False, "one-way", "running", EXPIRE)
    assert emqx(SYNCED, remote) == emqx(SYNCED, remote)


@pytest.mark.parametrize(
    ("status", "spec", "by_seq", "by_fp", "listed", "action", "seq"),
    [
        ({"fingerprint": "S1", "seq": 4}, {}, None, None, False, "done", 4),
        ({}, {}, None, None, False, "read", None),
        ({}, {}, None, rc.CdnRemote(7, "S1"), True, "adopt", 7),
        ({}, {}, None, None, True, "add", None),
        ({"seq": 4, "fingerprint": "OLD"}, {}, rc.CdnRemote(4, "OLD"), None, True, "patch", 4),
        ({"seq": 4, "fingerprint": "OLD"}, {}, rc.CdnRemote(4, "S1"), None, True, "done", 4),
        ({}, {"seq": 9}, rc.CdnRemote(9, "S1"), None, True, "done", 9),
        ({}, {"seq": 9}, None, None, True, "done", None),  # the named seq does not exist: stalled, never added
    ],
)
def test_cdn_plan_adopts_before_adding(
    status: dict[str, Any], spec: dict[str, Any], by_seq: Any, by_fp: Any, listed: bool, action: str, seq: int | None
) -> None:
    plan = rc.plan_cdn_certificate(rc.CdnObserved(spec, status, "S1", by_seq, by_fp, listed))
    assert (plan.action, plan.seq) == (action, seq)
    if spec.get("seq") and by_seq is None:
        assert plan.state == rc.State("stalled", "RemoteNotFound", "certificate seq 9 does not exist")


ISSUED = rc.IssuedCertificate(3, 2_000_000_000, ("www.shop.example",))


@pytest.mark.parametrize(
    ("spec", "status", "task", "issued", "action", "reason"),
    [
        ({"resourceId": "r"}, {}, "no", [], "order", "Pending"),
        ({"resourceId": "r"}, {"orderedAt": "x"}, "accepted", [], "poll", "Pending"),
        # an order that is running is never posted again, even with no record of ordering it
        ({"resourceId": "r"}, {}, "accepted", [], "poll", "Pending"),
        ({"resourceId": "r"}, {"orderedAt": "x"}, "processed", [ISSUED], "done", "Synced"),
        ({"resourceId": "r"}, {"orderedAt": "x"}, "processed", [], "find", "Pending"),
        ({"resourceId": "r"}, {"orderedAt": "x"}, "failed", [], "done", "OrderFailed"),
        ({"domains": ["*.d.example"]}, {}, None, [], "order", "Pending"),
        ({"domains": ["*.d.example"]}, {"orderedAt": "x", "notAfterBefore": 0}, None, [], "poll", "Pending"),
        ({"domains": ["*.d.example"]}, {"orderedAt": "x", "notAfterBefore": 0}, None, [ISSUED], "done", "Synced"),
        # an older certificate for the same names is not the outcome of this order
        (
            {"domains": ["*.d.example"]},
            {"orderedAt": "x", "notAfterBefore": 2_000_000_000},
            None,
            [ISSUED],
            "poll",
            "Pending",
        ),
    ],
)
def test_order_plan(
    spec: dict[str, Any], status: dict[str, Any], task: str | None, issued: list[Any], action: str, reason: str
) -> None:
    plan = rc.plan_order(rc.OrderObserved(spec, status, task, issued), ["x"])
    assert (plan.action, plan.state.reason) == (action, reason)


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
    creds = rc.credentials("c", rc.SecretView("Opaque", {"token": b"t0k\n"}), [("token",), ("username", "password")])
    assert creds == {"token": "t0k"}
    missing = rc.credentials("c", rc.SecretView("Opaque", {"username": b"u"}), [("token",), ("username", "password")])
    assert (
        isinstance(missing, rc.Problem)
        and missing.message == "credentials Secret 'c' must hold token or username+password"
    )
