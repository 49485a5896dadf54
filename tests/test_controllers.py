"""The controllers in process, against the emulators on loopback and a fake Kubernetes layer that can fail.

Each pass gets a fresh view built only from the fake API server's status, as after
an operator restart: what a pass knows must have been recorded, or it is lost.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import pytest
from certsync import pki
from certsync.budget import EMQX_READ, EMQX_WRITE, Window
from certsync.cdn import CdnClient
from certsync.controllers import cdncertificate, deletion, deploymenttls, letsencryptorder
from certsync.controllers.base import Resource, Runtime, first_sight
from certsync.emqx import EmqxClient
from certsync.kube import SECRET_FORBIDDEN_RETRY_S, KubeError, ObjectRef
from certsync.metrics import Metrics
from certsync.reconcile import SecretView
from certsync.reconcile.record import new_intent
from certsync.reconcile.targets import Claim
from certsync.remote import RemoteError
from certsync.settings import Settings

from devkit.factory import Chain, Issued, issue, three_level
from tests.conftest import CDN_PASSWORD, CDN_USER, EMQX_KEY, EMQX_SECRET, Emulator
from tests.status_schema import problems, status_schema

NS = "team-a"
SYNCS = {
    "deploymenttlses": deploymenttls.sync,
    "cdncertificates": cdncertificate.sync,
    "letsencryptorders": letsencryptorder.sync,
}


@dataclass
class FakeKube:
    """Secrets and status in memory; `fail` decides which status patches fail (after the layer's own retries)."""

    secrets: dict[tuple[str, str], SecretView] = field(default_factory=dict)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    fail: Callable[[Mapping[str, Any]], bool] = lambda patch: False

    async def read_secret(self, namespace: str, name: str, keys: Iterable[str]) -> SecretView | None:
        """Only the asked keys, as the real layer keeps them: a pass that forgets a key it uses fails here."""
        kept = self.secrets.get((namespace, name))
        if kept is None:
            return None
        wanted = frozenset(keys)
        return dataclasses.replace(kept, data={k: v for k, v in kept.data.items() if k in wanted}, read_for=wanted)

    async def patch_status(self, ref: ObjectRef, status: Mapping[str, Any]) -> None:
        """As the API server would: a field the CRD does not declare would be pruned, a wrong value refused."""
        refused = problems(status_schema(ref.plural), dict(status))
        if refused:
            pytest.fail(f"the API server would prune or refuse this status patch: {refused}")
        if self.fail(status):
            raise KubeError("InternalError", "patching status failed: injected", transient=True)
        stored = self.status.setdefault(ref.name, {})
        for key, value in status.items():
            if value is None:
                stored.pop(key, None)
            else:
                stored[key] = value

    async def event(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None:
        self.events.append((ref.name, reason, message))

    def put_tls(self, name: str, cert: Issued | bytes, key: bytes | None = None) -> None:
        pem = cert if isinstance(cert, bytes) else cert.cert_pem
        private = key if key is not None else cert.key_pem()  # type: ignore[union-attr]
        self.secrets[(NS, name)] = SecretView("kubernetes.io/tls", {"tls.crt": pem, "tls.key": private})

    def put(self, name: str, namespace: str = NS, **values: str) -> None:
        """An Opaque Secret; each put is a new version of it (the uid stays, as for an edit)."""
        old = self.secrets.get((namespace, name))
        version = str(int(old.version) + 1) if old is not None and old.version.isdigit() else "1"
        uid = old.uid if old is not None else f"uid-{namespace}-{name}"
        self.secrets[(namespace, name)] = SecretView("Opaque", {k: v.encode() for k, v in values.items()}, uid, version)


@dataclass
class World:
    rt: Runtime
    kube: FakeKube
    emulators: tuple[Emulator, ...]
    claims: dict[tuple[str, str], list[Claim]] = field(default_factory=dict)
    offset: float = 0.0

    async def advance(self, seconds: float) -> None:
        """Move the emulators' clocks and the controllers' together."""
        self.offset += seconds
        for emulator in self.emulators:
            await emulator.control("POST", "clock", {"advance": seconds})

    def trusted_tls(self, name: str, cn: str) -> Chain:
        """A chain whose root the CDN emulator trusts, stored in the Secret `name`."""
        chain = three_level(cn)
        for emulator in self.emulators:
            if hasattr(emulator.state, "trusted"):
                emulator.state.trusted.append(chain.root.cert)
        self.kube.put_tls(name, chain.pem, chain.leaf.key_pem())
        return chain

    async def sync(
        self, plural: str, name: str, spec: dict[str, Any], created: str = "2026-01-01T00:00:00Z", namespace: str = NS
    ) -> Any:
        """One pass, as a freshly started operator would make it (status only from the API server)."""
        status = dict(self.kube.status.get(name, {}))
        resource = Resource(plural, namespace, name, f"uid-{name}", 1, created, spec, status)
        return await SYNCS[plural](self.rt, resource)

    def status(self, name: str) -> dict[str, Any]:
        return self.kube.status.get(name, {})

    def ready(self, name: str) -> tuple[str, str]:
        ready = next(c for c in self.status(name)["conditions"] if c["type"] == "Ready")
        return ready["status"], ready["reason"]


@pytest.fixture
async def world(emqx: Emulator, cdn: Emulator) -> AsyncIterator[World]:
    budget = emqx.budget()
    settings = Settings(allowed_endpoints=(emqx.url + "/", cdn.url + "/"), delete_timeout=30.0)
    kube = FakeKube()
    rt = Runtime(
        settings=settings, budget=budget,
        emqx=EmqxClient(budget=budget, read_window=Window(EMQX_READ.limit * 10, 3600),
                        write_window=Window(EMQX_WRITE.limit * 10, 3600)),
        cdn=CdnClient(budget=cdn.budget()), kube=kube, metrics=Metrics(),  # its token ages with World.advance
    )  # fmt: skip
    w = World(rt, kube, (emqx, cdn))
    rt.clock = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(seconds=w.offset)
    rt.owners = lambda plural, key: list(w.claims.get((plural, key), []))
    kube.put("emqx-creds", apiKey=EMQX_KEY, apiSecret=EMQX_SECRET)
    kube.put("cdn-creds", username=CDN_USER, password=CDN_PASSWORD)
    yield w
    await rt.emqx.aclose()
    await rt.cdn.aclose()


def dtls_spec(emqx: Emulator, **extra: Any) -> dict[str, Any]:
    return {"endpoint": emqx.url, "credentialsSecretRef": {"name": "emqx-creds"}, "deploymentId": "ge6a1a75",
            "tlsType": "one-way", "secretName": "mqtt-tls", **extra}  # fmt: skip


def cdn_spec(cdn: Emulator, **extra: Any) -> dict[str, Any]:
    return {"endpoint": cdn.url, "credentialsSecretRef": {"name": "cdn-creds"}, "account": "acct1",
            "secretName": "shop-tls", **extra}  # fmt: skip


def writes(emulator: Emulator) -> list[str]:
    methods = ("POST", "PUT", "PATCH", "DELETE")
    return [c.method for c in emulator.state.core.calls if c.method in methods and "oauth" not in c.path]


def calls(emulator: Emulator) -> list[str]:
    return [f"{c.method} {c.template}" for c in emulator.state.core.calls if "oauth" not in c.path]


# --- DeploymentTLS -----------------------------------------------------------------------------


async def test_a_failed_status_patch_after_a_write_never_causes_a_second_write(world: World, emqx: Emulator) -> None:
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    world.kube.fail = lambda patch: "appliedDigest" in patch  # the outcome cannot be recorded
    with pytest.raises(KubeError):
        await world.sync("deploymenttlses", "broker", dtls_spec(emqx))
    assert writes(emqx) == ["POST"] and "intent" in world.status("broker")
    world.kube.fail = lambda patch: False
    await world.sync("deploymenttlses", "broker", dtls_spec(emqx))  # a restart: reads, finds the write landed
    assert writes(emqx) == ["POST"]
    assert "intent" not in world.status("broker") and world.status("broker")["appliedDigest"]
    assert any(reason == "Recovered" for _, reason, _ in world.kube.events)


async def test_a_write_costs_two_status_patches_and_still_says_so_in_an_event(
    world: World, emqx: Emulator, cdn: Emulator
) -> None:
    """The intent, then the outcome with the pass's conditions: each patch is a watch event for every index."""
    patches: list[Mapping[str, Any]] = []
    world.kube.fail = lambda patch: bool(patches.append(patch))
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    await world.sync("deploymenttlses", "broker", dtls_spec(emqx))
    assert ["intent" in p for p in patches] == [True, True] and "conditions" in patches[1]
    assert world.ready("broker") == ("False", "Pending")
    assert [reason for name, reason, _ in world.kube.events if name == "broker"] == ["Created", "Pending"]
    patches.clear()
    world.trusted_tls("shop-tls", "www.shop.example")
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))
    assert len(patches) == 2 and world.ready("shop") == ("True", "Synced")
    assert [reason for name, reason, _ in world.kube.events if name == "shop"] == ["Created", "Synced"]


