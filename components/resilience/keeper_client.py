"""A keeper as its callers see it: one object that makes a call over the data plane or through Ray.

The calls every snapshot makes (a rank's hand-off, rank 0's prepare and commit) go over the keeper's
data plane (``dataplane.py``: a JSON request on a connection kept open) because a Ray actor call
costs the caller far more CPU, on the very processes that train. Every other call, and any call
whose connection cannot be made, goes through Ray as before, so a keeper that is gone still
surfaces as ``RayActorError`` and the protocol's handling of lost keepers (``commit.py``) is
unchanged.

Callers get a :class:`Pending` either way and read it with ``result(timeout_s)``: a Ray call that
misses its deadline raises ``KeeperTimeoutError`` naming the node and the call, and so does a link
call; a link broken after its request went out raises ``LinkLostError``. Both count as a lost
keeper (``commit.UNREACHABLE``).
"""

from __future__ import annotations

from typing import Any, Protocol

import ray
from ray.actor import ActorHandle

from components.common.log import get_logger
from components.resilience.dataplane import LINK_CALLS, KeeperLinks
from components.resilience.remote import CONTROL_TIMEOUT_S, wait_for

log = get_logger(__name__)


class Pending(Protocol):
    node: str
    call: str

    def result(self, timeout_s: float) -> Any: ...


class RayPending:
    """A keeper call made through Ray: its ObjectRef, read with a deadline that names node and call."""

    def __init__(self, ref: ray.ObjectRef, *, node: str, call: str) -> None:
        self.ref, self.node, self.call = ref, node, call

    def result(self, timeout_s: float) -> Any:
        return wait_for(self.ref, node=self.node, call=self.call, timeout_s=timeout_s)


Address = tuple[str, int, bytes]  # a keeper's data-plane server: (host, port, token)


class AddressBook:
    """Keepers' data-plane addresses by node, for every caller of a process that talks to keepers
    directly (a :class:`KeeperClient`, a keeper sending pieces to the others: ``spread.py``).

    An address is asked once, through Ray (the keeper's ``data_address``), and forgotten when a
    connection to it fails: the keeper may have restarted on a new port, and the next use asks again.
    """

    def __init__(self) -> None:
        self._known: dict[str, Address] = {}
        self.lookups = 0  # Ray calls made to ask addresses

    def get(self, node: str) -> Address | None:
        return self._known.get(node)

    def resolve(self, handles: dict[str, ActorHandle], instead: str) -> dict[str, Address]:
        """The addresses of the keepers in ``handles`` (node -> handle), asking those not known yet all at
        once; a keeper that cannot answer is left out, with a warning that says what its callers do
        ``instead``."""
        asked = {node: handle.data_address.remote() for node, handle in handles.items() if node not in self._known}
        self.lookups += len(asked)
        for node, ref in asked.items():
            try:
                self._known[node] = wait_for(ref, node=node, call="data_address", timeout_s=CONTROL_TIMEOUT_S)
            except Exception as e:  # a keeper gone already: its calls take the Ray path, which reports it
                log.warning("keeper on node %s: no data-plane address (%s); %s", node[:8], e, instead)
        return {node: self._known[node] for node in handles if node in self._known}

    def forget(self, node: str) -> None:
        self._known.pop(node, None)


class KeeperClient:
    """Calls to the keeper on ``node``: over ``links`` where the call allows it, else through ``handle``.

    ``links`` None makes a Ray-only client (recovery, tests that hold bare handles). The keeper's
    data-plane address comes from ``addresses`` (:class:`AddressBook`, one of the client's own unless
    given), asked on the first call that can use it; a connection that fails makes the next call ask
    again, and a keeper that cannot answer even that is called through Ray from then on.
    """

    def __init__(
        self, node: str, handle: ActorHandle, links: KeeperLinks | None = None, addresses: AddressBook | None = None
    ) -> None:
        self.node, self.handle, self.links = node, handle, links
        self.addresses = addresses if addresses is not None else AddressBook()
        self.link_calls = 0  # calls made over the data plane
        self.ray_calls = 0  # Ray calls made (including the address lookups)
        self._no_link = links is None

    def call(self, method: str, *args: Any, via_ray: bool = False) -> Pending:
        """Start ``method(*args)`` on the keeper; read the answer with ``.result(timeout_s)``."""
        if not via_ray and method in LINK_CALLS and not self._no_link:
            address = self.addresses.get(self.node) or self._lookup()
            if address is not None:
                try:
                    pending = self.links.call(address, method, args, node=self.node)
                except OSError as e:  # nothing reached the keeper: Ray reports what became of it
                    log.warning(
                        "keeper on node %s: data plane failed (%s); %s goes through Ray", self.node[:8], e, method
                    )
                    self.links.forget(address)
                    self.addresses.forget(self.node)
                else:
                    self.link_calls += 1
                    return pending
        self.ray_calls += 1
        return RayPending(getattr(self.handle, method).remote(*args), node=self.node, call=method)

    def _lookup(self) -> Address | None:
        before = self.addresses.lookups
        address = self.addresses.resolve({self.node: self.handle}, instead="calling it through Ray").get(self.node)
        self.ray_calls += self.addresses.lookups - before
        if address is None:
            self._no_link = True
        return address


def client_of(keeper: KeeperClient | ActorHandle, node: str) -> KeeperClient:
    """``keeper`` as a client: itself if it is one, else a Ray-only client of the handle."""
    return keeper if isinstance(keeper, KeeperClient) else KeeperClient(node, keeper)
