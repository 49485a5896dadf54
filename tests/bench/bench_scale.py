"""Scale benchmark of issue 9: one operator, N resources, the local control plane and the emulators.

Run (CPU-heavy: on a shared machine, under the lock):

    flock /tmp/certsync-heavy.lock python -m tests.bench.bench_scale [--n 100 300 1000] [--unrelated-secrets 2000]
    flock /tmp/certsync-heavy.lock python -m tests.bench.bench_scale --quick     # N=100, 300 unrelated Secrets

Not a test: it prints figures, and the issue's goals beside them, so that a change can be compared with the last
run. For each N it makes a fresh namespace with N resources (half DeploymentTLS on distinct deployments, half
CdnCertificate over 4 CDN accounts, each with its own kubernetes.io/tls Secret), creates them all before the operator
starts, then measures one operator process: time to all Ready, RSS peak and steady, CPU seconds, remote calls per
resource (the emulators' own log), kube API requests per resource (kube-apiserver's `apiserver_request_total`), the
remote and status writes of a restart with everything in sync, and the latency of a rotation (Secret update to the
emulator's write) against one direct write. A second scenario puts unrelated 80 KB Secrets beside 100 resources and
measures the operator's memory. The emulators' API limits (and the operator's CDN budget) are raised so that the
operator itself is measured; the CDN token endpoint keeps the provider's 20 logins a minute.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import datetime as dt
import json
import os
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devkit import controlplane
from devkit.factory import Issued, issue
from devkit.kube import REPO, Kube
from devkit.processes import EmulatorProcess, OperatorProcess, emulator, operator, reconcile_passes

GROUP = "/apis/certsync.io/v1alpha1"
KINDS = {"DeploymentTLS": "deploymenttlses", "CdnCertificate": "cdncertificates"}
EMQX_KEY, EMQX_SECRET = "bench-key", "bench-emqx-secret-7Qp"
CDN_ACCOUNTS = 4
CDN_PASSWORD = "bench-cdn-password-3Kd"
UNLIMITED = "1000000"  # the emulators' and the operator's limits, raised so that the operator itself is measured
READY_CAP_S = 300.0
RESTART_CAP_S = 180.0
ROTATION_CAP_S = 30.0  # one rotation
ROTATIONS_CAP_S = 180.0  # all rotations of one N
STEADY_AFTER_S = 10.0
POLL_READY_S = 0.5
POLL_WRITE_S = 0.02
UNRELATED_SECRET_BYTES = 80 * 1024
MB = 1024 * 1024


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the cluster


class Api:
    """kube-apiserver as admin, straight over HTTP: cheaper than a kubectl process per poll on a 2-core machine."""

    def __init__(self, server: str, pki: Path) -> None:
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.client = httpx.Client(
            base_url=server,
            verify=context,
            timeout=60,
            limits=httpx.Limits(max_connections=16),
        )
        self.own_lists: collections.Counter[str] = collections.Counter()  # our LIST calls, kept out of the figures

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(5):
            answer = self.client.post(path, json=body)
            if answer.status_code not in (429, 500, 503, 504):
                break
            time.sleep(0.5 * (attempt + 1))
        answer.raise_for_status()
        return answer.json()  # type: ignore[no-any-return]

    def create_all(self, path: str, bodies: Iterable[dict[str, Any]], workers: int = 8) -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda body: self.create(path, body), bodies))

    def items(self, path: str, resource: str) -> list[dict[str, Any]]:
        self.own_lists[resource] += 1
        answer = self.client.get(path)
        answer.raise_for_status()
        return answer.json()["items"]  # type: ignore[no-any-return]

    def merge_patch(self, path: str, body: dict[str, Any]) -> None:
        answer = self.client.patch(path, json=body, headers={"Content-Type": "application/merge-patch+json"})
        answer.raise_for_status()

    def request_counts(self) -> collections.Counter[str]:
        """`apiserver_request_total` summed by "VERB resource" (every client: the operator, us and the server)."""
        counts: collections.Counter[str] = collections.Counter()
        for line in self.client.get("/metrics").text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels_text, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
            labels = dict(part.split("=", 1) for part in _split_labels(labels_text))
            resource = labels.get("resource", "").strip('"')
            sub = labels.get("subresource", "").strip('"')
            counts[f"{labels.get('verb', '').strip(chr(34))} {resource}{'/' + sub if sub else ''}"] += int(float(value))
        return counts


def _split_labels(text: str) -> list[str]:
    """`a="x",b="y,z"` into its pairs (label values may hold commas)."""
    parts, current, quoted = [], "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current] if current else parts


@dataclass
class Cluster:
    kube: Kube
    api: Api
    operator_kubeconfig: Path


@contextlib.contextmanager
def cluster(workdir: Path) -> Iterator[Cluster]:
    log("starting etcd and kube-apiserver")
    plane = controlplane.start(workdir / "controlplane", tied_to_parent=True)
    try:
        pki = workdir / "controlplane" / "pki"
        kube = Kube(plane.kubectl, plane.kubeconfig, plane.server, pki / "ca.crt", plane)
        kube.kubectl("apply", "-f", str(REPO / "crds"))
        kube.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        kube.kubectl("apply", "-k", str(REPO / "deploy"))  # the operator's ServiceAccount and ClusterRole, as shipped
        token = kube.kubectl("create", "token", "certsync", "-n", "certsync-system", "--duration", "2h").stdout
        path = controlplane.kubeconfig(
            plane.server, pki / "ca.crt", {"token": token.strip()}, workdir / "certsync.kubeconfig", "certsync-system"
        )
        yield Cluster(kube, Api(plane.server, pki), path)
    finally:
        plane.stop()


def new_namespace(api: Api, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


# ---------------------------------------------------------------- certificates and objects


@dataclass
class Certificates:
    """Made once: a root and an ECDSA intermediate, and distinct P-256 leaves (a CDN account refuses duplicates)."""

    root_pem: bytes
    intermediate_pem: bytes
    leaves: list[Issued]
    spare: list[Issued]  # for rotations and direct writes

    @classmethod
    def make(cls, count: int, spare: int) -> Certificates:
        root = issue("certsync bench root", ca=True)
        intermediate = issue("certsync bench intermediate", issuer=root, ca=True)
        leaves = [issue(f"h{i}.bench.example", issuer=intermediate) for i in range(count + spare)]
        return cls(root.cert_pem, intermediate.cert_pem, leaves[:count], leaves[count:])

    def chain(self, leaf: Issued) -> bytes:
        return leaf.cert_pem + self.intermediate_pem


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_data(certs: Certificates, leaf: Issued) -> dict[str, str]:
    return {"tls.crt": b64(certs.chain(leaf)), "tls.key": b64(leaf.key_pem())}


def secret(name: str, data: dict[str, str], kind: str = "Opaque") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": kind, "metadata": {"name": name}, "data": data}


@dataclass
class Emulators:
    emqx: EmulatorProcess
    cdn: list[EmulatorProcess]

    @property
    def all(self) -> list[EmulatorProcess]:
        return [self.emqx, *self.cdn]


def deployment_id(index: int) -> str:
    return f"d{index:05d}"


@contextlib.contextmanager
def emulators(deployments: int, root_pem: Path, pending_seconds: float) -> Iterator[Emulators]:
    pending = ["--pending-seconds", str(pending_seconds)]
    ids = [arg for i in range(deployments) for arg in ("--deployment", deployment_id(i))]
    with contextlib.ExitStack() as stack:
        emqx = stack.enter_context(
            emulator(
                "emqx",
                "--api-key",
                EMQX_KEY,
                "--api-secret",
                EMQX_SECRET,
                *ids,
                "--deployment",
                "direct",
                "--read-limit",
                UNLIMITED,
                "--write-limit",
                UNLIMITED,
                *pending,
            )
        )
        cdn = [
            stack.enter_context(
                emulator(
                    "cdn",
                    "--account",
                    f"acct{i}",
                    "--username",
                    f"user{i}",
                    "--password",
                    CDN_PASSWORD,
                    "--rate-limit",
                    UNLIMITED,
                    "--trusted-ca",
                    str(root_pem),
                    *pending,
                )
            )
            for i in range(CDN_ACCOUNTS)
        ]
        yield Emulators(emqx, cdn)


@dataclass(frozen=True)
class Resource:
    kind: str
    name: str
    secret: str
    target: str  # the deployment ID, or the CDN account
    remote: int  # index into Emulators.all


def populate(api: Api, namespace: str, n: int, certs: Certificates, remotes: Emulators) -> list[Resource]:
    """N resources and their Secrets, in bulk, before any operator runs."""
    creds = [secret("emqx-creds", {"apiKey": b64(EMQX_KEY.encode()), "apiSecret": b64(EMQX_SECRET.encode())})]
    creds += [
        secret(f"cdn-creds-{i}", {"username": b64(f"user{i}".encode()), "password": b64(CDN_PASSWORD.encode())})
        for i in range(CDN_ACCOUNTS)
    ]
    resources, secrets, bodies = [], [], []
    for i in range(n):
        name = f"r{i:05d}"
        if i % 2 == 0:
            resource = Resource("DeploymentTLS", name, f"{name}-tls", deployment_id(i // 2), 0)
            spec: dict[str, Any] = {
                "endpoint": remotes.emqx.url,
                "credentialsSecretRef": {"name": "emqx-creds"},
                "deploymentId": resource.target,
                "tlsType": "one-way",
            }
        else:
            account = (i // 2) % CDN_ACCOUNTS
            resource = Resource("CdnCertificate", name, f"{name}-tls", f"acct{account}", 1 + account)
            spec = {
                "endpoint": remotes.cdn[account].url,
                "credentialsSecretRef": {"name": f"cdn-creds-{account}"},
                "account": resource.target,
            }
        spec["secretName"] = resource.secret
        resources.append(resource)
        secrets.append(secret(resource.secret, tls_data(certs, certs.leaves[i]), "kubernetes.io/tls"))
        bodies.append(
            {"apiVersion": "certsync.io/v1alpha1", "kind": resource.kind, "metadata": {"name": name}, "spec": spec}
        )
    api.create_all(f"/api/v1/namespaces/{namespace}/secrets", creds + secrets)
    for kind, plural in KINDS.items():
        api.create_all(f"{GROUP}/namespaces/{namespace}/{plural}", [b for b in bodies if b["kind"] == kind])
    return resources


def list_resources(api: Api, namespace: str) -> list[dict[str, Any]]:
    return [item for plural in KINDS.values() for item in api.items(f"{GROUP}/namespaces/{namespace}/{plural}", plural)]


def ready(item: dict[str, Any]) -> bool:
    conditions = item.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def not_ready_reasons(items: list[dict[str, Any]]) -> str:
    reasons: collections.Counter[str] = collections.Counter()
    for item in items:
        if ready(item):
            continue
        conditions = {c["type"]: c for c in item.get("status", {}).get("conditions", [])}
        shown = next((conditions[t] for t in ("Stalled", "Reconciling", "Ready") if t in conditions), None)
        reasons[f"{item['kind']}:{shown.get('reason', '?') if shown else 'no status'}"] += 1
    return ", ".join(f"{k} {v}" for k, v in reasons.most_common(6)) or "-"


# ---------------------------------------------------------------- the operator process


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in bytes (an exited process not reaped yet has neither)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    if len(values) < 2:
        raise ProcessLookupError(f"process {pid} has exited (no memory left to read)")
    return values


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def operator_flags(namespaces: list[str], remotes: Emulators, leader_election: str) -> list[str]:
    endpoints = ",".join(e.url + "/" for e in remotes.all)
    return [
        "--allowed-endpoints",
        endpoints,
        "--namespaces",
        ",".join(namespaces),
        "--cdn-budget-per-minute",
        UNLIMITED,
        "--leader-election",
        leader_election,
    ]


@dataclass
class StartFigures:
    ready: int
    seconds: float | None  # to all Ready; None when the cap passed first
    rss_peak: int
    rss_steady: int  # 0 when the operator exited
    cpu: float  # to all Ready (or to the cap, or to its exit)
    not_ready: str
    exited: str = ""  # why the operator exited on its own, if it did


def last_error(operator_log: Path) -> str:
    """The message of the operator's last error line (its log is JSON lines)."""
    for line in reversed(operator_log.read_text(errors="replace").splitlines()):
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
                return str(entry.get("message", ""))[:200]
    return "no error logged"


