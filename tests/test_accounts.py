"""ClusterRemoteAccounts: selectors, resolution (tables), and the controllers in process through an account.

The in-process part drives the real controllers and clients against the emulators on loopback with the fake
Kubernetes layer of tests/test_controllers.py: a refused resource costs no call, the account's credentials are
the account's (one login for all its users, one more per rotation), and the account's status says why.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from certsync import accounts
from certsync.accounts import AccountBook, Resolved
from certsync.budget import EMQX_READ, EMQX_WRITE, Window
from certsync.cdn import CdnClient
from certsync.controllers import deletion, deploymenttls, remoteaccount
from certsync.controllers.base import Resource, Runtime
from certsync.emqx import EmqxClient
from certsync.kube import KubeError
from certsync.metrics import Metrics
from certsync.reconcile import Problem, SecretView
from certsync.settings import Settings

from devkit.factory import issue
from tests.conftest import CDN_PASSWORD, CDN_USER, EMQX_KEY, EMQX_SECRET, Emulator
from tests.test_controllers import NS, FakeKube, World

PLATFORM = "certsync-system"
TEAM = {"team": "a", "tier": "prod"}


# --- selectors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        (None, TEAM, False),  # absent: none
        ({}, TEAM, False),  # empty: none, never every namespace
        ({"matchLabels": {}, "matchExpressions": []}, TEAM, False),
        ({"matchLabels": {"team": "a"}}, TEAM, True),
        ({"matchLabels": {"team": "b"}}, TEAM, False),
        ({"matchLabels": {"team": "a", "tier": "dev"}}, TEAM, False),  # every label must hold
        ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}, TEAM, True),
        ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["b"]}]}, TEAM, False),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["x"]}]}, TEAM, False),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["b"]}]}, TEAM, True),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, TEAM, False),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["x"]}]}, TEAM, True),  # absent key
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, TEAM, True),
        ({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}, TEAM, False),
        ({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, TEAM, True),
        ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, TEAM, False),
        ({"matchExpressions": [{"key": "team", "operator": "Gt", "values": ["1"]}]}, TEAM, False),  # unknown
        (
            {"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["dev"]}]},
            TEAM,
            False,
        ),
        ({"matchLabels": {"team": "a"}}, {}, False),
        ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {}, False),
        ("team=a", TEAM, False),  # not a selector at all
    ],
)
def test_namespace_selector(selector: Any, labels: dict[str, str], selected: bool) -> None:
    assert accounts.selects(selector, labels) is selected


# --- resolution ----------------------------------------------------------------------------------


def account(provider: str = "emqx", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "provider": provider, "endpoint": f"https://{provider}.example",
        "credentialsSecretRef": {"name": f"{provider}-account", "namespace": PLATFORM},
        "namespaceSelector": {"matchLabels": {"team": "a"}},
    }  # fmt: skip
    if provider == "cdn":
        base["account"] = "acct1"
    return {"spec": {**base, **spec}}


def dtls_ref(deployment: str = "ge6a1a75") -> dict[str, Any]:
    return {"accountRef": {"name": "shared"}, "deploymentId": deployment, "tlsType": "one-way", "secretName": "t"}


CDN_REF = {"accountRef": {"name": "shared"}, "secretName": "t"}


@pytest.mark.parametrize(
    ("plural", "spec", "found", "labels", "reason"),
    [
        ("deploymenttlses", dtls_ref(), None, TEAM, "AccountNotFound"),
        ("deploymenttlses", dtls_ref(), account(), {"team": "b"}, "AccountNotAllowed"),
        ("deploymenttlses", dtls_ref(), account(), None, "AccountNotAllowed"),  # labels not known: none
        ("deploymenttlses", dtls_ref(), account(namespaceSelector={}), TEAM, "AccountNotAllowed"),
        ("deploymenttlses", dtls_ref(), account("cdn"), TEAM, "AccountNotAllowed"),  # another provider's
        ("cdncertificates", CDN_REF, account("emqx"), TEAM, "AccountNotAllowed"),
        ("letsencryptorders", CDN_REF, account("emqx"), TEAM, "AccountNotAllowed"),
        ("deploymenttlses", dtls_ref("other"), account(deployments=["ge6a1a75"]), TEAM, "AccountNotAllowed"),
        ("cdncertificates", CDN_REF, account("cdn", account=""), TEAM, "AccountNotAllowed"),  # unusable account
        ("deploymenttlses", dtls_ref(), account(credentialsSecretRef={"name": "x"}), TEAM, "AccountNotAllowed"),
        # bindTo through a shared account only within its cdnResources (absent: none): no tenant repoints another's site
        ("cdncertificates", {**CDN_REF, "bindTo": ["res1"]}, account("cdn"), TEAM, "AccountNotAllowed"),
        (
            "cdncertificates",
            {**CDN_REF, "bindTo": ["res1", "res9"]},
            account("cdn", cdnResources=["res1"]),
            TEAM,
            "AccountNotAllowed",
        ),
    ],
)
def test_a_resource_that_may_not_use_the_account_gets_a_reason(
    plural: str, spec: dict[str, Any], found: dict[str, Any] | None, labels: dict[str, str] | None, reason: str
) -> None:
    resolved = accounts.resolve(plural, "team-a", spec, found, labels)
    assert isinstance(resolved, Problem) and resolved.reason == reason and resolved.stalled
    assert PLATFORM not in resolved.message and "account" not in resolved.message.split("'")[1::2]  # no Secret named


@pytest.mark.parametrize(
    ("plural", "spec", "found", "expected"),
    [
        ("deploymenttlses", dtls_ref(), account(),
         Resolved("shared", "emqx", "https://emqx.example", "", PLATFORM, "emqx-account")),
        ("deploymenttlses", dtls_ref("dep2"), account(deployments=["ge6a1a75", "dep2"]),
         Resolved("shared", "emqx", "https://emqx.example", "", PLATFORM, "emqx-account")),
        ("deploymenttlses", dtls_ref("anything"), account(deployments=[]),  # empty: any the key may touch
         Resolved("shared", "emqx", "https://emqx.example", "", PLATFORM, "emqx-account")),
        ("cdncertificates", CDN_REF, account("cdn"),
         Resolved("shared", "cdn", "https://cdn.example", "acct1", PLATFORM, "cdn-account")),
        ("cdncertificates", {**CDN_REF, "bindTo": ["res1"]}, account("cdn", cdnResources=["res1", "res2"]),
         Resolved("shared", "cdn", "https://cdn.example", "acct1", PLATFORM, "cdn-account")),
        ("letsencryptorders", CDN_REF, account("cdn"),
         Resolved("shared", "cdn", "https://cdn.example", "acct1", PLATFORM, "cdn-account")),
    ],
)  # fmt: skip
def test_an_allowed_resource_gets_the_accounts_endpoint_and_secret(
    plural: str, spec: dict[str, Any], found: dict[str, Any], expected: Resolved
) -> None:
    resolved = accounts.resolve(plural, "team-a", spec, found, TEAM)
    assert resolved == expected
    assert isinstance(resolved, Resolved) and resolved.owner == "ClusterRemoteAccount/shared"
    effective = accounts.effective_spec(spec, resolved)
    assert effective["endpoint"] == expected.endpoint and effective["accountRef"] == {"name": "shared"}
    assert effective["credentialsSecretRef"] == {"name": expected.secret_name, "namespace": PLATFORM}
    assert effective.get("account", "") == expected.account
    assert accounts.credentials_location("team-a", effective) == (PLATFORM, expected.secret_name, resolved.owner)


def test_credentials_of_a_resource_without_an_account_are_its_namespaces() -> None:
    spec = {"credentialsSecretRef": {"name": "creds", "namespace": "elsewhere"}}  # a namespace it may not name
    assert accounts.credentials_location("team-a", spec) == ("team-a", "creds", "team-a")
    assert accounts.account_name(spec) is None
    unresolved = {"accountRef": {"name": "shared"}}  # not through `effective_spec`: no Secret to read
    assert accounts.credentials_location("team-a", unresolved) == ("", "", "ClusterRemoteAccount/shared")


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"provider": "ftp", "endpoint": "https://x", "credentialsSecretRef": {"name": "a", "namespace": "b"}},
         "InvalidSpec"),
        ({"provider": "cdn", "endpoint": "https://x", "credentialsSecretRef": {"name": "a", "namespace": "b"}},
         "InvalidSpec"),
        ({"provider": "emqx", "credentialsSecretRef": {"name": "a", "namespace": "b"}}, "InvalidSpec"),
        ({"provider": "emqx", "endpoint": "https://x", "credentialsSecretRef": {"name": "a"}}, "InvalidSpec"),
    ],
)  # fmt: skip
def test_an_unusable_account_is_refused_whatever_names_it(spec: dict[str, Any], reason: str) -> None:
    problem = accounts.account_problem(spec)
    assert problem is not None and problem.reason == reason


def test_the_book_reads_kopfs_indices() -> None:
    book = AccountBook()
    shared = account(credentialsSecretRef={"name": "emqx-account", "namespace": PLATFORM})
    book.bind({"shared": [shared]}, {"team-a": [TEAM]},
              {"deploymenttlses": {"shared": [("team-a", "broker"), ("team-b", "x")]}, "cdncertificates": {}})  # fmt: skip
    assert book.account("shared") == shared and book.account("gone") is None
    assert book.namespace_labels("team-a") == TEAM and book.namespace_labels("team-z") is None
    assert book.users_of("shared") == [("deploymenttlses", "team-a", "broker"), ("deploymenttlses", "team-b", "x")]
    assert book.users_in("team-b") == [("deploymenttlses", "team-b", "x")]
    assert book.accounts_of_secret(PLATFORM, "emqx-account") == ["shared"]
    assert book.accounts_of_secret("team-a", "emqx-account") == []


# --- the controllers through an account, in process ---------------------------------------------


@pytest.fixture
async def world(emqx: Emulator, cdn: Emulator) -> AsyncIterator[World]:
    """tests/test_controllers.py's world (real clients, emulators on loopback, the fake API server), no tenant
    credentials in it: they are the platform's here."""
    budget = emqx.budget()
    rt = Runtime(
        settings=Settings(allowed_endpoints=(emqx.url + "/", cdn.url + "/"), delete_timeout=30.0), budget=budget,
        emqx=EmqxClient(budget=budget, read_window=Window(EMQX_READ.limit * 10, 3600),
                        write_window=Window(EMQX_WRITE.limit * 10, 3600)),
        cdn=CdnClient(budget=cdn.budget()), kube=FakeKube(), metrics=Metrics(),
    )  # fmt: skip
    assert isinstance(rt.kube, FakeKube)
    w = World(rt, rt.kube, (emqx, cdn))
    rt.clock = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(seconds=w.offset)
    yield w
    await rt.emqx.aclose()
    await rt.cdn.aclose()


