"""CdnCertificate bindings in process: the controller against the CDN emulator's HTTP resources and a fake
Kubernetes layer, each pass built from the recorded status only (as after a restart)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from certsync import pki
from certsync.budget import Window
from certsync.controllers import cdnbindings, cdncertificate, deletion
from certsync.controllers.base import Resource
from certsync.controllers.cdnbindings import binding_key
from certsync.kube import KubeError
from certsync.reconcile import SecretView
from certsync.reconcile.targets import Claim

from devkit.factory import Chain, issue
from tests import test_controllers as tc
from tests.conftest import CDN_PASSWORD, CDN_USER, Emulator
from tests.test_controllers import NS, World, cdn_spec

world = tc.world  # the fixture: a runtime, a fake API server, both emulators

RESOURCE = "/cdn/api/v1/{account}/resource/http/{id}"
GET, PATCH, PUT, TASK = f"GET {RESOURCE}", f"PATCH {RESOURCE}", f"PUT {RESOURCE}", "GET /cdn/api/v1/tasks"


def shop_chain(world: World, *names: str, secret: str = "shop-tls", namespace: str = NS) -> Chain:
    """A chain the CDN emulator trusts whose leaf serves `names` (SANs), stored in the Secret `secret`."""
    root = issue("Test Root CA", ca=True)
    intermediate = issue("Test Intermediate CA", issuer=root, ca=True)
    chain = Chain(root, intermediate, issue(names[0], issuer=intermediate, sans=names))
    world.emulators[1].state.trusted.append(root.cert)
    pem = {"tls.crt": chain.pem, "tls.key": chain.leaf.key_pem()}
    world.kube.secrets[(namespace, secret)] = SecretView("kubernetes.io/tls", pem)
    return chain


async def sync(world: World, name: str, spec: dict[str, Any], *, forced: bool = False, namespace: str = NS,
               created: str = "2026-01-01T00:00:00Z") -> Any:  # fmt: skip
    status = dict(world.kube.status.get(name, {}))
    r = Resource("cdncertificates", namespace, name, f"uid-{name}", 1, created, spec, status, forced=forced)
    return await cdncertificate.sync(world.rt, r)


def counted(cdn: Emulator) -> dict[str, int]:
    return {k: v for k, v in cdn.counts().items() if "/cdn/api/v1/" in k}


def bindings(world: World, name: str = "shop") -> dict[str, dict[str, Any]]:
    return {b["resourceId"]: b for b in world.status(name).get("bindings", [])}


def served(cdn: Emulator, rid: str) -> Any:
    cdn.state.http_resources.settle(cdn.state.core.now())
    return cdn.state.http_resources.resources[rid].get("certificate")


async def bind_both(world: World, cdn: Emulator, **extra: Any) -> dict[str, Any]:
    """A certificate for both shop hosts bound to res1 and res2, as far as the first pass goes."""
    shop_chain(world, "www.shop.example", "img.shop.example")
    spec = cdn_spec(cdn, bindTo=["res1", "res2"], **extra)
    await sync(world, "shop", spec)
    return spec


async def test_two_resources_two_patches_two_tasks_and_ready_only_once_both_reads_show_the_seq(
    world: World, cdn: Emulator
) -> None:
    spec = await bind_both(world, cdn)
    seq = world.status("shop")["seq"]
    assert counted(cdn) == {GET: 2, PATCH: 2}
    assert {b["state"] for b in bindings(world).values()} == {"Applying"} and world.status("shop")["bound"] == "0/2"
    assert world.ready("shop") == ("False", "Pending")  # the certificate is in sync, the resources not yet
    await sync(world, "shop", spec)  # the tasks are still pending: one look at each, no read
    assert counted(cdn) == {GET: 2, PATCH: 2, TASK: 2} and world.ready("shop") == ("False", "Pending")
    await world.advance(3)
    await sync(world, "shop", spec)  # completed: a fresh read of each shows the seq
    assert counted(cdn) == {GET: 4, PATCH: 2, TASK: 4}
    assert world.ready("shop") == ("True", "Synced") and world.status("shop")["bound"] == "2/2"
    assert all(b["state"] == "Bound" and b["seq"] == seq and b["boundAt"] for b in bindings(world).values())
    assert served(cdn, "res1") == served(cdn, "res2") == seq
    patches = [c for c in cdn.state.core.calls if c.method == "PATCH"]
    assert {c.path.rsplit("/", 1)[1] for c in patches} == {"res1", "res2"}
    await sync(world, "shop", spec)  # in sync and read this cycle: not a single call
    assert counted(cdn) == {GET: 4, PATCH: 2, TASK: 4}
    reasons = [reason for name, reason, _ in world.kube.events if name == "shop"]
    assert reasons.count("BindRequested") == 2 and reasons.count("Bound") == 2 and reasons[-1] == "Synced"


async def test_a_name_not_covered_writes_nothing(world: World, cdn: Emulator) -> None:
    shop_chain(world, "www.shop.example")
    await sync(world, "shop", cdn_spec(cdn, bindTo=["res1", "res2"]))
    assert counted(cdn) == {GET: 2}  # both read, neither written: res2's img.shop.example is not covered
    assert world.ready("shop") == ("False", "NamesNotCovered")
    ready = next(c for c in world.status("shop")["conditions"] if c["type"] == "Stalled")
    assert ready["status"] == "True" and "res2" in ready["message"] and "img.shop.example" in ready["message"]
    assert bindings(world)["res2"]["state"] == "NamesNotCovered" and bindings(world)["res2"]["names"]
    await sync(world, "shop", cdn_spec(cdn, bindTo=["res1", "res2"]))  # woken (stalled: by a change only)
    assert counted(cdn) == {GET: 2}  # nothing changed: no call, and still nothing written


async def test_a_task_ending_in_error_is_binding_failed_with_its_message(world: World, cdn: Emulator) -> None:
    await cdn.control("POST", "resources", {"failTasks": 1})
    shop_chain(world, "www.shop.example")
    spec = cdn_spec(cdn, bindTo=["res1"])
    await sync(world, "shop", spec)
    await world.advance(3)
    await sync(world, "shop", spec)
    assert world.ready("shop") == ("False", "BindingFailed")
    entry = bindings(world)["res1"]
    assert entry["state"] == "Failed" and "configuration could not be applied" in entry["message"]
    await sync(world, "shop", spec)
    assert counted(cdn)[PATCH] == 1  # not retried in a loop
    await sync(world, "shop", spec, forced=True)  # a person asks: read, and bind again
    await world.advance(3)
    await sync(world, "shop", spec)
    assert counted(cdn)[PATCH] == 2 and world.ready("shop") == ("True", "Synced")


async def test_a_console_rebind_is_repaired_at_the_drift_check(world: World, cdn: Emulator) -> None:
    shop_chain(world, "www.shop.example")
    spec = cdn_spec(cdn, bindTo=["res1"])
    await sync(world, "shop", spec)
    await world.advance(3)
    await sync(world, "shop", spec)
    seq = world.status("shop")["seq"]
    await cdn.control("POST", "resources", {"rebind": {"res1": 77}})
    await sync(world, "shop", spec)  # no drift check due: nothing read, nothing seen
    assert counted(cdn)[PATCH] == 1
    await sync(world, "shop", spec, forced=True)  # the drift check: one read of the resource, one PATCH
    assert counted(cdn)[PATCH] == 2 and world.ready("shop") == ("False", "Pending")
    assert any(reason == "Drifted" and "77" in text for _, reason, text in world.kube.events)
    await world.advance(3)
    await sync(world, "shop", spec)
    assert served(cdn, "res1") == seq and world.ready("shop") == ("True", "Synced")


async def test_a_rotation_in_place_needs_no_rebind_and_a_new_seq_moves_every_binding(
    world: World, cdn: Emulator
) -> None:
    spec = await bind_both(world, cdn)
    await world.advance(3)
    await sync(world, "shop", spec)
    first = world.status("shop")["seq"]
    shop_chain(world, "www.shop.example", "img.shop.example")  # cert-manager renewed it: same seq, PATCHed
    await sync(world, "shop", spec)
    assert world.status("shop")["seq"] == first and counted(cdn)[PATCH] == 2
    assert world.ready("shop") == ("True", "Synced")
    del cdn.state.certificates[first]  # someone removed it from the account: added again under a new seq
    world.kube.status["shop"]["lastSyncTime"] = "2000-01-01T00:00:00Z"  # its drift check is due
    await sync(world, "shop", spec)
    second = world.status("shop")["seq"]
    assert second != first and counted(cdn)[PATCH] == 4  # one change of each resource
    await world.advance(3)
    await sync(world, "shop", spec)
    assert served(cdn, "res1") == served(cdn, "res2") == second and world.status("shop")["bound"] == "2/2"


async def test_put_sends_the_whole_configuration_as_read(world: World, cdn: Emulator) -> None:
    world.rt.settings = dataclasses.replace(world.rt.settings, cdn_bind_method="put")
    shop_chain(world, "www.shop.example")
    before = dict(cdn.state.http_resources.resources["res1"])
    spec = cdn_spec(cdn, bindTo=["res1"])
    await sync(world, "shop", spec)
    await world.advance(3)
    await sync(world, "shop", spec)
    assert counted(cdn).get(PATCH) is None and counted(cdn)[PUT] == 1
    after = cdn.state.http_resources.resources["res1"]
    assert after == {**before, "certificate": world.status("shop")["seq"]}  # nothing wiped
    assert world.ready("shop") == ("True", "Synced")


async def test_an_unrecorded_answer_is_settled_by_reading_never_by_a_second_patch(world: World, cdn: Emulator) -> None:
    shop_chain(world, "www.shop.example")
    spec = cdn_spec(cdn, bindTo=["res1"])
    world.kube.fail = lambda patch: any(b.get("taskId") for b in patch.get("bindings") or [])  # the task id is lost
    with pytest.raises(KubeError):
        await sync(world, "shop", spec)
    assert bindings(world)["res1"]["state"] == "Sending" and counted(cdn)[PATCH] == 1
    world.kube.fail = lambda patch: False
    await sync(world, "shop", spec)  # a restart: the resource does not show it yet; wait, never send again
    assert counted(cdn)[PATCH] == 1 and world.ready("shop") == ("False", "Pending")
    await world.advance(3)
    await sync(world, "shop", spec)
    assert counted(cdn)[PATCH] == 1 and world.ready("shop") == ("True", "Synced")
    assert any(reason == "Recovered" for _, reason, _ in world.kube.events)


async def test_one_owner_per_cdn_resource_and_no_other_namespace_named(world: World, cdn: Emulator) -> None:
    world.kube.put("cdn-creds", namespace="team-b", username=CDN_USER, password=CDN_PASSWORD)
    shop_chain(world, "www.shop.example", namespace="team-b")
    shop_chain(world, "www.shop.example", secret="other-tls")
    account = cdncertificate.target_of(cdn_spec(cdn))
    older = Claim("2026-01-01T00:00:00Z", "team-b", "first")
    younger = Claim("2026-02-01T00:00:00Z", NS, "second")
    world.claims[("cdncertificates", binding_key(account, "res1"))] = [older, younger]
    await sync(world, "first", cdn_spec(cdn, bindTo=["res1"]), namespace="team-b")
    patches = counted(cdn)[PATCH]
    await sync(world, "second", cdn_spec(cdn, bindTo=["res1"], secretName="other-tls"), created=younger.created)
    assert world.ready("second") == ("False", "TargetConflict") and counted(cdn)[PATCH] == patches
    message = next(c for c in world.status("second")["conditions"] if c["type"] == "Ready")["message"]
    assert "CDN resource res1" in message and "another namespace" in message and "team-b" not in message


async def test_removing_an_id_forgets_it_and_leaves_its_resource_as_it_is(world: World, cdn: Emulator) -> None:
    spec = await bind_both(world, cdn)
    await world.advance(3)
    await sync(world, "shop", spec)
    seq = world.status("shop")["seq"]
    before = counted(cdn)
    await sync(world, "shop", {**spec, "bindTo": ["res1"]})
    assert counted(cdn) == before and list(bindings(world)) == ["res1"] and world.status("shop")["bound"] == "1/1"
    assert served(cdn, "res2") == seq  # untouched
    await sync(world, "shop", {k: v for k, v in spec.items() if k != "bindTo"})
    assert "bindings" not in world.status("shop") and "bound" not in world.status("shop")
    assert world.ready("shop") == ("True", "Synced")


async def test_a_certificate_still_served_is_named_with_every_resource_serving_it(world: World, cdn: Emulator) -> None:
    """What deletion with `Delete` asks before removing the certificate: one list call of the account's resources,
    whoever bound them (here res2 by hand in the console), and a retryable refusal naming them."""
    spec = cdn_spec(cdn, bindTo=["res1"])
    shop_chain(world, "www.shop.example")
    await sync(world, "shop", spec)
    await world.advance(3)
    await sync(world, "shop", spec)
    seq = world.status("shop")["seq"]
    await cdn.control("POST", "resources", {"rebind": {"res2": seq}})
    access = world.rt.last_credentials[("cdncertificates", NS, "shop")]
    before = counted(cdn)
    assert await cdnbindings.still_serving(world.rt, access, seq) == ["res1", "res2"]
    with pytest.raises(cdnbindings.StillServed, match="served by CDN resources res1, res2") as served_by:
        await cdnbindings.refuse_while_served(world.rt, access, seq)
    assert served_by.value.retryable
    assert (
        counted(cdn)["GET /cdn/api/v1/{account}/resource/http/"]
        - before.get("GET /cdn/api/v1/{account}/resource/http/", 0)
        == 2
    )
    await cdn.control("POST", "resources", {"rebind": {"res1": 0, "res2": 0}})
    await cdnbindings.refuse_while_served(world.rt, access, seq)  # nobody serves it: no refusal


async def test_many_bindings_within_a_small_budget_progress_without_reading_twice(world: World, cdn: Emulator) -> None:
    """Every resource API call counts in the account's configuration window: a pass that runs out of it keeps what
    it read, and the next one writes those without reading them again (no loop of reads at the window's edge)."""
    world.rt.cdn.config_window = Window(limit=5, period=60.0)
    ids = [f"r{n}" for n in range(6)]
    await cdn.control("POST", "resources", {"resources": {rid: [f"{rid}.shop.example"] for rid in ids}})
    shop_chain(world, "*.shop.example")
    spec = cdn_spec(cdn, bindTo=ids)
    for _ in range(12):
        await sync(world, "shop", spec)
        if world.ready("shop") == ("True", "Synced"):
            break
        await world.advance(61)
    assert world.ready("shop") == ("True", "Synced") and world.status("shop")["bound"] == "6/6"
    resource_calls = [(c.method, c.path.rsplit("/", 1)[1]) for c in cdn.state.core.calls if "/resource/http/" in c.path]
    for rid in ids:
        mine = [method for method, path in resource_calls if path == rid]
        assert mine[:2] == ["GET", "PATCH"] and mine.count("PATCH") == 1, (rid, mine)  # one read, then its change
    per_minute: dict[int, int] = {}
    for call in cdn.state.core.calls:
        if "/cdn/api/v1/" in call.path:
            per_minute[int(call.at // 60)] = per_minute.get(int(call.at // 60), 0) + 1
    assert max(per_minute.values()) <= 5 * 2  # never more than the window allows (two windows may share a minute)


async def test_delete_keeps_a_certificate_a_cdn_resource_still_serves(world: World, cdn: Emulator) -> None:
    """deletionPolicy Delete of a bound certificate: a Warning names the resources serving it, and at the delete
    timeout the finalizer goes with the certificate left in place (deleting it would break the site)."""
    spec = cdn_spec(cdn, bindTo=["res1"], deletionPolicy="Delete")
    shop_chain(world, "www.shop.example")
    await sync(world, "shop", spec)
    await world.advance(3)
    await sync(world, "shop", spec)
    seq = world.status("shop")["seq"]
    assert served(cdn, "res1") == seq
    r = Resource("cdncertificates", NS, "shop", "uid-shop", 1, "2026-01-01T00:00:00Z", spec, dict(world.status("shop")))
    started = pki.rfc3339(world.rt.clock())
    again = await deletion.delete(world.rt, r, started, 0)
    assert again is not None and seq in cdn.state.certificates  # kept, retried
    warning = [m for n, reason, m in world.kube.events if reason == "DeleteRetrying"]
    assert warning and "still served by CDN resource res1" in warning[-1]
    await world.advance(world.rt.settings.delete_timeout + 1)
    assert await deletion.delete(world.rt, r, started, 1) is None  # the finalizer goes, the certificate stays
    assert seq in cdn.state.certificates
    assert any(reason == "DeleteFailed" and "still served" in m for _, reason, m in world.kube.events)
    assert not any(c.method == "DELETE" for c in cdn.state.core.calls)


async def test_delete_of_a_certificate_without_bindings_spends_no_resource_call(world: World, cdn: Emulator) -> None:
    spec = cdn_spec(cdn, deletionPolicy="Delete")
    shop_chain(world, "www.shop.example")
    await sync(world, "shop", spec)
    seq = world.status("shop")["seq"]
    r = Resource("cdncertificates", NS, "shop", "uid-shop", 1, "2026-01-01T00:00:00Z", spec, dict(world.status("shop")))
    assert await deletion.delete(world.rt, r, pki.rfc3339(world.rt.clock()), 0) is None
    assert seq not in cdn.state.certificates and not any("resource" in k for k in counted(cdn))
