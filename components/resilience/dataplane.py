"""The snapshot data plane: pieces go from keeper to keeper over a direct TCP connection, not through Ray.

Why: a piece sent as a Ray call argument is copied into the sender's object store, pulled chunk by
chunk by the receiving node's raylet into its own store, deserialized as a view, then copied out by
the keeper (a Ray object dies with its owner). Measured on 64 MiB per rank, the raylets and object
stores spent ~220 ms per snapshot on that, and every piece cost an actor call (~0.8 ms of CPU) on top:
on a box where training uses every core, that is throughput lost. Here the sending keeper writes the
piece straight from where it lies (a view of the trainer's shared buffer, or the parity it just
encoded: no copy in user space), and the receiving keeper ``recv_into``s a buffer it then keeps
(the one copy a transfer needs), hashing it once to verify it.

Ray stays the control plane: placement, keeper lifecycle, commit, recovery inventory. Each keeper
listens on its node's IP, on a port the OS picks (Ray workers' ports are not fixed either; the chart's
``lmforge-ray`` NetworkPolicy lets RayJob pods reach each other on any port), and announces
``(host, port, token)`` through its actor (``data_address``, a control call made once per peer). A
connection first sends the token: a random 16 bytes the keeper made at start, known only through
Ray's control plane, so nothing else on the network can store pieces (the token is never logged).

Wire format (big-endian), per connection ``MAGIC + token``, then per piece a request
:data:`REQUEST` (version, group, index, payload size, byte count, generation, wait seconds,
xxh3-128 digest) followed by the bytes; the keeper answers :data:`REPLY` (status, message length)
and the message. The status names the exception ``Keeper.put`` raised (:data:`ERRORS`), so a
sender sees ``BusyError`` (back-pressure) exactly as it would from a Ray call, and the rank's
retry logic (``sink.py``) is unchanged. A connection that fails (a keeper that died or restarted
with a new port) raises ``OSError`` to the caller, which falls back to the Ray call: that way a lost
keeper surfaces as ``RayActorError``, as before.
"""

from __future__ import annotations

import secrets
import socket
import struct
import threading
from collections.abc import Callable

import numpy as np

from components.common.errors import ConfigError, DataError, RecoveryError
from components.common.log import get_logger
from components.resilience.keeper import BusyError, StaleWriterError
from components.resilience.piece import Piece, PieceId

log = get_logger(__name__)

MAGIC = b"LMK1"
TOKEN_BYTES = 16
#: per piece: version, group, index, payload_size, nbytes, generation, wait_s, digest (xxh3-128)
REQUEST = struct.Struct("!qqqqqqd16s")
#: per piece answer: status (0 stored, else an index into ERRORS + 1), length of the message
REPLY = struct.Struct("!BI")
#: what ``Keeper.put`` may raise, in the order of their status codes (most specific first)
ERRORS: tuple[type[Exception], ...] = (BusyError, StaleWriterError, DataError, ConfigError, RecoveryError)
#: status of any other exception (re-raised as RecoveryError with its type and message)
OTHER = len(ERRORS) + 1
#: socket buffers large enough that a multi-MB piece streams without waiting on small windows
SOCKET_BUFFER = 4 << 20

Put = Callable[..., None]  # Keeper.put(piece, *, generation, wait_s)


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    while view:
        # MSG_WAITALL: one call (and one wake-up) per piece on a blocking socket, not one per segment
        got = sock.recv_into(view, len(view), socket.MSG_WAITALL)
        if not got:
            raise ConnectionError("peer closed the connection")
        view = view[got:]


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request's reply is small and awaited
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)


