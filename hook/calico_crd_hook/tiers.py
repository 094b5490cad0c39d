"""Stage 7: create the Tiers the target version needs, and confirm the `default` Tier exists."""

from __future__ import annotations

import logging
from typing import Any

from calico_crd_hook.client import Cluster
from calico_crd_hook.errors import ApiError, ClusterError
from calico_crd_hook.version import ApiMode, CalicoVersion, TierSpec, required_tiers

log = logging.getLogger(__name__)


def ensure_tiers(cluster: Cluster, target: CalicoVersion, mode: ApiMode,
                 missing: tuple[str, ...]) -> tuple[str, ...]:
    """Create the Tiers preflight found missing; one that appeared meanwhile (Calico's own start)
    is left as it is, and no existing Tier is ever modified. Returns those created."""
    collection = mode.tiers_path
    created: list[str] = []
    if missing:
        cluster.wait_until_served(f"{collection}/default")  # a new CRD answers 429 for a moment
    to_create = [tier for tier in required_tiers(target) if tier.name in missing]
    for tier, made in zip(to_create, cluster.map_concurrently(lambda tier: _create(cluster, collection, mode, tier),
                                                              to_create)):
        if made:
            created.append(tier.name)
    # The apply that created the default Tier (or found it there) answered with it: it exists. One
    # that existed before the run is read again, in case it went meanwhile.
    confirmed = "default" in missing
    if required_tiers(target) and not confirmed and cluster.get(f"{collection}/default") is None:
        raise ClusterError(f"the default Tier is still missing from {collection} after the upgrade: "
                           "Calico would fail with 'resource does not exist: Tier(default)'; "
                           "check admission webhooks or policies that block Tier creation, then rerun")
    return tuple(created)


def tier_document(mode: ApiMode, tier: TierSpec) -> dict[str, Any]:
    """The Tier as Calico itself creates it at start-up."""
    return {"apiVersion": mode.calico_api_version, "kind": "Tier", "metadata": {"name": tier.name},
            "spec": {"order": tier.order, "defaultAction": tier.default_action}}


def _create(cluster: Cluster, collection: str, mode: ApiMode, tier: TierSpec) -> bool:
    """Server-side apply without force creates the Tier, and can never change one that appeared
    meanwhile: a field another manager set differently is a conflict, and equal ones stay equal.
    (A POST would also sit out the apiserver's fixed 2 s pause after a CRD is Established.)"""
    try:
        created = cluster.apply_without_force(f"{collection}/{tier.name}", tier_document(mode, tier))
    except ApiError as error:
        if error.status == 409:  # created meanwhile, with other values: leave it be
            log.info("Tier %s appeared meanwhile with other values; left unchanged", tier.name)
            return False
        raise
    if not created:
        return False  # it appeared meanwhile with the same values
    log.info("created Tier %s (order %d, defaultAction %s)", tier.name, tier.order, tier.default_action)
    return True


def tier_differences(cluster: Cluster, target: CalicoVersion, mode: ApiMode) -> list[str]:
    """For `verify`: each required Tier that is missing or has other values than the target's
    (reported, never changed: an existing Tier is the cluster's own)."""
    collection = mode.tiers_path
    found = []
    for tier in required_tiers(target):
        live = cluster.get(f"{collection}/{tier.name}")
        if live is None:
            found.append(f"Tier {tier.name} is missing")
            continue
        spec = live.get("spec") or {}
        if (spec.get("order"), spec.get("defaultAction")) != (tier.order, tier.default_action):
            found.append(f"Tier {tier.name} has order {spec.get('order')} and defaultAction "
                         f"{spec.get('defaultAction')}, the target's are {tier.order} and {tier.default_action} "
                         "(left as it is: review it)")
    return found
