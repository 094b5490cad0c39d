"""Direct reads and writes of the test etcd, through its own JSON gateway: only to put the
datastore into a state that a crash leaves behind, which the API cannot produce on purpose."""

from __future__ import annotations

import base64
import json
from typing import Any

import requests

from tests.support.controlplane import ControlPlane

CRD_KEY = "/registry/apiextensions.k8s.io/customresourcedefinitions/{name}"


def _key(name: str) -> str:
    return base64.b64encode(CRD_KEY.format(name=name).encode()).decode()


def read_crd(plane: ControlPlane, name: str) -> dict[str, Any]:
    answer = requests.post(f"http://127.0.0.1:{plane.etcd_port}/v3/kv/range", json={"key": _key(name)}, timeout=10)
    answer.raise_for_status()
    return json.loads(base64.b64decode(answer.json()["kvs"][0]["value"]))


def write_crd(plane: ControlPlane, crd: dict[str, Any]) -> None:
    value = base64.b64encode(json.dumps(crd).encode()).decode()
    answer = requests.post(f"http://127.0.0.1:{plane.etcd_port}/v3/kv/put",
                           json={"key": _key(crd["metadata"]["name"]), "value": value}, timeout=10)
    answer.raise_for_status()


def leave_crd_installing(plane: ControlPlane, name: str) -> None:
    """What an apiserver killed between accepting a new CRD's names and establishing it leaves:
    NamesAccepted=True, Established=False "Installing", and nothing queued to finish the job."""
    plane.stop_apiserver()
    crd = read_crd(plane, name)
    for condition in crd["status"]["conditions"]:
        if condition["type"] == "Established":
            condition.update(status="False", reason="Installing", message="the initial names have been accepted")
    write_crd(plane, crd)
    plane.start_apiserver()
