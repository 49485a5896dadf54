"""Push deadlines: until when EMQX Cloud still takes a certificate, and whether its renewal comes in time.

EMQX Cloud refuses a certificate within `pki.EMQX_MIN_REMAINING` (60 days) of its notAfter: the same rule that
`pki.check_emqx_remaining_validity` applies offline (`ValidityTooShort`), so the deadline is computed from that one
constant. After its deadline a certificate stays on the deployment until it expires, but it can no longer be
written (a drift restore, a pending or rate-limited push, a new deployment): a renewed one must be in the Secret
by then. cert-manager says when it renews (`status.renewalTime`); without it, a warning comes 14 days ahead.

Messages hold no countdown ("in 9 days"), only times, so that a condition's message changes only when a verdict
does: one status patch and one Event per change, none per pass.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from certsync import pki

REFUSAL_WINDOW = pki.EMQX_MIN_REMAINING  # EMQX Cloud refuses a certificate this close to its notAfter
NEAR = dt.timedelta(days=14)  # without cert-manager's renewal time: warn this long before the deadline
RENEWAL_MARGIN = dt.timedelta(days=7)  # a suggested renewBefore renews this long before the deadline (at most)
CONDITION = "PushDeadlineAtRisk"  # abnormal-true, as kstatus wants of a condition other than Ready

RENEWAL_AFTER_DEADLINE = "RenewalAfterPushDeadline"
DEADLINE_NEAR = "PushDeadlineNear"
RENEWAL_IN_TIME = "RenewalBeforePushDeadline"
DEADLINE_AHEAD = "PushDeadlineAhead"


@dataclass(frozen=True)
class Verdict:
    """What the push deadline of one leaf says; `at_risk` makes the condition True and a Warning Event."""

    deadline: dt.datetime
    at_risk: bool
    reason: str
    message: str
    renew_before: dt.timedelta | None = None  # a renewBefore that renews before the deadline, when one exists
    renew_before_percentage: int | None = None  # the same as cert-manager's renewBeforePercentage, when one fits


def push_deadline(not_after: dt.datetime) -> dt.datetime:
    """The last moment EMQX Cloud takes a certificate expiring at `not_after`."""
    return not_after - REFUSAL_WINDOW


def suggested_renew_before(lifetime: dt.timedelta) -> dt.timedelta | None:
    """A renewBefore that renews before the push deadline (by up to `RENEWAL_MARGIN`), shorter than the lifetime
    (cert-manager's own rule); None when no renewBefore can: a lifetime of 60 days or less is never pushable."""
    if lifetime <= REFUSAL_WINDOW:
        return None
    margin = min(RENEWAL_MARGIN, (lifetime - REFUSAL_WINDOW) / 2)
    minutes = math.ceil((REFUSAL_WINDOW + margin).total_seconds() / 60)
    suggested = dt.timedelta(minutes=minutes)
    return suggested if suggested < lifetime else REFUSAL_WINDOW


def percentage_for(renew_before: dt.timedelta, lifetime: dt.timedelta) -> int | None:
    """cert-manager's renewBeforePercentage (a whole number below 100) renewing at least `renew_before` early."""
    percent = math.ceil(round(renew_before / lifetime * 100, 6))  # 67 days of 100 are 67 %, not 68
    return percent if percent < 100 and lifetime * percent / 100 >= REFUSAL_WINDOW else None


def go_duration(span: dt.timedelta) -> str:
    """A duration as cert-manager's fields take it: hours and minutes (`1608h`, `1490h24m`)."""
    minutes = math.ceil(span.total_seconds() / 60)
    hours, rest = divmod(minutes, 60)
    return f"{hours}h{rest}m" if rest else f"{hours}h"


def _days(span: dt.timedelta) -> str:
    days = span.total_seconds() / 86400
    return f"{days:.0f}" if abs(days - round(days)) < 0.05 else f"{days:.1f}"


def verdict(
    not_before: dt.datetime,
    not_after: dt.datetime,
    now: dt.datetime,
    renewal: dt.datetime | None,
    certificate: str = "",
) -> Verdict:
    """The push deadline of a leaf and whether it is at risk.

    `renewal`: cert-manager's `status.renewalTime` for the Certificate `certificate` that writes the Secret, or
    None when unknown (no cert-manager, or the operator may not read it): then the warning comes `NEAR` ahead.
    """
    deadline = push_deadline(not_after)
    lifetime = not_after - not_before
    stamp, window = pki.rfc3339(deadline), REFUSAL_WINDOW.days
    rule = f"EMQX Cloud refuses a certificate within {window} days of its expiry ({pki.rfc3339(not_after)})"
    too_short = lifetime <= REFUSAL_WINDOW
    lifetime_note = (
        f"; its lifetime ({_days(lifetime)} days) is too short for EMQX Cloud: no renewal can help, use an issuer "
        f"whose certificates live longer than {window} days"
        if too_short
        else ""
    )
    if renewal is not None and renewal > deadline:
        named = f"cert-manager Certificate {certificate!r}" if certificate else "cert-manager"
        head = f"{named} renews at {pki.rfc3339(renewal)}, after the push deadline {stamp} ({rule})"
        suggested = suggested_renew_before(lifetime)
        if suggested is None:
            return Verdict(deadline, True, RENEWAL_AFTER_DEADLINE, head + lifetime_note)
        percent = percentage_for(suggested, lifetime)
        choice = f"renewBefore: {go_duration(suggested)} ({_days(suggested)} days)"
        if percent is not None:
            choice += f" or renewBeforePercentage: {percent}"
        renews_at = pki.rfc3339(not_after - suggested)
        fix = f": set {choice} on the Certificate (renewal at {renews_at} for this one)"
        return Verdict(deadline, True, RENEWAL_AFTER_DEADLINE, head + fix, suggested, percent)
    if deadline - now <= NEAR and (renewal is None or renewal <= now):
        passed = now >= deadline
        verb = "could be pushed" if passed else "can be pushed"
        after = (
            "; it stays on the deployment until it expires, but cannot be written again"
            if passed
            else ": put a renewed certificate in the Secret before then"
        )
        due = f"; cert-manager's renewal was due at {pki.rfc3339(renewal)}" if renewal is not None else ""
        message = f"the certificate {verb} to EMQX Cloud until {stamp} ({rule}){due}{after}{lifetime_note}"
        return Verdict(deadline, True, DEADLINE_NEAR, message)
    if renewal is not None:
        return Verdict(deadline, False, RENEWAL_IN_TIME,
                       f"cert-manager renews at {pki.rfc3339(renewal)}, before the push deadline {stamp}")  # fmt: skip
    return Verdict(deadline, False, DEADLINE_AHEAD, f"the push deadline is {stamp} ({rule})")