async def test_a_lost_answer_is_read_back_before_anything_is_sent_again(world: World, emqx: Emulator) -> None:
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    await emqx.fault("lose", method="POST")  # the POST is applied, its answer never arrives
    with pytest.raises(RemoteError) as lost:
        await world.sync("deploymenttlses", "broker", dtls_spec(emqx))
    assert lost.value.retryable and "outcome is unknown" in lost.value.message
    await world.sync("deploymenttlses", "broker", dtls_spec(emqx))
    tls = "/deployments/{deployment_id}/tls"
    assert calls(emqx) == [f"GET {tls}", "GET /deployments/{deployment_id}", f"POST {tls}", f"GET {tls}"]  # read back
    assert world.status("broker")["appliedDigest"] and "intent" not in world.status("broker")


async def test_a_refused_write_clears_its_intent_and_is_not_retried_blindly(world: World, emqx: Emulator) -> None:
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    await emqx.fault("status", status=400, method="POST")
    with pytest.raises(RemoteError) as refused:
        await world.sync("deploymenttlses", "broker", dtls_spec(emqx))
    assert not refused.value.retryable and writes(emqx) == ["POST"]
    assert "intent" not in world.status("broker")


async def test_a_burst_of_rotations_costs_at_most_two_writes_and_the_last_one_lands(
    world: World, emqx: Emulator
) -> None:
    spec = dtls_spec(emqx)
    certificates = [issue(f"mqtt{n}.example.com") for n in range(5)]
    for cert in certificates:  # five rotations while the first write is still pending
        world.kube.put_tls("mqtt-tls", cert)
        await world.sync("deploymenttlses", "broker", {**spec})
    assert writes(emqx) == ["POST"]
    await world.advance(60)  # the remote applies the first write
    for _ in range(3):
        await world.sync("deploymenttlses", "broker", spec)
        await world.advance(60)
    assert writes(emqx) == ["POST", "PUT"]
    installed = await emqx.control("GET", "tls/ge6a1a75")
    assert installed["fingerprint"] == pki.certificate_facts(certificates[-1].cert).sha256


