"""README.md's commands work as written: every ```sh block's commands and every inline `kubectl ...`/`helm ...`
command are either executed here, on a control plane of their own, or name the test elsewhere that runs them
(COMMANDS); a README command that is in neither fails `test_every_readme_command_is_run_or_covered`. So are the
YAML blocks (YAML_BLOCKS) and examples/ (applied by the README's own commands, accepted by the CRDs' validation).

What the executed commands get instead of the README's text is listed in SUBSTITUTIONS and SETUP, and nothing else
is changed: the README's install commands name `certsync-system`, the release `certsync` and cluster-wide objects,
and uninstall them, so they run on a fresh control plane per test, not on the session's shared one."""

from __future__ import annotations

import ast
import base64
import json
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from certsync import settings
from certsync.reconcile import deadlines

from devkit import controlplane
from devkit.factory import three_level
from devkit.kube import REPO, Kube
from devkit.processes import EmulatorProcess, emulator, operator, wait_for
from devkit.release import find, helm, tool

README = REPO / "README.md"
HERE = "tests/test_readme.py"
EXAMPLES = REPO / "examples"


@dataclass(frozen=True)
class Where:
    """Who runs a README command: `test` is "path::function" (or a path alone for CI's entry point); `evidence`
    are (file, text) pairs that tie the command to it; a `fragment` names a command inside a sentence."""

    test: str
    evidence: tuple[tuple[str, str], ...] = ()
    fragment: bool = False


HELM_FLOW = f"{HERE}::test_helm_install_then_examples_upgrade_uninstall_and_crd_removal"
KUSTOMIZE_FLOW = f"{HERE}::test_kustomize_install_upgrade_and_uninstall"

# Every README command, by the longest of these prefixes it starts with.
COMMANDS: dict[str, Where] = {
    "hack/demo": Where(
        "tests/test_demo.py::test_demo_reaches_ready_and_cleans_up",
        (("tests/test_demo.py", '"-m", "devkit.demo"'), ("hack/demo", "exec python3 -m devkit.demo")),
    ),
    "hack/test": Where(".ci/run", ((".ci/run", "exec hack/test"),)),  # CI's entry point: the suite cannot run itself
    "hack/image build": Where(
        "tests/test_e2e_image.py::image", (("tests/test_e2e_image.py", '[str(IMAGE_TOOL), "build"]'),)
    ),
    "hack/image exec": Where(
        "tests/test_e2e_image.py::test_image_runs_as_non_root_without_development_code_and_is_small",
        (("tests/test_e2e_image.py", 'inside("exec", "--", "id", "-u")'),),
    ),
    "hack/image run": Where(
        "tests/test_e2e_image.py::test_image_runs_as_non_root_without_development_code_and_is_small",
        (("tests/test_e2e_image.py", 'inside("run", "--", "check", "--help")'),),
    ),
    "kubectl auth can-i --list": Where(
        "tests/test_e2e_rbac.py::test_cluster_wide_install_grants_exactly_what_is_used",
        (("tests/test_e2e_rbac.py", '"auth", "can-i", "--list"'),),
    ),
    "python -m emulators": Where(f"{HERE}::test_emulator_command_lines_serve_and_stop"),
    "helm version": Where(f"{HERE}::test_helm_version_is_the_one_the_readme_names"),
    "kubectl -n argocd patch configmap argocd-cm": Where(f"{HERE}::test_argocd_patch_merges_the_health_checks"),
    "helm install certsync": Where(HELM_FLOW),
    "kubectl apply -f examples/": Where(HELM_FLOW),
    "kubectl wait --for=condition=Ready": Where(HELM_FLOW, fragment=True),  # the Conditions section's mention
    "kubectl wait --for=condition=Ready deploymenttls": Where(HELM_FLOW),
    "kubectl -n certsync-system get lease": Where(HELM_FLOW),
    "helm upgrade certsync": Where(HELM_FLOW),
    "helm uninstall certsync": Where(HELM_FLOW),
    "kubectl delete -f crds/": Where(HELM_FLOW),
    "kubectl patch dtls": Where(HELM_FLOW),
    "kubectl apply -f crds/": Where(KUSTOMIZE_FLOW),
    "kubectl wait --for=condition=Established": Where(KUSTOMIZE_FLOW),
    "kubectl apply -k deploy/": Where(KUSTOMIZE_FLOW),
    "kubectl apply -k deploy/overlays/single-namespace": Where(KUSTOMIZE_FLOW),
    "kubectl delete -k deploy/": Where(KUSTOMIZE_FLOW),
    "certsync version": Where(
        "tests/test_cli_version.py::test_version_prints_the_version_commit_python_and_kopf",
        (("tests/test_cli_version.py", 'certsync("version"'),),
    ),
    "certsync --version": Where(
        "tests/test_cli_version.py::test_dash_dash_version_is_one_line_with_the_same_facts",
        (("tests/test_cli_version.py", 'certsync("--version"'),),
    ),
    "hack/image run -- version": Where(
        "tests/test_release.py::test_the_image_reports_the_commit_it_was_built_from",
        (("tests/test_release.py", '"run", "--", "version"'),),
    ),
    "helm package": Where(  # a mention: hack/release runs it
        "tests/test_release.py::test_the_packaged_chart_carries_the_version",
        (("hack/release", 'helm package "$chart"'),),
        fragment=True,
    ),
    "kubectl explain": Where(
        "tests/test_e2e_status_schema.py::test_kubectl_explain_prints_each_status_fields_description",
        (("tests/test_e2e_status_schema.py", 'kube.kubectl("explain", field'),),
    ),
    "kubectl get events": Where(
        "tests/test_e2e_events.py::test_the_same_event_three_times_is_one_event_counted_three_times",
        (("tests/test_e2e_events.py", 'cluster.kubectl("get", "events"'),),
        fragment=True,
    ),
    "kubectl describe": Where(  # a mention: describe shows the Events that test reads
        "tests/test_e2e_events.py::test_the_same_event_three_times_is_one_event_counted_three_times",
        (("tests/test_e2e_events.py", 'cluster.kubectl("get", "events"'),),
        fragment=True,
    ),
}