def platform(w: World, emqx: Emulator, cdn: Emulator, **emqx_spec: Any) -> AccountBook:
    """Two accounts for namespace team-a (labels team=a) and their Secrets in the platform's namespace."""
    w.kube.put("emqx-account", PLATFORM, apiKey=EMQX_KEY, apiSecret=EMQX_SECRET)
    w.kube.put("cdn-account", PLATFORM, username=CDN_USER, password=CDN_PASSWORD)
    book = remoteaccount.book_of(w.rt)
    found = {"mqtt": [account(endpoint=emqx.url, **emqx_spec)], "shop": [account("cdn", endpoint=cdn.url)]}
    book.bind(found, {NS: [TEAM], "team-b": [{"team": "b"}]}, {})
    return book


async def through(w: World, plural: str, name: str, spec: dict[str, Any], namespace: str = NS) -> float | None:
    """One pass as the handlers make it (their routing wraps each kind's controller in the account's resolution),
    with a view built from the fake API server's status only, as after a restart."""
    from certsync import handlers

    status = dict(w.kube.status.get(name, {}))
    r = Resource(plural, namespace, name, f"uid-{name}", 1, "2026-01-01T00:00:00Z", spec, status)
    delay, _ = await handlers.one_pass(w.rt, r, 0)
    return delay


