"""ClusterRemoteAccounts: which resource may use which platform-owned account, decided from specs and labels alone.

Pure: no I/O. A resource naming `spec.accountRef` gets the account's endpoint, CDN account and credentials Secret
only when the account exists, is of the resource's provider, selects the resource's namespace and (EMQX) serves its
deployment; anything else is a `Problem` before any Secret is read or any remote is called. Shared memory (tokens,
login memory, budgets) is keyed by the account (`owner`), never by the tenant's namespace: the credentials are the
platform's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from certsync.reconcile import Problem

KIND = "ClusterRemoteAccount"
PLURAL = "clusterremoteaccounts"
PROVIDERS = {"deploymenttlses": "emqx", "cdncertificates": "cdn", "letsencryptorders": "cdn"}
NOT_ALLOWED = "AccountNotAllowed"
NOT_FOUND = "AccountNotFound"


@dataclass(frozen=True)
class Resolved:
    """Where a resource's calls go and whose credentials they carry, as its account says."""

    name: str  # the ClusterRemoteAccount
    provider: str
    endpoint: str
    account: str  # CDN only
    secret_namespace: str
    secret_name: str

    @property
    def owner(self) -> str:
        """Whose credentials these are: the `namespace` of the access objects (what shared memory is keyed by)."""
        return owner_of(self.name)


def owner_of(account: str) -> str:
    return f"{KIND}/{account}"


def account_name(spec: Mapping[str, Any]) -> str | None:
    """The account a resource names, or None for one that carries its own endpoint and credentials."""
    ref = spec.get("accountRef")
    if not isinstance(ref, Mapping):
        return None
    name = ref.get("name")
    return str(name) if name else ""