# The YAML blocks of the README (some are fragments without a kind), by a text each contains.
YAML_BLOCKS: dict[str, Where] = {
    "kind: Kustomization": Where(f"{HERE}::test_flux_example_waits_for_an_example_resource"),
    "healthCheckExprs:": Where(f"{HERE}::test_flux_health_check_expressions_name_the_crds_conditions"),
    "kind: ClusterRemoteAccount": Where(f"{HERE}::test_the_account_example_is_accepted_by_the_crds"),
    "bindTo: [res1, res2]": Where(f"{HERE}::test_the_bound_certificate_example_is_accepted_by_the_crds"),
    "renewBefore: 1608h": Where(f"{HERE}::test_the_cert_manager_example_renews_before_the_push_deadline"),
}
# Sample output: the test that prints it compares it with the README's block.
TEXT_BLOCKS: dict[str, Where] = {
    "NAME                   READY": Where("tests/test_cli_status.py::test_the_readmes_sample_is_what_status_prints"),
}

# README text that a test replaces, by name: (the README's text, what runs instead and why). Only these are replaced,
# only where a test names them (`substitute`).
SUBSTITUTIONS: dict[str, tuple[str, str]] = {
    "placeholders": ("NAME -n NS", "each example's name and namespace (the README's placeholders)"),
    "kind": ("kubectl patch dtls", "kubectl patch cdncert / leorder: the other kinds (`cdncert` and `leorder` alike)"),
    "delete_deploy": ("kubectl delete -k deploy/", "the same with --wait=false: without a kube-controller-manager "
                      "here the deleted namespace certsync-system stays Terminating, and kubectl would wait for ever"),
    "python": ("python -m emulators", "this interpreter's -m emulators (`python` may not be on PATH)"),
    "emqx_port": ("--port 8081", "--port 0, a free port (8081 may be taken)"),
    "cdn_port": ("--port 8082", "--port 0, a free port (8082 may be taken)"),
    "open": ("[", "nothing: the optional flags are given"),
    "close": ("]", "nothing"),
    "root": ("root.pem", "a root CA made by the test"),
    "values_file": ("my-values.yaml", "a file with the values the README's install set (`helm get values`)"),
}  # fmt: skip

