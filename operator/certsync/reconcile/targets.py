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

    def described_to(self, namespace: str) -> str:
        """How a message shown to a resource of `namespace` names this claim: never another tenant's names."""
        return str(self) if namespace == self.namespace else "a resource in another namespace"


def owner(claims: Iterable[Claim]) -> Claim | None:
    return min(claims, default=None)


def conflict_message(what: str, holder: Claim, namespace: str) -> str:
    """Told to a resource of `namespace`: the holder is named only when it is in that namespace."""
    return (
        f"{what} is already managed by {holder.described_to(namespace)} (the older resource owns it); "
        "this resource makes no remote call until that one is deleted or names another target"
    )


def target_key(*parts: str) -> str:
    return "|".join(parts)
