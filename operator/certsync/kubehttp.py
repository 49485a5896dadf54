"""Plain JSON calls to the Kubernetes API on the kubernetes client's configuration: its server, TLS,
credentials (a refreshed in-cluster token included) and urllib3 pool.

The client's generated API classes are avoided on purpose for Secrets and Events: `CoreV1Api` declares
every core call with pydantic validators and loads some 250 model modules, about 19 MB of an operator
that needs ~110 MB in all, for three calls the operator makes with it. Each call here is a path, a query
and a dictionary, which is all the Kubernetes API is."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes
import urllib3

Timeout = tuple[float, float]  # connect, read
# A refused connection is tried again (nothing was sent); nothing else is: no read retried after a timeout,
# no Retry-After honoured for hours in one of the few kube threads, no redirect followed.
RETRIES = urllib3.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=0, respect_retry_after_header=False)


def path(*segments: str) -> str:
    """An API path from its segments, each escaped (names come from users' manifests).

    "." and ".." are refused: escaping leaves them as they are and the URL would be normalised to
    another resource (`secrets/..` is the Namespace, `secrets/.` every Secret of it)."""
    if any(segment in ("", ".", "..") for segment in segments):
        raise ValueError(f"not a name for an API path: {segments!r}")
    return "/" + "/".join(quote(segment, safe="") for segment in segments)


class AnswerTooLarge(ValueError):
    """An answer past the byte cap its caller set: nothing of it was decoded."""


class KubeHttp:
    """Requests through one `ApiClient`; an error status raises `kubernetes.client.ApiException`, as the
    generated classes do, so callers tell a 404 from a 403 the same way everywhere."""

    def __init__(self, api_client: Any = None) -> None:
        self.client: Any = api_client if api_client is not None else kubernetes.client.ApiClient()

    def open(
        self,
        method: str,
        url_path: str,
        *,
        timeout: Timeout,
        query: Mapping[str, str | int | bool] | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The answer of a successful request, unread: the caller reads or streams it, then releases it."""
        config = self.client.configuration
        url = config.host.rstrip("/") + url_path
        if query:
            url += "?" + urlencode({k: str(v).lower() if isinstance(v, bool) else v for k, v in query.items()})
        sent = {**self.client.default_headers, "Accept": "application/json", **(headers or {})}
        for auth in config.auth_settings().values():  # runs the client's token refresh hook, as its own calls do
            if auth.get("in") == "header" and auth.get("value"):
                sent[auth["key"]] = auth["value"]
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        response = self.client.rest_client.pool_manager.request(
            method, url, body=data, headers=sent, preload_content=False, retries=RETRIES,
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
        )  # fmt: skip
        if not 200 <= response.status < 300:
            response.drain_conn()  # discarded chunk by chunk, read errors swallowed: the status is what counts
            response.release_conn()
            raise kubernetes.client.ApiException(status=response.status, reason=response.reason)
        return response

    def json(
        self, method: str, url_path: str, *, timeout: Timeout, max_bytes: int | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """A whole JSON answer: an object, or `ValueError` (an API server never answers anything else).

        With `max_bytes`, a longer answer raises `AnswerTooLarge` after reading one byte more than that, before
        anything is decoded (a referenced Secret may be up to 1 MiB, and is then refused, not kept)."""
        response = self.open(method, url_path, timeout=timeout, **kwargs)
        try:
            if max_bytes is None:
                raw = response.read()
            else:
                raw = response.read(max_bytes + 1)
                if len(raw) > max_bytes:
                    response.drain_conn()
                    raise AnswerTooLarge(f"{method} {url_path}: the answer is larger than {max_bytes} bytes")
            answer = json.loads(raw)
        finally:
            response.release_conn()
        if not isinstance(answer, dict):
            raise ValueError(f"{method} {url_path}: the answer is not a JSON object")
        return answer
