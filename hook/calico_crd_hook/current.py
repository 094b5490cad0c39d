"""The fast path for a run with nothing to do (Argo CD runs the hook on every sync).

From one metadata-only LIST of the CRDs, one aggregated discovery request and a read of each
built-in Tier, decide that the cluster already holds the target release exactly as this program
applied it, without fetching or parsing the manifest and without a dry-run. It holds when every
CRD of the target release carries, in the annotation the apply wrote together with its content,
the digest the shipped table gives for it; no other manager has written it since; every one is
served (Established); and every Tier the version needs exists. Anything less takes the full path.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from calico_crd_hook.cluster import FIELD_MANAGER, ApiError, Cluster
from calico_crd_hook.releases import DIGEST_ANNOTATION, ReleaseFile
from calico_crd_hook.version import ApiMode, CalicoVersion, required_tiers

log = logging.getLogger(__name__)

AGGREGATED_DISCOVERY = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def already_current(cluster: Cluster, live: dict[str, dict[str, Any]], released: ReleaseFile,
                    target: CalicoVersion, mode: ApiMode, concurrency: int) -> bool:
    """`live` is the metadata-only LIST; False (with the reason logged) takes the full path."""
    reason = _first_difference(live, released) or _not_served(cluster, released)
    if reason is None:
        tiers = tuple(tier.name for tier in required_tiers(target))
        collection = mode.tiers_path
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            found = list(pool.map(lambda name: cluster.get(f"{collection}/{name}"), tiers))
        missing = [name for name, tier in zip(tiers, found) if tier is None]
        if not missing:
            return True
        reason = f"Tier {missing[0]} is missing"
    log.info("not already current (%s): taking the full path", reason)
    return False


def _first_difference(live: dict[str, dict[str, Any]], released: ReleaseFile) -> str | None:
    for name, digest in released.crds.items():
        metadata = (live.get(name) or {}).get("metadata")
        if metadata is None:
            return f"CRD {name} is missing"
        if (metadata.get("annotations") or {}).get(DIGEST_ANNOTATION) != digest:
            return f"CRD {name} does not carry the target's digest"
        writer = written_since_our_apply(metadata.get("managedFields") or [])
        if writer:
            return f"CRD {name} was written by {writer} after our apply"
    return None


def written_since_our_apply(entries: list[dict[str, Any]]) -> str | None:
    """Another manager whose last write is not older than our apply (a reverting operator's
    Update, a `kubectl edit`): its values may differ from the document. Managers that wrote only
    before it (Helm's install) keep shared ownership of equal values, which changes nothing; the
    apiserver's own status writes do not count. Times have one-second resolution: a tie counts."""
    ours = [entry.get("time") or "" for entry in entries
            if entry.get("manager") == FIELD_MANAGER and entry.get("operation") == "Apply"]
    if not ours:
        return "no apply of ours"
    applied = max(ours)
    for entry in entries:
        if entry.get("manager") == FIELD_MANAGER or entry.get("subresource") == "status":
            continue
        if (entry.get("time") or "") >= applied:
            return str(entry.get("manager"))
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