def calls(emulator: Emulator) -> list[str]:
    return [f"{c.method} {c.path}" for c in emulator.state.core.calls]


def logins(cdn: Emulator) -> int:
    return sum("oauth" in c.path for c in cdn.state.core.calls)


def dtls(deployment: str = "ge6a1a75") -> dict[str, Any]:
    return {"accountRef": {"name": "mqtt"}, "deploymentId": deployment, "tlsType": "one-way", "secretName": "mqtt-tls"}


async def test_a_refused_namespace_or_deployment_costs_no_call_and_no_secret_read(
    world: World, emqx: Emulator, cdn: Emulator
) -> None:
    platform(world, emqx, cdn, deployments=["ge6a1a75"])
    world.kube.secrets.pop((PLATFORM, "emqx-account"))  # nothing may be read: a read would stall SecretNotFound
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    assert await through(world, "deploymenttlses", "other-ns", dtls(), namespace="team-b") is None
    assert world.ready("other-ns") == ("False", "AccountNotAllowed")
    await through(world, "deploymenttlses", "other-dep", dtls("dep2"))
    assert world.ready("other-dep") == ("False", "AccountNotAllowed")
    assert "does not serve deployment 'dep2'" in world.status("other-dep")["conditions"][0]["message"]
    await through(world, "cdncertificates", "wrong-kind", {"accountRef": {"name": "mqtt"}, "secretName": "shop-tls"})
    assert world.ready("wrong-kind") == ("False", "AccountNotAllowed")
    await through(world, "deploymenttlses", "missing", {**dtls(), "accountRef": {"name": "nobody"}})
    assert world.ready("missing") == ("False", "AccountNotFound")
    assert calls(emqx) == [] and calls(cdn) == []
    for name in ("other-ns", "other-dep", "wrong-kind", "missing"):
        assert PLATFORM not in str(world.status(name))  # the account's Secret is never named to a tenant


