"""A deletion never leaks what a write in flight writes, and an unrecorded order is settled by reading only.

In process, against the emulators on loopback (with a write latency: the write lands only after it) and the
fake Kubernetes layer of `test_controllers`. A deletion that begins while the resource's create is on its way
waits for it and removes what it wrote; after a restart, an intent without an outcome is resolved by reading the
remote by the intent's identity once the write can no longer land; an order in flight is followed until its
certificate can be removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from typing import Any

import pytest
from certsync import pki
from certsync.controllers import deletion, letsencryptorder
from certsync.controllers.base import Resource
from certsync.kube import KubeError, ResourceGone
from certsync.reconcile.record import Intent, new_intent

from devkit.factory import issue
from tests import test_controllers as tc
from tests.conftest import Emulator
from tests.test_controllers import NS, World, cdn_spec, dtls_spec, writes
from tests.test_remote_concurrency import until

world = tc.world  # the fixture: a runtime, a fake API server, both emulators
LATENCY_S = 0.5  # how long the emulator holds a write before it applies and answers it


@pytest.fixture(autouse=True)
def long_delete_timeout(world: World) -> None:
    """Longer than the remote call deadline: an unfinished write is waited out before the deletion gives up."""
    world.rt.settings = dataclasses.replace(world.rt.settings, delete_timeout=3600.0)


def order_spec(cdn: Emulator, **extra: Any) -> dict[str, Any]:
    spec = {**cdn_spec(cdn), "deletionPolicy": "Delete", **extra}
    spec.pop("secretName")
    return spec


def view(world: World, plural: str, name: str, spec: dict[str, Any]) -> Resource:
    """The resource as a deletion handler gets it: status from the API server only."""
    return Resource(plural, NS, name, f"uid-{name}", 1, "2026-01-01T00:00:00Z", spec, dict(world.status(name)))


async def cut_in_flight(world: World, emulator: Emulator, plural: str, name: str, spec: dict[str, Any]) -> None:
    """Run a pass until its write is at the remote, then cancel it as kopf cancels a deleted resource's daemon."""
    emulator.state.config.write_latency = LATENCY_S
    task = asyncio.ensure_future(world.sync(plural, name, spec))

    def at_the_remote() -> bool:  # its intent is recorded (that comes after any read), the write is held
        return "intent" in world.status(name) and emulator.state.core.inflight > 0

    await until("the write at the remote", at_the_remote)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert emulator.state.core.inflight > 0  # the write itself goes on: shielded from the cancellation


def reasons(world: World, name: str) -> list[str]:
    return [reason for who, reason, _ in world.kube.events if who == name]


async def drain(world: World) -> None:
    if world.rt.writes:
        await asyncio.wait(set(world.rt.writes), timeout=10)


# --- a write in flight when the deletion begins ------------------------------------------------


async def test_a_deletion_during_an_emqx_create_in_flight_removes_what_the_create_wrote(
    world: World, emqx: Emulator
) -> None:
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    spec = dtls_spec(emqx, deletionPolicy="Delete")
    await cut_in_flight(world, emqx, "deploymenttlses", "broker", spec)
    resource, stale = view(world, "deploymenttlses", "broker", spec), view(world, "deploymenttlses", "broker", spec)
    assert "target" not in resource.status  # what the deletion came with says nothing was written yet
    assert await deletion.delete(world.rt, resource, pki.rfc3339(world.rt.clock()), 0) is None
    assert writes(emqx) == ["POST", "DELETE"] and not emqx.state.tls
    assert reasons(world, "broker")[-1] == "Deleted"
    # kopf calls again while the daemon exits, with the view from before the write's record: still done, no call
    calls = len(emqx.state.core.calls)
    assert await deletion.delete(world.rt, stale, pki.rfc3339(world.rt.clock()), 1) is None
    assert len(emqx.state.core.calls) == calls and reasons(world, "broker").count("Deleted") == 1


async def test_a_deletion_during_a_cdn_add_in_flight_removes_the_seq_the_add_returned(
    world: World, cdn: Emulator
) -> None:
    world.trusted_tls("shop-tls", "www.shop.example")
    spec = {**cdn_spec(cdn), "deletionPolicy": "Delete"}
    await cut_in_flight(world, cdn, "cdncertificates", "shop", spec)
    resource = view(world, "cdncertificates", "shop", spec)
    assert "seq" not in resource.status
    assert await deletion.delete(world.rt, resource, pki.rfc3339(world.rt.clock()), 0) is None
    assert writes(cdn) == ["POST", "DELETE"] and not cdn.state.certificates


