"""Calico on the test control plane: CRDs installed as Helm does, Calico's own objects, and
snapshots that show whether anything was written."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support.controlplane import ControlPlane

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(path.read_bytes(), Loader=yaml.CSafeLoader) if doc]


def install_crds_like_helm(plane: ControlPlane, manifest: Path, only: set[str] | None = None) -> None:
    """Helm creates a chart's crds/ once, with a plain create and field manager `helm`."""
    documents = [doc for doc in load_documents(manifest) if only is None or doc["metadata"]["name"] in only]
    for document in documents:
        response = plane.api("POST", CRDS, document, params={"fieldManager": "helm"})
        assert response.status_code == 201, response.text[:500]
    wait_established(plane, [doc["metadata"]["name"] for doc in documents])


def wait_established(plane: ControlPlane, names: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending and time.monotonic() < deadline:
        pending = [name for name in pending if not _established(plane.get(f"{CRDS}/{name}"))]
        if pending:
            time.sleep(0.1)
    assert not pending, f"not Established: {pending}"


def _established(crd: dict[str, Any] | None) -> bool:
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def crd_state(plane: ControlPlane) -> dict[str, tuple[str, int]]:
    """Every CRD's resourceVersion and generation: equal snapshots mean nothing was written."""
    listed = plane.api("GET", CRDS, accept="application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")
    listed.raise_for_status()
    items = listed.json()["items"]  # metadata only: resourceVersion and generation are all it needs
    return {crd["metadata"]["name"]: (crd["metadata"]["resourceVersion"], crd["metadata"]["generation"])
            for crd in items}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll instead of sleeping a fixed time: done as soon as the condition holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def settled_crd_state(plane: ControlPlane, quiet_seconds: float = 0.3) -> dict[str, tuple[str, int]]:
    """The snapshot once the apiserver's own CRD controllers stopped writing conditions."""
    previous = crd_state(plane)
    for _ in range(30):
        time.sleep(quiet_seconds)
        current = crd_state(plane)
        if current == previous:
            return current
        previous = current
    raise AssertionError("CRDs kept changing without any client writing")


TIERS = "/apis/crd.projectcalico.org/v1/tiers"
CUSTOM_RESOURCES = {
    "/apis/crd.projectcalico.org/v1/ippools/default-ipv4-ippool": {
        "apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
        "metadata": {"name": "default-ipv4-ippool"},
        "spec": {"cidr": "192.168.0.0/16", "ipipMode": "Always", "natOutgoing": True,
                 "nodeSelector": "all()", "blockSize": 26}},
    "/apis/crd.projectcalico.org/v1/felixconfigurations/default": {
        "apiVersion": "crd.projectcalico.org/v1", "kind": "FelixConfiguration",
        "metadata": {"name": "default"},
        "spec": {"bpfEnabled": False, "logSeverityScreen": "Info", "reportingInterval": "0s"}},
    "/apis/crd.projectcalico.org/v1/bgpconfigurations/default": {
        "apiVersion": "crd.projectcalico.org/v1", "kind": "BGPConfiguration",
        "metadata": {"name": "default"},
        "spec": {"asNumber": 64512, "logSeverityScreen": "Info", "nodeToNodeMeshEnabled": True}},
    # Calico stores a policy of the default tier as default.<name>
    "/apis/crd.projectcalico.org/v1/namespaces/default/networkpolicies/default.allow-dns": {
        "apiVersion": "crd.projectcalico.org/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "default.allow-dns", "namespace": "default"},
        "spec": {"tier": "default", "order": 10, "selector": "all()", "types": ["Egress"],
                 "egress": [{"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}}]}},
    "/apis/crd.projectcalico.org/v1/globalnetworkpolicies/default.deny-egress-metadata": {
        "apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "default.deny-egress-metadata"},
        "spec": {"tier": "default", "order": 100, "selector": "all()", "types": ["Egress"],
                 "egress": [{"action": "Deny", "destination": {"nets": ["169.254.169.254/32"]}}]}},
}


def create_custom_resources(plane) -> None:
    for path, body in CUSTOM_RESOURCES.items():
        collection = path.rsplit("/", 1)[0]
        response = plane.api("POST", collection, body)
        assert response.status_code == 201, response.text[:300]


def set_running_version(plane, tag: str) -> None:
    body = {"apiVersion": "crd.projectcalico.org/v1", "kind": "ClusterInformation",
            "metadata": {"name": "default"},
            "spec": {"calicoVersion": tag, "clusterType": "typha,kdd,k8s,operator,bgp", "datastoreReady": True}}
    response = plane.api("PATCH", "/apis/crd.projectcalico.org/v1/clusterinformations/default", body,
                         content_type="application/apply-patch+yaml",
                         params={"fieldManager": "calico-node", "force": "true"})
    assert response.status_code in (200, 201), response.text[:300]


def tier(plane, name: str) -> dict | None:
    return plane.get(f"{TIERS}/{name}")


def tier_names(plane) -> set[str]:
    found = plane.get(TIERS)
    return {item["metadata"]["name"] for item in (found or {}).get("items", [])}


@contextlib.contextmanager
def ends_as_it_began(plane: ControlPlane) -> Iterator[None]:
    """For a control plane a module's tests share: they may only read, or write under their own
    names; at the end every CRD and every Tier must be as at the start."""
    before = settled_crd_state(plane, quiet_seconds=0.2), tier_names(plane)
    yield
    after = settled_crd_state(plane, quiet_seconds=0.2), tier_names(plane)
    assert after == before, "a test changed the shared control plane"
