"""Stream a RayJob's driver output into a step's log: the log of KubeRay's submitter pod.

In K8sJobMode KubeRay runs a Kubernetes Job, named after the RayJob, whose pod runs ``ray job submit
--no-wait`` and then ``ray job logs --follow``: that pod's log *is* the driver's output. KubeRay labels
the pod ``ray.io/originated-from-cr-name=<rayjob>`` and ``ray.io/originated-from-crd=RayJob``
(``getSubmitterTemplate`` in ray-operator/controllers/ray/rayjob_controller.go); head and worker pods do
not carry these labels. The Job may run several pods one after another (the submitter Job retries up to
its backoffLimit, and a retry only re-attaches to the Ray job), so pods are followed in creation order,
each once, ignoring pods older than the RayJob (left over from a replaced one). A step that re-attaches
to a running RayJob replays the driver's output from its start, so its log holds the whole run.

A follow is ``pods/log?follow=true&timestamps=true``. When the stream breaks while the pod still runs
(an API server restart, an idle read timeout), it resumes with ``sinceSeconds`` covering the gap and
drops the lines whose timestamp was already passed on, so nothing is lost or doubled.

Finding the pod polls the pod list instead of watching it: the search must stop promptly when the job
ends before any submitter pod started (a rejected spec, a deadline), and it only lasts until the pod
starts. The RayJob's status itself is watched (kube_launcher).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from datetime import datetime

import urllib3
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

# A quiet driver (a long evaluation) must not look like a dead connection: reconnecting after this
# many idle seconds is cheap, since resumed lines are deduplicated.
READ_TIMEOUT_SECONDS = 120
_FINISHED_PHASES = ("Succeeded", "Failed")


def submitter_selector(rayjob: str) -> str:
    return f"ray.io/originated-from-cr-name={rayjob},ray.io/originated-from-crd=RayJob"


class SubmitterLogs:
    """A thread that passes each line of the RayJob's submitter pods to ``log``."""

    def __init__(
        self,
        core: CoreV1Api,
        namespace: str,
        rayjob: str,
        *,
        container: str,
        not_before: str,
        log: Callable[[str], None],
        poll_seconds: float,
    ):
        self._core, self._ns, self._rayjob, self._container = core, namespace, rayjob, container
        self._not_before = _parse_time(not_before)
        self._log, self._poll = log, poll_seconds
        self._finished = threading.Event()  # the RayJob reached a terminal state: drain, then stop
        self._stopped = threading.Event()  # the launcher stopped waiting: emit nothing more
        self._response = None
        self._thread = threading.Thread(target=self._run, name=f"logs-{rayjob}", daemon=True)
        self.last_line = ""
        self.lines = 0

    def start(self) -> SubmitterLogs:
        self._thread.start()
        return self

    def finish(self, drain_seconds: float) -> None:
        """Let the pods that ran finish their logs (up to ``drain_seconds``), then stop."""
        self._finished.set()
        self._thread.join(drain_seconds)
        self._stopped.set()
        if self._thread.is_alive() and self._response is not None:
            with contextlib.suppress(Exception):  # racing the thread's own close is harmless
                self._response.close()  # unblocks a follow whose pod never ends

    # --- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        done: set[str] = set()
        while not self._stopped.is_set():
            pod = self._next_pod(done)
            if pod is not None:
                self._follow(pod)
                done.add(pod)
            elif self._finished.is_set():
                return  # listed once more after the end: nothing left to read
            else:
                self._finished.wait(self._poll)

    def _next_pod(self, done: set[str]) -> str | None:
        """The oldest submitter pod not yet followed, once its container started; None while there is none."""
        try:
            pods = self._core.list_namespaced_pod(
                self._ns, label_selector=submitter_selector(self._rayjob), _request_timeout=30
            ).items
        except (ApiException, urllib3.exceptions.HTTPError, OSError):
            return None  # the next poll asks again
        pods = [p for p in pods if p.metadata.creation_timestamp >= self._not_before and p.metadata.name not in done]
        # creationTimestamp has one-second resolution, enough here: the Job controller waits at least 10 s
        # (doubling) before it starts the next attempt.
        pods.sort(key=lambda p: (p.metadata.creation_timestamp, p.metadata.name))
        # Pending = not started: no log yet. Strict order, so lines never interleave across attempts.
        if pods and ((pods[0].status and pods[0].status.phase) or "Pending") != "Pending":
            return pods[0].metadata.name
        return None

    def _follow(self, pod: str) -> None:
        last_stamp: tuple[str, int] | None = None
        last_seen = 0.0
        # A stream also ends when it breaks, and the pod may finish before we look: only a read that
        # began after the pod had finished is known to hold the end of its log.
        finished = False
        while not self._stopped.is_set():
            kwargs = {}
            if last_stamp is not None:
                # Resume a little before the last line; the stamps drop what was already passed on.
                kwargs["since_seconds"] = int(time.time() - last_seen) + 60
            try:
                self._response = self._core.read_namespaced_pod_log(
                    pod, self._ns, container=self._container, follow=True, timestamps=True,
                    _preload_content=False, _request_timeout=(30, READ_TIMEOUT_SECONDS), **kwargs,
                )  # fmt: skip
                for raw in iter_resp_lines(self._response):
                    stamp, text = _split_stamp(raw)
                    if stamp is not None:
                        if last_stamp is not None and stamp <= last_stamp:
                            continue
                        last_stamp, last_seen = stamp, time.time()
                    self._emit(text)
            except ApiException as e:
                if e.status == 404:
                    return  # the pod is gone (the RayJob was deleted)
            except (urllib3.exceptions.HTTPError, OSError, ValueError):
                pass  # the stream broke (or was closed by finish()): resume below if the pod still runs
            finally:
                if self._response is not None:
                    self._response.release_conn()
                self._response = None
            if finished:
                return
            finished = self._pod_finished(pod)
            if not finished:
                self._stopped.wait(self._poll)

    def _pod_finished(self, pod: str) -> bool:
        try:
            phase = self._core.read_namespaced_pod(pod, self._ns, _request_timeout=30).status.phase
        except ApiException as e:
            return e.status == 404
        except (urllib3.exceptions.HTTPError, OSError):
            return False
        return phase in _FINISHED_PHASES

    def _emit(self, text: str) -> None:
        if self._stopped.is_set():
            return
        self.lines += 1
        if text.strip():
            self.last_line = text.strip()
        self._log(text)


def _parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _split_stamp(line: str) -> tuple[tuple[str, int] | None, str]:
    """``2026-01-02T03:04:05.123456789Z text`` → ((seconds part, nanoseconds), text).

    The kubelet writes RFC 3339 with up to nine fraction digits and trailing zeros dropped, so stamps are
    compared as (second, nanosecond) pairs, not as strings.
    """
    head, sep, text = line.partition(" ")
    if not sep or len(head) < 20 or head[4] != "-" or head[10] != "T" or not head.endswith("Z"):
        return None, line
    seconds, _, fraction = head[:-1].partition(".")
    if not fraction.isdigit() and fraction:
        return None, line
    return (seconds, int((fraction or "0").ljust(9, "0")[:9])), text
