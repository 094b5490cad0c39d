"""The fast path for a run with nothing to do (Argo CD runs the hook on every sync).

From one metadata-only LIST of the CRDs, one aggregated discovery request and a read of each
built-in Tier, decide that the cluster already holds the target release, without fetching or
parsing the manifest and without a dry-run. It holds when every CRD of the target release still
holds the document this program applied (`holds_applied_document`), every one is served
(Established), and every Tier the version needs exists. Anything less takes the full path.

"Holds" is decided by content, never by who wrote last: Argo CD re-applying the chart's `crds/`,
the operator's Update of its identical copies or a user's `kubectl apply --server-side` of the
same release change no spec and no label or annotation of the document, so they leave the next
run here; an edited description, a dropped version or a changed label does not.
"""

from __future__ import annotations

import logging
from typing import Any

from calico_crd_hook.client import Cluster
from calico_crd_hook.errors import ApiError
from calico_crd_hook.releases import (
    DIGEST_ANNOTATION,
    GENERATION_ANNOTATION,
    DocumentMetadata,
    ReleaseFile,
    release_table,
)
from calico_crd_hook.version import ApiMode, CalicoVersion, required_tiers

log = logging.getLogger(__name__)

AGGREGATED_DISCOVERY = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def already_current(cluster: Cluster, live: dict[str, dict[str, Any]], released: ReleaseFile,
                    target: CalicoVersion, mode: ApiMode) -> bool:
    """`live` is the metadata-only LIST; False (with the reason logged) takes the full path."""
    reason = _first_difference(live, released) or _not_served(cluster, released)
    if reason is None:
        tiers = tuple(tier.name for tier in required_tiers(target))
        collection = mode.tiers_path
        found = cluster.map_concurrently(lambda name: cluster.get(f"{collection}/{name}"), tiers)
        missing = [name for name, tier in zip(tiers, found) if tier is None]
        if not missing:
            return True
        reason = f"Tier {missing[0]} is missing"
    log.info("not already current (%s): taking the full path", reason)
    return False


def _first_difference(live: dict[str, dict[str, Any]], released: ReleaseFile) -> str | None:
    documents = release_table().documents
    for name, digest in released.crds.items():
        metadata = (live.get(name) or {}).get("metadata")
        if metadata is None:
            return f"CRD {name} is missing"
        reason = holds_applied_document(metadata, digest, documents.get(digest))
        if reason:
            return f"CRD {name} {reason}"
    return None


def holds_applied_document(metadata: dict[str, Any], digest: str, document: DocumentMetadata | None) -> str | None:
    """None when a live CRD's metadata shows it still holds the document of `digest` as this
    program applied it, else what differs. The spec: our apply recorded the document's digest and
    the generation it left, and the generation has not moved since (it moves on every spec change,
    by anyone). The metadata: every label and annotation the document sets has its value."""
    annotations = metadata.get("annotations") or {}
    if annotations.get(DIGEST_ANNOTATION) != digest:
        return "does not carry the target's digest"
    recorded = annotations.get(GENERATION_ANNOTATION)
    if recorded is None:
        return "has no generation recorded by our apply"
    if recorded != str(metadata.get("generation")):
        return f"changed since our apply (generation {metadata.get('generation')}, applied at {recorded})"
    if document is None:
        return "has a document whose labels and annotations the release table lacks"
    labels = metadata.get("labels") or {}
    for kind, expected, found in (("label", document.labels, labels), ("annotation", document.annotations, annotations)):
        for key, value in expected.items():
            if found.get(key) != value:
                return f"has {kind} {key}={found.get(key)!r}, not the release's {value!r}"
    return None


def _not_served(cluster: Cluster, released: ReleaseFile) -> str | None:
    """A CRD the apiserver has not Established (say, left Installing by a crash) is not served."""
    try:
        discovery = cluster.get("/apis", accept=AGGREGATED_DISCOVERY) or {}
    except ApiError:  # an apiserver without it may refuse the media type
        discovery = {}
    if discovery.get("kind") != "APIGroupDiscoveryList":
        return "the apiserver has no aggregated discovery"
    served = {(group["metadata"]["name"], resource["resource"])
              for group in discovery.get("items") or []
              for version in group.get("versions") or []
              for resource in version.get("resources") or []}
    for name in released.crds:
        plural, group = name.split(".", 1)
        if (group, plural) not in served:
            return f"CRD {name} is not served"
    return None
