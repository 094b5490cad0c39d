"""Taking over what Helm's and kubectl's client-side writes own on a Calico CRD.

Server-side apply removes a field that the applier owned and no longer sends, but only when no other
manager owns it too. A CRD installed by `helm install` (or `kubectl create/replace/apply`) is owned
by that client's Update entry, so a label, annotation or `names.categories` entry that the target
release dropped would stay forever under a forced apply. Like client-go's `csaupgrade`, the run
moves those entries' field sets into its own Apply entry (one JSON patch, guarded by the
resourceVersion) just before it applies; the apply then removes what the target no longer has.
Fields of any other manager (a user's `kubectl annotate`) are left alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from calico_crd_hook.client import CRDS_PATH, FIELD_MANAGER, OBJECT_METADATA_ONLY, Cluster
from calico_crd_hook.errors import ApiError, ClusterError

# The writers of Calico's install paths: Helm (3 creates crds/ with an Update, 4 with a server-side
# Apply; either way its ownership outlives the chart's CRDs), Flux's helm-controller, kubectl
# apply/create/replace (Calico's manifest install), and the apiserver's placeholder for ownership
# recorded before managed fields existed.
LEGACY_MANAGERS = frozenset({"helm", "helm-controller", "kubectl-client-side-apply", "kubectl-create",
                             "kubectl-replace", "before-first-apply"})
CRD_API_VERSION = "apiextensions.k8s.io/v1"
MIGRATION_ATTEMPTS = 3

# Fields the apiserver sets when a CRD leaves them out: removing such a field is no change when the
# live value is the default (Helm's create owns them because it sent the object after defaulting).
_SERVER_DEFAULTS: dict[tuple[str, ...], Callable[[dict[str, Any]], Any]] = {
    ("f:spec", "f:conversion"): lambda crd: {"strategy": "None"},
    ("f:spec", "f:conversion", "f:strategy"): lambda crd: "None",
    ("f:spec", "f:names", "f:singular"): lambda crd: _kind(crd).lower(),
    ("f:spec", "f:names", "f:listKind"): lambda crd: _kind(crd) + "List",
}


def served_spec(document: dict[str, Any]) -> dict[str, Any]:
    """`document`'s spec as the apiserver keeps it: the defaults above filled in, and a false
    `preserveUnknownFields` left out (the apiserver omits it). Copies only what it changes."""
    served = document
    for path, default in _SERVER_DEFAULTS.items():
        served = _with_default(served, [key[2:] for key in path], default(document))
    spec: dict[str, Any] = served["spec"]
    if spec.get("preserveUnknownFields") is False:
        spec = {key: value for key, value in spec.items() if key != "preserveUnknownFields"}
    return spec


def _with_default(obj: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    head, *rest = path
    if not rest:
        return obj if head in obj else {**obj, head: value}
    return {**obj, head: _with_default(obj.get(head) or {}, rest, value)}


def legacy_entries(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The managed-field entries of client-side writers that the run takes over."""
    return [entry for entry in metadata.get("managedFields") or [] if _is_legacy(entry)]


def _is_legacy(entry: dict[str, Any]) -> bool:
    return (entry.get("manager") in LEGACY_MANAGERS and not entry.get("subresource")
            and entry.get("apiVersion") == CRD_API_VERSION and entry.get("fieldsType") == "FieldsV1")


def leftovers(live: dict[str, Any], document: dict[str, Any]) -> tuple[str, ...]:
    """Paths (`metadata.labels.x`, `spec.names.categories`) that only client-side writers own, that
    the target's document does not set, and that the apiserver would not set back to the same
    value: what taking over ownership removes from the live CRD."""
    entries = (live.get("metadata") or {}).get("managedFields") or []
    legacy = [entry["fieldsV1"] for entry in entries if _is_legacy(entry)]
    if not legacy:
        return ()
    others = [entry.get("fieldsV1") or {} for entry in entries
              if not _is_legacy(entry) and entry.get("manager") != FIELD_MANAGER and not entry.get("subresource")]
    found = []
    for path in sorted({path for fields in legacy for path in _owned_paths(fields)}):
        if path[0] == "f:status" or _is_flux_origin_label(path) or any(_owns(fields, path) for fields in others):
            continue
        if _present(document, path) or _defaulted_to_live_value(live, document, path):
            continue
        found.append(_readable(path))
    return tuple(_outermost(found))


# helm-controller labels each CRD of a chart's crds/ with the HelmRelease it came from
# (internal/action/crds.go, applyCRDs): its bookkeeping, not a leftover of an older document.
_FLUX_ORIGIN_LABEL_PREFIX = "f:helm.toolkit.fluxcd.io/"