async def test_a_client_ca_rotation_and_a_chain_only_change_each_cost_one_write(world: World, emqx: Emulator) -> None:
    chain = three_level("mqtt.example.com")
    world.kube.put_tls("mqtt-tls", chain.full_pem, chain.leaf.key_pem())
    world.kube.put("client-ca", **{"ca.crt": issue("Client CA 1", ca=True).cert_pem.decode()})
    spec = dtls_spec(emqx, tlsType="two-way", clientCA={"secretName": "client-ca", "key": "ca.crt"})
    await world.sync("deploymenttlses", "broker", spec)
    await world.advance(60)
    await world.sync("deploymenttlses", "broker", spec)
    assert writes(emqx) == ["POST"] and world.ready("broker") == ("True", "Synced")
    world.kube.put("client-ca", **{"ca.crt": issue("Client CA 2", ca=True).cert_pem.decode()})
    await world.sync("deploymenttlses", "broker", spec)
    assert writes(emqx) == ["POST", "PUT"]
    await world.advance(60)
    await world.sync("deploymenttlses", "broker", spec)
    # the same leaf and key under a re-issued intermediate
    world.kube.put_tls("mqtt-tls", chain.leaf.cert_pem + chain.reissued_intermediate_pem(), chain.leaf.key_pem())
    await world.sync("deploymenttlses", "broker", spec)
    assert writes(emqx) == ["POST", "PUT", "PUT"]
    await world.advance(60)
    await world.sync("deploymenttlses", "broker", spec)
    await world.sync("deploymenttlses", "broker", spec)
    assert writes(emqx) == ["POST", "PUT", "PUT"] and world.ready("broker") == ("True", "Synced")


async def test_two_resources_on_one_deployment_the_younger_stalls_without_a_call(world: World, emqx: Emulator) -> None:
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    spec = dtls_spec(emqx)
    target = deploymenttls.target_of(spec)
    older, younger = Claim("2026-01-01T00:00:00Z", NS, "first"), Claim("2026-02-01T00:00:00Z", NS, "second")
    world.claims[("deploymenttlses", target)] = [older, younger]
    await world.sync("deploymenttlses", "first", spec, created=older.created)  # writes: its credentials are proven
    before = len(calls(emqx))
    await world.sync("deploymenttlses", "second", spec, created=younger.created)
    assert world.ready("second") == ("False", "TargetConflict") and len(calls(emqx)) == before
    assert "team-a/first" in world.status("second")["conditions"][0]["message"]
    # An older proven claim of another namespace is not named to this one (neither its namespace nor its name).
    world.claims[("deploymenttlses", target)] = [Claim("2025-01-01T00:00:00Z", "team-b", "squat"), younger]
    world.rt.proofs.prove(("deploymenttlses", "team-b", "squat"), target)
    await world.sync("deploymenttlses", "second", spec, created=younger.created)
    message = world.status("second")["conditions"][0]["message"]
    assert "a resource in another namespace" in message and "team-b" not in message and "squat" not in message
    world.claims[("deploymenttlses", target)] = [older, younger]
    # deleting the younger one never touches the older one's certificate
    resource = Resource("deploymenttlses", NS, "second", "uid", 1, younger.created, {**spec, "deletionPolicy": "Delete"},
                        dict(world.status("second")))  # fmt: skip
    assert await deletion.delete(world.rt, resource, None, 0) is None
    assert "DELETE" not in writes(emqx)


