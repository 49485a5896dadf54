"""Targets, order slots and login memory between tenants, with the real controllers against the emulators.

Namespace `team-a` is the victim with credentials that work; `team-b` the attacker, whose credentials do not
(or who writes its own status). A claim on a target counts only once its resource's credentials were proven
for it in this process; status written by one resource never grants or denies another anything.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from certsync.controllers import deploymenttls, letsencryptorder
from certsync.controllers.cdncertificate import target_of as cdn_target
from certsync.reconcile.targets import Claim, target_key
from certsync.remote import RemoteError

from devkit.factory import issue
from tests import test_controllers as tc
from tests.conftest import CDN_USER, Emulator
from tests.test_controllers import NS, World, calls, cdn_spec, dtls_spec, writes

world = tc.world  # the fixture: a runtime, a fake API server, both emulators
B = "team-b"
OLD, NEW = "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z"


def said(world: World, *names: str) -> str:
    """Everything the victim's resources were told: conditions and Events."""
    texts = [str(world.status(n).get("conditions", [])) for n in names]
    texts += [f"{reason} {message}" for name, reason, message in world.kube.events if name in names]
    return "\n".join(texts)


def junk(world: World, name: str, **values: str) -> None:
    world.kube.put(name, namespace=B, **values)


async def refused(world: World, plural: str, name: str, spec: dict[str, Any]) -> None:
    """A pass of the attacker's older resource: its credentials are refused."""
    with pytest.raises(RemoteError):
        await world.sync(plural, name, spec, created=OLD, namespace=B)


# --- deployments ---------------------------------------------------------------------------------


async def test_an_older_deployment_claim_whose_credentials_fail_never_keeps_the_owner_off(
    world: World, emqx: Emulator
) -> None:
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    world.kube.secrets[(B, "mqtt-tls")] = world.kube.secrets[(NS, "mqtt-tls")]
    junk(world, "emqx-creds", apiKey="junk-key", apiSecret="junk-secret")
    spec = dtls_spec(emqx)
    target = deploymenttls.target_of(spec)
    world.claims[("deploymenttlses", target)] = [Claim(OLD, B, "squat"), Claim(NEW, NS, "victim")]
    # Right after a restart the older claimant has not been looked at: the victim waits a little, not Stalled.
    wait = await world.sync("deploymenttlses", "victim", spec, created=NEW)
    assert world.ready("victim") == ("False", "Queued") and calls(emqx) == [] and wait is not None and wait <= 10
    await refused(world, "deploymenttlses", "squat", spec)
    await world.sync("deploymenttlses", "victim", spec, created=NEW)
    assert world.ready("victim") == ("False", "Pending") and writes(emqx) == ["POST"]
    await refused(world, "deploymenttlses", "squat", spec)  # older, but never proven: it owns nothing
    await world.advance(60)
    await world.sync("deploymenttlses", "victim", spec, created=NEW)
    assert world.ready("victim") == ("True", "Synced") and writes(emqx) == ["POST"]
    assert B not in said(world, "victim") and "squat" not in said(world, "victim")


async def test_a_claimant_that_only_waited_is_not_taken_as_one_that_failed_to_prove(
    world: World, emqx: Emulator
) -> None:
    """Oldest (unseen), middle (valid, waits for it), youngest: the youngest must not pass the waiting middle one."""
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    world.kube.secrets[(B, "mqtt-tls")] = world.kube.secrets[(NS, "mqtt-tls")]
    junk(world, "emqx-creds", apiKey="junk-key", apiSecret="junk-secret")
    spec = dtls_spec(emqx)
    middle = "2025-06-01T00:00:00Z"
    claims = [Claim(OLD, B, "squat"), Claim(middle, NS, "middle"), Claim(NEW, NS, "young")]
    world.claims[("deploymenttlses", deploymenttls.target_of(spec))] = claims
    await world.sync("deploymenttlses", "middle", spec, created=middle)
    await world.sync("deploymenttlses", "young", spec, created=NEW)
    assert world.ready("middle") == world.ready("young") == ("False", "Queued")
    await refused(world, "deploymenttlses", "squat", spec)
    before = len(calls(emqx))
    await world.sync("deploymenttlses", "young", spec, created=NEW)  # the middle one has not tried yet
    assert world.ready("young") == ("False", "Queued") and len(calls(emqx)) == before
    await world.sync("deploymenttlses", "middle", spec, created=middle)
    await world.sync("deploymenttlses", "young", spec, created=NEW)
    assert world.ready("middle") == ("False", "Pending") and world.ready("young") == ("False", "TargetConflict")
    assert writes(emqx) == ["POST"]