def _is_flux_origin_label(path: tuple[str, ...]) -> bool:
    return path[:2] == ("f:metadata", "f:labels") and len(path) > 2 and path[2].startswith(_FLUX_ORIGIN_LABEL_PREFIX)


def take_over(cluster: Cluster, name: str) -> bool:
    """Move the client-side writers' field sets of CRD `name` into our Apply entry. True when
    there was anything to move. A concurrent write is met by reading again (the patch carries the
    resourceVersion it was computed from)."""
    for _ in range(MIGRATION_ATTEMPTS):
        live = cluster.get(f"{CRDS_PATH}/{name}", accept=OBJECT_METADATA_ONLY)
        if live is None or not legacy_entries(live["metadata"]):
            return False
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": live["metadata"]["resourceVersion"]},
                 {"op": "replace", "path": "/metadata/managedFields", "value": merged_entries(live["metadata"])}]
        try:
            cluster.request("PATCH", f"{CRDS_PATH}/{name}", json_body=json.dumps(patch).encode(),
                            content_type="application/json-patch+json", accept=OBJECT_METADATA_ONLY)
            return True
        except ApiError as error:
            if error.status not in (409, 422):  # 422: the resourceVersion test failed
                raise
    raise ClusterError(f"CRD {name} kept changing while the run took over Helm's/kubectl's ownership of it "
                       f"({MIGRATION_ATTEMPTS} tries): find what keeps writing it, then rerun")


def merged_entries(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The CRD's managed fields with every client-side writer's set folded into our Apply entry."""
    entries = metadata.get("managedFields") or []
    ours = next((entry for entry in entries if entry.get("manager") == FIELD_MANAGER
                 and entry.get("operation") == "Apply" and not entry.get("subresource")), None)
    fields: dict[str, Any] = dict((ours or {}).get("fieldsV1") or {})
    for entry in entries:
        if _is_legacy(entry):
            fields = _union(fields, entry["fieldsV1"])
    merged = {"manager": FIELD_MANAGER, "operation": "Apply", "apiVersion": CRD_API_VERSION,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "fieldsType": "FieldsV1",
              "fieldsV1": fields}
    kept = [entry for entry in entries if entry is not ours and not _is_legacy(entry)]
    return [*kept, merged]


def _union(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    merged = dict(left)
    for key, child in right.items():
        merged[key] = _union(merged[key], child) if key in merged else child
    return merged


def _owned_paths(fields: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every path a field set owns: its leaves, and the nodes marked with "." (owned themselves)."""
    found = []
    for key, child in fields.items():
        if key == ".":
            continue
        path = (*prefix, key)
        if not child or "." in child:
            found.append(path)
        found += _owned_paths(child or {}, path)
    return found


def _owns(fields: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = fields
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _present(document: Any, path: tuple[str, ...]) -> bool:
    node = document
    for key in path:
        kind, _, value = key.partition(":")
        if kind == "f" and isinstance(node, dict) and value in node:
            node = node[value]
        elif kind == "k" and isinstance(node, list):
            wanted = json.loads(value)
            node = next((item for item in node if isinstance(item, dict)
                         and all(item.get(k) == v for k, v in wanted.items())), None)
            if node is None:
                return False
        elif kind == "v" and isinstance(node, list):
            if json.loads(value) not in node:
                return False
            node = json.loads(value)
        elif kind == "i" and isinstance(node, list) and value.isdigit() and int(value) < len(node):
            node = node[int(value)]
        else:
            return False
    return True


def _defaulted_to_live_value(live: dict[str, Any], document: dict[str, Any], path: tuple[str, ...]) -> bool:
    default = _SERVER_DEFAULTS.get(path)
    if default is None:
        return False
    if "spec" not in live:  # metadata only: the value is unknown, and a default is the likely one
        return True
    node: Any = live
    for key in path:
        node = node.get(key[2:]) if isinstance(node, dict) else None
    return bool(node == default(document))


def _kind(crd: dict[str, Any]) -> str:
    return str(((crd.get("spec") or {}).get("names") or {}).get("kind") or "")


def _readable(path: tuple[str, ...]) -> str:
    """`spec.versions[{"name":"v2"}]`, `metadata.finalizers["a"]`."""
    return "".join(f".{key[2:]}" if key.startswith("f:") else f"[{key[2:]}]" for key in path).lstrip(".")


def _outermost(paths: list[str]) -> list[str]:
    """`metadata.labels` alone, not also each of its keys."""
    return [path for path in paths
            if not any(path.startswith((other + ".", other + "[")) for other in paths if other != path)]
