"""A small HTTPS CONNECT proxy on loopback, for tests of the operator behind a platform's proxy.

It tunnels only to the names it is given (`routes`: `host:port` -> a loopback `(ip, port)`), so endpoints can
use names that resolve nowhere (`emqx.certsync.test`): a call that bypasses the proxy fails, one that uses it
reaches the emulator. TLS passes through untouched (the client verifies the emulator's certificate, not the
proxy's). Every CONNECT target is recorded, refused ones too. It is bounded: at most `max_tunnels` tunnels,
request heads of 8 KiB read within `head_timeout`, idle tunnels closed after `idle_timeout`, and the proxy
stops itself after `lifetime` seconds whatever its user does.

    with ConnectProxy({"emqx.certsync.test:443": ("127.0.0.1", 8081)}) as proxy:
        ...  # HTTPS_PROXY=proxy.url
        assert "emqx.certsync.test:443" in proxy.targets

`python -m devkit.proxy --route emqx.certsync.test:443=127.0.0.1:8081` runs one until SIGTERM (or its lifetime).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType

MAX_HEAD = 8 * 1024
CHUNK = 64 * 1024


class ConnectProxy:
    """The proxy runs its own event loop in a daemon thread, so that synchronous tests can use it."""

    def __init__(
        self,
        routes: Mapping[str, tuple[str, int]],
        *,
        max_tunnels: int = 64,
        head_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        lifetime: float = 900.0,
    ) -> None:
        for target, (ip, _) in routes.items():
            if not ipaddress.ip_address(ip).is_loopback:
                raise ValueError(f"route {target} -> {ip}: the proxy tunnels to loopback addresses only")
        self.routes = {target.lower(): address for target, address in routes.items()}
        self.max_tunnels = max_tunnels
        self.head_timeout = head_timeout
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.targets: list[str] = []  # every CONNECT target, in order (refused ones included)
        self.refused: list[str] = []  # what was answered with an error, and why
        self.url = ""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._tunnels = 0
        self._connections: set[asyncio.Task[None]] = set()

    # -- life cycle --

    def start(self) -> ConnectProxy:
        self._thread = threading.Thread(target=self._run, name="connect-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("the proxy did not start within 10 s")
        if self._failure is not None:
            raise RuntimeError("the proxy could not start") from self._failure
        return self

    def stop(self) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended on its own meanwhile (lifetime)
                loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> ConnectProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.targets)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported to start(); the thread must not die silently
            self._failure = error
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=MAX_HEAD)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self._loop.call_later(self.lifetime, self._stopped.set)  # stops itself, whatever its user does
        await self._stopped.wait()
        server.close()
        for task in list(self._connections):  # open tunnels end with the proxy, not at their idle timeout
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    # -- one connection --

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._tunnel(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError):
            pass  # a client that went away or sent garbage: nothing to tunnel
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = request_line.partition(" ")
        target = rest.rpartition(" ")[0].strip().lower()
        if method != "CONNECT":
            await self._refuse(writer, f"{method} {target}", "405 Method Not Allowed", "only CONNECT")
            return
        with self._lock:
            self.targets.append(target)
        address = self.routes.get(target)
        if address is None:
            await self._refuse(writer, target, "403 Forbidden", "no route")
            return
        if self._tunnels >= self.max_tunnels:
            await self._refuse(writer, target, "503 Service Unavailable", "too many tunnels")
            return
        self._tunnels += 1
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(*address), self.head_timeout
            )
        except (OSError, TimeoutError):
            self._tunnels -= 1
            await self._refuse(writer, target, "502 Bad Gateway", "upstream unreachable")
            return
        try:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        finally:
            self._tunnels -= 1
            upstream_writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, target: str, status: str, why: str) -> None:
        with self._lock:
            self.refused.append(f"{target}: {why}")
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy one direction until its end, an error or `idle_timeout` without a byte; then close the other."""
        try:
            while data := await asyncio.wait_for(source.read(CHUNK), self.idle_timeout):
                sink.write(data)
                await sink.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if sink.can_write_eof():
                    sink.write_eof()
                else:
                    sink.close()


def _route(text: str) -> tuple[str, tuple[str, int]]:
    target, _, address = text.partition("=")
    ip, _, port = address.rpartition(":")
    if not target or not ip or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT=IP:PORT")
    return target, (ip, int(port))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.proxy", description="A CONNECT proxy for tests.")
    parser.add_argument("--route", type=_route, action="append", default=[], help="HOST:PORT=IP:PORT (repeatable)")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="stop after this many seconds")
    args = parser.parse_args(argv)
    proxy = ConnectProxy(dict(args.route), lifetime=args.lifetime).start()
    print(f"listening on {proxy.url}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(timeout=1.0):
        if not proxy.alive():  # its lifetime ended
            break
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