async def test_an_allowed_resource_uses_the_accounts_credentials_as_the_accounts(
    world: World, emqx: Emulator, cdn: Emulator
) -> None:
    platform(world, emqx, cdn)
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    await through(world, "deploymenttlses", "broker", dtls("dep2"))  # empty deployments: any the key may touch
    assert world.ready("broker") == ("False", "Pending") or world.status("broker")["target"].endswith("|dep2")
    assert [c for c in calls(emqx) if c.startswith("POST ")] == ["POST /deployments/dep2/tls"]
    r = Resource("deploymenttlses", NS, "broker", "uid", 1, "t", dtls("dep2"), {})
    assert remoteaccount.resolve_spec(world.rt, r) is None
    r.endpoint = emqx.url
    access = deploymenttls.emqx_access(r, {"apiKey": "k", "apiSecret": "s"}, None)
    assert access.namespace == "ClusterRemoteAccount/mqtt"


async def test_the_accounts_users_share_its_login_and_a_rotation_costs_one_more(
    world: World, emqx: Emulator, cdn: Emulator
) -> None:
    platform(world, emqx, cdn)
    world.kube.put("cdn-account", PLATFORM, username=CDN_USER, password="not-the-password")
    world.trusted_tls("shop-tls", "www.shop.example")
    world.trusted_tls("img-tls", "img.shop.example")
    shop = {"accountRef": {"name": "shop"}, "secretName": "shop-tls"}
    img = {**shop, "secretName": "img-tls"}
    await prove_account(world, "cdn")
    assert logins(cdn) == 1 and world.ready("shop") == ("False", "CredentialsInvalid")
    await through(world, "cdncertificates", "a", shop)
    await through(world, "cdncertificates", "b", img)
    assert world.ready("a") == ("False", "CredentialsInvalid") and logins(cdn) == 1  # the account's refusal holds

    world.kube.put("cdn-account", PLATFORM, username=CDN_USER, password=CDN_PASSWORD)  # rotated by the platform
    await world.advance(61)  # unproven credentials have one login a minute of their own
    await prove_account(world, "cdn")
    assert world.ready("shop") == ("True", "CredentialsProven") and world.status("shop")["provenTime"]
    assert world.status("shop")["cdnLogin"]["owner"].startswith("ClusterRemoteAccount/shop/")
    await through(world, "cdncertificates", "a", shop)
    await through(world, "cdncertificates", "b", img)
    assert world.ready("a") == ("True", "Synced") and world.ready("b") == ("True", "Synced")
    assert logins(cdn) == 2  # one new login for the account and all its users