async def test_a_deletion_during_an_order_in_flight_removes_the_certificate_the_order_issues(
    world: World, cdn: Emulator
) -> None:
    """`Delete` on an order is its certificate: the deletion follows the running order by reading, then removes it."""
    cdn.state.config.pending_seconds = 5
    spec = order_spec(cdn, resourceId="res1")
    await cut_in_flight(world, cdn, "letsencryptorders", "www", spec)
    started = pki.rfc3339(world.rt.clock())
    again = await deletion.delete(world.rt, view(world, "letsencryptorders", "www", spec), started, 0)
    assert again is not None and again >= 1.0  # placed, not issued yet: looked at again
    assert world.status("www")["orderedAt"] and not cdn.state.certificates
    assert reasons(world, "www")[-1] == "DeleteWaiting"
    await world.advance(6)  # the order is processed: its certificate is in the list
    assert await deletion.delete(world.rt, view(world, "letsencryptorders", "www", spec), started, 1) is None
    assert not cdn.state.certificates and len(cdn.state.orders) == 1
    assert [c.method for c in cdn.state.core.calls if "letsencrypt" in c.path and c.method == "POST"] == ["POST"]


async def test_a_write_still_in_flight_at_the_timeout_releases_with_a_warning(world: World, emqx: Emulator) -> None:
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    spec = dtls_spec(emqx, deletionPolicy="Delete")
    await cut_in_flight(world, emqx, "deploymenttlses", "broker", spec)
    emqx.state.config.write_latency = 0
    deleted_at = (world.rt.clock() - dt.timedelta(seconds=world.rt.settings.delete_timeout - 0.05)).isoformat()
    assert await deletion.delete(world.rt, view(world, "deploymenttlses", "broker", spec), deleted_at, 9) is None
    events = [(reason, message) for who, reason, message in world.kube.events if who == "broker"]
    assert events[-1][0] == "DeleteFailed" and "still in flight" in events[-1][1]
    await drain(world)


async def test_no_write_starts_once_the_deletion_began(world: World, emqx: Emulator) -> None:
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    spec = dtls_spec(emqx, deletionPolicy="Delete")
    assert await deletion.delete(world.rt, view(world, "deploymenttlses", "broker", spec), None, 0) is None
    with pytest.raises(ResourceGone):  # a pass that was about to write (kopf cancels its daemon a moment later)
        await world.sync("deploymenttlses", "broker", spec)
    assert writes(emqx) == [] and "intent" not in world.status("broker")


async def test_a_landed_write_whose_record_failed_is_removed_at_once_by_the_process_that_wrote_it(
    world: World, emqx: Emulator
) -> None:
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    spec = dtls_spec(emqx, deletionPolicy="Delete")
    world.kube.fail = lambda patch: "appliedDigest" in patch
    with pytest.raises(KubeError):
        await world.sync("deploymenttlses", "broker", spec)
    world.kube.fail = lambda patch: False
    assert "intent" in world.status("broker") and "target" not in world.status("broker")
    # this process knows the answer: no wait for the call deadline, no read
    assert await deletion.delete(world.rt, view(world, "deploymenttlses", "broker", spec), None, 0) is None
    assert writes(emqx) == ["POST", "DELETE"] and not emqx.state.tls


# --- after a restart: an intent without an outcome ---------------------------------------------


async def test_after_a_restart_an_unrecorded_emqx_create_is_waited_out_then_read_and_removed(
    world: World, emqx: Emulator
) -> None:
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    spec = dtls_spec(emqx, deletionPolicy="Delete")
    world.kube.fail = lambda patch: "appliedDigest" in patch
    with pytest.raises(KubeError):
        await world.sync("deploymenttlses", "broker", spec)
    world.kube.fail = lambda patch: False
    world.rt.inflight.clear()  # a new process: it knows only what status says
    started = pki.rfc3339(world.rt.clock())
    again = await deletion.delete(world.rt, view(world, "deploymenttlses", "broker", spec), started, 0)
    assert again is not None and again > 1.0  # sent a moment ago: it may still land, a read now could miss it
    assert writes(emqx) == ["POST"] and emqx.state.tls
    await world.advance(again)
    assert await deletion.delete(world.rt, view(world, "deploymenttlses", "broker", spec), started, 1) is None
    assert writes(emqx) == ["POST", "DELETE"] and not emqx.state.tls


