"""A TCP proxy that makes an S3 server flaky on cue, for tests of clients that must retry.

``with flaky_proxy("127.0.0.1:9000", drop_every=3) as proxy:`` listens on ``proxy.address`` and
forwards to the server, except that faults strike by *connection number* (1, 2, ... in accept
order), so a test whose requests go one after another meets the same faults on every run:

- ``drop_every=N``: connections N, 2N, ... read the request, never forward it, and reset the
  connection (RST): the client sees "connection reset" or "remote end closed without response".
- ``deny_every=N``: the proxy answers ``403 AccessDenied`` with S3's XML error body, without
  forwarding: an error no retry can mend.
- ``throttle_every=N``: the proxy answers ``503 SlowDown`` with S3's XML error body (what S3 and MinIO
  answer when throttling), without forwarding.
- ``cut_every=N``: the response is forwarded but reset after ``cut_after`` bytes, in the middle of
  its headers or its body: a download broken off half-way. (A response no longer than ``cut_after``
  arrives whole and is not counted.)
- ``delay_every=N``: the response is held back ``delay_seconds`` before its first byte: slow, or a
  read timeout when ``delay_seconds`` exceeds the client's.

Where several rules match one connection, the first in that order wins. ``proxy.counts`` tells how
many of each struck, and ``counts.requests`` lists the request lines (``"GET /bucket/key"``) seen.

One request per connection: the proxy sets ``Connection: close`` on each request, so the server
closes after answering and connection N is request N whether or not the server keeps connections
alive (MinIO does). Faults are resets (RST), not orderly closes: an orderly close in the middle of
the headers would look to an HTTP client like a complete response without a body.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

_HEAD_END = b"\r\n\r\n"
#: what the proxy answers itself: (status line, S3 error code, message)
_ANSWERS = {
    "deny": (b"403 Forbidden", "AccessDenied", "Access Denied"),
    "throttle": (b"503 Slow Down", "SlowDown", "Please reduce your request rate."),
}


@dataclass
class ProxyCounts:
    """What the proxy did so far; read after the client is done."""

    connections: int = 0
    dropped: int = 0
    denied: int = 0
    throttled: int = 0
    cut: int = 0
    delayed: int = 0
    #: request lines in accept order, e.g. "GET /bucket/key?list-type=2"
    requests: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """Requests whose answer the client did not get whole or got as an error (delays excluded)."""
        return self.dropped + self.denied + self.throttled + self.cut


class FlakyProxy:
    """The proxy itself; use :func:`flaky_proxy`, which starts and stops it."""

    def __init__(
        self,
        upstream: str,
        *,
        drop_every: int = 0,
        deny_every: int = 0,
        throttle_every: int = 0,
        cut_every: int = 0,
        cut_after: int = 512,
        delay_every: int = 0,
        delay_seconds: float = 0.0,
        host: str = "127.0.0.1",
    ) -> None:
        up_host, _, up_port = upstream.rpartition(":")
        self._upstream = (up_host, int(up_port))
        self._rules = (
            ("drop", drop_every),
            ("deny", deny_every),
            ("throttle", throttle_every),
            ("cut", cut_every),
            ("delay", delay_every),
        )
        self.cut_after, self.delay_seconds = cut_after, delay_seconds
        self.counts = ProxyCounts()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self._listener = socket.create_server((host, 0))
        self.address = f"{host}:{self._listener.getsockname()[1]}"

    def start(self) -> None:
        self._spawn(self._accept_loop)

    def close(self) -> None:
        self._closing.set()
        _shut(self._listener)
        with self._lock:
            live = list(self._open)
        for sock in live:
            _shut(sock)
        for thread in self._threads:
            thread.join(timeout=2)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._open.add(sock)
        return sock

    def _release(self, *socks: socket.socket) -> None:
        for sock in socks:
            with self._lock:
                self._open.discard(sock)
            _shut(sock)

    def _bump(self, counter: str) -> None:
        with self._lock:
            setattr(self.counts, counter, getattr(self.counts, counter) + 1)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            with self._lock:
                self.counts.connections += 1
                number = self.counts.connections
            self._spawn(self._serve, self._track(client), number)

    def _fault(self, number: int) -> str | None:
        return next((name for name, every in self._rules if every and number % every == 0), None)

    def _serve(self, client: socket.socket, number: int) -> None:
        upstream = None
        try:
            head, rest = _read_head(client)
            if head is None:
                return
            with self._lock:
                self.counts.requests.append(" ".join(head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]))
            fault = self._fault(number)
            if fault == "drop":
                self._bump("dropped")
                _reset(client)
                return
            if fault in _ANSWERS:
                self._answer(client, head, rest, fault)
                return
            upstream = self._track(socket.create_connection(self._upstream, timeout=30))
            upstream.sendall(_close_after_answer(head) + rest)
            self._spawn(_pump, client, upstream)
            self._relay(upstream, client, fault)
        except OSError:
            pass  # the client gave up (e.g. its read timed out) or close() ran: nothing left to forward
        finally:
            self._release(client, *([upstream] if upstream else []))

    def _answer(self, client: socket.socket, head: bytes, rest: bytes, fault: str) -> None:
        # Take the whole request first, or the client fails writing its body instead of reading the answer.
        if b"100-continue" not in head.lower():
            remaining = _content_length(head) - len(rest)
            while remaining > 0 and (data := client.recv(min(remaining, 1 << 16))):
                remaining -= len(data)
        self._bump({"deny": "denied", "throttle": "throttled"}[fault])
        status, code, message = _ANSWERS[fault]
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            "<RequestId>flaky-proxy</RequestId></Error>"
        ).encode()
        client.sendall(
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: application/xml\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def _relay(self, upstream: socket.socket, client: socket.socket, fault: str | None) -> None:
        sent = 0
        while data := upstream.recv(1 << 16):
            if fault == "delay" and sent == 0:
                self._bump("delayed")
                self._closing.wait(self.delay_seconds)  # not time.sleep: close() cuts the delay short
            if fault == "cut" and sent + len(data) > self.cut_after:
                client.sendall(data[: self.cut_after - sent])
                self._bump("cut")
                _reset(client)
                return
            client.sendall(data)
            sent += len(data)


@contextlib.contextmanager
def flaky_proxy(
    upstream_host_port: str,
    *,
    drop_every: int = 0,
    deny_every: int = 0,
    throttle_every: int = 0,
    cut_every: int = 0,
    cut_after: int = 512,
    delay_every: int = 0,
    delay_seconds: float = 0.0,
    host: str = "127.0.0.1",
) -> Iterator[FlakyProxy]:
    """A started :class:`FlakyProxy` in front of ``upstream_host_port``; stopped on exit.

    Point the client at ``proxy.address``; read ``proxy.counts`` for what struck.
    """
    proxy = FlakyProxy(
        upstream_host_port,
        drop_every=drop_every,
        deny_every=deny_every,
        throttle_every=throttle_every,
        cut_every=cut_every,
        cut_after=cut_after,
        delay_every=delay_every,
        delay_seconds=delay_seconds,
        host=host,
    )
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    """The request head (through the blank line) and whatever body bytes came with it."""
    buf = b""
    while _HEAD_END not in buf:
        data = sock.recv(1 << 16)
        if not data:
            return None, b""
        buf += data
    head, _, rest = buf.partition(_HEAD_END)
    return head + _HEAD_END, rest


def _close_after_answer(head: bytes) -> bytes:
    lines = head[: -len(_HEAD_END)].split(b"\r\n")
    kept = [line for line in lines[1:] if not line.lower().startswith((b"connection:", b"keep-alive:"))]
    return b"\r\n".join([lines[0], *kept, b"Connection: close"]) + _HEAD_END


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy the rest of the request (its body) from the client to the server."""
    with contextlib.suppress(OSError):
        while data := src.recv(1 << 16):
            dst.sendall(data)


def _shut(sock: socket.socket) -> None:
    """Close ``sock``, waking any thread blocked on it: on Linux ``close()`` alone leaves a blocked
    ``recv``/``accept`` waiting (the call holds the socket), ``shutdown()`` makes it return."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: the peer's next read fails with "connection reset".

    ``SHUT_RD`` wakes the body pump blocked reading this socket without sending anything; the RST
    goes out once the last user lets go of the socket, right after.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    sock.close()