# --- CdnCertificate ----------------------------------------------------------------------------


async def test_cdn_add_then_lost_record_adopts_instead_of_adding_twice(world: World, cdn: Emulator) -> None:
    world.trusted_tls("shop-tls", "www.shop.example")
    world.kube.fail = lambda patch: "appliedDigest" in patch
    with pytest.raises(KubeError):
        await world.sync("cdncertificates", "shop", cdn_spec(cdn))
    world.kube.fail = lambda patch: False
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))
    assert writes(cdn) == ["POST"] and world.status("shop")["seq"] == 1
    assert world.ready("shop") == ("True", "Synced")


async def test_cdn_new_certificate_costs_one_write_and_no_detail_read(world: World, cdn: Emulator) -> None:
    world.trusted_tls("shop-tls", "www.shop.example")
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))
    assert calls(cdn) == [
        "GET /app/ssl/v1/account/{account}/certificate/",
        "POST /app/ssl/v1/account/{account}/certificate/",
    ]
    assert world.status("shop")["fingerprint"] and world.ready("shop") == ("True", "Synced")
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))  # nothing to do: no call
    assert len(calls(cdn)) == 2


async def test_cdn_new_certificates_of_one_account_share_one_list(world: World, cdn: Emulator) -> None:
    for n in range(5):
        world.trusted_tls(f"tls-{n}", f"www{n}.shop.example")
        await world.sync("cdncertificates", f"shop-{n}", cdn_spec(cdn, secretName=f"tls-{n}"))
    assert calls(cdn).count("GET /app/ssl/v1/account/{account}/certificate/") == 1
    assert calls(cdn).count("POST /app/ssl/v1/account/{account}/certificate/") == 5
    # the same chain again under another name: our add joined the shared list, so one detail GET finds it
    world.kube.secrets[(NS, "tls-again")] = world.kube.secrets[(NS, "tls-0")]
    await world.sync("cdncertificates", "shop-again", cdn_spec(cdn, secretName="tls-again"))
    assert calls(cdn).count("POST /app/ssl/v1/account/{account}/certificate/") == 5
    assert calls(cdn).count("GET /app/ssl/v1/account/{account}/certificate/") == 1
    assert world.status("shop-again")["seq"] == world.status("shop-0")["seq"]


async def test_cdn_chain_only_change_is_one_patch(world: World, cdn: Emulator) -> None:
    chain = world.trusted_tls("shop-tls", "www.shop.example")
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))
    world.kube.put_tls("shop-tls", chain.leaf.cert_pem + chain.reissued_intermediate_pem(), chain.leaf.key_pem())
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))
    assert writes(cdn) == ["POST", "PATCH"]


async def test_cdn_rotation_is_one_patch_and_a_vanished_certificate_is_added_again(world: World, cdn: Emulator) -> None:
    world.trusted_tls("shop-tls", "www.shop.example")
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))
    before = len(calls(cdn))
    world.trusted_tls("shop-tls", "www.shop.example")
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))
    assert calls(cdn)[before:] == ["PATCH /app/ssl/v1/account/{account}/certificate/{seq}"]
    cdn.state.certificates.clear()  # removed by someone else
    world.trusted_tls("shop-tls", "www.shop.example")
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))
    assert writes(cdn)[-2:] == ["PATCH", "POST"] and world.ready("shop") == ("True", "Synced")


async def test_spec_seq_wins_over_the_seq_in_status(world: World, cdn: Emulator) -> None:
    world.trusted_tls("shop-tls", "www.shop.example")
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))
    world.trusted_tls("img-tls", "img.shop.example")
    await world.sync("cdncertificates", "img", {**cdn_spec(cdn), "secretName": "img-tls"})
    img_seq = world.status("img")["seq"]
    await world.sync("cdncertificates", "shop", {**cdn_spec(cdn), "seq": img_seq})
    assert world.status("shop")["seq"] == img_seq and writes(cdn)[-1] == "PATCH"


