"""Separate hosts on one machine: Linux network and mount namespaces, for tests of what crosses a network.

A :class:`HostNetwork` is a bridge in the test's (root) namespace with an address of its own; each
:class:`Host` is a network namespace joined to the bridge by a veth pair, with its own address, and
every process started on it (:meth:`Host.popen`) also gets a private mount namespace with a fresh
tmpfs over ``/tmp``. So a process on a host shares with the test process only what really crosses
the network (the bridge) or lies outside ``/tmp`` (the installed code, as an image would hold it):
it cannot open the driver's working files, which live under ``/tmp``.

:meth:`HostNetwork.cut` takes a host's link down — a partition, not a kill: its processes keep
running and cannot tell — and :meth:`HostNetwork.heal` brings it back. Everything the network
creates (namespaces, veths, the bridge, the processes on the hosts) is removed by :meth:`close`.
Names carry a random tag and the subnet is one the machine does not route, so a crashed run leaves
nothing that a later one collides with. Needs root and ``iproute2`` (:func:`can_make_hosts`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


def can_make_hosts() -> str:
    """'' when this process can create namespaces, else why not (for ``pytest.skip``)."""
    if os.geteuid() != 0:
        return "network and mount namespaces need root"
    missing = [tool for tool in ("ip", "unshare", "mount") if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (iproute2, util-linux)"
    return ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.231-10.250.x.0 that no route of this machine covers."""
    routes = _ip("-4", "route", "show", "table", "all").stdout
    used = []
    for line in routes.splitlines():
        with contextlib.suppress(ValueError, IndexError):
            used.append(ipaddress.ip_network(line.split()[0], strict=False))
    for second in range(231, 251):
        for third in range(0, 256, 7):
            net = ipaddress.ip_network(f"10.{second}.{third}.0/24")
            if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
                return net
    raise RuntimeError("no free 10.x subnet for the test network")


@dataclass
class Host:
    """One simulated machine: a network namespace with one interface (``eth0``) on the bridge."""

    name: str
    netns: str
    ip: str
    link: str  # the host-side end of the veth (on the bridge): take it down to partition this host
    processes: list[subprocess.Popen] = field(default_factory=list)

    def popen(self, argv: Sequence[str], *, env: dict[str, str] | None = None, log_path: str | None = None):
        """Start ``argv`` on this host with a private ``/tmp`` (a fresh tmpfs only it sees)."""
        script = 'mount -t tmpfs -o size=4g lmforge-tmp /tmp && exec "$@"'
        cmd = ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private"]
        cmd += ["sh", "-c", script, "sh", *argv]
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 (owned by the process)
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 60) -> str:
        """Run ``argv`` to completion on this host (private ``/tmp``); returns its stdout."""
        script = 'mount -t tmpfs -o size=64m lmforge-tmp /tmp && exec "$@"'
        cmd = ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private"]
        done = subprocess.run(
            [*cmd, "sh", "-c", script, "sh", *argv], env=env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode:
            raise RuntimeError(f"{argv[0]} on host {self.name} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    def kill(self) -> None:
        """Kill every process in this host's network namespace (what a pod deletion would do)."""
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        pids = _ip("netns", "pids", self.netns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


class HostNetwork:
    """A bridge with an address in the test's namespace, and hosts attached to it (a context manager)."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)  # interface names are limited to 15 characters
        self.subnet = _free_subnet()
        addresses = self.subnet.hosts()
        self.gateway = str(next(addresses))  # the bridge: the test process, the Ray head, the S3 server
        self._addresses = addresses
        self.bridge = f"lmbr{self.tag}"
        self.hosts: dict[str, Host] = {}

    def __enter__(self) -> HostNetwork:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_host(self, name: str) -> Host:
        """A new namespace ``name`` on the bridge with the next free address."""
        netns, link = f"lm{self.tag}{name}", f"lm{self.tag}{name}h"[:15]
        ip = str(next(self._addresses))
        _ip("netns", "add", netns)
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", link, "master", self.bridge)
        _ip("link", "set", link, "up")
        _ip("-n", netns, "addr", "add", f"{ip}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        host = Host(name=name, netns=netns, ip=ip, link=link)
        self.hosts[name] = host
        return host

    def cut(self, host: Host) -> None:
        """Partition ``host``: its link goes down, its processes keep running."""
        _ip("link", "set", host.link, "down")

    def heal(self, host: Host) -> None:
        _ip("link", "set", host.link, "up")

    def remove(self, host: Host) -> None:
        """Kill the host's processes and delete its namespace and veth."""
        host.kill()
        _ip("link", "del", host.link, check=False)
        _ip("netns", "del", host.netns, check=False)
        self.hosts.pop(host.name, None)

    def close(self) -> None:
        for host in list(self.hosts.values()):
            self.remove(host)
        _ip("link", "del", self.bridge, check=False)


def wait_for(predicate, *, timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def host_network() -> Iterator[HostNetwork]:
    with HostNetwork() as net:
        yield net