# What the commands run with besides their text (no substitution of it):
# - KUBECONFIG: the fresh control plane's admin kubeconfig (the README assumes your current context);
# - PATH: kubectl and helm as this repository builds them (hack/controlplane, hack/tools), then /usr/bin:/bin;
#   HOME and HELM_*_HOME: the test's own directory;
# - no kubelet: the operator runs as a process with the chart's ServiceAccount token and its Deployment's env;
# - the examples' spec.endpoint is patched to the emulators after the README's `kubectl apply` (no test calls a
#   real provider; an endpoint may change, says Concepts), and the operator's allowlist gets the emulators added:
#   the README's own allowlist is checked against every endpoint of examples/ as it is;
# - the examples' credentials stay: the emulators take the placeholders as their credentials;
# - the Secret mqtt-example-tls is made by the test, as cert-manager would (examples/cert-manager/ needs it).


@dataclass(frozen=True)
class Command:
    text: str
    section: str
    inline: bool


def _blocks() -> Iterator[tuple[str, str, str]]:
    """(language, body, section) of each fenced block, indented ones (inside list items) included."""
    section = ""
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        fence = re.match(r"^( *)```(\w*)$", line)
        if fence:
            indent, language = fence.groups()
            end = lines.index(indent + "```", i + 1)
            yield language, textwrap.dedent("\n".join(lines[i + 1 : end])), section
            i = end
        i += 1


def _prose() -> Iterator[tuple[str, str]]:
    """(paragraph text, section) outside fenced blocks."""
    section, inside = "", False
    text: list[str] = []
    for line in README.read_text().splitlines():
        if re.match(r"^ *```", line):
            inside = not inside
            continue
        if inside:
            continue
        if line.startswith("#"):
            yield " ".join(text), section
            section, text = line.lstrip("#").strip(), []
        else:
            text.append(line.strip())
    yield " ".join(text), section


def sh_commands(body: str) -> list[str]:
    """The commands of a sh block: continuation lines joined, comments dropped."""
    commands: list[str] = []
    pending = ""
    for line in body.splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        command = re.sub(r"\s+#\s.*$", "", pending + line).strip()
        pending = ""
        if command:
            commands.append(re.sub(r"\s+", " ", command))
    return commands


def readme_commands() -> list[Command]:
    found: list[Command] = []
    for language, body, section in _blocks():
        if language == "sh":
            found += [Command(c, section, False) for c in sh_commands(body)]
    for text, section in _prose():
        for span in re.findall(r"`([^`]+)`", text):
            if re.match(r"(kubectl|helm) [a-z-]", span):
                found.append(Command(re.sub(r"\s+", " ", span), section, True))
    return found


def classify(command: str) -> str | None:
    matches = [p for p in COMMANDS if command.startswith(p)]
    return max(matches, key=len) if matches else None


def readme(prefix: str) -> list[str]:
    """The README's distinct command lines classified under `prefix`, in the README's order."""
    assert prefix in COMMANDS
    seen: dict[str, None] = {}
    for command in readme_commands():
        if classify(command.text) == prefix and not COMMANDS[prefix].fragment:
            seen[command.text] = None
    assert seen, f"the README has no command {prefix!r} any more: update COMMANDS"
    return list(seen)


def one(prefix: str) -> str:
    texts = readme(prefix)
    assert len(texts) == 1, f"expected one README command {prefix!r}, found {texts}"
    return texts[0]


def substitute(text: str, values: dict[str, str] | None = None) -> str:
    """`text` with SUBSTITUTIONS applied: `values` maps a substitution's name to what replaces its README text."""
    for key, value in (values or {}).items():
        original = SUBSTITUTIONS[key][0]
        assert original in text, (original, text)
        text = text.replace(original, value)
    return text


