"""Stage 7: create the Tiers the target version needs, and confirm the `default` Tier exists."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from calico_crd_hook.cluster import ApiError, Cluster
from calico_crd_hook.errors import ClusterError
from calico_crd_hook.version import FIRST_VERSION_WITH_TIERS, FIRST_VERSION_WITH_V3_MODE, ApiMode, CalicoVersion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TierSpec:
    name: str
    order: int
    default_action: str


DEFAULT_TIER = TierSpec("default", 1_000_000, "Deny")


def required_tiers(target: CalicoVersion) -> tuple[TierSpec, ...]:
    """The Tiers Calico itself creates on start at that version (libcalico-go EnsureInitialized)."""
    if target < FIRST_VERSION_WITH_TIERS:
        return ()
    if target >= FIRST_VERSION_WITH_V3_MODE:
        return (DEFAULT_TIER, TierSpec("kube-admin", 1_000, "Pass"),
                TierSpec("kube-baseline", 10_000_000, "Pass"))
    tiers = (DEFAULT_TIER, TierSpec("adminnetworkpolicy", 1_000, "Pass"))
    if target.at_least(3, 30):
        tiers += (TierSpec("baselineadminnetworkpolicy", 10_000_000, "Pass"),)
    return tiers


def ensure_tiers(cluster: Cluster, target: CalicoVersion, mode: ApiMode) -> tuple[str, ...]:
    """Create only the missing Tiers; an existing Tier is never modified. Returns those created."""
    collection = f"/apis/{mode.calico_api_version}/tiers"
    created: list[str] = []
    for tier in required_tiers(target):
        if cluster.get(f"{collection}/{tier.name}") is not None:
            continue
        if _create(cluster, collection, mode, tier):
            created.append(tier.name)
    if required_tiers(target) and cluster.get(f"{collection}/default") is None:
        raise ClusterError(f"the default Tier is still missing from {collection} after the upgrade: "
                           "Calico would fail with 'resource does not exist: Tier(default)'; "
                           "check admission webhooks or policies that block Tier creation, then rerun")
    return tuple(created)


def _create(cluster: Cluster, collection: str, mode: ApiMode, tier: TierSpec) -> bool:
    body = {"apiVersion": mode.calico_api_version, "kind": "Tier",
            "metadata": {"name": tier.name},
            "spec": {"order": tier.order, "defaultAction": tier.default_action}}
    try:
        cluster.create(collection, body)
    except ApiError as error:
        if error.status == 409:  # Calico or a retried request made it meanwhile: leave it be
            return False
        raise cluster.as_cluster_error(error) from None
    log.info("created Tier %s (order %d, defaultAction %s)", tier.name, tier.order, tier.default_action)
    return True
