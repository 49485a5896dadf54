"""kubehttp: the operator's plain calls to the Kubernetes API carry the client's credentials, escape what users
named, and turn an error status into the client's own exception."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from typing import Any

import kubernetes
import pytest
from certsync.kube import EVENT_WINDOW_S, MAX_SECRET_BYTES, SECRET_FORBIDDEN_RETRY_S, Kube, KubeError, ObjectRef
from certsync.kubehttp import KubeHttp, path
from certsync.reconcile import TLS_KEYS


class _Answer:
    def __init__(self, status: int, body: bytes = b"{}") -> None:
        self.status, self.reason, self.body = status, "Reason", body
        self.released = self.drained = False

    def read(self, amount: int | None = None) -> bytes:
        """As urllib3's: at most `amount` bytes when given."""
        self.read_bytes = len(self.body) if amount is None else min(amount, len(self.body))
        return self.body[: self.read_bytes]

    def release_conn(self) -> None:
        self.released = True

    def drain_conn(self) -> None:
        self.drained = True


class _Pool:
    def __init__(self, answer: _Answer) -> None:
        self.answer = answer
        self.sent: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> _Answer:
        self.sent.append({"method": method, "url": url, **kwargs})
        return self.answer


def client(answer: _Answer, token: str = "t0") -> tuple[KubeHttp, _Pool, list[str]]:
    config = kubernetes.client.Configuration(host="https://api.example:6443/")
    config.api_key = {"authorization": token}
    config.api_key_prefix = {"authorization": "Bearer"}
    refreshed: list[str] = []

    def refresh(c: Any) -> None:  # what load_incluster_config installs: a rotated token file is read again
        refreshed.append("yes")
        c.api_key["authorization"] = f"{token}-fresh"

    config.refresh_api_key_hook = refresh
    api = kubernetes.client.ApiClient(config)
    pool = _Pool(answer)
    api.rest_client.pool_manager = pool
    return KubeHttp(api), pool, refreshed


def test_a_call_carries_the_refreshed_token_and_escapes_names_and_query() -> None:
    http, pool, refreshed = client(_Answer(200, b'{"kind": "Secret"}'))
    where = path("api", "v1", "namespaces", "team a", "secrets", "x/../y")
    answer = http.json("GET", where, query={"watch": True, "limit": 5}, timeout=(1.0, 2.0))
    assert answer == {"kind": "Secret"}
    sent = pool.sent[0]
    assert sent["url"] == "https://api.example:6443/api/v1/namespaces/team%20a/secrets/x%2F..%2Fy?watch=true&limit=5"
    assert sent["headers"]["authorization"] == "Bearer t0-fresh" and refreshed
    assert sent["headers"]["Accept"] == "application/json" and sent["body"] is None
    assert pool.answer.released


def test_a_body_is_sent_as_json() -> None:
    http, pool, _ = client(_Answer(201))
    http.json("POST", path("api", "v1", "namespaces", "n", "events"), body={"reason": "Synced"}, timeout=(1.0, 2.0))
    assert json.loads(pool.sent[0]["body"]) == {"reason": "Synced"}
    assert pool.sent[0]["headers"]["Content-Type"] == "application/json"


@pytest.mark.parametrize("status", [101, 302, 401, 403, 404, 410, 429, 500])
def test_a_status_other_than_2xx_raises_the_clients_exception_and_frees_the_connection(status: int) -> None:
    http, pool, _ = client(_Answer(status, b'{"kind": "Status"}'))
    with pytest.raises(kubernetes.client.ApiException) as raised:
        http.open("GET", path("api", "v1", "secrets"), timeout=(1.0, 2.0))
    assert raised.value.status == status
    assert pool.answer.drained and pool.answer.released


def test_nothing_is_retried_but_a_refused_connection_and_retry_after_is_not_obeyed() -> None:
    http, pool, _ = client(_Answer(200))
    http.json("GET", path("api", "v1", "secrets"), timeout=(1.0, 2.0))
    retries = pool.sent[0]["retries"]
    assert (retries.read, retries.status, retries.redirect, retries.respect_retry_after_header) == (0, 0, 0, False)
    assert retries.connect >= 1


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_a_name_that_urls_would_normalise_away_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        path("api", "v1", "namespaces", "n", "secrets", name)


@pytest.mark.parametrize("body", [b"", b"null", b"[]", b'"Secret"'])
def test_an_answer_that_is_not_an_object_is_an_error_not_an_empty_object(body: bytes) -> None:
    http, pool, _ = client(_Answer(200, body))
    with pytest.raises(ValueError):
        http.json("GET", path("api", "v1", "namespaces", "n", "secrets", "s"), timeout=(1.0, 2.0))
    assert pool.answer.released


