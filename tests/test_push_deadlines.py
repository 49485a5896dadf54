"""Table tests of the pure decisions of issue 20: push deadlines (EMQX Cloud's 60-day refusal window) and what a
`GET /deployments/{id}` check lets a write do."""

from __future__ import annotations

import datetime as dt

import pytest
from certsync import pki
from certsync.reconcile import deadlines
from certsync.reconcile import deploymenttls as rd

T0 = dt.datetime(2027, 3, 15, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def cert(days: float) -> tuple[dt.datetime, dt.datetime]:
    """notBefore and notAfter of a certificate issued at T0 that lives `days`."""
    return T0, T0 + days * DAY


def test_the_deadline_is_the_rule_pki_applies_offline() -> None:
    """One rule: the deadline is exactly the moment `pki` starts refusing the certificate (ValidityTooShort)."""
    assert deadlines.REFUSAL_WINDOW is pki.EMQX_MIN_REMAINING
    _, not_after = cert(100)
    assert deadlines.push_deadline(not_after) == T0 + 40 * DAY


@pytest.mark.parametrize(
    ("days", "window_days"),
    [(200, 140), (100, 40), (90, 30), (64, 4), (61, 1), (60, 0), (47, -13), (45, -15)],
)
def test_push_windows_of_public_lifetimes(days: float, window_days: float) -> None:
    """SC-081v3's and Let's Encrypt's lifetimes: a 100-day certificate is pushable 40 days, a 64-day one 4, a 47- or
    45-day one never."""
    not_before, not_after = cert(days)
    assert deadlines.push_deadline(not_after) - not_before == window_days * DAY


# (lifetime days, renewal: days after issue or None, now: days after issue) -> (at risk, reason, renewBefore h, %)
CASES = [
    # cert-manager renews before the deadline: fine
    (100, 30, 1, (False, deadlines.RENEWAL_IN_TIME, None, None)),
    (100, 40, 1, (False, deadlines.RENEWAL_IN_TIME, None, None)),  # exactly at the deadline still counts
    # Let's Encrypt's 90 days with cert-manager's default renewBefore (30 days): renews at day 60, deadline day 30
    (90, 60, 1, (True, deadlines.RENEWAL_AFTER_DEADLINE, 1608, 75)),
    # 100-day certificates renewed at two thirds (cert-manager's default without renewBefore)
    (100, 66.7, 1, (True, deadlines.RENEWAL_AFTER_DEADLINE, 1608, 67)),
    # 64 days: a 4-day window; renewBefore must lie between 60 and 64 days
    (64, 42.7, 1, (True, deadlines.RENEWAL_AFTER_DEADLINE, 1488, 97)),
    # 61 days: half a day of margin; no whole percentage below 100 renews early enough
    (61, 40.7, 0.1, (True, deadlines.RENEWAL_AFTER_DEADLINE, 1452, None)),
    # 47 and 45 days: no renewBefore can help
    (47, 31.3, 0.1, (True, deadlines.RENEWAL_AFTER_DEADLINE, None, None)),
    (45, 30, 0.1, (True, deadlines.RENEWAL_AFTER_DEADLINE, None, None)),
    # without cert-manager: a warning 14 days ahead, not before
    (100, None, 25, (False, deadlines.DEADLINE_AHEAD, None, None)),
    (100, None, 26, (True, deadlines.DEADLINE_NEAR, None, None)),
    (100, None, 41, (True, deadlines.DEADLINE_NEAR, None, None)),  # passed
    # cert-manager's renewal was due before the deadline but the Secret still holds this certificate (stuck)
    (100, 30, 31, (True, deadlines.DEADLINE_NEAR, None, None)),
    (100, 30, 20, (False, deadlines.RENEWAL_IN_TIME, None, None)),  # due later, deadline 20 days off
]


@pytest.mark.parametrize(("days", "renewal", "now", "expected"), CASES)
def test_verdicts(
    days: float, renewal: float | None, now: float, expected: tuple[bool, str, int | None, int | None]
) -> None:
    not_before, not_after = cert(days)
    renews = None if renewal is None else T0 + renewal * DAY
    v = deadlines.verdict(not_before, not_after, T0 + now * DAY, renews, "mqtt")
    at_risk, reason, hours, percent = expected
    assert (v.at_risk, v.reason, v.deadline) == (at_risk, reason, not_after - 60 * DAY)
    assert v.renew_before == (None if hours is None else dt.timedelta(hours=hours))
    assert v.renew_before_percentage == percent
    if v.renew_before is not None:  # the suggestion works: renewal no later than the deadline, below the lifetime
        assert not_after - v.renew_before <= v.deadline and v.renew_before < not_after - not_before
        assert f"renewBefore: {hours}h" in v.message
    if percent is not None:
        assert not_after - (not_after - not_before) * percent / 100 <= v.deadline
        assert f"renewBeforePercentage: {percent}" in v.message


def test_a_lifetime_of_60_days_or_less_is_said_to_be_too_short() -> None:
    not_before, not_after = cert(45)
    v = deadlines.verdict(not_before, not_after, T0, T0 + 30 * DAY, "mqtt")
    assert "cert-manager Certificate 'mqtt' renews at 2027-04-14T00:00:00Z" in v.message
    assert "lifetime (45 days) is too short for EMQX Cloud" in v.message and "renewBefore" not in v.message
    near = deadlines.verdict(not_before, not_after, T0, None)
    assert near.reason == deadlines.DEADLINE_NEAR and "too short" in near.message
    fine = deadlines.verdict(*cert(100), T0, T0 + 30 * DAY)
    assert "too short" not in fine.message


def test_messages_hold_times_not_countdowns() -> None:
    """A message changes only with the verdict: no status patch or Event per pass."""
    not_before, not_after = cert(100)
    day_26 = deadlines.verdict(not_before, not_after, T0 + 26 * DAY, None)
    day_30 = deadlines.verdict(not_before, not_after, T0 + 30 * DAY, None)
    assert day_26 == day_30
    late = deadlines.verdict(not_before, not_after, T0 + 26 * DAY, T0 + 70 * DAY)
    assert late == deadlines.verdict(not_before, not_after, T0 + 1 * DAY, T0 + 70 * DAY)


@pytest.mark.parametrize(
    ("span", "text"),
    [(dt.timedelta(days=67), "1608h"), (dt.timedelta(days=60, hours=12), "1452h"),
     (dt.timedelta(hours=1, minutes=30), "1h30m"), (dt.timedelta(seconds=61), "0h2m")],
)  # fmt: skip
def test_go_durations(span: dt.timedelta, text: str) -> None:
    assert deadlines.go_duration(span) == text


# --- deployment checks ----------------------------------------------------------------------------------------

NOW = dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC)