def measure_start(
    api: Api, running: OperatorProcess, namespace: str, n: int, started: float, operator_log: Path
) -> StartFigures:
    """Poll until all N are Ready (or the cap, or the operator's exit), then let it settle and read the steady RSS."""
    pid = running.process.pid
    count, items, seconds, exited = 0, [], None, ""
    memory, cpu = {"VmHWM": 0, "VmRSS": 0}, 0.0
    while time.monotonic() - started < READY_CAP_S:
        with contextlib.suppress(OSError, KeyError):  # sampled before poll() reaps an exited process
            memory, cpu = proc_status(pid), cpu_seconds(pid)
        if running.process.poll() is not None:
            elapsed = time.monotonic() - started
            exited = f"exited with {running.process.returncode} after {elapsed:.0f} s: {last_error(operator_log)}"
            log(f"the operator {exited}")
            break
        items = list_resources(api, namespace)
        count = sum(ready(item) for item in items)
        if count >= n:
            seconds = time.monotonic() - started
            cpu = cpu_seconds(pid)
            break
        time.sleep(POLL_READY_S)
    log(f"{count}/{n} Ready after {time.monotonic() - started:.1f}s, {cpu:.1f} CPU s")
    if exited:
        return StartFigures(count, None, memory["VmHWM"], 0, cpu, not_ready_reasons(items), exited)
    time.sleep(STEADY_AFTER_S)  # a measurement period, not a wait for a condition
    memory = proc_status(pid)
    return StartFigures(count, seconds, memory["VmHWM"], memory["VmRSS"], cpu, not_ready_reasons(items))


