"""A Ray cluster whose worker nodes are separate hosts (``tests/hosts.py``): the shape of a KubeRay cluster.

The head runs in the test's namespace on the bridge address, with no CPUs (training never lands on
it) and fast health checks, so a partitioned node is declared dead in seconds rather than a minute.
Every worker node is ``ray start --address … --block`` on its own host: its own address, its own
private ``/tmp``, and the Ray node label ``lmforge.io/host`` naming the host, as the RayJob builder
sets from the Kubernetes node name. :meth:`RayHosts.add_worker` is what KubeRay does when a worker pod
is replaced. The test process is the Ray driver (``ray.init`` on the head's address).

Multi-node Ray on one machine needs ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` (with 0 Ray refuses the
joins) and, from Ray 2.60, the same ``RAY_AUTH_MODE=token`` and token on every node and the driver;
both are set for the cluster's lifetime and restored after. Ray reads the authentication mode into
a per-process cache when it is imported, so the driver's cache is refreshed after the change (what
Ray itself does when it turns token authentication on for a local cluster).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.hosts import Host, HostNetwork, wait_for

HOST_LABEL = "lmforge.io/host"
RAY = str(Path(sys.executable).parent / "ray")
# A dead node is noticed after ~2 s of failed health checks instead of Ray's default ~30 s.
HEAD_SYSTEM_CONFIG = {
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 4,
}


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@dataclass
class RayHosts:
    net: HostNetwork
    address: str  # the head's GCS address, gateway:port
    env: dict[str, str]  # what every node (and the driver) runs with
    logs: Path

    def add_worker(self, name: str, *, cpus: int = 1) -> Host:
        """A new host running a Ray worker node with ``cpus`` CPUs; returns once the node joined."""
        host = self.net.add_host(name)
        before = len(self.alive())
        env = {**self.env, "GLOO_SOCKET_IFNAME": "eth0"}  # gloo would pick the machine's hostname address
        argv = [RAY, "start", "--address", self.address, "--node-ip-address", host.ip, f"--num-cpus={cpus}"]
        argv += ["--temp-dir", "/tmp/ray", "--labels", f"{HOST_LABEL}={name}", "--block", "--disable-usage-stats"]
        host.popen(argv, env=env, log_path=str(self.logs / f"{name}.log"))
        wait_for(lambda: len(self.alive()) > before, timeout=60, what=f"Ray node on host {name} to join")
        return host

    def alive(self) -> list[dict]:
        import ray

        return [n for n in ray.nodes() if n["Alive"]]

    def node_of(self, host: Host) -> dict | None:
        """The Ray node (alive or dead) that ran on ``host``."""
        import ray

        found = [n for n in ray.nodes() if n["NodeManagerAddress"] == host.ip]
        return max(found, key=lambda n: n["Alive"]) if found else None


@contextlib.contextmanager
def ray_on_hosts(
    net: HostNetwork, workers: tuple[str, ...] = ("w1", "w2"), extra_env: dict | None = None
) -> Iterator[RayHosts]:
    """A Ray head on the bridge and one worker node per name in ``workers``; the test process is the driver."""
    import ray

    token = os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(16)
    cluster_env = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        **(extra_env or {}),
    }
    saved = {k: os.environ.get(k) for k in cluster_env}
    os.environ.update(cluster_env)
    _refresh_ray_auth()
    logs = Path(tempfile.mkdtemp(prefix="lmforge-hosts-logs-"))
    head_tmp = tempfile.mkdtemp(prefix="lmh", dir="/tmp")  # short: AF_UNIX socket paths are limited
    port = _free_port(net.gateway)
    argv = [RAY, "start", "--head", "--node-ip-address", net.gateway, f"--port={port}", "--num-cpus=0"]
    argv += ["--include-dashboard=false"]
    argv += ["--temp-dir", head_tmp, "--system-config", json.dumps(HEAD_SYSTEM_CONFIG), "--block"]
    argv += ["--disable-usage-stats", "--labels", f"{HOST_LABEL}=head"]
    with open(logs / "head.log", "ab") as out:
        head = subprocess.Popen(
            argv, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    hosts = RayHosts(net=net, address=f"{net.gateway}:{port}", env=dict(os.environ), logs=logs)
    try:
        wait_for(lambda: _accepts(net.gateway, port), timeout=60, what="the Ray head's GCS")
        ray.init(address=hosts.address, _node_ip_address=net.gateway, logging_level="WARNING")
        for name in workers:
            hosts.add_worker(name)
        yield hosts
    finally:
        ray.shutdown()
        for host in list(net.hosts.values()):
            net.remove(host)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)  # nothing of the session is worth keeping: do not wait long
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
        _kill_session_leftovers(head_tmp)
        shutil.rmtree(head_tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_ray_auth()


def _refresh_ray_auth() -> None:
    """Make this process's Ray see the current RAY_AUTH_MODE/RAY_AUTH_TOKEN (both are cached)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _kill_session_leftovers(temp_dir: str) -> None:
    """Kill processes of the head's Ray session that outlived ``ray start --block`` (they name its temp dir)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if temp_dir.encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