# --- LetsEncryptOrder --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failing",
    [
        {"resourceId": "res2", "credentialsSecretRef": {"name": "junk-creds"}},  # credentials that do not work
        {"resourceId": "no-such-resource"},  # an order the remote refuses
    ],
    ids=["credentials-refused", "order-refused"],
)
async def test_an_order_that_fails_gives_the_account_slot_back(
    world: World, cdn: Emulator, failing: dict[str, Any]
) -> None:
    """A resource whose order fails must not queue the account's other orders behind it (another tenant's: the
    unproven credentials of one namespace share a small quota of their own)."""
    world.kube.secrets[("team-b", "junk-creds")] = SecretView("Opaque", {"token": b"junk-token"}, uid="u", version="1")
    world.kube.put("cdn-creds", namespace="team-b", username=CDN_USER, password=CDN_PASSWORD)
    squat = {**cdn_spec(cdn), **failing}
    victim = {**cdn_spec(cdn), "resourceId": "res1"}
    for spec in (squat, victim):
        spec.pop("secretName")
    with pytest.raises(RemoteError):
        await world.sync("letsencryptorders", "squat", squat, created="2025-01-01T00:00:00Z", namespace="team-b")
    assert world.rt.order_slots == {}
    await world.sync("letsencryptorders", "victim", victim)
    assert world.ready("victim") == ("False", "Pending") and len(cdn.state.orders) == 1


async def test_two_resource_orders_of_one_account_each_get_their_own_certificate(world: World, cdn: Emulator) -> None:
    one = {**cdn_spec(cdn), "resourceId": "res1"}
    two = {**cdn_spec(cdn), "resourceId": "res2"}
    for spec in (one, two):
        spec.pop("secretName")
    await world.sync("letsencryptorders", "one", one)
    world.claims[(letsencryptorder.INFLIGHT, letsencryptorder.account_of(one))] = [Claim("t", NS, "one")]
    await world.sync("letsencryptorders", "two", two)  # queued: one order at a time per account
    assert world.ready("two") == ("False", "Queued")
    await world.advance(60)
    await world.sync("letsencryptorders", "one", one)
    world.claims.clear()
    await world.sync("letsencryptorders", "two", two)
    await world.advance(60)
    await world.sync("letsencryptorders", "two", two)
    seqs = {name: world.status(name)["certificateSeq"] for name in ("one", "two")}
    names = {seq: pki.certificate_facts(c.chain[0]).sans for seq, c in cdn.state.certificates.items()}
    assert names[seqs["one"]] == ("www.shop.example",) and names[seqs["two"]] == ("img.shop.example",)


async def test_an_order_whose_record_was_lost_is_never_placed_twice(world: World, cdn: Emulator) -> None:
    spec = {**cdn_spec(cdn), "domains": ["*.d.example"]}
    spec.pop("secretName")
    world.kube.fail = lambda patch: "orderedAt" in patch
    with pytest.raises(KubeError):
        await world.sync("letsencryptorders", "wild", spec)
    world.kube.fail = lambda patch: False
    for _ in range(3):  # settled by reading the list only, however often it is looked at
        await world.sync("letsencryptorders", "wild", spec)
        await world.advance(60)
    await world.sync("letsencryptorders", "wild", spec)
    orders = [c for c in cdn.state.core.calls if c.method == "POST" and "letsencrypt" in c.path]
    assert len(orders) == 1  # never re-sent as a probe: a second POST would be a second order where none is running
    assert len(cdn.state.orders) == 1 and world.ready("wild") == ("True", "Synced")


async def test_an_unrecorded_wildcard_order_that_never_left_is_ordered_after_the_settle_bound(
    world: World, cdn: Emulator
) -> None:
    """The intent was recorded, then the operator died before the POST: nothing appears in the list, so after
    WILDCARD_SETTLE_S (and not before) the order is taken as never placed and sent once."""
    spec = {**cdn_spec(cdn), "domains": ["*.e.example"]}
    spec.pop("secretName")
    intent = new_intent("order", letsencryptorder.target_of(spec), "", world.rt.clock(), before=[])
    world.kube.status["wild"] = {"intent": intent.to_status()}
    await world.sync("letsencryptorders", "wild", spec)
    posts = lambda: [c for c in cdn.state.core.calls if c.method == "POST" and "letsencrypt" in c.path]  # noqa: E731
    assert posts() == [] and world.ready("wild") == ("False", "Pending")
    await world.advance(letsencryptorder.WILDCARD_SETTLE_S + 1)
    await world.sync("letsencryptorders", "wild", spec)  # the bound passed: the intent is dropped, the order sent
    assert len(posts()) == 1, world.status("wild")


# --- deletion ----------------------------------------------------------------------------------


async def test_delete_uses_the_last_working_credentials_when_the_secret_is_gone(world: World, cdn: Emulator) -> None:
    world.trusted_tls("shop-tls", "www.shop.example")
    spec = {**cdn_spec(cdn), "deletionPolicy": "Delete"}
    await world.sync("cdncertificates", "shop", spec)
    del world.kube.secrets[(NS, "cdn-creds")]  # a namespace deletion removes Secrets in any order
    resource = Resource("cdncertificates", NS, "shop", "uid-shop", 1, "t", spec, dict(world.status("shop")))
    assert await deletion.delete(world.rt, resource, None, 0) is None
    assert writes(cdn)[-1] == "DELETE" and not cdn.state.certificates