# --- every command is run or covered -------------------------------------------------------------------------------


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_readme_command_is_run_or_covered() -> None:
    commands = readme_commands()
    assert len([c for c in commands if not c.inline]) >= 10  # the parser finds the blocks (it can fail)
    unclassified = sorted({f"{c.text} (in {c.section})" for c in commands if classify(c.text) is None})
    assert not unclassified, f"README commands that no test runs (add them to COMMANDS with their test): {unclassified}"
    used = {classify(c.text) for c in commands}
    assert set(COMMANDS) <= used, f"COMMANDS lists what the README no longer says: {sorted(set(COMMANDS) - used)}"
    for where in [*COMMANDS.values(), *YAML_BLOCKS.values(), *TEXT_BLOCKS.values()]:
        path, _, function = where.test.partition("::")
        assert (REPO / path).is_file(), where
        assert not function or function in _functions(REPO / path), f"{where.test} does not exist"
        for file, text in where.evidence:
            assert text in (REPO / file).read_text(), f"{file} no longer contains {text!r} ({where.test})"
    marked = {"yaml": YAML_BLOCKS, "text": TEXT_BLOCKS}
    languages = {language for language, _, _ in _blocks()}
    assert languages <= {"sh", *marked}, f"blocks of another language need a test here: {languages}"
    for language, entries in marked.items():
        bodies = [body for kind, body, _ in _blocks() if kind == language]
        for body in bodies:
            if language == "yaml":
                assert all(yaml.safe_load_all(body)), body  # parses (one document or several)
            markers = [marker for marker in entries if marker in body]
            assert len(markers) == 1, f"a {language} block needs one entry (found {markers}):\n{body}"
        stale = [marker for marker in entries if not any(marker in body for body in bodies)]
        assert not stale, f"the {language} blocks' entries list what the README no longer has: {stale}"


def test_examples_agree_with_each_other() -> None:
    """examples/ is one namespace's worth: every object in examples/namespace.yaml's namespace, every file applied
    by the README's commands (cert-manager's excepted), and the Certificate writes the Secret the others read."""
    [namespace] = list(yaml.safe_load_all((EXAMPLES / "namespace.yaml").read_text()))
    docs = {path: [d for d in yaml.safe_load_all(path.read_text()) if d] for path in sorted(EXAMPLES.rglob("*.yaml"))}
    namespaced = [d for path, ds in docs.items() for d in ds if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {namespace["metadata"]["name"]}
    applied = " ".join(readme("kubectl apply -f examples/"))
    for path in docs:
        relative = path.relative_to(REPO)
        if len(relative.parts) == 2:
            assert str(relative) in applied.split(), f"the README does not apply {relative}"
        elif relative.parts[1] != "cert-manager":
            assert f"{relative.parent}/" in applied.split(), f"the README does not apply {relative.parent}/"
    [certificate] = docs[EXAMPLES / "cert-manager" / "certificate.yaml"]
    consumers = {d["spec"]["secretName"] for d in namespaced if "secretName" in d.get("spec", {})}
    assert consumers == {certificate["spec"]["secretName"]}
    hours = {k: int(certificate["spec"][k].removesuffix("h")) for k in ("duration", "renewBefore")}
    assert timedelta(days=60) < timedelta(hours=hours["renewBefore"]) < timedelta(hours=hours["duration"])


def test_flux_health_check_expressions_name_the_crds_conditions() -> None:
    """Flux's CEL is not run here (no Flux): the fragment parses, names a kind of the CRDs with their group and
    version, and its expressions ask for the conditions the operator writes (Ready for the current generation)."""
    [body] = [b for language, b, _ in _blocks() if language == "yaml" and "healthCheckExprs:" in b]
    [expression] = yaml.safe_load(body)["spec"]["healthCheckExprs"]
    crds = [yaml.safe_load(path.read_text()) for path in sorted((REPO / "crds").glob("*.yaml"))]
    kinds = {
        (f"{c['spec']['group']}/{v['name']}", c["spec"]["names"]["kind"]) for c in crds for v in c["spec"]["versions"]
    }
    assert (expression["apiVersion"], expression["kind"]) in kinds
    assert (
        "c.type == 'Ready'" in expression["current"]
        and "observedGeneration == metadata.generation" in expression["current"]
    )
    assert "c.type == 'Stalled'" in expression["failed"]


def test_flux_example_waits_for_an_example_resource() -> None:
    """The Flux block is Flux's kind (its schema is not vendored here): it parses, waits, and the health check it
    offers in its comment names an object of examples/."""
    [body] = [b for language, b, _ in _blocks() if language == "yaml" and "kustomize.toolkit.fluxcd.io" in b]
    kustomization = yaml.safe_load(body)
    assert kustomization["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1" and kustomization["spec"]["wait"] is True
    match = re.search(r"healthChecks: (\[.*\])", body)
    assert match
    [check] = yaml.safe_load(match.group(1))
    objects = [d for p in EXAMPLES.rglob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d]
    assert any(
        (d["apiVersion"], d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
        == (check["apiVersion"], check["kind"], check["name"], check["namespace"])
        for d in objects
    ), check


def test_the_account_example_is_accepted_by_the_crds(kube: Kube, namespace: str) -> None:
    """The ClusterRemoteAccount block, as the API server's validation (CEL included) sees it; the tenant's
    resource goes to this test's namespace instead of `mqtt`."""
    [body] = [b for language, b, _ in _blocks() if language == "yaml" and "kind: ClusterRemoteAccount" in b]
    documents = [d for d in yaml.safe_load_all(body) if d]
    assert [d["kind"] for d in documents] == ["ClusterRemoteAccount", "DeploymentTLS"]
    documents[1]["metadata"]["namespace"] = namespace
    documents[0]["metadata"]["name"] = f"emqx-prod-{namespace}"
    documents[1]["spec"]["accountRef"]["name"] = documents[0]["metadata"]["name"]
    answer = kube.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}),
    )
    assert answer.returncode == 0, answer.stderr