class PieceServer:
    """Keeper side: accepts pieces on ``host`` and stores each through ``put`` (``Keeper.put``).

    One thread accepts, one thread per connection serves it (a sending keeper keeps a connection
    per concurrent hand-off, so a node's ranks are served in parallel). Threads are daemons: they end
    with the keeper process.
    """

    def __init__(self, put: Put, host: str, port: int = 0) -> None:
        self._put = put
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._listener = socket.create_server((host, port), backlog=64)
        self.host, self.port = host, self._listener.getsockname()[1]
        self.received = 0  # pieces stored, for tests and benchmarks
        threading.Thread(target=self._accept, name="piece-server", daemon=True).start()

    @property
    def address(self) -> tuple[str, int, bytes]:
        return self.host, self.port, self.token

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), name="piece-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            _tune(conn)
            head = bytearray(len(MAGIC) + TOKEN_BYTES)
            try:
                _recv_exact(conn, memoryview(head))
            except OSError:
                return
            if not (head.startswith(MAGIC) and secrets.compare_digest(bytes(head[len(MAGIC) :]), self.token)):
                log.warning("piece server: refused a connection without this keeper's token")
                return
            request = bytearray(REQUEST.size)
            while True:
                try:
                    _recv_exact(conn, memoryview(request))
                except OSError:
                    return  # the sender closed its end (or died): nothing half-stored, a put is all-or-nothing
                version, group, index, payload_size, nbytes, generation, wait_s, digest = REQUEST.unpack(request)
                # The keeper keeps this array as the piece: the one copy a transfer needs, no view of
                # anything else (so Keeper.put only hashes it, never copies it again).
                data = np.empty(nbytes, dtype=np.uint8)
                try:
                    _recv_exact(conn, memoryview(data))
                except OSError:
                    return
                piece = Piece(PieceId(version, group, index), data, digest.hex(), payload_size)
                status, message = 0, b""
                try:
                    self._put(piece, generation=generation, wait_s=wait_s)
                    self.received += 1
                except Exception as e:  # every refusal goes back to the sender, which re-raises it
                    status = next((i + 1 for i, kind in enumerate(ERRORS) if isinstance(e, kind)), OTHER)
                    text = str(e) if status != OTHER else f"{type(e).__name__}: {e}"
                    message = text.encode()
                try:
                    conn.sendall(REPLY.pack(status, len(message)) + message)
                except OSError:
                    return


class PieceLinks:
    """Sender side: pooled connections to other keepers' piece servers, one per concurrent transfer."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._idle: dict[tuple[str, int, bytes], list[socket.socket]] = {}
        self._lock = threading.Lock()

    def send(self, transfers: list[tuple[tuple[str, int, bytes], Piece, int, float]]) -> list[Exception | None]:
        """Send each ``(address, piece, generation, wait_s)``; per transfer, None (stored) or the keeper's refusal.

        All requests go out before any reply is read, so the receivers hash and store in parallel.
        A connection that fails raises ``OSError`` (after closing every connection of this call);
        the caller decides what to do with pieces not confirmed (retry them another way).
        """
        opened: list[tuple[tuple[str, int, bytes], socket.socket]] = []
        try:
            for address, piece, generation, wait_s in transfers:
                sock = self._connection(address)
                opened.append((address, sock))
                data = memoryview(piece.data).cast("B")
                id_ = piece.id
                head = REQUEST.pack(
                    id_.version, id_.group, id_.index, piece.payload_size, data.nbytes, generation, wait_s,
                    bytes.fromhex(piece.checksum),
                )  # fmt: skip
                sock.sendall(head)
                sock.sendall(data)  # straight from the piece's memory (a view of the shared buffer)
            results: list[Exception | None] = []
            reply = bytearray(REPLY.size)
            for (address, sock), (_, piece, _, wait_s) in zip(opened, transfers, strict=True):
                sock.settimeout(self.timeout_s + wait_s)
                _recv_exact(sock, memoryview(reply))
                status, length = REPLY.unpack(reply)
                text = bytearray(length)
                _recv_exact(sock, memoryview(text))
                sock.settimeout(self.timeout_s)
                results.append(None if status == 0 else _error(status, text.decode(), address, piece))
        except BaseException:
            for _, sock in opened:
                sock.close()
            raise
        with self._lock:
            for address, sock in opened:
                self._idle.setdefault(address, []).append(sock)
        return results

    def forget(self, address: tuple[str, int, bytes]) -> None:
        """Close the idle connections to ``address`` (its keeper is gone or restarted)."""
        with self._lock:
            for sock in self._idle.pop(address, []):
                sock.close()

    def close(self) -> None:
        with self._lock:
            for socks in self._idle.values():
                for sock in socks:
                    sock.close()
            self._idle.clear()

    def _connection(self, address: tuple[str, int, bytes]) -> socket.socket:
        with self._lock:
            pool = self._idle.get(address)
            if pool:
                return pool.pop()
        host, port, token = address
        sock = socket.create_connection((host, port), timeout=self.timeout_s)
        _tune(sock)
        sock.sendall(MAGIC + token)
        return sock


def _error(status: int, text: str, address: tuple[str, int, bytes], piece: Piece) -> Exception:
    kind = ERRORS[status - 1] if 0 < status <= len(ERRORS) else RecoveryError
    if kind is RecoveryError and status == OTHER:
        text = f"keeper at {address[0]}:{address[1]} failed storing piece {piece.id}: {text}"
    return kind(text)