async def test_delete_retries_an_unavailable_remote_then_gives_up_within_the_bound(world: World, cdn: Emulator) -> None:
    world.trusted_tls("shop-tls", "www.shop.example")
    spec = {**cdn_spec(cdn), "deletionPolicy": "Delete"}
    await world.sync("cdncertificates", "shop", spec)
    await cdn.fault("503", count=100)
    resource = Resource("cdncertificates", NS, "shop", "uid-shop", 1, "t", spec, dict(world.status("shop")))
    started = dt.datetime.now(dt.UTC)
    again = await deletion.delete(world.rt, resource, started.isoformat(), 0)
    assert again is not None and 1.0 <= again <= 30.0
    too_late = (started - dt.timedelta(seconds=31)).isoformat()
    assert await deletion.delete(world.rt, resource, too_late, 5) is None
    reasons = [reason for _, reason, _ in world.kube.events]
    assert "DeleteRetrying" in reasons and reasons[-1] == "DeleteFailed"


async def test_delete_honours_the_timeout_whatever_fails(
    world: World, cdn: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only a remote's error: an API server failing under the Secret read is retried, then given up on time."""
    world.trusted_tls("shop-tls", "www.shop.example")
    spec = {**cdn_spec(cdn), "deletionPolicy": "Delete"}
    await world.sync("cdncertificates", "shop", spec)

    async def failing_read(namespace: str, name: str, keys: Iterable[str]) -> SecretView | None:
        raise KubeError("InternalError", "reading the Secret failed: the API server is gone", transient=True)

    monkeypatch.setattr(world.kube, "read_secret", failing_read)
    resource = Resource("cdncertificates", NS, "shop", "uid-shop", 1, "t", spec, dict(world.status("shop")))
    started = dt.datetime.now(dt.UTC)
    again = await deletion.delete(world.rt, resource, started.isoformat(), 0)
    assert again is not None and again >= 1.0
    too_late = (started - dt.timedelta(seconds=31)).isoformat()
    assert await deletion.delete(world.rt, resource, too_late, 5) is None  # the finalizer may go
    events = [(reason, message) for _, reason, message in world.kube.events]
    assert events[-1][0] == "DeleteFailed" and "API server is gone" in events[-1][1]
    assert cdn.state.certificates  # nothing removed: the certificate stays, as the Warning says


async def test_a_pass_cut_short_by_the_stop_records_nothing(
    world: World, cdn: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop can make a pass fail in odd ways (clients closing under it): the last whole pass's status stays."""
    from certsync import handlers

    async def broken(rt: Runtime, r: Resource) -> float | None:
        raise RuntimeError("the client was closed under the pass")

    monkeypatch.setitem(handlers.SYNCS, "cdncertificates", broken)
    resource = Resource("cdncertificates", NS, "shop", "uid-shop", 1, "2026-01-01T00:00:00Z", cdn_spec(cdn), {})
    assert await handlers.one_pass(world.rt, resource, 0, lambda: True) == (None, 0)
    assert "conditions" not in world.status("shop")
    await handlers.one_pass(world.rt, resource, 0, lambda: False)  # not stopping: a bug says so
    assert world.ready("shop") == ("False", "InternalError")


async def test_a_pass_after_the_cleanup_began_records_nothing(world: World, cdn: Emulator) -> None:
    """kopf may run a daemon it respawned after its stop while the cleanup closes the clients (measured in CI:
    `Cannot send a request, as the client has been closed` became InternalError over a Stalled status)."""
    from certsync import handlers

    world.trusted_tls("shop-tls", "www.shop.example")
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))
    before = dict(world.status("shop"))
    await handlers.cleanup(memo=kopf.Memo(runtime=world.rt))  # closes the clients, as at the operator's stop
    assert world.rt.closing
    resource = Resource("cdncertificates", NS, "shop", "uid-shop", 1, "2026-01-01T00:00:00Z", cdn_spec(cdn),
                        dict(before), forced=True)  # fmt: skip
    assert await handlers.one_pass(world.rt, resource, 3, lambda: False) == (None, 3)
    assert dict(world.status("shop")) == before


async def test_a_requested_drift_check_reads_the_remote_not_the_shared_list(world: World, cdn: Emulator) -> None:
    world.trusted_tls("shop-tls", "www.shop.example")
    await world.sync("cdncertificates", "shop", cdn_spec(cdn))  # lists, adds, and remembers the add in the list
    status = dict(world.status("shop"))
    forced = Resource("cdncertificates", NS, "shop", "uid-shop", 1, "2026-01-01T00:00:00Z", cdn_spec(cdn), status,
                      forced=True)  # fmt: skip
    await SYNCS["cdncertificates"](world.rt, forced)
    assert calls(cdn).count("GET /app/ssl/v1/account/{account}/certificate/") == 2
    assert world.ready("shop") == ("True", "Synced")