def test_the_bound_certificate_example_is_accepted_by_the_crds(kube: Kube, namespace: str) -> None:
    """The bindTo block, as the API server's validation sees it (in this test's namespace instead of `demo`)."""
    [body] = [b for language, b, _ in _blocks() if language == "yaml" and "bindTo: [res1, res2]" in b]
    [document] = [d for d in yaml.safe_load_all(body) if d]
    assert document["kind"] == "CdnCertificate" and document["spec"]["bindTo"] == ["res1", "res2"]
    document["metadata"]["namespace"] = namespace
    answer = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(document))
    assert answer.returncode == 0, answer.stderr


def test_the_cert_manager_example_renews_before_the_push_deadline() -> None:
    """The README's Certificate renews (duration - renewBefore after issuance) at least a week before EMQX Cloud
    stops taking it (60 days before notAfter), and the table's 90-day row says the same."""
    [body] = [b for language, b, _ in _blocks() if language == "yaml" and "renewBefore: 1608h" in b]
    [certificate] = [d for d in yaml.safe_load_all(body) if d]
    assert certificate["kind"] == "Certificate"
    duration = settings.parse_duration(certificate["spec"]["duration"])
    renew_before = settings.parse_duration(certificate["spec"]["renewBefore"])
    renewal, deadline = duration - renew_before, duration - deadlines.REFUSAL_WINDOW.total_seconds()
    assert renewal <= deadline - deadlines.RENEWAL_MARGIN.total_seconds(), (renewal, deadline)
    assert "| 90 days | Let's Encrypt today | 30 days |" in README.read_text()


# --- the commands, executed ----------------------------------------------------------------------------------------


@dataclass
class Shell:
    """Runs README command lines with bash in the repository's root, and records which it ran (by README text)."""

    env: dict[str, str]
    ran: set[str] = field(default_factory=set)

    def __call__(
        self, readme_text: str, substitutions: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", substitute(readme_text, substitutions)],
                                cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)  # fmt: skip
        assert result.returncode == 0, f"{readme_text}\nexited {result.returncode}: {result.stderr[-3000:]}"
        self.ran.add(readme_text)
        return result

    def start(self, readme_text: str) -> subprocess.Popen[str]:
        self.ran.add(readme_text)
        return subprocess.Popen(["bash", "-euo", "pipefail", "-c", readme_text], cwd=REPO, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    def ran_all(self, test: str) -> None:
        """Every README command COMMANDS gives to `test` was run by it: a new line of a block it owns fails it."""
        mine = {p for p, where in COMMANDS.items() if where.test == test and not where.fragment}
        expected = {text for prefix in mine for text in readme(prefix)}
        assert expected <= self.ran, f"{test} did not run {sorted(expected - self.ran)}"


def shell_for(kubeconfig: Path, kubectl: Path | None, home: Path) -> Shell:
    """A Shell whose PATH has this repository's helm (and kubectl, when given) and whose kubeconfig is `kubeconfig`."""
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    if kubectl:
        (bin_dir / "kubectl").symlink_to(kubectl)
    (bin_dir / "helm").symlink_to(tool("helm"))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "KUBECONFIG": str(kubeconfig)}
    env |= {f"HELM_{part}_HOME": str(home / "helm" / part.lower()) for part in ("CACHE", "CONFIG", "DATA")}
    return Shell(env)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Kube]:
    """A control plane of this test's own, without CRDs: the README's commands install everything themselves."""
    plane = controlplane.start(tmp_path / "controlplane", tied_to_parent=True)
    try:
        yield Kube(plane.kubectl, plane.kubeconfig, plane.server, tmp_path / "controlplane" / "pki" / "ca.crt", plane)
    finally:
        plane.stop()


