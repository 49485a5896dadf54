"""Command line: `certsync run` (the operator, also `python -m certsync`), `certsync check`, `certsync status`,
`certsync version`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime as dt
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import yaml
from aiohttp import web

from certsync import logs, pki, remote
from certsync import reconcile as rc
from certsync import settings as settings_module
from certsync import version as version_module
from certsync.budget import RateBudget
from certsync.metrics import Metrics

if TYPE_CHECKING:
    from certsync.leader import Elector

log = logging.getLogger("certsync")


def run_operator(argv: Sequence[str]) -> int:
    try:
        config = settings_module.load(argv)
    except settings_module.SettingsError as error:
        print(f"certsync: {error}", file=sys.stderr)
        return 2
    import kopf

    from certsync import handlers  # noqa: F401  (registers the handlers)

    logs.configure(config.log_format, config.log_level)
    return asyncio.run(
        _operate(
            config,
            kopf.Memo(
                settings=config, budget=RateBudget(), metrics=Metrics(resource_labels=config.metrics_resource_labels)
            ),
        )
    )


async def _operate(config: settings_module.Settings, memo: Any) -> int:
    """Stand by until this replica leads (Lease), then run kopf until stopped; exit at once when leadership is lost.

    Exit codes: 0 after a clean stop (SIGTERM: kopf finishes, then the Lease is released), 1 when the
    operator failed or leadership was lost (the process ends without waiting for anything: the pod restarts
    and stands by)."""
    import kopf
    import kubernetes

    from certsync import leader

    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    _size_kube_threads(asyncio.get_running_loop())
    metrics: Metrics = memo["metrics"]
    # Health and metrics are served from the start, also while a replica stands by.
    server = web.AppRunner(metrics.app(memo["budget"]), access_log=None)
    await server.setup()
    # In a pod the kubelet's probes and Prometheus come from outside: 0.0.0.0 by default (settings.py).
    await web.TCPSite(server, config.metrics_bind_address, config.metrics_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # kopf installs its own once it runs
    kopf_ready = asyncio.Event()  # set by kopf once its startup handlers ran and its watches start

    def operator() -> Coroutine[Any, Any, None]:
        return kopf.operator(
            standalone=True,  # one replica acts at a time: the Lease decides which, not kopf peering
            clusterwide=not config.namespaces,
            namespaces=list(config.namespaces),
            memo=memo,
            stop_flag=stop,
            ready_flag=kopf_ready,
        )

    try:
        if not config.leader_election:
            metrics.leader.set(1.0)  # the only replica acts: certsync_leader says so (the CertsyncNoLeader alert)
            metrics.readiness = lambda: (kopf_ready.is_set(), "acting" if kopf_ready.is_set() else "starting")
            await operator()
            return 0
        identity = leader.new_identity()
        namespace = config.lease_namespace or leader.default_namespace()
        timing = leader.Timing(config.lease_duration, config.renew_deadline, config.retry_period)
        elector = leader.Elector(
            leader.KubernetesLeases(namespace, config.lease_name), identity, timing, metrics=metrics
        )
        remote.REPLICA.set(remote.Replica(identity, elector.may_act))  # checked and named on every remote call
        log.info("lease %s/%s, replica %s", namespace, config.lease_name, identity)
        metrics.liveness = lambda: (elector.alive(), "ok" if elector.alive() else "the election loop is stuck")
        metrics.readiness = lambda: _readiness(elector, kopf_ready)
        if config.debug_election_signals:
            loop.add_signal_handler(signal.SIGUSR1, elector.inject, "stall")
            loop.add_signal_handler(signal.SIGUSR2, elector.inject, "crash")
        return await _lead(elector, operator, stop)
    except Exception as error:
        log.error("the operator failed: %s", type(error).__name__)
        return 1
    finally:
        await server.cleanup()


KUBE_THREADS = 16


def _size_kube_threads(loop: asyncio.AbstractEventLoop) -> None:
    """The kubernetes client is synchronous and runs in the default executor: on 2 cores Python gives it 6
    threads, which a thousand first passes (Secret reads, status patches) queue behind. Threads and the
    client's connection pool get the same size, so no connection is opened and thrown away."""
    import concurrent.futures

    import kubernetes

    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = KUBE_THREADS
    kubernetes.client.Configuration.set_default(configuration)
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(KUBE_THREADS, thread_name_prefix="kube"))


