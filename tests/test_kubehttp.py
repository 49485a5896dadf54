"""kubehttp: the operator's plain calls to the Kubernetes API carry the client's credentials, escape what users
named, and turn an error status into the client's own exception."""

from __future__ import annotations

import json
from typing import Any

import kubernetes
import pytest
from certsync.kube import Kube, KubeError
from certsync.kubehttp import KubeHttp, path


class _Answer:
    def __init__(self, status: int, body: bytes = b"{}") -> None:
        self.status, self.reason, self.body = status, "Reason", body
        self.released = self.drained = False

    def read(self) -> bytes:
        return self.body

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
        await Kube(http.client).read_secret("n", "tls")
    assert raised.value.transient and "not that Secret" in raised.value.message


async def test_reading_a_secret_decodes_its_data() -> None:
    secret = {"kind": "Secret", "type": "kubernetes.io/tls", "data": {"tls.crt": "Y2VydA=="},
              "metadata": {"name": "tls", "namespace": "n", "uid": "u1", "resourceVersion": "7"}}  # fmt: skip
    http, _, _ = client(_Answer(200, json.dumps(secret).encode()))
    view = await Kube(http.client).read_secret("n", "tls")
    assert view is not None and view.data == {"tls.crt": b"cert"} and (view.uid, view.version) == ("u1", "7")


def test_a_streamed_answer_is_left_open_for_its_reader() -> None:
    http, pool, _ = client(_Answer(200))
    response = http.open("GET", path("api", "v1", "secrets"), query={"watch": True}, timeout=(1.0, 2.0))
    assert response is pool.answer and not pool.answer.released