def selects(selector: object, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics, except that an absent or empty selector selects nothing (an account is
    never open to every namespace by omission). Every term must hold; an unknown operator selects nothing."""
    if not isinstance(selector, Mapping):
        return False
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not isinstance(match_labels, Mapping) or not isinstance(expressions, Sequence) or isinstance(expressions, str):
        return False
    if not match_labels and not expressions:
        return False
    if any(labels.get(str(k)) != str(v) for k, v in match_labels.items()):
        return False
    return all(_expression_holds(e, labels) for e in expressions)


def _expression_holds(expression: object, labels: Mapping[str, str]) -> bool:
    if not isinstance(expression, Mapping):
        return False
    key, operator = str(expression.get("key", "")), expression.get("operator")
    raw = expression.get("values") or []
    values = {str(v) for v in raw} if isinstance(raw, Sequence) and not isinstance(raw, str) else set()
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    return False


def account_problem(spec: Mapping[str, Any]) -> Problem | None:
    """What makes an account unusable whatever names it (the CRD refuses most of it; older objects may not)."""
    provider = spec.get("provider")
    if provider not in ("emqx", "cdn"):
        return Problem("InvalidSpec", f"spec.provider must be emqx or cdn, not {provider!r}")
    if not spec.get("endpoint"):
        return Problem("InvalidSpec", "spec.endpoint is required")
    if provider == "cdn" and not spec.get("account"):
        return Problem("InvalidSpec", "spec.account is required for provider cdn")
    ref = spec.get("credentialsSecretRef")
    if not isinstance(ref, Mapping) or not ref.get("name") or not ref.get("namespace"):
        return Problem("InvalidSpec", "spec.credentialsSecretRef needs name and namespace")
    return None


def resolve(
    plural: str,
    namespace: str,
    spec: Mapping[str, Any],
    account: Mapping[str, Any] | None,
    namespace_labels: Mapping[str, str] | None,
) -> Resolved | Problem:
    """The account a resource of `plural` in `namespace` names, or why it may not use it.

    `account` is the ClusterRemoteAccount's body (None: there is none of that name), `namespace_labels` the
    resource's namespace's labels (None: not known yet, which selects nothing). The messages never name another
    namespace and never reveal the account's Secret or its selector."""
    name = account_name(spec) or ""
    if account is None:
        return Problem(NOT_FOUND, f"ClusterRemoteAccount {name!r} not found (looked at again when it appears)")
    account_spec = account.get("spec") or {}
    if not isinstance(account_spec, Mapping):
        account_spec = {}
    wanted = PROVIDERS.get(plural, "")
    provider = str(account_spec.get("provider", ""))
    if provider != wanted:
        return Problem(NOT_ALLOWED, f"ClusterRemoteAccount {name!r} is for provider {provider!r}, not {wanted!r}")
    if not selects(account_spec.get("namespaceSelector"), namespace_labels or {}):
        return Problem(NOT_ALLOWED, f"ClusterRemoteAccount {name!r} does not allow namespace {namespace!r}")
    deployments = account_spec.get("deployments") or []
    deployment = str(spec.get("deploymentId", ""))
    if provider == "emqx" and deployments and deployment not in {str(d) for d in deployments}:
        return Problem(NOT_ALLOWED, f"ClusterRemoteAccount {name!r} does not serve deployment {deployment!r}")
    allowed = {str(r) for r in account_spec.get("cdnResources") or []}
    unlisted = [str(r) for r in spec.get("bindTo") or [] if str(r) not in allowed] if provider == "cdn" else []
    if unlisted:
        return Problem(NOT_ALLOWED, f"ClusterRemoteAccount {name!r} does not let its users bind CDN resource "
                                    f"{unlisted[0]!r} (its spec.cdnResources)")  # fmt: skip
    problem = account_problem(account_spec)
    if problem is not None:
        return Problem(NOT_ALLOWED, f"ClusterRemoteAccount {name!r} is not usable: {problem.message}")
    ref = account_spec["credentialsSecretRef"]
    return Resolved(
        name=name, provider=provider, endpoint=str(account_spec["endpoint"]),
        account=str(account_spec.get("account", "")) if provider == "cdn" else "",
        secret_namespace=str(ref["namespace"]), secret_name=str(ref["name"]),
    )  # fmt: skip


def effective_spec(spec: Mapping[str, Any], resolved: Resolved) -> dict[str, Any]:
    """The resource's spec as its controller sees it: the account's endpoint, CDN account and Secret location
    filled in (the tenant wrote none of them: the CRD refuses them beside accountRef)."""
    effective = {**spec, "endpoint": resolved.endpoint}
    effective["credentialsSecretRef"] = {"name": resolved.secret_name, "namespace": resolved.secret_namespace}
    if resolved.provider == "cdn":
        effective["account"] = resolved.account
    return effective


def credentials_location(namespace: str, spec: Mapping[str, Any]) -> tuple[str, str, str]:
    """(Secret namespace, Secret name, owner) of a resource's credentials: its own namespace's Secret and the
    namespace as owner, or, through an account (an effective spec), the account's Secret and the account."""
    ref = spec.get("credentialsSecretRef") or {}
    name = str(ref.get("name", "")) if isinstance(ref, Mapping) else ""
    account = account_name(spec)
    if account:
        return str(ref.get("namespace") or ""), name, owner_of(account)
    return namespace, name, namespace


def names_account(spec: Mapping[str, Any], account: str) -> bool:
    return account_name(spec) == account


class AccountBook:
    """The accounts and namespace labels the operator knows, read from kopf's live indices (bound by the
    handlers at their first event): what resolution needs, without an API call."""

    def __init__(self) -> None:
        self.accounts: Mapping[str, Any] = {}  # account name -> the index's values ({"spec": ...})
        self.labels: Mapping[str, Any] = {}  # namespace -> the index's values (its labels)
        self.users: dict[str, Mapping[str, Any]] = {}  # plural -> account name -> (namespace, name) of its users

    def bind(self, accounts: Mapping[str, Any], labels: Mapping[str, Any], users: dict[str, Mapping[str, Any]]) -> None:
        self.accounts, self.labels, self.users = accounts, labels, users

    def account(self, name: str) -> Mapping[str, Any] | None:
        found = _first(self.accounts.get(name))
        return found if isinstance(found, Mapping) else None

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        found = _first(self.labels.get(namespace))
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, Mapping) else None

    def users_of(self, account: str) -> list[tuple[str, str, str]]:
        """(plural, namespace, name) of every resource that names `account`."""
        return [(plural, ns, name) for plural, index in self.users.items() for ns, name in index.get(account, [])]

    def users_in(self, namespace: str) -> list[tuple[str, str, str]]:
        """(plural, namespace, name) of every resource of `namespace` that names an account."""
        found: list[tuple[str, str, str]] = []
        for plural, index in self.users.items():
            for users in index.values():
                found.extend((plural, ns, name) for ns, name in users if ns == namespace)
        return found

    def accounts_of_secret(self, namespace: str, name: str) -> list[str]:
        """The accounts whose credentials are Secret `namespace`/`name`."""
        found: list[str] = []
        for account in list(self.accounts):
            ref = ((self.account(account) or {}).get("spec") or {}).get("credentialsSecretRef") or {}
            if isinstance(ref, Mapping) and (ref.get("namespace"), ref.get("name")) == (namespace, name):
                found.append(account)
        return found


def _first(values: Any) -> Any:
    """kopf's index keeps a collection of values per key: one object per name here."""
    if values is None:
        return None
    return next(iter(values), None)