async def test_after_a_restart_an_unrecorded_emqx_create_that_never_landed_removes_nothing(
    world: World, emqx: Emulator
) -> None:
    """Another certificate on the deployment is not this resource's: an intent that did not land removes nothing."""
    world.kube.put_tls("mqtt-tls", issue("other.example.com"))
    await world.sync("deploymenttlses", "first", dtls_spec(emqx))  # someone else's certificate is there
    spec = dtls_spec(emqx, deletionPolicy="Delete")
    ours = issue("mqtt.example.com", not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=200))  # its own expiry
    intent = new_intent("update", spec["endpoint"].rstrip("/") + "|ge6a1a75", "d", world.rt.clock(),
                        cn="mqtt.example.com", notAfter=pki.rfc3339(ours.cert.not_valid_after_utc),
                        tlsType="one-way", leaf="x")  # fmt: skip
    world.kube.status["broker"] = {"intent": intent.to_status()}
    await world.advance(world.rt.settings.remote_call_deadline + 10)
    assert await deletion.delete(world.rt, view(world, "deploymenttlses", "broker", spec), None, 0) is None
    assert "DELETE" not in writes(emqx) and emqx.state.tls
    assert "Deleted" not in reasons(world, "broker")


async def test_after_a_restart_an_unrecorded_cdn_add_is_found_by_its_chain_and_removed(
    world: World, cdn: Emulator
) -> None:
    world.trusted_tls("keep-tls", "img.shop.example")
    await world.sync("cdncertificates", "keep", {**cdn_spec(cdn), "secretName": "keep-tls"})  # not to be touched
    world.trusted_tls("shop-tls", "www.shop.example")
    spec = {**cdn_spec(cdn), "deletionPolicy": "Delete"}
    world.kube.fail = lambda patch: "appliedDigest" in patch
    with pytest.raises(KubeError):
        await world.sync("cdncertificates", "shop", spec)
    world.kube.fail = lambda patch: False
    world.rt.inflight.clear()
    del world.kube.secrets[(NS, "shop-tls")]  # the namespace is going: the CN comes from the intent or the list
    kept = world.status("keep")["seq"]
    await world.advance(world.rt.settings.remote_call_deadline + 10)
    assert await deletion.delete(world.rt, view(world, "cdncertificates", "shop", spec), None, 0) is None
    assert list(cdn.state.certificates) == [kept]


async def test_after_a_restart_an_unrecorded_wildcard_order_is_followed_until_its_certificate_is_removed(
    world: World, cdn: Emulator
) -> None:
    cdn.state.config.pending_seconds = 5
    spec = order_spec(cdn, domains=["*.d.example"])
    world.kube.fail = lambda patch: "orderedAt" in patch
    with pytest.raises(KubeError):
        await world.sync("letsencryptorders", "wild", spec)
    world.kube.fail = lambda patch: False
    world.rt.inflight.clear()
    started = pki.rfc3339(world.rt.clock())
    assert await deletion.delete(world.rt, view(world, "letsencryptorders", "wild", spec), started, 0) is not None
    await world.advance(world.rt.settings.remote_call_deadline + 10)  # past the call deadline, and issued
    assert await deletion.delete(world.rt, view(world, "letsencryptorders", "wild", spec), started, 1) is None
    assert not cdn.state.certificates and len(cdn.state.orders) == 1


async def test_after_a_restart_an_unrecorded_wildcard_order_that_never_left_is_released_after_the_bound(
    world: World, cdn: Emulator
) -> None:
    spec = order_spec(cdn, domains=["*.e.example"])
    intent = new_intent("order", letsencryptorder.target_of(spec), "", world.rt.clock(), before=[])
    world.kube.status["wild"] = {"intent": intent.to_status()}
    started = pki.rfc3339(world.rt.clock())
    await world.advance(world.rt.settings.remote_call_deadline + 10)
    assert await deletion.delete(world.rt, view(world, "letsencryptorders", "wild", spec), started, 0) is not None
    await world.advance(letsencryptorder.WILDCARD_SETTLE_S)
    assert await deletion.delete(world.rt, view(world, "letsencryptorders", "wild", spec), started, 1) is None
    assert not any(c.method in ("POST", "DELETE") and "oauth" not in c.path for c in cdn.state.core.calls)