# ---------------------------------------------------------------- the scale scenario


@dataclass
class ScaleFigures:
    n: int
    start: StartFigures
    remote_calls: dict[str, dict[str, float]]  # api -> "METHOD template" -> calls per resource of that api
    kube_calls: dict[str, float]  # "VERB resource" -> requests per resource
    restart: dict[str, Any] = field(default_factory=dict)
    rotation: dict[str, Any] = field(default_factory=dict)


def api_names(remotes: Emulators) -> list[str]:
    return ["emqx"] + ["cdn"] * len(remotes.cdn)


def remote_counts(remotes: Emulators) -> dict[str, collections.Counter[str]]:
    totals: dict[str, collections.Counter[str]] = {"emqx": collections.Counter(), "cdn": collections.Counter()}
    for name, remote in zip(api_names(remotes), remotes.all, strict=True):
        totals[name].update(remote.counts())
    return totals


def is_write(call: str) -> bool:
    return not call.startswith("GET ") and "oauth" not in call


def is_login(call: str) -> bool:
    return "oauth" in call


def kube_delta(
    before: collections.Counter[str], after: collections.Counter[str], own: collections.Counter[str]
) -> dict[str, int]:
    """Requests between two scrapes, without our own polling LISTs, for the kinds the operator touches."""
    delta = {}
    for key in after:
        verb, resource = key.split(" ", 1)
        if resource.split("/")[0] not in ("secrets", "events", "leases", *KINDS.values()):
            continue
        value = after[key] - before.get(key, 0) - (own.get(resource, 0) if verb == "LIST" else 0)
        if value > 0:
            delta[key] = value
    return delta


