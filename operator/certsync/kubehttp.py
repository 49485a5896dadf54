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


def path(*segments: str) -> str:
    """An API path from its segments, each escaped (names come from users' manifests)."""
    return "/" + "/".join(quote(segment, safe="") for segment in segments)


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
            method, url, body=data, headers=sent, preload_content=False,
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
        )  # fmt: skip
        if response.status >= 400:
            try:
                response.read()  # drained, so that the connection goes back to the pool
            finally:
                response.release_conn()
            raise kubernetes.client.ApiException(status=response.status, reason=response.reason)
        return response

    def json(self, method: str, url_path: str, *, timeout: Timeout, **kwargs: Any) -> dict[str, Any]:
        """A whole JSON answer."""
        response = self.open(method, url_path, timeout=timeout, **kwargs)
        try:
            answer = json.loads(response.read() or b"{}")
        finally:
            response.release_conn()
        return answer if isinstance(answer, dict) else {}