async def test_a_proven_older_claimant_owns_the_deployment_until_its_proof_lapses(world: World, emqx: Emulator) -> None:
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=200)  # another expiry: EMQX tells leaves apart by it
    world.kube.put_tls("old-tls", issue("old.example.com", not_after=later))
    older, younger = dtls_spec(emqx, secretName="old-tls"), dtls_spec(emqx)
    target = deploymenttls.target_of(younger)
    world.claims[("deploymenttlses", target)] = [Claim(OLD, NS, "first"), Claim(NEW, NS, "second")]
    await world.sync("deploymenttlses", "first", older, created=OLD)  # its write proves its credentials
    before = len(calls(emqx))
    wait = await world.sync("deploymenttlses", "second", younger, created=NEW)
    assert world.ready("second") == ("False", "TargetConflict") and len(calls(emqx)) == before
    assert wait is not None  # looked at again without a call, in case the owner's proof lapses
    assert "team-a/first" in world.status("second")["conditions"][0]["message"]  # same namespace: named
    del world.kube.secrets[(NS, "old-tls")]
    await world.sync("deploymenttlses", "first", older, created=OLD)  # Stalled/SecretNotFound: proves nothing
    await world.advance(60)  # the first one's write applied
    await world.sync("deploymenttlses", "second", younger, created=NEW)
    assert writes(emqx) == ["POST", "PUT"] and world.ready("second") == ("False", "Pending")


async def test_an_in_sync_owner_after_a_restart_reads_once_when_another_resource_names_its_deployment(
    world: World, emqx: Emulator
) -> None:
    """Else its first pass (nothing to do, no call) would prove nothing and a twin would take the deployment."""
    world.kube.put_tls("mqtt-tls", issue("mqtt.example.com"))
    spec = dtls_spec(emqx)
    target = deploymenttls.target_of(spec)
    await world.sync("deploymenttlses", "first", spec, created=OLD)
    await world.advance(60)
    await world.sync("deploymenttlses", "first", spec, created=OLD)
    assert world.ready("first") == ("True", "Synced")
    world.rt.proofs.proven.clear()  # a restart: nothing proven in this process
    world.rt.proofs.passed.clear()
    reads = len(calls(emqx))
    await world.sync("deploymenttlses", "first", spec, created=OLD)  # alone: in sync, no call
    assert len(calls(emqx)) == reads
    world.claims[("deploymenttlses", target)] = [Claim(OLD, NS, "first"), Claim(NEW, NS, "second")]
    await world.sync("deploymenttlses", "first", spec, created=OLD)  # a rival: one read proves it
    assert len(calls(emqx)) == reads + 1 and world.ready("first") == ("True", "Synced")
    await world.sync("deploymenttlses", "second", spec, created=NEW)
    assert world.ready("second") == ("False", "TargetConflict")


# --- CDN seqs ------------------------------------------------------------------------------------


async def test_an_older_squatter_on_the_victims_seq_with_a_junk_token_changes_nothing(
    world: World, cdn: Emulator
) -> None:
    world.trusted_tls("shop-tls", "www.shop.example")
    victim = cdn_spec(cdn)
    await world.sync("cdncertificates", "victim", victim, created=NEW)
    seq = world.status("victim")["seq"]
    world.trusted_tls("shop-tls", "www.shop.example")  # a rotation: one PATCH of the victim's seq is due
    world.kube.secrets[(B, "shop-tls")] = world.kube.secrets[(NS, "shop-tls")]
    junk(world, "cdn-creds", token="junk-token")
    squat = {**victim, "seq": seq}
    key = target_key(cdn_target(victim), str(seq))
    world.claims[("cdncertificates", key)] = [Claim(OLD, B, "squat"), Claim(NEW, NS, "victim")]
    world.rt.proofs.passed.clear()  # a restart: nobody looked at yet
    world.rt.proofs.proven.clear()
    await world.sync("cdncertificates", "victim", victim, created=NEW)
    assert world.ready("victim") == ("False", "Queued")
    await refused(world, "cdncertificates", "squat", squat)
    before = writes(cdn)
    await world.sync("cdncertificates", "victim", victim, created=NEW)
    assert world.ready("victim") == ("True", "Synced") and writes(cdn) == [*before, "PATCH"]
    # a forged status seq is a claim like a spec seq (the index reads both): it counts no more
    world.kube.status["forged"] = {"seq": seq, "target": cdn_target(victim)}
    world.claims[("cdncertificates", key)].insert(0, Claim("2024-01-01T00:00:00Z", B, "forged"))
    await refused(world, "cdncertificates", "forged", {**victim, "credentialsSecretRef": {"name": "cdn-creds"}})
    world.trusted_tls("shop-tls", "www.shop.example")
    await world.sync("cdncertificates", "victim", victim, created=NEW)
    assert world.ready("victim") == ("True", "Synced") and writes(cdn)[-1] == "PATCH"
    assert B not in said(world, "victim") and "squat" not in said(world, "victim")


