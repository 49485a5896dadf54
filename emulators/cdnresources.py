"""The CDN's HTTP resources and their configuration tasks: the family's CDN API beside the SSL API.

What the providers' material says (see the README's Emulators section): `GET`/`POST
/cdn/api/v1/<account>/resource/http/` lists and creates, `GET`/`PUT`/`PATCH .../resource/http/<id>` reads,
replaces and merges; the field `certificate` is the SSL API's `seq`. Answers use their own envelope:
`{"status": "accept", "task_id": ...}` on success, `{"status": "error", "message", "description"}` on a refusal,
bodiless 400/404/500/503 otherwise. A change is applied by a task (`GET /cdn/api/v1/tasks?id=`), pending then
process then completed (or error) — the resource shows it only once its task completed. 20 configuration
requests a minute per account, 100 resources per account.

Choices where the material is silent (the client and this emulator agree on them, written down here and in the
README): a refusal is HTTP 200 with the error envelope; a PATCH holding only `certificate` is accepted; `null`
for `certificate` is refused (400, no body); a PUT replaces the configuration exactly: a field it lacks is gone.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from emulators.common import SlidingLimit, body_of, json_response

CONFIG_LIMIT = 20  # configuration requests a minute per account
MAX_RESOURCES = 100
TASK_DELAY_S = 2.0  # from accepted to completed, on the emulator's clock: half pending, half process
FIELDS = frozenset({"name", "origin", "names", "certificate", "https_only", "http2https", "modern_tls_only",
                    "strong_ssl_ciphers", "active", "cdn_domain"})  # fmt: skip


@dataclass
class Task:
    id: str
    resource_id: str
    configuration: dict[str, Any]  # the whole configuration once applied
    started: float
    fails: bool
    applied: bool = False

    def status(self, now: float, delay: float) -> str:
        if now < self.started + delay / 2:
            return "pending"
        if now < self.started + delay:
            return "process"
        return "error" if self.fails else "completed"


@dataclass
class ResourceStore:
    """HTTP resources of the one account, the tasks that change them, and the configuration limit."""

    task_delay: float = TASK_DELAY_S
    capitalised: bool = False  # the tasks endpoint answers `Completed`, as the provider's pages show in places
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    failing_tasks: int = 0  # the next N tasks end in `error`
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.limit = SlidingLimit(CONFIG_LIMIT, 60.0)

    def reset(self) -> None:
        self.resources.clear()
        self.tasks.clear()
        self.failing_tasks = 0
        self.limit.clear()

    def add(self, resource_id: str, names: list[str], **configuration: Any) -> dict[str, Any]:
        """A resource as the console would have made it (also the control API's seeding)."""
        resource = {"id": resource_id, "name": resource_id, "origin": {"host": f"origin.{resource_id}.example"},
                    "names": list(names), "https_only": False, "http2https": False, "active": True,
                    "cdn_domain": f"{resource_id}.cdn.example", **configuration}  # fmt: skip
        self.resources[resource_id] = resource
        return resource

    def settle(self, now: float) -> None:
        """Completed tasks change their resource, in the order they were accepted."""
        for task in self.tasks.values():
            if not task.applied and task.status(now, self.task_delay) in ("completed", "error"):
                task.applied = True
                if not task.fails and task.resource_id in self.resources:
                    self.resources[task.resource_id] = task.configuration

    def accept(self, resource_id: str, configuration: dict[str, Any], now: float) -> Task:
        task = Task(f"task-{next(self.ids)}", resource_id, configuration, now, self.failing_tasks > 0)
        self.failing_tasks = max(0, self.failing_tasks - 1)
        self.tasks[task.id] = task
        return task


def refused(message: str, description: str = "") -> web.Response:
    return json_response({"status": "error", "message": message, "description": description})


def resource_routes(
    store: ResourceStore,
    account: str,
    now: Callable[[], float],
    authorised: Callable[[web.Request], bool],
    certificate_exists: Callable[[int], bool],
) -> list[web.RouteDef]:
    """The resource and task endpoints; `authorised` checks the request's CDN-AUTH-TOKEN like the SSL API's."""

    def guard(request: web.Request, *, configuration: bool) -> web.Response | None:
        if not authorised(request):
            return web.Response(status=401)
        if request.match_info.get("account", account) != account:
            return web.Response(status=404)
        if configuration:
            wait = store.limit.hit(account, now())
            if wait is not None:
                return web.Response(status=429, headers={"Retry-After": str(max(1, int(wait + 0.999)))})
        store.settle(now())
        return None

    def invalid(body: dict[str, Any]) -> web.Response | None:
        """Fields this API does not have, or a certificate that is not an SSL API seq of the account."""
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            return refused("unknown fields", ", ".join(unknown))
        if "certificate" in body:
            seq = body["certificate"]
            if seq is None or isinstance(seq, bool) or not isinstance(seq, int):
                return web.Response(status=400)
            if not certificate_exists(seq):
                return refused("certificate not found", f"no SSL certificate {seq} in the account")
        return None

    async def list_resources(request: web.Request) -> web.Response:
        return guard(request, configuration=False) or json_response(list(store.resources.values()))

    async def create(request: web.Request) -> web.Response:
        if (blocked := guard(request, configuration=True)) is not None:
            return blocked
        body = await body_of(request)
        if body is None or not isinstance(body.get("name"), str):
            return web.Response(status=400)
        if (bad := invalid(body)) is not None:
            return bad
        if len(store.resources) >= MAX_RESOURCES:
            return refused("resources limit reached", f"at most {MAX_RESOURCES} resources per account")
        resource_id = f"r{next(store.ids)}"
        store.resources[resource_id] = {"id": resource_id, **body}
        task = store.accept(resource_id, {"id": resource_id, **body}, now())
        return json_response({"status": "accept", "task_id": task.id, "resource_id": resource_id})

    async def get_resource(request: web.Request) -> web.Response:
        if (blocked := guard(request, configuration=False)) is not None:
            return blocked
        resource = store.resources.get(request.match_info["id"])
        return json_response(resource) if resource is not None else web.Response(status=404)

    async def change(request: web.Request, *, replace: bool) -> web.Response:
        if (blocked := guard(request, configuration=True)) is not None:
            return blocked
        resource = store.resources.get(request.match_info["id"])
        if resource is None:
            return web.Response(status=404)
        body = await body_of(request)
        if body is None or not body:
            return web.Response(status=400)
        body.pop("id", None)
        if (bad := invalid(body)) is not None:
            return bad
        configuration = {"id": resource["id"], **body} if replace else {**resource, **body}
        task = store.accept(resource["id"], configuration, now())
        return json_response({"status": "accept", "task_id": task.id})

    async def put(request: web.Request) -> web.Response:
        return await change(request, replace=True)

    async def patch(request: web.Request) -> web.Response:
        return await change(request, replace=False)

    async def task(request: web.Request) -> web.Response:
        if (blocked := guard(request, configuration=False)) is not None:
            return blocked
        found = store.tasks.get(request.query.get("id", ""))
        if found is None:
            return web.Response(status=404)
        status = found.status(now(), store.task_delay)
        message = "configuration could not be applied" if status == "error" else ""
        return json_response({"task_description": "Configuration apply",
                              "status": status.capitalize() if store.capitalised else status,
                              "date_started": _iso(found.started), "message": message})  # fmt: skip

    async def control(request: web.Request) -> web.Response:
        """Control API: seed resources, make the next tasks fail, rebind as someone in the console would."""
        body = await body_of(request) or {}
        for resource_id, names in (body.get("resources") or {}).items():
            store.add(str(resource_id), [str(n) for n in names])
        store.failing_tasks += int(body.get("failTasks", 0))
        if "taskDelay" in body:
            store.task_delay = float(body["taskDelay"])
        for resource_id, seq in (body.get("rebind") or {}).items():
            if resource_id in store.resources:
                store.resources[resource_id]["certificate"] = int(seq)
        return json_response({"resources": store.resources, "failingTasks": store.failing_tasks})

    prefix = "/cdn/api/v1/{account}/resource/http"
    return [
        web.get(prefix + "/", list_resources),
        web.post(prefix + "/", create),
        web.get(prefix + "/{id}", get_resource),
        web.put(prefix + "/{id}", put),
        web.patch(prefix + "/{id}", patch),
        web.get("/cdn/api/v1/tasks", task),
        web.post("/_emulator/resources", control),
    ]


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
