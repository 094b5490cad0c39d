"""The ClusterRole docs/rbac.md documents, and a ServiceAccount bound to it on the test cluster."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from calico_crd_hook.preflight import REMOVED_POLICY_CRDS
from calico_crd_hook.releases import release_table
from calico_crd_hook.version import ApiMode, parse_version

from tests.support.controlplane import ControlPlane

RBAC_DOC = Path(__file__).resolve().parents[2] / "docs" / "rbac.md"


def documented_cluster_role(crd_names: list[str] | None = None) -> dict[str, Any]:
    """The documented ClusterRole; with `crd_names`, as the chart renders it for a release the
    table knows: get and patch on CRDs limited to those names, list and create as they are."""
    text = RBAC_DOC.read_text()
    block = re.search(r"<!-- clusterrole:begin -->\s*```yaml\n(.*?)```\s*<!-- clusterrole:end -->", text, re.S)
    assert block, "docs/rbac.md lost its ClusterRole block"
    role = yaml.safe_load(block.group(1))
    if crd_names is not None:
        crds = role["rules"][0]
        assert crds["resources"] == ["customresourcedefinitions"] and "resourceNames" not in crds
        by_name = {**crds, "resourceNames": crd_names, "verbs": [v for v in crds["verbs"] if v in ("get", "patch")]}
        role["rules"][0:1] = [{**crds, "verbs": [v for v in crds["verbs"] if v in ("list", "create")]}, by_name]
    return role


def documented_events_role() -> dict[str, Any]:
    text = RBAC_DOC.read_text()
    block = re.search(r"<!-- eventsrole:begin -->\s*```yaml\n(.*?)```\s*<!-- eventsrole:end -->", text, re.S)
    assert block, "docs/rbac.md lost its events Role block"
    return yaml.safe_load(block.group(1))


def release_crd_names(tag: str) -> list[str]:
    """The CRD names the chart limits get and patch to for `tag`, from the shipped table (not from
    the generated template): both API modes' files, and the policy CRDs v3.32 removes."""
    table = release_table()
    names = {name for mode in ApiMode if (file := table.file_for(parse_version(tag), mode)) for name in file.crds}
    return sorted(names | set(REMOVED_POLICY_CRDS))


def without_verb(role: dict[str, Any], rule_index: int, verb: str) -> dict[str, Any]:
    reduced = copy.deepcopy(role)
    rule = reduced["rules"][rule_index]
    rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    if not rule["verbs"]:
        del reduced["rules"][rule_index]
    return reduced


def bind_service_account(plane: ControlPlane, role: dict[str, Any], name: str = "calico-crd-hook",
                         namespace: str = "default") -> str:
    """Create the ClusterRole, a ServiceAccount and the binding; return a TokenRequest token."""
    role = dict(role, metadata={"name": name})
    assert plane.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", role).status_code == 201
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    assert plane.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding).status_code == 201
    return plane.service_account_token(namespace, name)


def in_cluster_env(plane: ControlPlane, token: str, folder: Path) -> dict[str, str]:
    """What a Pod sees: the service host and port, a token file and the cluster CA."""
    token_file = folder / "token"
    token_file.write_text(token)
    return {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(plane.port),
        "CALICO_CRD_HOOK_TOKEN_FILE": str(token_file),
        "CALICO_CRD_HOOK_SERVICE_CA_FILE": str(plane.ca_file),
    }
