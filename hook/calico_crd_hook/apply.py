"""Stage 5-6: server-side apply of the CRDs that change, then wait until each one is served."""

from __future__ import annotations

import logging
import time
from typing import Any

from calico_crd_hook.actions import Action
from calico_crd_hook.client import CRDS_PATH, OBJECT_METADATA_ONLY, Cluster
from calico_crd_hook.errors import ClusterError
from calico_crd_hook.manifest import Crd, Manifest
from calico_crd_hook.ownership import take_over
from calico_crd_hook.preflight import CrdChange, Plan
from calico_crd_hook.releases import GENERATION_ANNOTATION
from calico_crd_hook.retry import ESTABLISHED_POLL

log = logging.getLogger(__name__)

_READY_CONDITIONS = ("Established", "NamesAccepted")
# The apiserver establishes a CRD within moments of accepting its names; one still "Installing"
# after this long was left so by an apiserver that stopped in between, and nothing will finish it.
STUCK_INSTALLING_SECONDS = 5.0
_NUDGE_ANNOTATION = "calico-crd-hook.projectcalico.org/requeue"


def apply_crds(cluster: Cluster, manifest: Manifest, plan: Plan, live: dict[str, dict[str, Any]]) -> None:
    """Apply every CRD, skipping those the plan found a no-op (by their dry-run, or already applied as
    they are); never delete or replace one.
    Then wait until every CRD of the manifest is served, written by this run or not."""
    changes = {change.name: change for change in plan.changes}
    to_apply = [crd for crd in manifest.crds if changes[crd.name].writes]
    # New CRDs first: the apiserver needs a moment after one is Established before it serves its
    # objects (the Tiers come next), and that moment then overlaps the remaining updates. Then the
    # largest (installations, ~0.5 MB, the longest for the server) so it ends no later than the rest.
    to_apply.sort(key=lambda crd: (changes[crd.name].action != Action.CREATE, -len(crd.encoded)))
    results = cluster.map_concurrently(lambda crd: _apply_one(cluster, crd, changes[crd.name]), to_apply)
    failures = [result for result in results if isinstance(result, ClusterError)]
    if failures:
        applied = len(results) - len(failures)
        raise ClusterError(f"{failures[0].message} ({applied} of {len(to_apply)} CRDs were applied; "
                           "rerunning applies the rest)")
    # The answers carry metadata only (the server need not encode 0.5 MB schemas back): an updated
    # CRD that was served stays served, a new one is polled until it is.
    _wait_until_ready(cluster, {crd.name: (crd, changes[crd.name].generation) for crd in manifest.crds
                                if not _is_ready(live.get(crd.name))})


def _apply_one(cluster: Cluster, crd: Crd, change: CrdChange) -> dict[str, Any] | ClusterError:
    try:
        if change.takes_over and take_over(cluster, crd.name):
            log.info("took over Helm's/kubectl's ownership of CRD %s", crd.name)
        # exactly the body the dry-run carried, with the generation it answered
        path = f"{CRDS_PATH}/{crd.name}"
        applied = cluster.apply(path, crd.encoded_at(change.generation), accept=OBJECT_METADATA_ONLY)
        left = (applied.get("metadata") or {}).get("generation")
        if isinstance(left, int) and left != change.generation:
            # The take-over removed a spec field the dry-run still saw (it moves ownership first), or
            # another writer got in between: record the generation this apply left (a metadata-only
            # write of the same body), so the next run can tell the spec is still ours.
            applied = cluster.apply(path, crd.encoded_at(left), accept=OBJECT_METADATA_ONLY)
        log.info("applied CRD %s", crd.name)
        return applied
    except ClusterError as error:  # a refusal (ApiError) or no answer: both are reported together
        return error


def _conditions(crd: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in ((crd or {}).get("status") or {}).get("conditions") or []}


def _is_ready(crd: dict[str, Any] | None) -> bool:
    conditions = _conditions(crd)
    return all((conditions.get(kind) or {}).get("status") == "True" for kind in _READY_CONDITIONS)


def _refuse_rejected_names(name: str, crd: dict[str, Any] | None) -> None:
    """NamesAccepted=False never heals by waiting: say so now, not at the deadline."""
    names = _conditions(crd).get("NamesAccepted") or {}
    if names.get("status") == "False":
        raise ClusterError(f"CRD {name} was applied but its names were refused ({names.get('reason')}: "
                           f"{names.get('message')}): another CRD in its group claims the same kind or "
                           "plural; remove or rename that CRD, then rerun")


def _wait_until_ready(cluster: Cluster, pending: dict[str, tuple[Crd, int]]) -> None:
    """Backoff poll: a new CRD is served a moment after it is created, and we must not busy-loop."""
    polls = 0
    started = time.monotonic()
    nudged: set[str] = set()
    while pending:
        still_pending = {}
        names = list(pending)  # read together: one round trip however many are new
        for name, live in zip(names, cluster.map_concurrently(lambda name: cluster.get(f"{CRDS_PATH}/{name}"), names)):
            crd, generation = pending[name]
            if _is_ready(live):
                continue
            _refuse_rejected_names(name, live)
            if name not in nudged and time.monotonic() - started > STUCK_INSTALLING_SECONDS:
                _nudge(cluster, crd, generation)
                nudged.add(name)
            still_pending[name] = (crd, generation)
        pending = still_pending
        if not pending:
            return
        polls += 1
        pause = ESTABLISHED_POLL.pause(polls)
        if time.monotonic() + pause >= cluster.deadline:
            raise ClusterError(f"CRDs not Established before the deadline: {', '.join(sorted(pending))}; "
                               "check `kubectl describe crd` for NamesAccepted conflicts, then rerun")
        time.sleep(pause)


def _nudge(cluster: Cluster, crd: Crd, generation: int) -> None:
    """Any write to the CRD requeues it. Apply it once with a throwaway annotation and once
    without, so it ends exactly as the manifest says (annotations change no generation)."""
    log.warning("CRD %s is still not Established %.0fs after its names were accepted (an apiserver "
                "restart can leave it so); re-applying it to requeue it", crd.name, STUCK_INSTALLING_SECONDS)
    marked = {**crd.body, "metadata": {**crd.body["metadata"], "annotations": {
        **(crd.body["metadata"].get("annotations") or {}), _NUDGE_ANNOTATION: str(time.time()),
        GENERATION_ANNOTATION: str(generation)}}}
    cluster.apply(f"{CRDS_PATH}/{crd.name}", marked)
    cluster.apply(f"{CRDS_PATH}/{crd.name}", crd.encoded_at(generation))
