"""One owner per remote target: the oldest resource that names it (creation time, then namespace/name) among
those whose credentials were proven for it (`controllers.base.conflict` keeps the proofs)."""

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


def waiting_message(what: str, holder: Claim, namespace: str) -> str:
    """An older claimant has not had a pass in this process yet (a restart): it may still prove its credentials."""
    return (
        f"{what} is also named by an older resource, {holder.described_to(namespace)}, that has not been checked "
        "since the operator started; waiting for its first pass"
    )


def target_key(*parts: str) -> str:
    return "|".join(parts)