def checked(
    seconds_ago: float, kind: str = "dedicated", status: str = "running", found: bool = True
) -> rd.DeploymentCheck:
    return rd.DeploymentCheck(NOW - dt.timedelta(seconds=seconds_ago), kind, status, found)


@pytest.mark.parametrize(
    ("check", "action", "reason", "requeue"),
    [
        (None, "check", None, None),
        (checked(60), "write", None, None),
        (checked(60, kind="dedicatedflex"), "write", None, None),
        (checked(86399), "write", None, None),
        (checked(86400), "check", None, None),  # a day later: read again before a write
        (checked(-5), "check", None, None),  # from the future (a clock or a status someone wrote): read again
        (checked(60, kind="serverless"), "stop", "UnsupportedDeploymentType", 86340.0),
        (checked(60, found=False), "stop", "RemoteNotFound", 540.0),
        (checked(600, found=False), "check", None, None),  # a deployment just created, a key just granted
        (checked(60, status="stopped"), "stop", "DeploymentNotRunning", 540.0),
        (checked(600, status="stopped"), "check", None, None),
        (checked(60, status="starting"), "stop", "DeploymentNotRunning", 60.0),
        (checked(120, status="starting"), "check", None, None),
        (checked(60, kind="unknown", status="unknown"), "write", None, None),  # undocumented words never block
    ],
)
def test_deployment_verdicts(
    check: rd.DeploymentCheck | None, action: str, reason: str | None, requeue: float | None
) -> None:
    verdict = rd.deployment_verdict(check, NOW, "d1")
    assert verdict.action == action
    assert (verdict.state.reason if verdict.state else None) == reason
    assert verdict.requeue_after == requeue
    if verdict.state is not None:
        assert verdict.state.kind == ("reconciling" if reason == "DeploymentNotRunning" else "stalled")
        assert "'d1'" in verdict.state.message


def test_a_check_in_status_counts_only_for_the_credentials_it_names() -> None:
    check = checked(60, kind="serverless")
    recorded = check.to_status("owner-a")
    assert rd.DeploymentCheck.from_status(recorded, "owner-a") == check
    assert rd.DeploymentCheck.from_status(recorded, "owner-b") is None
    absent = rd.DeploymentCheck(NOW, found=False)
    assert absent.to_status("owner-a") == {"checkedAt": "2026-12-03T12:00:00Z", "owner": "owner-a", "status": "absent"}
    assert rd.DeploymentCheck.from_status(absent.to_status("owner-a"), "owner-a") == absent
    assert rd.DeploymentCheck.from_status({"owner": "owner-a", "checkedAt": "never"}, "owner-a") is None
    assert rd.DeploymentCheck.from_status("junk", "owner-a") is None
    assert checked(0, found=False).blocks and checked(0, status="stopped").blocks and not checked(0).blocks