async def test_a_cached_list_is_no_answer_to_credentials_never_checked(world: World, cdn: Emulator) -> None:
    """The shared list is per credentials owner: a junk token naming the account gets a call of its own (refused),
    never the victim's list, and so never a proof or another tenant's certificates."""
    world.trusted_tls("shop-tls", "www.shop.example")
    await world.sync("cdncertificates", "victim", cdn_spec(cdn), created=NEW)
    world.kube.secrets[(B, "shop-tls")] = world.kube.secrets[(NS, "shop-tls")]
    junk(world, "cdn-creds", token="junk-token")
    await refused(world, "cdncertificates", "squat", cdn_spec(cdn))
    assert not world.rt.proofs.holds(("cdncertificates", B, "squat"), cdn_target(cdn_spec(cdn)))


# --- orders --------------------------------------------------------------------------------------


def order_spec(cdn: Emulator, **extra: Any) -> dict[str, Any]:
    spec = {**cdn_spec(cdn), **extra}
    spec.pop("secretName")
    return spec


async def test_a_forged_ordered_at_holds_no_slot_past_the_forgers_first_pass(world: World, cdn: Emulator) -> None:
    junk(world, "cdn-creds", token="junk-token")
    squat, victim = order_spec(cdn, resourceId="res2"), order_spec(cdn, resourceId="res1")
    account = letsencryptorder.account_of(victim)
    # B wrote its own /status: orderedAt, as if an order of the account were running (the index reads it)
    world.kube.status["squat"] = {"orderedAt": "2099-01-01T00:00:00Z", "target": letsencryptorder.target_of(squat)}
    world.claims[(letsencryptorder.INFLIGHT, account)] = [Claim(OLD, B, "squat")]
    await world.sync("letsencryptorders", "victim", victim, created=NEW)
    assert world.ready("victim") == ("False", "Queued")  # until B's first pass in this process
    assert B not in said(world, "victim") and "another namespace" in said(world, "victim")
    await refused(world, "letsencryptorders", "squat", squat)
    await world.sync("letsencryptorders", "victim", victim, created=NEW)
    assert world.ready("victim") == ("False", "Pending") and len(cdn.state.orders) == 1
    assert world.rt.order_slots == {}  # the pass ended: its slot went back, its order is known to be running


async def test_two_forged_running_orders_never_wait_for_each_other(world: World, cdn: Emulator) -> None:
    """Each status says an order runs: were each to wait for the other's first pass, both (and every order of the
    account behind them) would wait for ever. Only an older unchecked claimant makes a resource wait."""
    junk(world, "cdn-creds", token="junk-token")
    one, two, victim = (order_spec(cdn, resourceId=r) for r in ("res2", "res3", "res1"))
    account = letsencryptorder.account_of(victim)
    for name in ("one", "two"):
        world.kube.status[name] = {"orderedAt": "2099-01-01T00:00:00Z", "target": "forged"}
    world.claims[(letsencryptorder.INFLIGHT, account)] = [Claim(OLD, B, "one"), Claim("2025-06-01T00:00:00Z", B, "two")]
    await refused(world, "letsencryptorders", "one", one)  # the oldest waits for nobody: it tries, and is refused
    with pytest.raises(RemoteError):
        await world.sync("letsencryptorders", "two", two, created="2025-06-01T00:00:00Z", namespace=B)
    await world.sync("letsencryptorders", "victim", victim, created=NEW)
    assert world.ready("victim") == ("False", "Pending") and len(cdn.state.orders) == 1


