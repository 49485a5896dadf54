"""Two tenants on one operator: the attacker's namespace can neither block, starve nor read the victim's.

The operator runs as its own process (deploy/'s ServiceAccount) on the local control plane and watches two
namespaces: the victim A, with credentials that work, and the attacker B, with none that do. The tests of this
module share one operator and one emulator of each kind (restarted only where an attack needs a restart), in
file order. After each attack, A's new resource must be Ready within 25 s of its creation with its usual calls
(counted at the emulator: the answered ones, B's are refused), and neither A's status nor its Events may name
B's namespace; at the end no secret of either tenant is in any status, Event or the operator's log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devkit.factory import Chain, three_level
from devkit.kube import Kube
from devkit.processes import (
    PEAK_RSS_GOAL,
    EmulatorProcess,
    OperatorProcess,
    emulator,
    operator,
    operator_args,
    reconcile_passes,
)
from tests.e2e_fixtures import WINDOW
from tests.test_e2e_deploymenttls import creds_secret, tls_secret
from tests.test_e2e_security import hits, key_fragments

pytestmark = pytest.mark.e2e
USER, PASSWORD = "victim-user", "victim-cdn-password-Hq27"
API_KEY, API_SECRET = "victim-key", "victim-emqx-secret-Lm93"
DEADLINE_S = 25.0
TOKEN = "POST /app/oauth/v1/token/"
LIST = "GET /app/ssl/v1/account/{account}/certificate/"
ADD = "POST /app/ssl/v1/account/{account}/certificate/"
TLS = "/deployments/{deployment_id}/tls"


@dataclass
class Arena:
    """The shared world of this module: the control plane, both emulators, the operator, two namespaces."""

    kube: Kube
    cdn: EmulatorProcess
    emqx: EmulatorProcess
    victim: str
    attacker: str
    chain: Chain
    log: Path
    start: Callable[[], OperatorProcess]
    running: list[OperatorProcess] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)  # every secret value of both tenants: never to be found

    def restart(self) -> OperatorProcess:
        """SIGTERM, then a new process with the same settings (as a rollout does)."""
        old = self.running.pop()
        assert_peak_under_limit(old)
        old.process.terminate()
        old.process.wait(timeout=30)
        new = self.start()
        self.running.append(new)
        return new

    def apply(self, namespace: str, *documents: dict[str, Any]) -> None:
        self.kube.apply(*documents, namespace=namespace)

    def fresh_tls(self, name: str) -> str:
        """A certificate of its own for A's next resource (under the root the CDN trusts): an add, not an adoption."""
        chain = three_level(f"{name}.shop.example", root=self.chain.root)
        self.apply(self.victim, tls_secret(name, chain.pem, chain.leaf.key_pem()))
        self.secrets.update(key_fragments(chain.leaf))
        return name

    def status(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        return self.kube.get(kind, name, namespace).get("status", {})  # type: ignore[no-any-return]

    def ready(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        conditions = self.status(kind, name, namespace).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Ready"), {})


def cdn_cert(name: str, endpoint: str, creds: str = "cdn-creds", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "certsync.io/v1alpha1", "kind": "CdnCertificate", "metadata": {"name": name},
            "spec": {"endpoint": endpoint, "credentialsSecretRef": {"name": creds}, "account": "acct1",
                     "secretName": "shop-tls", **spec}}  # fmt: skip


def le_order(name: str, endpoint: str, resource: str, creds: str = "cdn-creds") -> dict[str, Any]:
    return {"apiVersion": "certsync.io/v1alpha1", "kind": "LetsEncryptOrder", "metadata": {"name": name},
            "spec": {"endpoint": endpoint, "credentialsSecretRef": {"name": creds}, "account": "acct1",
                     "resourceId": resource}}  # fmt: skip


def dtls(name: str, endpoint: str, creds: str = "emqx-creds") -> dict[str, Any]:
    return {"apiVersion": "certsync.io/v1alpha1", "kind": "DeploymentTLS", "metadata": {"name": name},
            "spec": {"endpoint": endpoint, "credentialsSecretRef": {"name": creds}, "deploymentId": "ge6a1a75",
                     "tlsType": "one-way", "secretName": "mqtt-tls"}}  # fmt: skip


def wait_until(what: str, done: Callable[[], bool], seconds: float, said: Callable[[], object] = str) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {said()}"
        time.sleep(0.25)


def unpassed(arena: Arena, plural: str, namespace: str) -> dict[str, str]:
    """The resources of `namespace` whose first pass has not decided yet, with their Ready reason."""
    items = json.loads(arena.kube.kubectl("get", plural, "-n", namespace, "-o", "json").stdout)["items"]
    reasons = {}
    for item in items:
        ready = [c for c in item.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
        reasons[item["metadata"]["name"]] = ready[0]["reason"] if ready else ""
    return {name: reason for name, reason in reasons.items() if reason in ("", "Progressing")}


def answered(emulator_: EmulatorProcess, since: int) -> list[str]:
    """The calls the emulator answered with success since call number `since` (B's are all refused)."""
    calls = emulator_.control("GET", f"calls?since={since}")["calls"]
    return sorted(f"{c['method']} {c['template']}" for c in calls if 200 <= c["status"] < 300)


def total(emulator_: EmulatorProcess) -> int:
    return int(emulator_.control("GET", "calls")["total"])


def ready_in_time(arena: Arena, kind: str, document: dict[str, Any], emulator_: EmulatorProcess) -> list[str]:
    """Create A's resource; it must be Ready within DEADLINE_S. Returns the calls answered meanwhile."""
    name = document["metadata"]["name"]
    since = total(emulator_)
    created = time.monotonic()
    arena.apply(arena.victim, document)
    ready: dict[str, Any] = {}
    while ready.get("status") != "True":
        assert time.monotonic() - created <= DEADLINE_S, f"{kind} {name} not Ready in {DEADLINE_S:.0f}s: {ready}"
        time.sleep(0.25)
        ready = arena.ready(kind, name, arena.victim)
    told = json.dumps(arena.status(kind, name, arena.victim)) + json.dumps(events(arena.kube, arena.victim, name))
    assert arena.attacker not in told, told
    return answered(emulator_, since)


def events(kube: Kube, namespace: str, name: str | None = None) -> list[dict[str, Any]]:
    items = json.loads(kube.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e for e in items if name is None or e.get("involvedObject", {}).get("name") == name]


@pytest.fixture(scope="module")
def arena(kube: Kube, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    root = tmp_path_factory.mktemp("tenancy")
    chain = three_level("www.shop.example")
    (root / "root.pem").write_bytes(chain.root.cert_pem)
    victim, attacker = kube.create_namespace(), kube.create_namespace()
    with ExitStack() as stack:
        cdn = stack.enter_context(emulator(
            "cdn", "--account", "acct1", "--username", USER, "--password", PASSWORD, "--pending-seconds", "2",
            "--resource", "res1=www.shop.example", "--resource", "res2=img.shop.example",
            "--trusted-ca", str(root / "root.pem"),
        ))  # fmt: skip
        emqx = stack.enter_context(emulator(
            "emqx", "--api-key", API_KEY, "--api-secret", API_SECRET, "--deployment", "ge6a1a75",
            "--pending-seconds", "2", "--window-seconds", str(WINDOW),
        ))  # fmt: skip
        log = root / "operator.log"
        args = operator_args(f"{victim},{attacker}", cdn.url, emqx.url, window=WINDOW)

        def start() -> OperatorProcess:
            running = stack.enter_context(operator(operator_kubeconfig, log, *args))
            wait_until("the operator's metrics", lambda: reconcile_passes(running.metrics_url) >= 0, 30)
            return running

        kube.apply(
            creds_secret("cdn-creds", username=USER, password=PASSWORD),
            creds_secret("emqx-creds", apiKey=API_KEY, apiSecret=API_SECRET),
            tls_secret("shop-tls", chain.pem, chain.leaf.key_pem()),
            tls_secret("mqtt-tls", chain.pem, chain.leaf.key_pem()),
            namespace=victim,
        )
        kube.apply(tls_secret("shop-tls", chain.pem, chain.leaf.key_pem()),
                   tls_secret("mqtt-tls", chain.pem, chain.leaf.key_pem()), namespace=attacker)  # fmt: skip
        arena = Arena(kube, cdn, emqx, victim, attacker, chain, log, start)
        arena.secrets |= {PASSWORD, API_SECRET} | key_fragments(chain.leaf)
        arena.running.append(start())
        try:
            yield arena
            assert_peak_under_limit(arena.running[-1])
        finally:
            for namespace in (victim, attacker):
                kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def assert_peak_under_limit(running: OperatorProcess) -> None:
    """Whatever the attacks did, the operator stayed well under its pod's 256 Mi limit."""
    peak = running.peak_rss()
    print(f"peak RSS (VmHWM) of the operator: {peak / 1e6:.1f} MB")
    assert peak < PEAK_RSS_GOAL, f"operator peak RSS {peak / 1e6:.1f} MB"


# --- the attacks, in order ---------------------------------------------------------------------------


def test_budget_burning_and_login_flooding_leave_the_victim_its_calls(arena: Arena) -> None:
    """20 CdnCertificates with a junk token naming A's account, and 20 with junk usernames, all older than A's."""
    b, url = arena.attacker, arena.cdn.url
    tokens = [f"junk-token-{n}-Zx81" for n in range(20)]
    passwords = [f"junk-password-{n}-Pw55" for n in range(20)]
    arena.secrets |= set(tokens) | set(passwords)
    arena.apply(b, *(creds_secret(f"tok-{n}", token=t) for n, t in enumerate(tokens)),
                *(creds_secret(f"usr-{n}", username=f"stranger-{n}", password=p) for n, p in enumerate(passwords)))  # fmt: skip
    arena.apply(b, *(cdn_cert(f"burn-{n}", url, f"tok-{n}") for n in range(20)),
                *(cdn_cert(f"flood-{n}", url, f"usr-{n}") for n in range(20)))  # fmt: skip
    squatters = [f"burn-{n}" for n in range(20)] + [f"flood-{n}" for n in range(20)]
    wait_until("every attacker resource had a pass", lambda: not unpassed(arena, "cdncertificates", b), 90,
               lambda: unpassed(arena, "cdncertificates", b))  # fmt: skip
    for _ in range(2):  # and again, at will
        arena.kube.kubectl("annotate", "cdncertificate", *squatters, "-n", b, "--overwrite",
                           f"certsync.io/requested-at=burn-{time.monotonic()}")  # fmt: skip
    calls = ready_in_time(
        arena, "cdncertificate", cdn_cert("shop", url, secretName=arena.fresh_tls("shop-tls")), arena.cdn
    )
    assert calls == sorted([TOKEN, LIST, ADD]), calls


def test_password_guessing_then_a_restart_and_a_refused_login_is_not_retried(arena: Arena) -> None:
    """Five Secret versions in B with A's username and wrong passwords; one resource of A's own with a wrong
    password, refused once. After a restart: A's new resource is Ready, and no refused password is tried again."""
    b, a, url = arena.attacker, arena.victim, arena.cdn.url
    guesses = [f"guess-{n}-Gh40" for n in range(5)]
    arena.secrets |= set(guesses) | {"lonely-wrong-Lw61"}
    arena.apply(b, creds_secret("guess", username=USER, password=guesses[0]), cdn_cert("guesser", url, "guess"))
    for guess in guesses[1:]:  # each version wakes the guesser: a pass each (a refused login, or one held unsent)
        version = arena.kube.get("secret", "guess", b)["metadata"]["resourceVersion"]
        wait_until("the guesser's pass over this version", lambda v=version: guessed(arena, v), 30)  # type: ignore[misc]
        arena.apply(b, creds_secret("guess", username=USER, password=guess))
    arena.apply(a, creds_secret("lonely-creds", username="nobody", password="lonely-wrong-Lw61"),
                cdn_cert("lonely", url, "lonely-creds"))  # fmt: skip
    arena.kube.kubectl("wait", "-n", a, "--for=condition=Stalled", "cdncertificate/lonely", "--timeout=60s")
    refused_before = refused_logins(arena.cdn)
    running = arena.restart()  # SIGTERM right after the Stalled condition appeared
    wait_until("the first passes after the restart", lambda: reconcile_passes(running.metrics_url) >= 3, 30)
    calls = ready_in_time(
        arena,
        "cdncertificate",
        cdn_cert("shop-after", url, secretName=arena.fresh_tls("shop-after-tls")),
        arena.cdn,
    )
    assert calls.count(TOKEN) == 1 and calls.count(ADD) == 1, calls  # a new process logs in once
    wait_until("the lonely resource's pass after the restart",
               lambda: "refused before" in arena.ready("cdncertificate", "lonely", a).get("message", ""), DEADLINE_S)  # fmt: skip
    assert arena.ready("cdncertificate", "lonely", a).get("reason") == "CredentialsInvalid"
    # At most the guesser's newest version, if B's quota had kept it unsent before the restart: never a repeat.
    again = [c for c in refused_logins(arena.cdn) if c not in refused_before]
    assert len(again) <= 1, again


def guessed(arena: Arena, version: str) -> bool:
    """The guesser's last pass read this version of its Secret: its status says so (a refusal names the version)
    or its pass ended unsent (held by B's own quota for unproven credentials)."""
    status = arena.status("cdncertificate", "guesser", arena.attacker)
    refused = (status.get("cdnLogin") or {}).get("refused") or {}
    reason = arena.ready("cdncertificate", "guesser", arena.attacker).get("reason")
    return str(refused.get("credentialsId", "")).endswith(f":{version}") or reason == "RateLimited"


def refused_logins(emulator_: EmulatorProcess) -> list[tuple[float, str]]:
    """Every refused login so far (when, and the path), in order."""
    calls = emulator_.control("GET", "calls")["calls"]
    return [(c["at"], c["path"]) for c in calls if f"{c['method']} {c['template']}" == TOKEN and c["status"] == 401]


def test_order_slot_squatting_and_forged_status_grant_nothing(arena: Arena, tmp_path: Path) -> None:
    """An older junk-token order in B naming A's account, whose tenant then writes its own /status (RBAC lets it):
    `orderedAt` (an order running) and `cdnLogin.bannedUntil` (A's username banned for decades). Restarted, so
    that the forged status is all the new process knows; A's new order and certificate are Ready in time."""
    b, url = arena.attacker, arena.cdn.url
    arena.secrets.add("squat-token-Sq09")
    arena.apply(b, creds_secret("squat-creds", token="squat-token-Sq09"), le_order("squat", url, "res2", "squat-creds"),
                cdn_cert("banner", url, "squat-creds"))  # fmt: skip
    wait_until("the squatters' passes", lambda: all(arena.ready(k, n, b).get("reason") not in (None, "Progressing")
                                                    for k, n in (("leorder", "squat"), ("cdncertificate", "banner"))),
               60)  # fmt: skip
    rules = [{"apiGroups": ["certsync.io"], "resources": ["letsencryptorders/status", "cdncertificates/status"],
              "verbs": ["get", "patch"]}]  # fmt: skip
    tenant = arena.kube.service_account_kubeconfig(b, "tenant", rules, tmp_path)
    forged_order = {"status": {"orderedAt": "2026-01-01T00:00:00Z", "taskStatus": "accepted",
                               "target": f"{url}|acct1|resource|res2"}}  # fmt: skip
    ban = {"endpoint": url, "username": USER, "bannedUntil": 4102444800.0, "recentRefusals": [4102444800.0] * 5}
    for kind, name, patch in (
        ("leorder", "squat", forged_order),
        ("cdncertificate", "banner", {"status": {"cdnLogin": ban}}),
    ):
        arena.kube.kubectl("patch", kind, name, "-n", b, "--subresource=status", "--type=merge", "-p",
                           json.dumps(patch), kubeconfig=tenant)  # fmt: skip
    arena.restart()
    calls = ready_in_time(arena, "leorder", le_order("order", url, "res1"), arena.cdn)
    assert calls.count("POST /app/ssl/v1/account/{account}/letsencrypt/{resource}/") == 1, calls
    calls = ready_in_time(
        arena,
        "cdncertificate",
        cdn_cert("shop-banned", url, secretName=arena.fresh_tls("shop-banned-tls")),
        arena.cdn,
    )
    assert arena.ready("cdncertificate", "shop-banned", arena.victim).get("reason") == "Synced"


def test_seq_and_deployment_squatting_by_older_resources_take_nothing(arena: Arena) -> None:
    """Older resources of B name the seqs A's next certificates get, and A's EMQX deployment, with credentials
    that do not work: A's new resources are Ready, stay Ready when looked at again, and after a restart."""
    b, cdn_url, emqx_url = arena.attacker, arena.cdn.url, arena.emqx.url
    arena.secrets |= {"seq-token-Sx12", "junk-api-secret-Js48"}
    arena.apply(b, creds_secret("seq-creds", token="seq-token-Sx12"),
                creds_secret("emqx-creds", apiKey="junk-key", apiSecret="junk-api-secret-Js48"))  # fmt: skip
    arena.apply(b, *(cdn_cert(f"seq-{n}", cdn_url, "seq-creds", seq=n) for n in range(1, 11)),
                dtls("dep-squat", emqx_url))  # fmt: skip
    squatters = [("cdncertificate", f"seq-{n}") for n in range(1, 11)] + [("deploymenttls", "dep-squat")]
    wait_until("the squatters' passes", lambda: all(arena.ready(k, n, b).get("reason") not in (None, "Progressing")
                                                    for k, n in squatters), 60)  # fmt: skip
    calls = ready_in_time(
        arena,
        "cdncertificate",
        cdn_cert("shop-seq", cdn_url, secretName=arena.fresh_tls("shop-seq-tls")),
        arena.cdn,
    )
    assert calls.count(ADD) == 1, calls
    calls = ready_in_time(arena, "deploymenttls", dtls("broker", emqx_url), arena.emqx)
    assert calls.count(f"POST {TLS}") == 1 and f"PUT {TLS}" not in calls, calls
    running = arena.restart()
    wait_until("passes after the restart", lambda: reconcile_passes(running.metrics_url) >= 5, 30)
    arena.kube.kubectl("annotate", "cdncertificate/shop-seq", "deploymenttls/broker", "-n", arena.victim,
                       "--overwrite", f"certsync.io/requested-at=look-{time.monotonic()}")  # fmt: skip
    passes = reconcile_passes(running.metrics_url)
    wait_until("the requested passes", lambda: reconcile_passes(running.metrics_url) >= passes + 2, DEADLINE_S)
    for kind, name in (("cdncertificate", "shop-seq"), ("deploymenttls", "broker")):
        wait_until(f"{name} Ready after the restart",
                   lambda k=kind, n=name: arena.ready(k, n, arena.victim).get("status") == "True", DEADLINE_S)  # type: ignore[misc]  # fmt: skip


def test_no_secret_and_no_attacker_name_reached_the_victim_or_anywhere(arena: Arena) -> None:
    a, b = arena.victim, arena.attacker
    texts = [arena.log.read_text(errors="replace")]
    for namespace in (a, b):
        for kind in ("cdncertificates", "letsencryptorders", "deploymenttlses"):
            texts.append(arena.kube.kubectl("get", kind, "-n", namespace, "-o", "json").stdout)
        texts.append(json.dumps(events(arena.kube, namespace)))
    assert hits("\n".join(texts), arena.secrets) == []
    victim = "\n".join(arena.kube.kubectl("get", k, "-n", a, "-o", "json").stdout
                       for k in ("cdncertificates", "letsencryptorders", "deploymenttlses"))  # fmt: skip
    assert b not in victim and b not in json.dumps(events(arena.kube, a))
