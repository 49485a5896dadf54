"""The write-ahead record: what a pass is about to write, kept in status until its outcome is recorded.

A pass records an `Intent` before any remote write and clears it in the same
status patch that records the outcome. An intent found without an outcome (a
crash, a lost answer, a failed status patch) is resolved by reading the
remote, never by writing again blindly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from certsync import pki


@dataclass(frozen=True)
class Intent:
    op: str  # create, update (EMQX); add, patch (CDN); order (Let's Encrypt)
    target: str
    digest: str
    at: str
    facts: Mapping[str, Any] = field(default_factory=dict)  # what a read-back compares with

    def to_status(self) -> dict[str, Any]:
        return {"op": self.op, "target": self.target, "digest": self.digest, "at": self.at, "facts": dict(self.facts)}

    @classmethod
    def from_status(cls, value: object) -> Intent | None:
        if not isinstance(value, Mapping) or not isinstance(value.get("op"), str):
            return None
        facts = value.get("facts")
        return cls(
            op=str(value["op"]),
            target=str(value.get("target", "")),
            digest=str(value.get("digest", "")),
            at=str(value.get("at", "")),
            facts=dict(facts) if isinstance(facts, Mapping) else {},
        )


def new_intent(op: str, target: str, digest: str, now: dt.datetime, **facts: Any) -> Intent:
    return Intent(op, target, digest, pki.rfc3339(now), facts)