@pytest.mark.parametrize(
    "answer",
    [
        {"kind": "Namespace", "metadata": {"name": "n"}},  # what `secrets/..` would fetch
        {"kind": "Secret", "metadata": {"name": "other", "namespace": "n"}, "data": {}},
        {"kind": "Secret", "metadata": {"name": "tls", "namespace": "elsewhere"}, "data": {}},
        {"kind": "SecretList", "items": []},
    ],
)
async def test_reading_a_secret_refuses_an_answer_that_is_not_that_secret(answer: dict[str, Any]) -> None:
    http, _, _ = client(_Answer(200, json.dumps(answer).encode()))
    with pytest.raises(KubeError) as raised:
        await Kube(http.client).read_secret("n", "tls", TLS_KEYS)
    assert raised.value.transient and "not that Secret" in raised.value.message


async def test_a_secret_over_the_byte_cap_is_refused_before_it_is_decoded() -> None:
    """100 resources naming 0.7 MiB Secrets must not fill the operator's memory: such a Secret is a reason."""
    big = {"kind": "Secret", "metadata": {"name": "tls", "namespace": "n"}, "type": "kubernetes.io/tls",
           "data": {"tls.crt": "QUFB" * (MAX_SECRET_BYTES // 4), "tls.key": "QUFB"}}  # fmt: skip
    answer = _Answer(200, json.dumps(big).encode())
    http, pool, _ = client(answer)
    with pytest.raises(KubeError) as raised:
        await Kube(http.client).read_secret("n", "tls", TLS_KEYS)
    assert raised.value.reason == "InvalidSecret" and not raised.value.transient
    assert "larger than 512 KiB" in raised.value.message
    assert answer.read_bytes == MAX_SECRET_BYTES + 1 and pool.answer.released and answer.drained


async def test_reading_a_secret_decodes_its_data() -> None:
    secret = {"kind": "Secret", "type": "kubernetes.io/tls", "data": {"tls.crt": "Y2VydA=="},
              "metadata": {"name": "tls", "namespace": "n", "uid": "u1", "resourceVersion": "7"}}  # fmt: skip
    http, _, _ = client(_Answer(200, json.dumps(secret).encode()))
    view = await Kube(http.client).read_secret("n", "tls", TLS_KEYS)
    assert view is not None and view.data == {"tls.crt": b"cert"} and (view.uid, view.version) == ("u1", "7")


async def test_only_the_keys_a_pass_uses_are_decoded_and_kept() -> None:
    """A Secret's other keys (a keystore, a password cert-manager wrote beside the pair) never reach memory,
    and one that is not base64 is no reason to refuse the keys the pass uses."""
    secret = {"kind": "Secret", "type": "kubernetes.io/tls",
              "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5", "keystore.jks": "QUFB" * 1000, "junk": "%%%"},
              "metadata": {"name": "tls", "namespace": "n", "uid": "u1", "resourceVersion": "7"}}  # fmt: skip
    http, _, _ = client(_Answer(200, json.dumps(secret).encode()))
    view = await Kube(http.client).read_secret("n", "tls", TLS_KEYS)
    assert view is not None and view.data == {"tls.crt": b"cert", "tls.key": b"key"} and view.size == 21
    assert view.read_for == frozenset(TLS_KEYS) and not view.serves(frozenset({"ca.crt"}))


@pytest.mark.parametrize(
    ("labels", "allowed"),
    [({"certsync.io/allow": "true"}, True), ({}, False), ({"certsync.io/allow": "false"}, False), (None, False)],
)
async def test_with_a_required_label_only_labelled_secrets_are_used(
    labels: dict[str, str] | None, allowed: bool
) -> None:
    """CERTSYNC_SECRET_LABEL: who may create the kinds but not read a Secret cannot have its key pushed anywhere."""
    meta: dict[str, Any] = {"name": "tls", "namespace": "n", "uid": "u1", "resourceVersion": "7"}
    if labels is not None:
        meta["labels"] = labels
    secret = {"kind": "Secret", "type": "kubernetes.io/tls", "data": {"tls.crt": "Y2VydA=="}, "metadata": meta}
    http, _, _ = client(_Answer(200, json.dumps(secret).encode()))
    kube = Kube(http.client, required_label=("certsync.io/allow", "true"))
    if allowed:
        view = await kube.read_secret("n", "tls", TLS_KEYS)
        assert view is not None and view.data == {"tls.crt": b"cert"}
        return
    with pytest.raises(KubeError) as refused:
        await kube.read_secret("n", "tls", TLS_KEYS)
    assert refused.value.reason == "SecretNotAllowed" and not refused.value.transient
    assert "certsync.io/allow=true" in refused.value.message


def test_a_streamed_answer_is_left_open_for_its_reader() -> None:
    http, pool, _ = client(_Answer(200))
    response = http.open("GET", path("api", "v1", "secrets"), query={"watch": True}, timeout=(1.0, 2.0))
    assert response is pool.answer and not pool.answer.released


@pytest.mark.parametrize(("status", "reason"), [(403, "SecretForbidden"), (400, "InvalidSpec"), (422, "InvalidSpec")])
async def test_a_secret_the_operator_may_not_read_has_its_own_reason(status: int, reason: str) -> None:
    http, _, _ = client(_Answer(status))
    with pytest.raises(KubeError) as raised:
        await Kube(http.client).read_secret("n", "tls", TLS_KEYS)
    assert raised.value.reason == reason and not raised.value.transient
    if status == 403:  # what to fix, and a look again later: RBAC changes are no input the operator watches
        assert "ServiceAccount" in raised.value.message and "RBAC" in raised.value.message
        assert raised.value.retry_after == SECRET_FORBIDDEN_RETRY_S


class _EventServer:
    """Answers Event creates with a generated name and patches with `patch_status`; records what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []
        self.patch_status = 200
        self.created = 0

    def request(self, method: str, url: str, **kwargs: Any) -> _Answer:
        body = json.loads(kwargs["body"]) if kwargs.get("body") else {}
        self.sent.append((method, url.rsplit("/", 1)[-1], body))
        if method == "POST":
            self.created += 1
            return _Answer(201, json.dumps({"metadata": {"name": f"e{self.created}"}}).encode())
        assert kwargs["headers"]["Content-Type"] == "application/merge-patch+json"
        return _Answer(self.patch_status)


def event_layer(cache: int = 8) -> tuple[Kube, _EventServer, list[dt.datetime]]:
    http, _, _ = client(_Answer(200))
    server = _EventServer()
    http.client.rest_client.pool_manager = server
    now = [dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)]
    return Kube(http.client, clock=lambda: now[0], event_cache=cache), server, now


REF = ObjectRef("deploymenttlses", "DeploymentTLS", "n", "broker", "uid-1")


async def test_the_same_event_again_counts_on_the_event_posted_before() -> None:
    kube, server, now = event_layer()
    for _ in range(3):
        await kube.event(REF, "Warning", "RemoteUnavailable", "HTTP 503")
        now[0] += dt.timedelta(seconds=30)
    assert [(method, name) for method, name, _ in server.sent] == [("POST", "events"), ("PATCH", "e1"), ("PATCH", "e1")]
    assert [body.get("count") for _, _, body in server.sent] == [1, 2, 3]
    assert [body["lastTimestamp"] for _, _, body in server.sent] == [
        "2026-03-01T12:00:00Z", "2026-03-01T12:00:30Z", "2026-03-01T12:01:00Z"]  # fmt: skip
    await kube.event(REF, "Warning", "RemoteUnavailable", "HTTP 502")  # another message: another Event
    await kube.event(REF, "Normal", "RemoteUnavailable", "HTTP 503")  # another type too
    await kube.event(dataclasses.replace(REF, name="other"), "Warning", "RemoteUnavailable", "HTTP 503")
    assert [method for method, _, _ in server.sent[3:]] == ["POST", "POST", "POST"]


async def test_an_event_is_posted_anew_after_the_window_or_when_the_one_before_is_gone() -> None:
    kube, server, now = event_layer()
    await kube.event(REF, "Normal", "Synced", "in sync")
    now[0] += dt.timedelta(seconds=EVENT_WINDOW_S)  # ten minutes without it: a new Event, as client-go's
    await kube.event(REF, "Normal", "Synced", "in sync")
    server.patch_status = 404  # the Event expired (the API server's TTL) or someone deleted it
    await kube.event(REF, "Normal", "Synced", "in sync")
    server.patch_status = 200
    await kube.event(REF, "Normal", "Synced", "in sync")
    assert [(method, name) for method, name, _ in server.sent] == [
        ("POST", "events"), ("POST", "events"), ("PATCH", "e2"), ("POST", "events"), ("PATCH", "e3")]  # fmt: skip


async def test_without_the_patch_verb_every_event_is_still_posted() -> None:
    kube, server, _ = event_layer()
    server.patch_status = 403
    for _ in range(3):
        await kube.event(REF, "Warning", "InternalError", "boom")
    assert [method for method, _, _ in server.sent] == ["POST", "PATCH", "POST", "POST"]  # asked once, then not


async def test_a_failed_count_never_fails_the_pass_and_the_cache_is_bounded() -> None:
    kube, server, _ = event_layer(cache=2)
    await kube.event(REF, "Normal", "Synced", "a")
    server.patch_status = 500
    await kube.event(REF, "Normal", "Synced", "a")  # best effort: logged, not raised
    for message in ("b", "c", "d"):
        await kube.event(REF, "Normal", "Synced", message)
    assert len(kube.events) == 2 and [key[-1] for key in kube.events] == ["c", "d"]
    server.patch_status = 200
    await kube.event(REF, "Normal", "Synced", "a")  # forgotten: posted anew
    assert server.sent[-1][0] == "POST"


async def test_the_same_event_from_passes_at_once_is_posted_once_and_counted_each_time() -> None:
    """Passes run concurrently: without a lock two of them both post (two Events) or patch the same count."""
    kube, server, _ = event_layer()
    await asyncio.gather(*(kube.event(REF, "Warning", "RemoteUnavailable", "HTTP 503") for _ in range(5)))
    assert [method for method, _, _ in server.sent] == ["POST", "PATCH", "PATCH", "PATCH", "PATCH"]
    assert [body.get("count") for _, _, body in server.sent] == [1, 2, 3, 4, 5]