async def test_drift_checks_of_an_accounts_certificates_cost_one_list_a_cycle_whenever_they_were_created(
    world: World, cdn: Emulator
) -> None:
    """Six certificates created an hour apart, each woken when its pass asked to be: one list per cycle."""
    interval = world.rt.settings.drift_interval
    due: dict[str, float] = {}
    for n in range(6):
        world.trusted_tls(f"tls-{n}", f"www{n}.shop.example")
        wait = await world.sync("cdncertificates", f"shop-{n}", cdn_spec(cdn, secretName=f"tls-{n}"))
        assert 0 < wait <= interval
        due[f"shop-{n}"] = world.offset + wait
        await world.advance(3600)
    before, at, passes = len(calls(cdn)), [], dict.fromkeys(due, 0)
    end = world.offset + 3 * interval
    while min(due.values()) < end:  # the daemons: each pass runs when the last one asked
        name = min(due, key=lambda k: due[k])
        await world.advance(max(0.0, due[name] - world.offset))
        at.append(world.offset)
        n = name.removeprefix("shop-")
        wait = await world.sync("cdncertificates", name, cdn_spec(cdn, secretName=f"tls-{n}"))
        assert world.ready(name) == ("True", "Synced") and 0 < wait <= interval
        due[name], passes[name] = world.offset + wait, passes[name] + 1
    lists = calls(cdn)[before:]
    assert set(lists) == {"GET /app/ssl/v1/account/{account}/certificate/"}  # no write, no detail read
    assert min(passes.values()) >= 3  # each checked once a cycle...
    # Passes of one moment are seconds apart (the test's own run time), moments an interval apart: counted by
    # their gaps, not by rounding to a minute, which split a moment whenever it straddled one (a flaky count).
    moments = 1 + sum(1 for a, b in itertools.pairwise(sorted(at)) if b - a > 600)
    assert len(lists) == moments <= 4  # ...all six at the same moments, sharing one list each time


async def test_a_deployment_in_sync_is_read_once_per_drift_interval(world: World, emqx: Emulator) -> None:
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    await world.sync("deploymenttlses", "mqtt", dtls_spec(emqx))
    await world.advance(60)  # the remote applied the write: the next poll finds it `running`
    await world.sync("deploymenttlses", "mqtt", dtls_spec(emqx))
    assert world.ready("mqtt") == ("True", "Synced")
    reads = calls(emqx).count("GET /deployments/{deployment_id}/tls")
    interval = world.rt.settings.drift_interval
    for _ in range(3):  # a resync, a restart, a Secret event without change: all within the interval
        await world.advance(interval / 4)
        await world.sync("deploymenttlses", "mqtt", dtls_spec(emqx))
    assert calls(emqx).count("GET /deployments/{deployment_id}/tls") == reads
    await world.advance(interval / 4 + 1)
    for _ in range(3):
        await world.sync("deploymenttlses", "mqtt", dtls_spec(emqx))
    assert calls(emqx).count("GET /deployments/{deployment_id}/tls") == reads + 1
    assert world.ready("mqtt") == ("True", "Synced")


# --- what the resource says before and besides its passes ----------------------------------------


async def test_a_resource_first_seen_is_reconciling_until_its_first_pass_decides(world: World, emqx: Emulator) -> None:
    """kstatus reads a resource without conditions as Current: the operator says Reconciling at first sight."""
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    local: dict[str, Any] = {}
    seen = Resource("deploymenttlses", NS, "broker", "uid-broker", 3, "t", dtls_spec(emqx), {}, local)
    await first_sight(world.rt, seen)
    status = world.status("broker")
    assert status["observedGeneration"] == 3 and calls(emqx) == []
    by_type = {c["type"]: (c["status"], c["reason"], c["observedGeneration"]) for c in status["conditions"]}
    assert by_type == {"Ready": ("Unknown", "Progressing", 3), "Reconciling": ("True", "Progressing", 3),
                       "Stalled": ("False", "Progressing", 3)}  # fmt: skip
    patches: list[Mapping[str, Any]] = []
    world.kube.fail = lambda patch: bool(patches.append(patch))
    await first_sight(world.rt, Resource("deploymenttlses", NS, "broker", "uid-broker", 3, "t", {}, {}, local))
    await first_sight(world.rt, Resource("deploymenttlses", NS, "broker", "uid-broker", 3, "t", {}, status))
    assert patches == []  # seen once: its status keeps the conditions (across restarts too)
    await world.sync("deploymenttlses", "broker", dtls_spec(emqx))
    assert world.ready("broker") == ("False", "Pending")


