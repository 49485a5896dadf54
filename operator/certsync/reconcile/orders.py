"""Decisions for a LetsEncryptOrder: never order twice, and never take another order's certificate.

The certificate of an order is a Let's Encrypt certificate that appeared in
the account's list after the order was placed (the seqs listed before are
recorded with the intent). Resource orders (HTTP-01) cannot issue wildcard
names, and run one at a time per account, so a new non-wildcard certificate
is the running order's; a wildcard order's must also cover its domains.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

LE_ISSUER_MARK = "let's encrypt"


@dataclass(frozen=True)
class Listed:
    """A certificate of the account's list, as far as an order needs it."""

    seq: int
    issuer: str
    names: tuple[str, ...]  # cn first, then alt
    not_after: int


def covers(names: Sequence[str], domains: Sequence[str]) -> bool:
    have = {n.lower() for n in names}
    return all(d.lower() in have for d in domains)


def pick_certificate(
    listing: Sequence[Listed], before: Collection[int], domains: Sequence[str], claimed: Collection[int]
) -> Listed | None:
    """The certificate this order produced, if it is in the list yet (the newest one when several qualify)."""
    found = []
    for item in listing:
        if item.seq in before or item.seq in claimed or LE_ISSUER_MARK not in item.issuer.lower():
            continue
        wildcard = any(n.startswith("*.") for n in item.names)
        if covers(item.names, domains) if domains else not wildcard:
            found.append(item)
    return max(found, key=lambda c: c.seq, default=None)
