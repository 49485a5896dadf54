"""The CDN client's resource API (HTTP resources, configuration tasks) against the emulator on loopback."""

from __future__ import annotations

import pytest
from certsync import cdn as api
from certsync.budget import Scope
from certsync.scrub import Scrubber

from devkit.factory import issue
from tests.conftest import CDN_PASSWORD, CDN_USER, Emulator

TASKS = "GET /cdn/api/v1/tasks"


async def no_sleep(_: float) -> None:
    return None


def access(emulator: Emulator, **overrides: str) -> api.CdnAccess:
    fields = {"endpoint": emulator.url, "account": "acct1", "username": CDN_USER, "password": CDN_PASSWORD}
    return api.CdnAccess(**{**fields, **overrides})


def stored(emulator: Emulator, cn: str = "www.shop.example") -> int:
    leaf = issue(cn, sans=(cn,))
    return int(emulator.state.store(leaf.cert_pem.decode(), leaf.key_pem().decode(), "t", (leaf.cert,)))


async def test_read_patch_follow_the_task_and_read_again(cdn: Emulator) -> None:
    seq = stored(cdn)
    async with api.CdnClient(budget=cdn.budget(), sleep=no_sleep) as client:
        before = await client.get_resource(access(cdn), "res1")
        assert before.names == ("www.shop.example",) and before.certificate is None
        task_id = await client.patch_resource(access(cdn), "res1", {"certificate": seq})
        assert (await client.config_task(access(cdn), task_id)).state == "pending"
        await cdn.control("POST", "clock", {"advance": 1.5})
        assert (await client.config_task(access(cdn), task_id)).state == "process"
        await cdn.control("POST", "clock", {"advance": 1})
        assert (await client.config_task(access(cdn), task_id)).state == "completed"
        after = await client.get_resource(access(cdn), "res1")
        assert after.certificate == seq and after.configuration["cdn_domain"] == "res1.cdn.example"
    patches = [c for c in cdn.state.core.calls if c.method == "PATCH"]
    assert len(patches) == 1


async def test_put_sends_back_the_whole_configuration(cdn: Emulator) -> None:
    seq = stored(cdn)
    async with api.CdnClient(budget=cdn.budget(), sleep=no_sleep) as client:
        read = await client.get_resource(access(cdn), "res1")
        await client.put_resource(access(cdn), "res1", {**read.configuration, "certificate": seq})
        await cdn.control("POST", "clock", {"advance": 3})
        after = await client.get_resource(access(cdn), "res1")
    assert dict(after.configuration) == {**read.configuration, "certificate": seq}  # nothing wiped


async def test_the_resource_apis_refusals_are_typed(cdn: Emulator) -> None:
    async with api.CdnClient(budget=cdn.budget(), sleep=no_sleep) as client:
        with pytest.raises(api.ResourceRefused, match="certificate not found") as refused:
            await client.patch_resource(access(cdn), "res1", {"certificate": 999})
        assert refused.value.reason == "RemoteRejected" and not refused.value.retryable
        with pytest.raises(api.ResourceNotFound) as missing:
            await client.get_resource(access(cdn), "nope")
        assert missing.value.reason == "RemoteNotFound" and missing.value.status == 404
        with pytest.raises(api.ResourceNotFound):
            await client.config_task(access(cdn), "task-404")
        with pytest.raises(api.ResourceBadRequest) as bad:
            await client.patch_resource(access(cdn), "res1", {"certificate": "7"})
        assert bad.value.status == 400 and not bad.value.retryable


async def test_5xx_reads_are_retried_and_writes_are_not(cdn: Emulator) -> None:
    seq = stored(cdn)
    async with api.CdnClient(budget=cdn.budget(), sleep=no_sleep) as client:
        await client.token(access(cdn))
        await cdn.fault("503", count=2)
        assert (await client.get_resource(access(cdn), "res1")).id == "res1"  # the third try answers
        await cdn.fault("503")
        with pytest.raises(api.ResourceUnavailable) as down:
            await client.patch_resource(access(cdn), "res1", {"certificate": seq})
        assert down.value.retryable and down.value.reason == "RemoteUnavailable"
    assert [c.status for c in cdn.state.core.calls if c.method == "PATCH"] == [503]


