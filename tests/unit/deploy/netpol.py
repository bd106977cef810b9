"""Kubernetes NetworkPolicy semantics, evaluated on rendered objects: may pod A open a TCP/UDP
connection to port P of pod B?

No API server or CNI runs on the development machines, and the Python tools that analyse policies
(np-guard's network-config-analyzer) pull a pinned dependency tree of their own; the rules of
networking.k8s.io/v1 are short enough to state here, so the policy tests read as the spec does:

- A pod is *isolated* for ingress (egress) when some policy in its namespace selects it
  (``spec.podSelector``) and lists ``Ingress`` (``Egress``) in ``policyTypes``; a non-isolated pod
  allows everything in that direction. Policies are additive: any rule of any selecting policy admits.
- A rule with no ``from``/``to`` admits every peer; with no ``ports`` every port.
- A peer ``podSelector`` alone means pods of the policy's namespace; ``namespaceSelector`` alone all
  pods of the matching namespaces; both together the matching pods of the matching namespaces.
  ``ipBlock`` peers name addresses outside the pod network and never match a pod here.
- A connection happens only if the source's egress *and* the destination's ingress admit it.

Namespaces carry the label ``kubernetes.io/metadata.name`` (set by the API server since 1.21).
Named ports and ``endPort`` ranges are not used by lmforge and are treated as not matching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.namespace, tuple(sorted(self.labels.items()))))


def selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a label set; {} selects everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def namespace_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}


def peer_matches(peer: Obj, policy_namespace: str, pod: Pod) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespace_labels(pod.namespace)):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), pod.labels) if "podSelector" in peer else True


def port_matches(ports: list[Obj] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    return any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)


def policy_types(policy: Obj) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return spec["policyTypes"]
    return ["Ingress"] + (["Egress"] if "egress" in spec else [])


def _admits(policies: list[Obj], pod: Pod, other: Pod, port: int, protocol: str, direction: str) -> bool:
    """Whether ``pod``'s policies let traffic in ``direction`` with ``other`` through."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace") == pod.namespace
        and direction in policy_types(p)
        and selects(p["spec"].get("podSelector"), pod.labels)
    ]
    if not selecting:
        return True  # not isolated in this direction
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if peers and not any(peer_matches(peer, pod.namespace, other) for peer in peers):
                continue
            if port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(policies: list[Obj], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether ``src`` may connect to ``dst:port`` under ``policies`` (each with metadata.namespace set)."""
    return _admits(policies, src, dst, port, protocol, "Egress") and _admits(
        policies, dst, src, port, protocol, "Ingress"
    )


def network_policies(objects: list[Obj], release_namespace: str) -> list[Obj]:
    """The NetworkPolicies among rendered objects, each with its namespace filled in (Helm leaves the
    release namespace implicit)."""
    out = []
    for obj in objects:
        if obj.get("kind") == "NetworkPolicy":
            obj = {**obj, "metadata": {**obj["metadata"]}}
            obj["metadata"].setdefault("namespace", release_namespace)
            out.append(obj)
    return out
