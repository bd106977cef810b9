"""The snapshot data plane: keepers and trainers talk over direct TCP connections, not through Ray.

Two kinds of traffic go over it.

*Pieces*, keeper to keeper. A piece sent as a Ray call argument is copied into the sender's object
store, pulled chunk by chunk by the receiving node's raylet into its own store, deserialized as a
view, then copied out by the keeper (a Ray object dies with its owner). Measured on 64 MiB per rank,
the raylets and object stores spent ~220 ms per snapshot on that, and every piece cost an actor call
(~0.8 ms of CPU) on top: on a box where training uses every core, that is throughput lost. Here the
sending keeper writes the piece straight from where it lies (a view of the trainer's shared buffer,
or the parity it just encoded: no copy in user space), and the receiving keeper ``recv_into``s a
buffer it then keeps (the one copy a transfer needs), hashing it once to verify it.

*Calls*, trainer to keeper: the calls every snapshot makes (a rank's hand-off, rank 0's prepare,
commit or drop). A Ray actor call costs the caller a task submission, argument serialization, a
return object and the raylet's bookkeeping: measured on a 2-rank hand-off of a 4 MiB state, those
calls were most of a snapshot's fixed cost, on the training processes' own CPUs. A call here is a
few hundred bytes of JSON on a connection kept open. Only the calls in :data:`LINK_CALLS` go this
way, with arguments of the plain kinds :func:`encode` knows; everything else (keeper lifecycle,
persistence, recovery inventory, fault injection) stays a Ray call.

Ray stays the control plane: placement, keeper lifecycle, recovery. Each keeper listens on its node's
IP, on a port the OS picks (Ray workers' ports are not fixed either; the chart's ``lmforge-ray``
NetworkPolicy lets RayJob pods reach each other on any port), and announces ``(host, port, token)``
through its actor (``data_address``, a Ray call made once per caller and keeper). A connection first
sends the token: a random 16 bytes the keeper made at start, known only through Ray's control plane,
so nothing else on the network can store pieces or make calls (the token is never logged).

Wire format (big-endian), per connection ``MAGIC + token``, then requests, each one opcode byte:

- :data:`OP_PIECE`: :data:`REQUEST` (version, group, index, payload size, byte count, generation,
  wait seconds, xxh3-128 digest) followed by the bytes;
- :data:`OP_CALL`: :data:`CALL` (length) followed by the JSON ``{"m": method, "a": [arguments]}``.

The keeper answers :data:`REPLY` (status, length) and that many bytes: the JSON result of a call,
or the refusal's message. The status names the exception the keeper raised (:data:`ERRORS`), so a
caller sees ``BusyError`` (back-pressure) exactly as it would from a Ray call, and the rank's retry
logic (``sink.py``) is unchanged. A connection that fails before a request is sent (a keeper that
died or restarted with a new port) raises ``OSError`` to the caller, which falls back to the Ray
call: that way a lost keeper surfaces as ``RayActorError``, as before. One that fails after the
request went out raises :class:`LinkLostError` (the keeper may or may not have acted on it).
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import astuple
from typing import Any

import numpy as np

from components.common.errors import ConfigError, DataError, RecoveryError
from components.common.log import get_logger
from components.resilience.handoff_reader import SharedBuffer, SharedBufferUnavailable
from components.resilience.keeper import BusyError, IncompleteVersionError, MissingPieceError, StaleWriterError
from components.resilience.piece import Piece, PieceId
from components.resilience.remote import KeeperTimeoutError

log = get_logger(__name__)

MAGIC = b"LMK2"
TOKEN_BYTES = 16
OP_PIECE, OP_CALL = 1, 2
#: per piece: version, group, index, payload_size, nbytes, generation, wait_s, digest (xxh3-128)
REQUEST = struct.Struct("!qqqqqqd16s")
#: per call: length of the JSON request that follows
CALL = struct.Struct("!I")
#: per answer: status (0 done, else an index into ERRORS + 1), length of what follows
REPLY = struct.Struct("!BI")
#: keeper calls that may go over the data plane (the ones every snapshot makes); the rest go through Ray
LINK_CALLS = frozenset({"store_snapshot_by_node", "prepare", "commit", "drop", "pieces", "busy_with"})
#: socket buffers large enough that a multi-MB piece streams without waiting on small windows
SOCKET_BUFFER = 4 << 20


class HolderUnknownError(RecoveryError):
    """A hand-off over the data plane named a holder whose actor handle this keeper has not seen yet
    (its first hand-off, or the keeper restarted): the caller repeats it as a Ray call, which carries
    the handles."""


class LinkLostError(RecoveryError):
    """The connection to a keeper failed after a call was sent: the keeper died, restarted, or its node
    is cut off; whether it acted on the call is unknown (the protocol treats it as lost, as Ray's
    ``RayActorError``)."""


#: what a keeper may raise, in the order of their status codes (most specific first)
ERRORS: tuple[type[Exception], ...] = (
    BusyError, StaleWriterError, IncompleteVersionError, MissingPieceError, SharedBufferUnavailable,
    HolderUnknownError, DataError, ConfigError, RecoveryError,
)  # fmt: skip
#: status of any other exception (re-raised as RecoveryError with its type and message)
OTHER = len(ERRORS) + 1

Put = Callable[..., None]  # Keeper.put(piece, *, generation, wait_s)


def encode(value: Any) -> Any:
    """``value`` as JSON-ready data: the few kinds a link call carries (piece ids, sets of them, a
    shared-buffer descriptor, numbers, strings, lists, tuples, None). Anything else is a bug in the
    caller, refused with its type."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, PieceId):
        return {"$p": [value.version, value.group, value.index]}
    if isinstance(value, SharedBuffer):
        return {"$b": list(astuple(value))}
    if isinstance(value, set | frozenset):
        return {"$s": [encode(v) for v in value]}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    raise TypeError(f"a keeper call over the data plane cannot carry a {type(value).__name__}")