async def test_a_rate_limited_change_is_not_sent_again_and_says_when(cdn: Emulator) -> None:
    seq = stored(cdn)
    async with api.CdnClient(budget=cdn.budget(), sleep=no_sleep) as client:
        await cdn.fault("429", retryAfter=12)
        with pytest.raises(api.CdnRateLimited) as limited:
            await client.patch_resource(access(cdn), "res1", {"certificate": seq})
    assert limited.value.retry_after == pytest.approx(12, abs=1)


async def test_calls_count_in_the_accounts_configuration_window_of_their_own(cdn: Emulator) -> None:
    """20 a minute, reads included, apart from the SSL API's 20: the 21st is not sent."""
    seq = stored(cdn)
    async with api.CdnClient(budget=cdn.budget(), sleep=no_sleep) as client:
        await client.list_certificates(access(cdn))  # the SSL API's window, and the account proven
        for _ in range(10):
            await client.get_resource(access(cdn), "res1")
            await client.patch_resource(access(cdn), "res1", {"certificate": seq})
        with pytest.raises(api.RemoteError) as refused:
            await client.get_resource(access(cdn), "res1")
        assert refused.value.reason == "RateLimited" and "not sent" in refused.value.message
        await client.list_certificates(access(cdn))  # the SSL API's own window is untouched
        config = Scope("cdn", cdn.url, "acct1", api.CONFIG_CLASS)
        assert client.gate.budget.remaining(config, client.config_window) == 0
    sent = [c for c in cdn.state.core.calls if "/resource/http/" in c.path]
    assert len(sent) == 20


async def test_capitalised_task_states_are_read_without_case(cdn: Emulator) -> None:
    seq = stored(cdn)
    cdn.state.http_resources.capitalised = True
    async with api.CdnClient(budget=cdn.budget(), sleep=no_sleep) as client:
        task_id = await client.patch_resource(access(cdn), "res1", {"certificate": seq})
        await cdn.control("POST", "clock", {"advance": 3})
        assert (await client.config_task(access(cdn), task_id)).state == "completed"
    assert cdn.counts()[TASKS] == 1


async def test_a_failed_tasks_message_is_kept_and_an_expired_token_renewed(cdn: Emulator) -> None:
    seq = stored(cdn)
    await cdn.control("POST", "resources", {"failTasks": 1})
    async with api.CdnClient(budget=cdn.budget(), sleep=no_sleep) as client:
        task_id = await client.patch_resource(access(cdn), "res1", {"certificate": seq})
        cdn.state.tokens.clear()  # the token is no longer valid: 401 (bodiless), one new login, the call resent
        await cdn.control("POST", "clock", {"advance": 3})
        task = await client.config_task(access(cdn), task_id)
    assert task.state == "error" and task.message == "configuration could not be applied"
    assert cdn.counts()["POST /app/oauth/v1/token/"] == 2


async def test_a_resource_id_is_one_path_segment(cdn: Emulator) -> None:
    async with api.CdnClient(budget=cdn.budget(), sleep=no_sleep) as client:
        with pytest.raises(api.ResourceNotFound):
            await client.get_resource(access(cdn), "../../other")
    assert any("%2F" in c.path or c.status == 404 for c in cdn.state.core.calls if "resource" in c.path)


@pytest.mark.parametrize(
    "names",
    [["www.shop.example", CDN_PASSWORD], ["www.shop.example", "Bearer abc.def"], ["a b"], ["x" * 300], ["straße.de"]],
)
def test_a_resource_name_that_is_no_host_name_is_refused_unshown(names: list[str]) -> None:
    """Names reach status.bindings and messages: an answer echoing a credential (or any free text) is refused."""
    scrubber = Scrubber.of(CDN_PASSWORD)
    with pytest.raises(api.ResourceUnavailable) as refused:
        api._resource({"names": names, "certificate": 7}, "res1", scrubber)
    assert "not all host names" in str(refused.value) and not any(n in str(refused.value) for n in names)


def test_host_names_and_wildcards_pass() -> None:
    read = api._resource({"names": ["www.shop.example", "*.img.shop.example", "xn--strae-oqa.de."]}, "r", Scrubber.of())
    assert read.names == ("www.shop.example", "*.img.shop.example", "xn--strae-oqa.de.")