async def prove_account(w: World, provider: str, attempt: int = 0) -> float | None:
    name = "shop" if provider == "cdn" else "mqtt"
    found = remoteaccount.book_of(w.rt).account(name)
    assert found is not None
    a = remoteaccount.Account(name, f"uid-{name}", 1, found["spec"], dict(w.kube.status.get(name, {})))
    return await remoteaccount.prove(w.rt, a, attempt)


async def test_the_accounts_status_reasons(world: World, emqx: Emulator, cdn: Emulator) -> None:
    book = platform(world, emqx, cdn, deployments=["ge6a1a75"])
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    await prove_account(world, "emqx")  # no TLS on the deployment yet: a 404 proves nothing
    assert world.ready("mqtt") == ("True", "CredentialsUnproven")
    await through(world, "deploymenttlses", "broker", dtls())
    await world.advance(60)
    await through(world, "deploymenttlses", "broker", dtls())
    world.kube.put("emqx-account", PLATFORM, apiKey=EMQX_KEY, apiSecret=EMQX_SECRET)  # a new version: proven anew
    await prove_account(world, "emqx")
    assert world.ready("mqtt") == ("True", "CredentialsProven") and world.status("mqtt")["provenTime"]
    reads = len(calls(emqx))
    await prove_account(world, "emqx")  # the same version again (a restart, a resync): no call
    assert len(calls(emqx)) == reads

    world.kube.put("emqx-account", PLATFORM, apiKey=EMQX_KEY, apiSecret="wrong")
    await prove_account(world, "emqx")
    assert world.ready("mqtt") == ("False", "CredentialsInvalid")

    world.kube.secrets.pop((PLATFORM, "emqx-account"))
    await prove_account(world, "emqx")
    assert world.ready("mqtt") == ("False", "SecretNotFound")
    assert PLATFORM in world.status("mqtt")["conditions"][0]["message"]  # the platform's own object may say where

    async def forbidden(namespace: str, name: str, keys: Iterable[str]) -> SecretView | None:
        raise KubeError("SecretForbidden", f"may not read Secret {name!r} in namespace {namespace!r}", transient=False)

    world.kube.read_secret = forbidden  # type: ignore[method-assign]
    await prove_account(world, "emqx")
    assert world.ready("mqtt") == ("False", "SecretForbidden")
    book.bind({"mqtt": [account(endpoint="https://not-allowed.example")]}, {}, {})
    await prove_account(world, "emqx")
    assert world.ready("mqtt") == ("False", "EndpointNotAllowed")


async def test_a_refused_account_login_is_not_tried_again_after_a_restart(
    world: World, emqx: Emulator, cdn: Emulator
) -> None:
    platform(world, emqx, cdn)
    world.kube.put("cdn-account", PLATFORM, username=CDN_USER, password="not-the-password")
    await prove_account(world, "cdn")
    assert world.ready("shop") == ("False", "CredentialsInvalid") and logins(cdn) == 1
    await world.rt.cdn.aclose()
    world.rt.cdn = CdnClient(budget=cdn.budget())  # the next process: it knows only what status says
    await prove_account(world, "cdn")
    assert world.ready("shop") == ("False", "CredentialsInvalid") and logins(cdn) == 1


async def test_deletion_reads_the_accounts_secret(world: World, emqx: Emulator, cdn: Emulator) -> None:
    platform(world, emqx, cdn)
    r = Resource("deploymenttlses", NS, "broker", "uid", 1, "t", dtls(), {})
    assert remoteaccount.resolve_spec(world.rt, r) is None
    r.endpoint = emqx.url
    access = await deletion._credentials(world.rt, r)
    assert access is not None and access.namespace == "ClusterRemoteAccount/mqtt" and access.api_key == EMQX_KEY