def decode(value: Any) -> Any:
    """The inverse of :func:`encode` (tuples come back as lists)."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        (tag, inner), *_ = value.items()
        if tag == "$p":
            return PieceId(*inner)
        if tag == "$b":
            return SharedBuffer(*inner)
        if tag == "$s":
            return {decode(v) for v in inner}
        raise DataError(f"keeper call: unknown tagged value {tag!r}")
    return value


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


def _status_of(e: Exception) -> tuple[int, bytes]:
    status = next((i + 1 for i, kind in enumerate(ERRORS) if isinstance(e, kind)), OTHER)
    return status, (str(e) if status != OTHER else f"{type(e).__name__}: {e}").encode()


class KeeperServer:
    """Keeper side: stores pieces through ``put`` (``Keeper.put``) and serves the keeper's ``calls``.

    One thread accepts, one thread per connection serves it (a sending keeper keeps a connection
    per concurrent transfer, a caller one per call in flight, so a node's ranks are served in
    parallel and a call that waits by design, ``prepare``, holds only its own connection). Threads
    are daemons: they end with the keeper process.
    """

    def __init__(
        self, put: Put, host: str, port: int = 0, calls: Mapping[str, Callable[..., Any]] | None = None
    ) -> None:
        self._put, self._calls = put, dict(calls or {})
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._listener = socket.create_server((host, port), backlog=64)
        self.host, self.port = host, self._listener.getsockname()[1]
        self.received = 0  # pieces stored, for tests and benchmarks
        self.served = 0  # calls answered, for tests and benchmarks
        threading.Thread(target=self._accept, name="keeper-server", daemon=True).start()

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
            threading.Thread(target=self._serve, args=(conn,), name="keeper-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            _tune(conn)
            head = bytearray(len(MAGIC) + TOKEN_BYTES)
            try:
                _recv_exact(conn, memoryview(head))
            except OSError:
                return
            if not (head.startswith(MAGIC) and secrets.compare_digest(bytes(head[len(MAGIC) :]), self.token)):
                log.warning("keeper server: refused a connection without this keeper's token")
                return
            op = bytearray(1)
            while True:
                try:
                    _recv_exact(conn, memoryview(op))
                    answer = self._piece(conn) if op[0] == OP_PIECE else self._call(conn) if op[0] == OP_CALL else None
                except OSError:
                    return  # the sender closed its end (or died): nothing half-stored, a put is all-or-nothing
                if answer is None:
                    log.warning("keeper server: unknown request %d; connection closed", op[0])
                    return
                status, message = answer
                try:
                    conn.sendall(REPLY.pack(status, len(message)) + message)
                except OSError:
                    return

    def _piece(self, conn: socket.socket) -> tuple[int, bytes]:
        request = bytearray(REQUEST.size)
        _recv_exact(conn, memoryview(request))
        version, group, index, payload_size, nbytes, generation, wait_s, digest = REQUEST.unpack(request)
        # The keeper keeps this array as the piece: the one copy a transfer needs, no view of
        # anything else (so Keeper.put only hashes it, never copies it again).
        data = np.empty(nbytes, dtype=np.uint8)
        _recv_exact(conn, memoryview(data))
        piece = Piece(PieceId(version, group, index), data, digest.hex(), payload_size)
        try:
            self._put(piece, generation=generation, wait_s=wait_s)
        except Exception as e:  # every refusal goes back to the sender, which re-raises it
            return _status_of(e)
        self.received += 1
        return 0, b""

    def _call(self, conn: socket.socket) -> tuple[int, bytes]:
        size = bytearray(CALL.size)
        _recv_exact(conn, memoryview(size))
        text = bytearray(CALL.unpack(size)[0])
        _recv_exact(conn, memoryview(text))
        try:
            request = json.loads(text)
            method = self._calls.get(request["m"])
            if method is None:
                raise RecoveryError(f"keeper server: no call {request['m']!r} over the data plane")
            result = method(*decode(request["a"]))
            self.served += 1
            return 0, json.dumps(encode(result)).encode()
        except Exception as e:  # the caller re-raises it as the keeper's own exception
            return _status_of(e)


class KeeperLinks:
    """Caller side: pooled connections to keepers' servers, one per concurrent transfer or call."""

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
                head = bytes([OP_PIECE]) + REQUEST.pack(
                    id_.version, id_.group, id_.index, piece.payload_size, data.nbytes, generation, wait_s,
                    bytes.fromhex(piece.checksum),
                )  # fmt: skip
                sock.sendall(head)
                sock.sendall(data)  # straight from the piece's memory (a view of the shared buffer)
            results: list[Exception | None] = []
            for (address, sock), (_, piece, _, wait_s) in zip(opened, transfers, strict=True):
                sock.settimeout(self.timeout_s + wait_s)
                status, text = _reply(sock)
                sock.settimeout(self.timeout_s)
                results.append(
                    None if status == 0 else _error(status, text.decode(), address, f"storing piece {piece.id}")
                )
        except BaseException:
            for _, sock in opened:
                sock.close()
            raise
        for address, sock in opened:
            self._release(address, sock)
        return results

    def call(self, address: tuple[str, int, bytes], method: str, args: tuple, *, node: str) -> PendingCall:
        """Send the call ``method(*args)`` to the keeper at ``address``; the answer is read by
        :meth:`PendingCall.result`. Raises ``OSError`` if the request could not be sent (nothing
        reached the keeper: the caller may send it another way)."""
        request = json.dumps({"m": method, "a": encode(args)}).encode()
        sock = self._connection(address)
        try:
            sock.sendall(bytes([OP_CALL]) + CALL.pack(len(request)) + request)
        except BaseException:
            sock.close()
            raise
        return PendingCall(self, address, sock, node=node, call=method)

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

    def _release(self, address: tuple[str, int, bytes], sock: socket.socket) -> None:
        with self._lock:
            self._idle.setdefault(address, []).append(sock)

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