def run_scale(cluster: Cluster, n: int, certs: Certificates, workdir: Path, args: argparse.Namespace) -> ScaleFigures:
    api = cluster.api
    namespace = new_namespace(api, f"bench{n}")
    root_pem = workdir / "root.pem"
    with emulators(n // 2 + 1, root_pem, args.pending_seconds) as remotes:
        log(f"N={n}: creating {n} resources and their Secrets in {namespace}")
        resources = populate(api, namespace, n, certs, remotes)
        flags = operator_flags([namespace], remotes, args.leader_election)
        operator_log = workdir / f"operator-{n}.log"
        before, own_before = api.request_counts(), collections.Counter(api.own_lists)
        log(f"N={n}: starting the operator (log {operator_log})")
        started = time.monotonic()
        with operator(cluster.operator_kubeconfig, operator_log, *flags) as running:
            start = measure_start(api, running, namespace, n, started, operator_log)
            after = api.request_counts()
            own = collections.Counter(api.own_lists)
            own.subtract(own_before)
            counts = remote_counts(remotes)
        per_api = {"emqx": sum(r.kind == "DeploymentTLS" for r in resources)}
        per_api["cdn"] = n - per_api["emqx"]
        figures = ScaleFigures(
            n,
            start,
            {a: {call: c / max(per_api[a], 1) for call, c in sorted(counts[a].items())} for a in counts},
            {k: v / n for k, v in sorted(kube_delta(before, after, own).items())},
        )
        if start.ready < n or start.exited:
            log(f"N={n}: not all Ready ({start.not_ready}); restart and rotation skipped")
            return figures
        figures.restart, figures.rotation = measure_restart_and_rotation(
            cluster, namespace, resources, certs, remotes, flags, operator_log
        )
    return figures


def measure_restart_and_rotation(
    cluster: Cluster,
    namespace: str,
    resources: list[Resource],
    certs: Certificates,
    remotes: Emulators,
    flags: list[str],
    operator_log: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    api, n = cluster.api, len(resources)
    versions = {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in list_resources(api, namespace)}
    counts_before = remote_counts(remotes)
    log(f"N={n}: restarting the operator")
    started = time.monotonic()
    restart: dict[str, Any] = {}
    with operator(cluster.operator_kubeconfig, operator_log, *flags) as running:
        deadline = started + RESTART_CAP_S
        while reconcile_passes(running.metrics_url) < n and time.monotonic() < deadline:
            if running.process.poll() is not None:
                raise RuntimeError(f"the restarted operator exited with {running.process.returncode}")
            time.sleep(POLL_READY_S)
        passes = reconcile_passes(running.metrics_url)
        restart["passes"] = int(passes)
        restart["seconds"] = time.monotonic() - started if passes >= n else None
        time.sleep(2.0)  # lets the last passes' status patches land before they are counted
        counts_after = remote_counts(remotes)
        changed = [
            i["metadata"]["name"]
            for i in list_resources(api, namespace)
            if versions.get(i["metadata"]["name"]) != i["metadata"]["resourceVersion"]
        ]
        delta = {a: counts_after[a] - counts_before[a] for a in counts_after}
        restart["remote_writes"] = sum(v for d in delta.values() for k, v in d.items() if is_write(k))
        restart["remote_reads"] = sum(v for d in delta.values() for k, v in d.items() if k.startswith("GET "))
        restart["logins"] = sum(v for d in delta.values() for k, v in d.items() if is_login(k))
        restart["status_writes"] = len(changed)
        log(f"N={n}: restart {restart}")
        rotation = measure_rotations(api, namespace, resources, certs, remotes)
    return restart, rotation


def last_call_index(remote: EmulatorProcess) -> int:
    return int(remote.control("GET", "calls?since=999999999")["total"])


def wait_write(remote: EmulatorProcess, since: int, path_part: str, deadline: float) -> dict[str, Any] | None:
    """The first write after call `since` whose path names `path_part`, polled fast (the answer lists only new calls)."""
    while time.monotonic() < deadline:
        for call in remote.control("GET", f"calls?since={since}")["calls"]:
            if call["method"] != "GET" and "oauth" not in call["path"] and path_part in call["path"]:
                return call  # type: ignore[no-any-return]
        time.sleep(POLL_WRITE_S)
    return None


def measure_rotations(
    api: Api, namespace: str, resources: list[Resource], certs: Certificates, remotes: Emulators, sample: int = 10
) -> dict[str, Any]:
    """Replace the Secret of `sample` resources of each kind, one at a time: Secret update returned -> remote write."""
    latencies: dict[str, list[float]] = {"emqx": [], "cdn": []}
    spare = iter(certs.spare)
    chosen = []
    for kind in KINDS:
        of_kind = [r for r in resources if r.kind == kind]
        step = max(1, len(of_kind) // sample)
        chosen += of_kind[::step][:sample]
    missed, deadline = 0, time.monotonic() + ROTATIONS_CAP_S
    counts_before, rotated = remote_counts(remotes), collections.Counter[str]()
    for resource in chosen:
        if time.monotonic() > deadline:
            missed += 1
            continue
        remote = remotes.all[resource.remote]
        since = last_call_index(remote)
        path_part = f"/deployments/{resource.target}/" if resource.kind == "DeploymentTLS" else "/certificate/"
        api.merge_patch(
            f"/api/v1/namespaces/{namespace}/secrets/{resource.secret}", {"data": tls_data(certs, next(spare))}
        )
        updated = time.time()
        call = wait_write(remote, since, path_part, time.monotonic() + ROTATION_CAP_S)
        if call is None:
            missed += 1
            continue
        latencies["emqx" if resource.kind == "DeploymentTLS" else "cdn"].append(max(0.0, call["at"] - updated))
        rotated["emqx" if resource.kind == "DeploymentTLS" else "cdn"] += 1
    wait_quiet(remotes)  # a write's follow-up reads (EMQX: until `running`) belong to its rotation
    counts_after = remote_counts(remotes)
    calls = {
        a: {k: v / rotated[a] for k, v in sorted((counts_after[a] - counts_before[a]).items())}
        for a in counts_after
        if rotated[a]
    }
    direct = direct_writes(remotes, certs, spare)
    result: dict[str, Any] = {"missed": missed, "direct": direct, "calls": calls}
    for api_name, values in [("all", latencies["emqx"] + latencies["cdn"]), *latencies.items()]:
        result[api_name] = percentiles(values)
    log(f"rotation: {result}")
    return result


def wait_quiet(remotes: Emulators, quiet_s: float = 3.0, cap_s: float = 30.0) -> None:
    """Until no remote has been called for `quiet_s` (or `cap_s`): the operator's follow-up calls are done."""
    deadline, last, still_since = time.monotonic() + cap_s, None, time.monotonic()
    while time.monotonic() < deadline:
        totals = [last_call_index(remote) for remote in remotes.all]
        if totals != last:
            last, still_since = totals, time.monotonic()
        elif time.monotonic() - still_since >= quiet_s:
            return
        time.sleep(POLL_READY_S)


def percentiles(values: list[float]) -> dict[str, float] | None:
    if len(values) < 2:
        return None
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"n": len(values), "p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


def direct_writes(remotes: Emulators, certs: Certificates, spare: Iterator[Issued], tries: int = 5) -> dict[str, float]:
    """The median time of one write sent straight to each emulator: what a rotation cannot go below."""
    times: dict[str, list[float]] = {"emqx": [], "cdn": []}
    with httpx.Client(timeout=10) as client:
        url = f"{remotes.emqx.url}/deployments/direct/tls"
        for attempt in range(tries + 1):
            leaf = next(spare)
            body = {"tlsType": "one-way", "cert": certs.chain(leaf).decode(), "key": leaf.key_pem().decode()}
            began = time.perf_counter()
            answer = client.request("POST" if attempt == 0 else "PUT", url, json=body, auth=(EMQX_KEY, EMQX_SECRET))
            answer.raise_for_status()
            if attempt:
                times["emqx"].append(time.perf_counter() - began)
        cdn = remotes.cdn[0]
        login = client.post(f"{cdn.url}/app/oauth/v1/token/", data={"username": "user0", "password": CDN_PASSWORD})
        headers = {"CDN-AUTH-TOKEN": login.json()["token"]}
        base = f"{cdn.url}/app/ssl/v1/account/acct0/certificate/"
        seq = None
        for _ in range(tries + 1):
            leaf = next(spare)
            body = {"certificate": certs.chain(leaf).decode(), "private_key": leaf.key_pem().decode()}
            began = time.perf_counter()
            if seq is None:
                answer = client.post(base, json={**body, "comment": "direct"}, headers=headers)
                seq = answer.json()["data"]["seq"]
            else:
                answer = client.patch(f"{base}{seq}", json=body, headers=headers)
                times["cdn"].append(time.perf_counter() - began)
            answer.raise_for_status()
    return {name: statistics.median(values) for name, values in times.items()}


# ---------------------------------------------------------------- unrelated Secrets


@dataclass
class UnrelatedFigures:
    secrets: int
    n: int
    start: StartFigures


def run_unrelated(
    cluster: Cluster, count: int, n: int, certs: Certificates, workdir: Path, args: argparse.Namespace
) -> UnrelatedFigures:
    api = cluster.api
    other = new_namespace(api, "unrelated")
    log(f"creating {count} unrelated Opaque Secrets of {UNRELATED_SECRET_BYTES // 1024} KB in {other}")
    payload = b64(os.urandom(UNRELATED_SECRET_BYTES * 3 // 4))  # 80 KB once base64-encoded, as stored
    bodies = (
        {
            **secret(f"release-{i:05d}", {"release": payload}),
            "metadata": {"name": f"release-{i:05d}", "labels": {"owner": "helm"}},
        }
        for i in range(count)
    )
    api.create_all(f"/api/v1/namespaces/{other}/secrets", bodies)  # created, not applied: no last-applied copy
    namespace = new_namespace(api, f"beside{n}")
    with emulators(n // 2 + 1, workdir / "root.pem", args.pending_seconds) as remotes:
        populate(api, namespace, n, certs, remotes)
        operator_log = workdir / "operator-unrelated.log"
        log(f"unrelated: starting the operator on {namespace} and {other} (log {operator_log})")
        started = time.monotonic()
        with operator(
            cluster.operator_kubeconfig,
            operator_log,
            *operator_flags([namespace, other], remotes, args.leader_election),
        ) as running:
            start = measure_start(api, running, namespace, n, started, operator_log)
    return UnrelatedFigures(count, n, start)


# ---------------------------------------------------------------- the report


def machine() -> str:
    memory = next(
        line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{when}, commit {commit or '?'}, {os.cpu_count()} cores ({model}), "
        f"{int(memory) // 1024} MB memory, Python {platform.python_version()}"
    )


def fmt_s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def fmt_pct(figures: dict[str, float] | None) -> str:
    if not figures:
        return "-"
    return f"{figures['p50'] * 1000:.0f} / {figures['p95'] * 1000:.0f} / {figures['p99'] * 1000:.0f} ms"


def report(
    scale: list[ScaleFigures],
    unrelated: UnrelatedFigures | None,
    baseline: ScaleFigures | None,
    failures: list[str],
    setup: str,
) -> None:
    print()
    print(f"certsync scale benchmark: {machine()}")
    print(setup)
    print()
    header = [
        "N",
        "Ready",
        "all Ready after",
        "RSS peak",
        "RSS steady",
        "CPU to Ready",
        "kube req/res",
        "EMQX calls/res",
        "CDN calls/res",
    ]
    rows = []
    for f in scale:
        rows.append(
            [
                str(f.n),
                f"{f.start.ready}/{f.n}" + (" (exited)" if f.start.exited else ""),
                fmt_s(f.start.seconds),
                f"{f.start.rss_peak / MB:.0f} MB",
                f"{f.start.rss_steady / MB:.0f} MB",
                f"{f.start.cpu:.1f} s",
                f"{sum(f.kube_calls.values()):.1f}",
                f"{sum(f.remote_calls['emqx'].values()):.2f}",
                f"{sum(f.remote_calls['cdn'].values()):.2f}",
            ]
        )
    table(header, rows)
    print()
    header = [
        "N",
        "restart: passes",
        "covered after",
        "remote writes",
        "remote reads",
        "logins",
        "status writes",
        "rotation p50/p95/p99",
        "EMQX",
        "CDN",
        "direct EMQX/CDN",
        "p50 ratio",
    ]
    rows = []
    for f in scale:
        if not f.restart:
            rows.append([str(f.n), "skipped (not all Ready)", *["-"] * 10])
            continue
        r, rot = f.restart, f.rotation
        direct = rot["direct"]
        ratio = "-"
        if rot.get("all"):
            ratio = f"{rot['all']['p50'] / statistics.mean(direct.values()):.0f}x"
        rows.append(
            [
                str(f.n),
                str(r["passes"]),
                fmt_s(r["seconds"]),
                str(r["remote_writes"]),
                str(r["remote_reads"]),
                str(r["logins"]),
                str(r["status_writes"]),
                fmt_pct(rot.get("all")) + (f" ({rot['missed']} missed)" if rot["missed"] else ""),
                fmt_pct(rot.get("emqx")),
                fmt_pct(rot.get("cdn")),
                f"{direct['emqx'] * 1000:.1f} / {direct['cdn'] * 1000:.1f} ms",
                ratio,
            ]
        )
    table(header, rows)
    for f in scale:
        print()
        until = f"all Ready (+{STEADY_AFTER_S:.0f} s)" if f.start.seconds is not None else "the end of the start phase"
        print(f"N={f.n}: remote calls per resource of that API, from the operator's start to {until}")
        for api_name, calls in f.remote_calls.items():
            print(f"  {api_name}: " + ", ".join(f"{call} {v:.2f}" for call, v in calls.items()))
        if f.rotation.get("calls"):
            print(f"N={f.n}: remote calls per rotation (Secret update), with the reads that follow a write")
            for api_name, calls in f.rotation["calls"].items():
                print(f"  {api_name}: " + ", ".join(f"{call} {v:.2f}" for call, v in calls.items()))
        print(
            f"N={f.n}: kube API requests per resource (all clients but this benchmark's polls; no controller-manager runs)"
        )
        print("  " + ", ".join(f"{call} {v:.2f}" for call, v in sorted(f.kube_calls.items(), key=lambda kv: -kv[1])))
        if f.start.exited:
            print(f"N={f.n}: the operator {f.start.exited}")
        if f.start.ready < f.n:
            print(f"N={f.n}: not Ready: {f.start.not_ready}")
    if unrelated:
        print()
        s = unrelated.start
        base = (
            f", without them (N={baseline.n} above): peak {baseline.start.rss_peak / MB:.0f} MB, steady "
            f"{baseline.start.rss_steady / MB:.0f} MB"
            if baseline
            else ""
        )
        print(
            f"{unrelated.secrets} unrelated Opaque Secrets of {UNRELATED_SECRET_BYTES // 1024} KB + N={unrelated.n}: "
            f"RSS peak {s.rss_peak / MB:.0f} MB, steady {s.rss_steady / MB:.0f} MB, {s.ready}/{unrelated.n} Ready "
            f"after {fmt_s(s.seconds)}, CPU {s.cpu:.1f} s{base}" + (f"; the operator {s.exited}" if s.exited else "")
        )
    print()
    print(
        "goals (issue 9): N=1000 all Ready < 60 s and RSS peak < 200 MB; unrelated Secrets: RSS peak < 150 MB, "
        "steady < 130 MB; CDN <= 1.1 calls per new certificate and per rotation; restart: 0 remote writes, 0 status writes; "
        "rotation p50 < 1 s"
    )
    for failure in failures:
        print(f"FAILED {failure}")


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--n", type=int, nargs="+", default=[100, 300, 1000], help="resource counts (default 100 300 1000)"
    )
    parser.add_argument("--unrelated-secrets", type=int, default=2000, help="0 skips the second scenario")
    parser.add_argument("--unrelated-n", type=int, default=100, help="resources beside the unrelated Secrets")
    parser.add_argument("--pending-seconds", type=float, default=1.0, help="how long an emulator write stays pending")
    parser.add_argument(
        "--leader-election", choices=["true", "false"], default="true", help="the operator's setting (default: true)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke check: N=100 and 300 unrelated Secrets")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.unrelated_secrets = [100], min(args.unrelated_secrets, 300)
    if any(n < 2 for n in args.n):
        parser.error("every N must be at least 2 (half of each kind)")
    workdir = Path(tempfile.mkdtemp(prefix="certsync-bench-"))
    log(f"working folder {workdir}")
    log("making certificates")
    certs = Certificates.make(max([*args.n, args.unrelated_n]), spare=64)
    (workdir / "root.pem").write_bytes(certs.root_pem)
    scale: list[ScaleFigures] = []
    unrelated = None
    failures: list[str] = []
    try:
        with cluster(workdir) as running:
            for n in args.n:
                try:
                    scale.append(run_scale(running, n, certs, workdir, args))
                except (RuntimeError, OSError, httpx.HTTPError, AssertionError) as error:
                    failures.append(f"N={n}: {type(error).__name__}: {error}")  # the next N may still run
                    log(failures[-1])
            if args.unrelated_secrets > 0:
                try:
                    unrelated = run_unrelated(running, args.unrelated_secrets, args.unrelated_n, certs, workdir, args)
                except (RuntimeError, OSError, httpx.HTTPError, AssertionError) as error:
                    failures.append(f"unrelated Secrets: {type(error).__name__}: {error}")
                    log(failures[-1])
    finally:
        baseline = next((f for f in scale if f.n == args.unrelated_n), None)
        setup = (
            f"operator: leader election {args.leader_election}, CDN budget {UNLIMITED}/min; emulators: limits "
            f"{UNLIMITED}, writes pending {args.pending_seconds:g} s, CDN logins 20/min per account"
        )
        report(scale, unrelated, baseline, failures, setup)
        (workdir / "figures.json").write_text(
            json.dumps([f.__dict__ for f in scale], default=lambda o: o.__dict__, indent=1)
        )
        for path in (workdir / "certsync.kubeconfig", workdir / "root.pem"):
            path.unlink(missing_ok=True)
        log(f"operator logs and figures.json kept in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