async def test_an_order_still_running_at_the_timeout_releases_with_a_warning(world: World, cdn: Emulator) -> None:
    spec = order_spec(cdn, resourceId="res1")
    await world.sync("letsencryptorders", "www", spec)  # placed; the emulator takes 30 s to issue
    too_late = (world.rt.clock() - dt.timedelta(seconds=world.rt.settings.delete_timeout)).isoformat()
    assert await deletion.delete(world.rt, view(world, "letsencryptorders", "www", spec), too_late, 4) is None
    events = [(reason, message) for who, reason, message in world.kube.events if who == "www"]
    assert events[-1][0] == "DeleteFailed" and "still running" in events[-1][1]


# --- an unrecorded order is settled by reading only --------------------------------------------


def order_posts(cdn: Emulator) -> list[str]:
    return [c.path for c in cdn.state.core.calls if c.method == "POST" and "letsencrypt" in c.path]


async def test_an_unrecorded_resource_order_the_remote_does_not_show_is_ordered_once_after_the_call_deadline(
    world: World, cdn: Emulator
) -> None:
    """Task `no` a moment after the POST may be a POST still on its way: no second order until it cannot land."""
    spec = order_spec(cdn, resourceId="res1")
    intent = new_intent("order", letsencryptorder.target_of(spec), "", world.rt.clock(), before=[])
    world.kube.status["www"] = {"intent": intent.to_status()}
    await world.sync("letsencryptorders", "www", spec)
    assert order_posts(cdn) == [] and world.ready("www") == ("False", "Pending")
    await world.advance(world.rt.settings.remote_call_deadline + 10)
    await world.sync("letsencryptorders", "www", spec)  # failed to land: marked, then one new order
    assert len(order_posts(cdn)) == 1 and world.status("www")["orderedAt"]
    messages = [message for who, reason, message in world.kube.events if who == "www" and reason == "Ordered"]
    assert messages and "never reached the remote" in messages[-1]


async def test_an_intent_marked_failed_to_land_allows_exactly_one_new_order(world: World, cdn: Emulator) -> None:
    """A stop right after the mark: the next process orders once, write-ahead again; a second lost record of that
    order never makes a third."""
    spec = order_spec(cdn, domains=["*.f.example"])
    old = new_intent("order", letsencryptorder.target_of(spec), "", world.rt.clock(), before=[])
    marked = Intent(old.op, old.target, old.digest, old.at, {**old.facts, "failedToLand": old.at})
    world.kube.status["wild"] = {"intent": marked.to_status()}
    assert not letsencryptorder.inflight(world.status("wild"))  # marked: no order of it runs
    world.kube.fail = lambda patch: "orderedAt" in patch  # and the new order's outcome is lost too
    with pytest.raises(KubeError):
        await world.sync("letsencryptorders", "wild", spec)
    world.kube.fail = lambda patch: False
    replacing = Intent.from_status(world.status("wild")["intent"])
    assert replacing is not None and replacing.facts.get("replaces") == old.at
    assert not replacing.facts.get("failedToLand")
    for _ in range(3):  # within the bound: read only, however often
        await world.sync("letsencryptorders", "wild", spec)
        await world.advance(60)
    assert len(order_posts(cdn)) == 1 and world.ready("wild") == ("True", "Synced")


async def test_a_late_pass_after_the_handler_forgot_the_resource_writes_nothing_but_a_new_one_of_the_name_does(
    world: World, emqx: Emulator
) -> None:
    """The handler drops the resource's memory once its deletion is done; a daemon pass of that uid still running
    (or started by a late event) must still write nothing, while a resource re-created under the name is new."""
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    spec = dtls_spec(emqx, deletionPolicy="Delete")
    assert await deletion.delete(world.rt, view(world, "deploymenttlses", "broker", spec), None, 0) is None
    world.rt.forget(("deploymenttlses", NS, "broker"))  # as the delete handler does next
    with pytest.raises(ResourceGone):
        await world.sync("deploymenttlses", "broker", spec)  # the same uid ("uid-broker")
    assert writes(emqx) == []
    again = Resource("deploymenttlses", NS, "broker", "uid-broker-2", 1, "2026-01-02T00:00:00Z", spec, {})
    await tc.SYNCS["deploymenttlses"](world.rt, again)
    assert writes(emqx) == ["POST"]