class PendingCall:
    """A call sent over the data plane whose answer has not been read yet.

    :meth:`result` reads it once and remembers it (or the error), so several waiters (a fault
    injection that waits for phase 1, then the commit that reads it) see the same answer.
    """

    def __init__(
        self, links: KeeperLinks, address: tuple[str, int, bytes], sock: socket.socket, *, node: str, call: str
    ):
        self._links, self._address, self._sock = links, address, sock
        self.node, self.call = node, call
        self._done = False
        self._value: Any = None
        self._error: Exception | None = None

    def result(self, timeout_s: float) -> Any:
        """The keeper's answer within ``timeout_s``; its refusal re-raised as its own exception.

        A keeper that does not answer in time raises ``KeeperTimeoutError`` (as a Ray call's wait
        would), one whose connection breaks raises :class:`LinkLostError`.
        """
        if not self._done:
            self._read(timeout_s)
        if self._error is not None:
            raise self._error
        return self._value

    def _read(self, timeout_s: float) -> None:
        sock, where = self._sock, f"the snapshot keeper on node {self.node[:8]}"
        try:
            sock.settimeout(max(timeout_s, 1e-3))
            status, text = _reply(sock)
        except TimeoutError:
            sock.close()
            self._done, self._error = (
                True,
                KeeperTimeoutError(
                    f"{where} did not answer {self.call} within {timeout_s:.0f} s: the keeper process is hung or its "
                    "node is cut off; check that node (`ray status`, and the keeper actor's log)"
                ),
            )
            return
        except OSError as e:
            sock.close()
            self._done, self._error = True, LinkLostError(f"{where}: connection lost during {self.call}: {e}")
            return
        self._links._release(self._address, sock)
        self._done = True
        if status == 0:
            self._value = decode(json.loads(text))
        else:
            self._error = _error(status, text.decode(), self._address, self.call)


def _reply(sock: socket.socket) -> tuple[int, bytearray]:
    reply = bytearray(REPLY.size)
    _recv_exact(sock, memoryview(reply))
    status, length = REPLY.unpack(reply)
    text = bytearray(length)
    _recv_exact(sock, memoryview(text))
    return status, text


def _error(status: int, text: str, address: tuple[str, int, bytes], what: str) -> Exception:
    kind = ERRORS[status - 1] if 0 < status <= len(ERRORS) else RecoveryError
    if status == OTHER:
        text = f"keeper at {address[0]}:{address[1]} failed {what}: {text}"
    return kind(text)
