"""One owner per remote target: the oldest resource that names it (creation time, then namespace/name)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Claim:
    created: str  # RFC 3339: sorts in time order
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def owner(claims: Iterable[Claim]) -> Claim | None:
    return min(claims, default=None)


def conflict_message(what: str, holder: Claim) -> str:
    return (
        f"{what} is already managed by {holder} (the older resource owns it); "
        "this resource makes no remote call until that one is deleted or names another target"
    )


def target_key(*parts: str) -> str:
    return "|".join(parts)