async def test_a_forged_resource_status_never_bans_the_accounts_users(
    world: World, emqx: Emulator, cdn: Emulator
) -> None:
    """A tenant may write its resource's status: a cdnLogin naming the account as owner is not restored from it."""
    platform(world, emqx, cdn)
    world.trusted_tls("shop-tls", "www.shop.example")
    uid = world.kube.secrets[(PLATFORM, "cdn-account")].uid
    forged = {"endpoint": cdn.url, "username": CDN_USER, "owner": f"ClusterRemoteAccount/shop/{uid}",
              "bannedUntil": 4_000_000_000.0, "recentRefusals": [], "refused": {"credentialsId": f"{uid}:1", "at": 1.0}}  # fmt: skip
    world.kube.status["forger"] = {"cdnLogin": forged}
    await through(world, "cdncertificates", "forger", {"accountRef": {"name": "shop"}, "secretName": "shop-tls"})
    assert world.ready("forger") == ("True", "Synced") and logins(cdn) == 1


async def test_after_a_restart_the_accounts_users_restore_the_accounts_own_refusal(
    world: World, emqx: Emulator, cdn: Emulator
) -> None:
    """The account's status (kopf's index of it) carries its refusal: a user's first pass in a new process sends no
    login with the refused Secret version."""
    book = platform(world, emqx, cdn)
    world.kube.put("cdn-account", PLATFORM, username=CDN_USER, password="not-the-password")
    await prove_account(world, "cdn")
    assert world.ready("shop") == ("False", "CredentialsInvalid") and logins(cdn) == 1
    await world.rt.cdn.aclose()
    world.rt.cdn = CdnClient(budget=cdn.budget())  # the next process
    shop = account("cdn", endpoint=cdn.url)
    book.bind({"shop": [{**shop, "cdnLogin": world.status("shop")["cdnLogin"]}]}, {NS: [TEAM]}, {})
    world.trusted_tls("shop-tls", "www.shop.example")
    await through(world, "cdncertificates", "user", {"accountRef": {"name": "shop"}, "secretName": "shop-tls"})
    assert world.ready("user") == ("False", "CredentialsInvalid") and logins(cdn) == 1


async def test_through_a_shared_account_a_forged_status_deletes_no_other_tenants_certificate(
    world: World, emqx: Emulator, cdn: Emulator
) -> None:
    """Status may be written by the tenant: a CdnCertificate whose status names another user's seq (or an intent
    with that certificate's public chain) deletes nothing but a certificate holding its own Secret's chain."""
    from certsync import pki
    from certsync.controllers import deletion

    platform(world, emqx, cdn)
    world.trusted_tls("shop-tls", "www.shop.example")
    world.trusted_tls("own-tls", "own.shop.example")
    victim = {"accountRef": {"name": "shop"}, "secretName": "shop-tls"}
    await through(world, "cdncertificates", "victim", victim)
    assert world.ready("victim") == ("True", "Synced")
    seq = world.status("victim")["seq"]
    target = world.status("victim")["target"]
    world.rt.forget(("cdncertificates", NS, "victim"))  # as after a restart: the victim has not proven itself yet
    forged = {**victim, "secretName": "own-tls", "deletionPolicy": "Delete"}
    status = {"seq": seq, "target": target}
    r = Resource("cdncertificates", NS, "thief", "uid-thief", 1, "2026-01-01T00:00:00Z", forged, status)
    assert remoteaccount.resolve_spec(world.rt, r) is None  # as the delete handler does
    assert await deletion.delete(world.rt, r, pki.rfc3339(world.rt.clock()), 0) is None
    assert seq in cdn.state.certificates  # left in place
    assert any(reason == "DeleteSkipped" and "shared account" in m for _, reason, m in world.kube.events), (
        world.kube.events
    )

    own = {**victim, "secretName": "own-tls", "deletionPolicy": "Delete"}
    await through(world, "cdncertificates", "own", own)
    own_seq = world.status("own")["seq"]
    mine = Resource("cdncertificates", NS, "own", "uid-own", 1, "2026-01-01T00:00:00Z", own, world.status("own"))
    assert remoteaccount.resolve_spec(world.rt, mine) is None
    assert await deletion.delete(world.rt, mine, pki.rfc3339(world.rt.clock()), 0) is None
    assert own_seq not in cdn.state.certificates and seq in cdn.state.certificates  # its own one is removed