def example_objects() -> list[dict[str, Any]]:
    return [d for p in sorted(EXAMPLES.rglob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


CERTSYNC_KINDS = {"DeploymentTLS": "dtls", "CdnCertificate": "cdncert", "LetsEncryptOrder": "leorder"}


def string_data(name: str) -> dict[str, str]:
    [secret] = [d for d in example_objects() if d["kind"] == "Secret" and d["metadata"]["name"] == name]
    return secret["stringData"]  # type: ignore[no-any-return]


@pytest.mark.e2e
def test_helm_install_then_examples_upgrade_uninstall_and_crd_removal(fresh: Kube, tmp_path: Path) -> None:
    shell = shell_for(fresh.kubeconfig, fresh.kubectl_path, tmp_path / "home")
    shell(one("helm install certsync"))
    rendered = helm("get", "manifest", "certsync", "-n", "certsync-system", kubeconfig=fresh.kubeconfig).stdout
    manifest = [d for d in yaml.safe_load_all(rendered) if d]
    [deployment] = find(manifest, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/certsync:0.1.0"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    fresh.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")  # the chart installed them
    assert len(fresh.kubectl("get", "crd", "-o", "name").stdout.split()) == 4  # the ClusterRemoteAccount among them
    fresh.kubectl("get", "deployment/certsync", "serviceaccount/certsync", "-n", "certsync-system")

    # The README's allowlist, as the chart rendered it, allows every endpoint of examples/ (and nothing else).
    allowlist = settings.load([], environ=env)
    endpoints = {d["spec"]["endpoint"] for d in example_objects() if d["kind"] in CERTSYNC_KINDS}
    assert endpoints and all(allowlist.endpoint_allowed(e) for e in endpoints), (
        env["CERTSYNC_ALLOWED_ENDPOINTS"],
        endpoints,
    )
    assert not allowlist.endpoint_allowed("https://api.cdnvideo.ru")

    [wait] = readme("kubectl wait --for=condition=Ready deploymenttls")
    for command in readme("kubectl apply -f examples/"):
        shell(command)  # accepted by the CRDs' validation, in the namespace demo
    resources = [d for d in example_objects() if d["kind"] in CERTSYNC_KINDS]
    assert len(resources) == 4

    chain = three_level("www.shop.example")
    (tmp_path / "root.pem").write_bytes(chain.root.cert_pem)
    emqx_key, cdn_login = string_data("emqx-platform-key"), string_data("cdn-api")
    [dtls] = [d for d in resources if d["kind"] == "DeploymentTLS"]
    [account] = {d["spec"]["account"] for d in resources if "account" in d["spec"]}
    [resource_id] = [d["spec"]["resourceId"] for d in resources if "resourceId" in d["spec"]]
    with (
        emulator("emqx", "--api-key", emqx_key["apiKey"], "--api-secret", emqx_key["apiSecret"],
                 "--deployment", dtls["spec"]["deploymentId"], "--pending-seconds", "1") as emqx,
        emulator("cdn", "--account", account, "--username", cdn_login["username"], "--password",
                 cdn_login["password"], "--resource", f"{resource_id}=www.shop.example", "--pending-seconds", "1",
                 "--trusted-ca", str(tmp_path / "root.pem")) as cdn,
    ):  # fmt: skip
        for d in resources:  # SETUP: the endpoints, moved to the emulators (an endpoint may change, says Concepts)
            url = emqx.url if d["kind"] == "DeploymentTLS" else cdn.url
            fresh.kubectl("patch", CERTSYNC_KINDS[d["kind"]], d["metadata"]["name"], "-n", d["metadata"]["namespace"],
                          "--type", "merge", "-p", json.dumps({"spec": {"endpoint": url}}))  # fmt: skip
        fresh.apply({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                     "metadata": {"name": dtls["spec"]["secretName"], "namespace": dtls["metadata"]["namespace"]},
                     "data": {"tls.crt": base64.b64encode(chain.pem).decode(),
                              "tls.key": base64.b64encode(chain.leaf.key_pem()).decode()}})  # fmt: skip
        token = fresh.kubectl("create", "token", "certsync", "-n", "certsync-system", "--duration", "1h").stdout.strip()
        sa = controlplane.kubeconfig(
            fresh.server, fresh.ca, {"token": token}, tmp_path / "sa.kubeconfig", "certsync-system"
        )
        run_env = env | {"CERTSYNC_ALLOWED_ENDPOINTS": f"{env['CERTSYNC_ALLOWED_ENDPOINTS']},{emqx.url}/,{cdn.url}/"}
        with operator(sa, tmp_path / "operator.log", settings=run_env):
            shell(wait, timeout=330)
            assert "certsync-leader" in shell(one("kubectl -n certsync-system get lease")).stdout
        assert_no_deletes(emqx, cdn)

        upgrade_command = one("helm upgrade certsync")
        values = tmp_path / "my-values.yaml"  # "your values kept in a file": the ones the install set
        values.write_text(helm("get", "values", "certsync", "-n", "certsync-system", "-o", "yaml",
                               kubeconfig=fresh.kubeconfig).stdout)  # fmt: skip
        subs = {"values_file": str(values)} if SUBSTITUTIONS["values_file"][0] in upgrade_command else {}
        upgrade = shell(upgrade_command, subs)
        assert "REVISION: 2" in upgrade.stdout, upgrade.stdout
        upgraded = json.loads(fresh.kubectl("get", "deployment/certsync", "-n", "certsync-system", "-o", "json").stdout)
        kept = {e["name"]: e.get("value") for e in upgraded["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert kept["CERTSYNC_ALLOWED_ENDPOINTS"] == env["CERTSYNC_ALLOWED_ENDPOINTS"]  # the upgrade kept the values

        shell(one("helm uninstall certsync"))
        assert fresh.kubectl("get", "serviceaccount/certsync", "-n", "certsync-system", check=False).returncode != 0
        assert len(fresh.kubectl("get", "crd", "-o", "name").stdout.split()) == 4  # kept
        names = fresh.kubectl("get", "dtls,cdncert,leorder", "-n", "demo", "-o", "name").stdout.split()
        assert len(names) == 4, names

        # Removing the CRDs: the finalizers hold the resources (no operator runs) until the README's patch.
        deleting = shell.start(one("kubectl delete -f crds/"))
        try:
            wait_for("the resources to be Terminating", lambda: all(
                json.loads(fresh.kubectl("get", CERTSYNC_KINDS[d["kind"]], d["metadata"]["name"], "-n", "demo",
                                         "-o", "json").stdout)["metadata"].get("deletionTimestamp")
                for d in resources))  # fmt: skip
            assert deleting.poll() is None  # still waiting on the finalizers
            patch = one("kubectl patch dtls")
            for d in resources:
                name, namespace = d["metadata"]["name"], d["metadata"]["namespace"]
                shell(
                    patch,
                    {"kind": f"kubectl patch {CERTSYNC_KINDS[d['kind']]}", "placeholders": f"{name} -n {namespace}"},
                )
            _, errors = deleting.communicate(timeout=60)
            assert deleting.returncode == 0, errors
        finally:
            if deleting.poll() is None:
                deleting.kill()
                deleting.communicate()
        assert fresh.kubectl("get", "crd", "-o", "name").stdout.split() == []
        assert_no_deletes(emqx, cdn)  # the remote certificates stay, whatever the deletionPolicy
    shell.ran_all(HELM_FLOW)


def assert_no_deletes(*remotes: EmulatorProcess) -> None:
    for remote in remotes:
        assert remote.writes(), "the examples were written to the emulators"
        assert not [c for c in remote.writes() if c["method"] == "DELETE"], remote.writes()


@pytest.mark.e2e
def test_kustomize_install_upgrade_and_uninstall(fresh: Kube, tmp_path: Path) -> None:
    shell = shell_for(fresh.kubeconfig, fresh.kubectl_path, tmp_path / "home")
    [block] = [sh_commands(body) for language, body, _ in _blocks() if language == "sh" and "kubectl apply -k" in body]
    assert [classify(c) for c in block] == [
        "kubectl apply -f crds/", "kubectl wait --for=condition=Established", "kubectl apply -k deploy/",
        "kubectl apply -f examples/", "kubectl apply -k deploy/overlays/single-namespace",
    ], block  # fmt: skip
    for command in block:  # in the README's order on a cluster without CRDs: the overlay after deploy/
        shell(command)
    crds = json.loads(fresh.kubectl("get", "crd", "-o", "json").stdout)["items"]
    assert len(crds) == 4 and all(
        any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"]) for crd in crds
    )
    fresh.kubectl("get", "clusterrole/certsync", "clusterrolebinding/certsync")
    [watched] = [d for d in example_objects() if d["kind"] == "Namespace"]
    demo = watched["metadata"]["name"]
    fresh.kubectl("get", "role/certsync", "rolebinding/certsync", "-n", demo)  # the overlay's, in its namespace
    deployment = json.loads(fresh.kubectl("get", "deployment/certsync", "-n", "certsync-system", "-o", "json").stdout)
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CERTSYNC_NAMESPACES"] == demo  # the overlay, applied last, watches the examples' namespace
    assert deployment["spec"]["replicas"] == 2

    # The upgrade: the Upgrade section's kustomize line, CRDs first.
    for command in readme("kubectl apply -f crds/") + readme("kubectl apply -k deploy/"):
        shell(command)

    [uninstall] = readme("kubectl delete -k deploy/")
    shell(uninstall, {"delete_deploy": "kubectl delete -k deploy/ --wait=false"})
    for name in ("clusterrole/certsync", "clusterrolebinding/certsync"):
        assert fresh.kubectl("get", name, check=False).returncode != 0, name
    assert fresh.kubectl("get", "deployment/certsync", "-n", "certsync-system", check=False).returncode != 0
    assert len(fresh.kubectl("get", "crd", "-o", "name").stdout.split()) == 4  # the CRDs stay
    shell.ran_all(KUSTOMIZE_FLOW)


@pytest.mark.e2e
def test_argocd_patch_merges_the_health_checks(kube: Kube, tmp_path: Path) -> None:
    """The GitOps section's patch on an argocd-cm as Argo CD installs it: the three health checks are added and the
    ConfigMap's other keys stay."""
    kube.kubectl("create", "namespace", "argocd", check=False)
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "argocd-cm", "namespace": "argocd"},
                "data": {"url": "https://argocd.example.com"}})  # fmt: skip
    shell = shell_for(kube.kubeconfig, kube.kubectl_path, tmp_path / "home")
    shell(one("kubectl -n argocd patch configmap argocd-cm"))
    data = json.loads(kube.kubectl("get", "configmap", "argocd-cm", "-n", "argocd", "-o", "json").stdout)["data"]
    wanted = yaml.safe_load((REPO / "deploy" / "argocd" / "argocd-cm.yaml").read_text())["data"]
    assert data == {"url": "https://argocd.example.com", **wanted}
    assert len(wanted) == 3
    shell.ran_all(f"{HERE}::test_argocd_patch_merges_the_health_checks")


def test_helm_version_is_the_one_the_readme_names(tmp_path: Path) -> None:
    shell = shell_for(tmp_path / "none.kubeconfig", None, tmp_path / "home")  # `helm version` asks no cluster
    match = re.search(r"builds helm (v[0-9.]+)", README.read_text())
    assert match
    out = shell(one("helm version")).stdout
    assert f'Version:"{match.group(1)}"' in out, out
    shell.ran_all(f"{HERE}::test_helm_version_is_the_one_the_readme_names")


def test_emulator_command_lines_serve_and_stop(tmp_path: Path) -> None:
    """Each README emulator line, with a free port and its optional flags given, prints its URL, serves with the
    README's flags (the dialects it names are the ones it reports) and stops on SIGTERM."""
    (tmp_path / "root.pem").write_bytes(three_level("www.example.com").root.cert_pem)
    for line in readme("python -m emulators"):
        values = {"python": f"{sys.executable} -m emulators", "open": "", "close": ""}
        values |= {key: "--port 0" for key in ("emqx_port", "cdn_port") if SUBSTITUTIONS[key][0] in line}
        if "root.pem" in line:
            values["root"] = str(tmp_path / "root.pem")
        args = shlex.split(substitute(line, {k: v for k, v in values.items() if SUBSTITUTIONS[k][0] in line}))
        process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None
            first = process.stdout.readline().strip()
            assert first.startswith("listening on http://127.0.0.1:"), (line, first, process.stderr)
            config = httpx.get(first.removeprefix("listening on ") + "/_emulator/config", timeout=10).json()
            assert config["dialects"] == sorted(args[i + 1] for i, arg in enumerate(args) if arg == "--dialect")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()