async def test_a_forbidden_secret_stalls_with_its_own_reason_and_is_looked_at_again(
    world: World, emqx: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RBAC is no input the operator watches: a 403 is not InvalidSpec, and it is retried on a slow timer."""
    from certsync import handlers

    refusal = KubeError("SecretForbidden", "the operator's ServiceAccount may not read Secret 'mqtt-tls' (RBAC)",
                        transient=False, retry_after=SECRET_FORBIDDEN_RETRY_S)  # fmt: skip

    async def forbidden(namespace: str, name: str, keys: Iterable[str]) -> SecretView | None:
        raise refusal

    monkeypatch.setattr(world.kube, "read_secret", forbidden)
    resource = Resource("deploymenttlses", NS, "broker", "uid-broker", 1, "t", dtls_spec(emqx), {})
    delay, failures = await handlers.one_pass(world.rt, resource, 0)
    assert (delay, failures) == (SECRET_FORBIDDEN_RETRY_S, 1) and calls(emqx) == []
    conditions = {c["type"]: c for c in world.status("broker")["conditions"]}
    assert (conditions["Stalled"]["status"], conditions["Stalled"]["reason"]) == ("True", "SecretForbidden")
    assert "RBAC" in conditions["Stalled"]["message"]
    assert [reason for _, reason, _ in world.kube.events] == ["SecretForbidden"]


async def test_a_refused_cdn_login_is_kept_in_status_as_the_crd_declares_it(world: World, cdn: Emulator) -> None:
    """cdnLogin is written by the handlers after a pass: the fake API server checks it against the CRD too."""
    from certsync import handlers

    world.trusted_tls("shop-tls", "www.shop.example")
    world.kube.put("cdn-creds", username=CDN_USER, password="not-the-password")
    resource = Resource("cdncertificates", NS, "shop", "uid-shop", 1, "t", cdn_spec(cdn), {})
    await handlers.one_pass(world.rt, resource, 0)
    login = world.status("shop")["cdnLogin"]
    assert login["username"] == CDN_USER and login["refused"]["credentialsId"] and login["recentRefusals"]
    assert world.ready("shop") == ("False", "CredentialsInvalid")


async def test_a_stop_right_after_a_refused_login_is_recorded_never_costs_a_second_login(
    world: World, cdn: Emulator
) -> None:
    """The refusal is part of the patch that says CredentialsInvalid: a SIGTERM at that moment (measured from
    outside: `kubectl wait --for=condition=Stalled`, then a stop) must not leave a status without it, or the next
    process tries the refused password again."""
    from certsync import handlers

    world.trusted_tls("shop-tls", "www.shop.example")
    world.kube.put("cdn-creds", username=CDN_USER, password="not-the-password")
    stopped: list[bool] = []

    def dies_after_the_stall(patch: Mapping[str, Any]) -> bool:
        """Every patch after the one that says Stalled fails: the process is gone."""
        if stopped:
            return True
        stalled = [c for c in patch.get("conditions", []) if c["type"] == "Stalled" and c["status"] == "True"]
        stopped.extend(True for _ in stalled)
        return False

    world.kube.fail = dies_after_the_stall
    resource = Resource("cdncertificates", NS, "shop", "uid-shop", 1, "t", cdn_spec(cdn), {})
    await handlers.one_pass(world.rt, resource, 0)
    assert stopped and world.ready("shop") == ("False", "CredentialsInvalid")
    world.kube.fail = lambda patch: False
    await world.rt.cdn.aclose()
    world.rt.cdn = CdnClient(budget=cdn.budget())  # the next process: what it knows comes from status
    restarted = Resource("cdncertificates", NS, "shop", "uid-shop", 1, "t", cdn_spec(cdn), dict(world.status("shop")))
    await handlers.one_pass(world.rt, restarted, 0)
    logins = [c for c in cdn.state.core.calls if "oauth" in c.path]
    assert len(logins) == 1 and world.ready("shop") == ("False", "CredentialsInvalid")


async def test_a_retried_deletion_says_the_same_thing_each_time_so_its_events_are_counted(
    world: World, cdn: Emulator
) -> None:
    world.trusted_tls("shop-tls", "www.shop.example")
    spec = {**cdn_spec(cdn), "deletionPolicy": "Delete"}
    await world.sync("cdncertificates", "shop", spec)
    await cdn.fault("503", count=100)
    resource = Resource("cdncertificates", NS, "shop", "uid-shop", 1, "t", spec, dict(world.status("shop")))
    started = dt.datetime.now(dt.UTC).isoformat()
    for attempt in range(3):
        assert await deletion.delete(world.rt, resource, started, attempt) is not None
    retried = [(reason, message) for _, reason, message in world.kube.events if reason == "DeleteRetrying"]
    assert len(retried) == 3 and len(set(retried)) == 1, retried