async def test_an_order_slot_goes_back_when_its_pass_fails_after_the_post_and_the_running_order_still_queues(
    world: World, cdn: Emulator
) -> None:
    one, two = order_spec(cdn, resourceId="res1"), order_spec(cdn, resourceId="res2")
    world.kube.fail = lambda patch: "orderedAt" in patch  # the order is placed, its outcome cannot be recorded
    with pytest.raises(Exception):  # noqa: B017 - the Kubernetes layer's failure, whatever its class
        await world.sync("letsencryptorders", "one", one, created=OLD)
    world.kube.fail = lambda patch: False
    assert world.rt.order_slots == {} and len(cdn.state.orders) == 1
    await world.sync("letsencryptorders", "two", two, created=NEW)
    assert world.ready("two") == ("False", "Queued") and "team-a/one" in said(world, "two")
    await world.sync("letsencryptorders", "one", one, created=OLD)  # settles its intent from the task status
    await world.advance(60)
    await world.sync("letsencryptorders", "one", one, created=OLD)
    assert world.ready("one") == ("True", "Synced")
    await world.sync("letsencryptorders", "two", two, created=NEW)
    assert world.ready("two") == ("False", "Pending") and len(cdn.state.orders) == 2


# --- login memory --------------------------------------------------------------------------------


async def test_only_login_states_of_the_same_credentials_owner_are_restored(world: World, cdn: Emulator) -> None:
    world.trusted_tls("shop-tls", "www.shop.example")
    secret = world.kube.secrets[(NS, "cdn-creds")]
    endpoint = cdn.url
    forged: list[dict[str, Any]] = [
        # another owner's refusal of this username (another Secret uid), as another resource's status holds it
        {"endpoint": endpoint, "username": CDN_USER, "refused": {"credentialsId": "someone-else:1", "at": 1.0},
         "recentRefusals": [9e9] * 5},
        # a ban written into a status by hand: no owner named
        {"endpoint": endpoint, "username": CDN_USER, "bannedUntil": 9e12},
        {"endpoint": endpoint, "username": CDN_USER, "bannedUntil": 9e12, "owner": f"{B}/{secret.uid}"},
    ]  # fmt: skip
    world.rt.login_states = lambda namespace, name: list(forged)
    world.kube.status["victim"] = {"cdnLogin": forged[1]}
    await world.sync("cdncertificates", "victim", cdn_spec(cdn))
    assert world.ready("victim") == ("True", "Synced")
    # the same owner's refusal of this very Secret version holds: no login
    world.kube.put("cdn-creds", username=CDN_USER, password="not-the-password")
    secret = world.kube.secrets[(NS, "cdn-creds")]
    mine = {"endpoint": endpoint, "username": CDN_USER, "owner": f"{NS}/{secret.uid}",
            "refused": {"credentialsId": f"{secret.uid}:{secret.version}", "at": 1.0}}  # fmt: skip
    world.rt.login_states = lambda namespace, name: [mine]
    logins = len([c for c in cdn.state.core.calls if "oauth" in c.path])
    world.trusted_tls("img-tls", "img.shop.example")
    with pytest.raises(RemoteError):
        await world.sync("cdncertificates", "other", cdn_spec(cdn, secretName="img-tls"))
    assert len([c for c in cdn.state.core.calls if "oauth" in c.path]) == logins


def test_a_state_names_its_owner_or_is_nobodys() -> None:
    from certsync.controllers.cdncertificate import same_owner

    assert same_owner({"owner": "ns/u1"}, "ns", "u1")
    assert not same_owner({"owner": "other/u1"}, "ns", "u1")
    assert same_owner({"refused": {"credentialsId": "u1:7"}}, "ns", "u1")
    assert not same_owner({"refused": {"credentialsId": "u10:7"}}, "ns", "u1")
    assert not same_owner({"bannedUntil": 9e12}, "ns", "u1")
    assert not same_owner({"owner": "ns/"}, "ns", "")


async def test_a_deleted_resource_leaves_no_proof_slot_or_running_order(world: World) -> None:
    key = ("letsencryptorders", NS, "one")
    rt = world.rt
    rt.proofs.prove(key, "acct")
    rt.proofs.passed.add(key)
    rt.order_slots["acct"] = Claim(NEW, NS, "one")
    rt.orders_running["acct"] = {key: Claim(NEW, NS, "one")}
    rt.forget(("deploymenttlses", NS, "one"))  # another kind of the same name leaves it alone
    assert rt.order_slots and rt.orders_running
    rt.forget(key)
    assert not rt.proofs.holds(key, "acct") and key not in rt.proofs.passed
    assert rt.order_slots == {} and rt.orders_running == {}