async def _lead(elector: Elector, operator: Callable[[], Coroutine[Any, Any, None]], stop: asyncio.Event) -> int:
    from certsync import leader

    campaign = asyncio.create_task(elector.acquire(), name="lease campaign")
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({campaign, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not campaign.done():  # stopped while standing by: nothing to hand over
        campaign.cancel()
        return 0
    campaign.result()  # the campaign loop died (never on API errors, which it retries)
    try:
        await leader.lead(elector, operator())
    except leader.LeadershipLost as lost:
        # Stop acting now: no graceful shutdown, whose handlers would still call the remotes.
        log.error("leadership lost, exiting at once: %s", lost)
        _exit_now(1)
    except Exception as error:
        log.error("the operator failed (%s); releasing the lease", type(error).__name__)
        await elector.release()
        return 1
    await elector.release()  # kopf has stopped: a standby may take over at once
    return 0


def _readiness(elector: Elector, kopf_ready: asyncio.Event) -> tuple[bool, str]:
    if not elector.alive():
        return False, "the election loop is stuck"
    if not elector.leading:
        return True, "standby"
    return (True, "leader") if kopf_ready.is_set() else (False, "leader, starting")


def _exit_now(code: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(code)


STDIN = "-"
STDIN_NAME = "<stdin>"
# A manifest may hold several Secrets (Kubernetes caps each at 1 MiB); more is not a manifest, file or stdin.
MAX_INPUT_BYTES = 8 * 1024 * 1024
# A PEM bundle has its markers at the start of a line; in a Secret's YAML they are indented (block scalars).
_PEM_LINE = re.compile(rb"^-----BEGIN [A-Z0-9 ]+-----", re.MULTILINE)
_KEY_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.*?-----END \1-----", re.DOTALL)


def check(argv: Sequence[str]) -> int:
    """Validate a tls Secret offline with the operator's own checks; exit 1 with its reason on failure."""
    parser = argparse.ArgumentParser(prog="certsync check", description=check.__doc__)
    parser.add_argument(
        "manifest",
        nargs="?",
        help="a YAML file with one or more kubernetes.io/tls Secrets; - reads standard input: such a manifest, "
        "or a PEM bundle (the chain, leaf first, and its private key)",
    )
    parser.add_argument("--cert", type=Path, help="PEM chain (tls.crt), with --key")
    parser.add_argument("--key", type=Path, help="PEM private key (tls.key), with --cert")
    parser.add_argument(
        "--for",
        dest="destination",
        choices=pki.DESTINATIONS,
        help="also apply what this remote requires (emqx: key types, key algorithm of the issuer, 60 days left)",
    )
    args = parser.parse_args(argv)
    if bool(args.manifest) == bool(args.cert or args.key) or bool(args.cert) != bool(args.key):
        parser.error("give either a manifest (or -), or both --cert and --key")
    now = dt.datetime.now(dt.UTC)
    if args.cert:
        return _check_files(args.cert, args.key, now, args.destination)
    from_stdin = args.manifest == STDIN
    try:
        data = _read_capped(sys.stdin.buffer if from_stdin else None, args.manifest)
        if from_stdin and _PEM_LINE.search(data):
            return _check_pem_stream(data, now, args.destination)
        docs = [doc for doc in yaml.safe_load_all(data.decode("utf-8")) if isinstance(doc, dict)]
        secrets = [(_name_of(d), _secret_view(d)) for d in docs if d.get("kind") == "Secret"]
    except (OSError, yaml.YAMLError, ValueError) as error:
        print(f"certsync check: cannot read input: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    if not secrets:
        where = (
            "standard input holds neither a Secret nor a PEM block" if from_stdin else "the manifest holds no Secret"
        )
        print(f"certsync check: {where}", file=sys.stderr)
        return 2
    failed = 0
    for name, secret in secrets:
        result = _check_for(name, secret, now, args.destination)
        if isinstance(result, rc.Problem):
            failed += 1
            print(f"{name}: {result.reason}: {result.message}")
        else:
            _print_valid(name, result.bundle)
    return 1 if failed else 0


def _read_capped(stream: BinaryIO | None, path: str) -> bytes:
    """Standard input or a file, never more than `MAX_INPUT_BYTES` read (a device or a huge file is refused)."""
    if stream is not None:
        data, where = stream.read(MAX_INPUT_BYTES + 1), "standard input"
    else:
        with Path(path).open("rb") as file:
            data, where = file.read(MAX_INPUT_BYTES + 1), path
    if len(data) > MAX_INPUT_BYTES:
        raise ValueError(f"{where} holds more than the {MAX_INPUT_BYTES} bytes accepted")
    return data


def _split_pem(data: bytes) -> tuple[bytes, bytes]:
    """A PEM bundle's certificates and private key(s), apart: each keeps the stream's line numbers (the other's
    lines are left blank), so that the operator's messages point at the right lines of standard input."""
    chain, keys, last = bytearray(), bytearray(), 0
    for match in _KEY_BLOCK.finditer(data):
        between, block = data[last : match.start()], match.group(0)
        chain += between + b"\n" * block.count(b"\n")
        keys += b"\n" * between.count(b"\n") + block
        last = match.end()
    chain += data[last:]
    return bytes(chain), bytes(keys) + b"\n"


def _check_pem_stream(data: bytes, now: dt.datetime, destination: pki.Destination | None) -> int:
    """A PEM bundle on standard input (for example `cat tls.crt tls.key | certsync check -`)."""
    try:
        pki.secret_text(data, STDIN_NAME)  # a stray byte is named by its place in the stream, not in a part of it
    except pki.CertificateProblem as problem:
        print(f"{STDIN_NAME}: {problem.reason}: {problem.message}")
        return 1
    chain, key = _split_pem(data)
    keys = len(_KEY_BLOCK.findall(data))
    if keys != 1:
        print(f"{STDIN_NAME}: InvalidPrivateKey: {STDIN_NAME} holds {keys} PEM private keys; the chain and exactly "
              "one key (the leaf's) are expected")  # fmt: skip
        return 1
    return _check_pem(chain, key, STDIN_NAME, f"the key in {STDIN_NAME}", now, destination)


def _check_files(cert: Path, key: Path, now: dt.datetime, destination: pki.Destination | None) -> int:
    """PEM files: the operator's checks, with messages that name the files (not a Secret)."""
    try:
        cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
    except OSError as error:
        print(f"certsync check: cannot read input: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    return _check_pem(cert_pem, key_pem, str(cert), str(key), now, destination)


def _check_pem(
    cert_pem: bytes,
    key_pem: bytes,
    cert_source: str,
    key_source: str,
    now: dt.datetime,
    destination: pki.Destination | None,
) -> int:
    try:
        bundle = pki.validate_tls(cert_pem, key_pem, now, cert_source=cert_source, key_source=key_source)
        if destination is not None:
            pki.check_destination(bundle, destination, now)
    except pki.CertificateProblem as problem:
        print(f"{cert_source}: {problem.reason}: {problem.message}")
        return 1
    _print_valid(cert_source, bundle)
    return 0


def _print_valid(name: str, bundle: pki.TLSBundle) -> None:
    leaf = bundle.leaf
    print(f"{name}: Valid: CN {leaf.subject_cn!r}, expires {pki.rfc3339(leaf.not_after)}, SHA-256 {leaf.sha256}")


def _check_for(
    name: str, secret: rc.SecretView, now: dt.datetime, destination: pki.Destination | None
) -> rc.TLSMaterial | rc.Problem:
    """The operator's checks, then the destination's own: the same order, reasons and messages as its controller."""
    result = rc.check_tls_secret(name, secret, now)
    if isinstance(result, rc.Problem) or destination is None:
        return result
    try:
        pki.check_destination(result.bundle, destination, now)
    except pki.CertificateProblem as problem:
        return rc.Problem(problem.reason, f"Secret {name!r}: {problem.message}")
    return result


def _name_of(doc: dict[str, Any]) -> str:
    metadata = doc.get("metadata")
    return str(metadata.get("name", "?")) if isinstance(metadata, dict) else "?"


def _secret_view(doc: dict[str, Any]) -> rc.SecretView:
    """A Secret document as the operator would read it; a malformed one raises ValueError with what is wrong."""
    encoded, plain = doc.get("data") or {}, doc.get("stringData") or {}
    if not isinstance(encoded, dict) or not isinstance(plain, dict):
        raise ValueError("a Secret's data and stringData must be mappings of key to value")
    if not all(isinstance(v, str) for v in encoded.values()):
        raise ValueError("a Secret's data values must be base64 strings")
    try:
        data = {str(k): base64.b64decode(v, validate=True) for k, v in encoded.items()}
    except binascii.Error:
        raise ValueError("a Secret's data values must be base64 strings") from None
    data.update({str(k): str(v).encode() for k, v in plain.items()})
    return rc.SecretView(str(doc.get("type", "Opaque")), data)


def status(argv: Sequence[str]) -> int:
    """Show the certsync resources' state from the cluster alone (no remote call); exit 1 when any is not Ready."""
    from certsync import fleet

    parser = argparse.ArgumentParser(prog="certsync status", description=status.__doc__)
    parser.add_argument("what", nargs="?", help="KIND or KIND/NAME (deploymenttls, cdncertificate, letsencryptorder)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", help="the namespace (default: the kubeconfig context's)")
    where.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    parser.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    parser.add_argument("--kubeconfig", help="the kubeconfig file (default: KUBECONFIG, ~/.kube/config, in cluster)")
    parser.add_argument("--drift-interval", default="6h", help="the operator's CERTSYNC_DRIFT_INTERVAL (default 6h)")
    args = parser.parse_args(argv)
    kind, _, name = (args.what or "").partition("/")
    plurals = list(fleet.KINDS)
    if kind:
        plural = fleet.kind_of(kind)
        if plural is None:
            parser.error(f"unknown kind {kind!r}: one of {', '.join(sorted(fleet.ALIASES))}")
        plurals = [plural]
    if name and args.all_namespaces:
        parser.error("a NAME needs one namespace, not -A")
    try:
        interval = settings_module.parse_duration(args.drift_interval)
    except ValueError:
        parser.error(f"--drift-interval: not a duration: {args.drift_interval!r}")
    try:
        objects = _list_resources(plurals, name, args.namespace, args.all_namespaces, args.kubeconfig)
    except _ClusterError as error:
        print(f"certsync status: {error}", file=sys.stderr)
        return 2
    found = fleet.rows(objects, dt.datetime.now(dt.UTC), interval)
    if args.output == "table":
        print(fleet.table(found, with_namespace=args.all_namespaces) if found else "No resources found.")
    elif args.output == "json":
        print(json.dumps(fleet.document(found), indent=2))
    else:
        print(yaml.safe_dump(fleet.document(found), sort_keys=False), end="")
    return 0 if fleet.all_ready(found) else 1


class _ClusterError(Exception):
    """The cluster could not be read: said in one line, never a traceback."""


def _list_resources(
    plurals: Sequence[str], name: str, namespace: str | None, everywhere: bool, kubeconfig: str | None
) -> list[tuple[str, Any]]:
    import kubernetes
    import urllib3

    from certsync.kube import GROUP, VERSION

    try:
        if kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            if namespace is None:
                _, context = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
                namespace = (context or {}).get("context", {}).get("namespace")
        else:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except (kubernetes.config.ConfigException, OSError) as error:
        raise _ClusterError(f"no cluster to read: {error}") from None
    api = kubernetes.client.CustomObjectsApi()
    namespace = namespace or "default"
    found: list[tuple[str, Any]] = []
    try:
        for plural in plurals:
            if name:
                found.append((plural, api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)))
            else:
                listed: Any = (
                    api.list_cluster_custom_object(GROUP, VERSION, plural)
                    if everywhere
                    else api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
                )
                found += [(plural, o) for o in listed["items"]]
    except kubernetes.client.ApiException as error:
        what = f"{plural}/{name}" if name else plural
        if error.status == 404:
            raise _ClusterError(
                f"{what} not found in namespace {namespace!r} (or the CRDs are not installed)"
            ) from None
        raise _ClusterError(f"reading {what} failed: HTTP {error.status} {error.reason}") from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise _ClusterError(f"the API server cannot be reached: {type(error).__name__}") from None
    return found


def version(argv: Sequence[str]) -> int:
    """Print what names this build: certsync's version and commit, the Python and kopf it runs on."""
    parser = argparse.ArgumentParser(prog="certsync version", description=version.__doc__)
    parser.parse_args(argv)
    for name, value in version_module.build_info().items():
        print(f"{name}: {value}")
    return 0


def version_line() -> str:
    """`certsync --version`: the same facts as `certsync version`, on one line."""
    info = version_module.build_info()
    return f"certsync {info['version']} (commit {info['commit']}, {info['python']}, kopf {info['kopf']})"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "check":
        return check(args[1:])
    if args and args[0] == "version":
        return version(args[1:])
    if args and args[0] == "status":
        return status(args[1:])
    if args and args[0] == "--version":
        print(version_line())
        return 0
    if args and args[0] == "run":
        args = args[1:]
    return run_operator(args)


if __name__ == "__main__":
    sys.exit(main())
