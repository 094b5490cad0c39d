"""Stage 4: read-only checks and a server-side dry-run of every CRD the run would write; nothing is
written here."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any

from calico_crd_hook.actions import Action, left_in_place, storage_version
from calico_crd_hook.client import CRDS_PATH, METADATA_ONLY, OBJECT_METADATA_ONLY, Cluster
from calico_crd_hook.errors import ApiError, ClusterError, ManifestRejected, UnsafeUpgrade
from calico_crd_hook.manifest import Crd, Manifest
from calico_crd_hook.noop import holds_applied_document
from calico_crd_hook.ownership import leftovers, served_spec
from calico_crd_hook.releases import (
    DIGEST_ANNOTATION,
    GENERATION_ANNOTATION,
    DocumentMetadata,
    document_metadata,
    release_table,
    without_bookkeeping,
)
from calico_crd_hook.version import (
    ENTERPRISE_MARKER_CRDS,
    V3_32,
    ApiMode,
    CalicoVersion,
    cluster_api_mode,
    parse_running_version,
    required_tiers,
    skips_too_many_minors,
)

log = logging.getLogger(__name__)

ENTERPRISE_VARIANT = "TigeraSecureEnterprise"
REMOVED_IN_3_32 = ("adminnetworkpolicies", "baselineadminnetworkpolicies")
REMOVED_POLICY_CRDS = tuple(f"{plural}.policy.networking.k8s.io" for plural in REMOVED_IN_3_32)


@dataclass(frozen=True)
class CrdChange:
    name: str
    action: Action  # CREATE, UPDATE or UNCHANGED: what an operator would call a change
    writes: bool  # False only when applying would be a no-op on the server, ownership included
    generation: int  # metadata.generation the write leaves (its dry-run said so), recorded with it
    takes_over: bool = False  # Helm's or kubectl's client-side ownership is moved to us first
    removes: tuple[str, ...] = ()  # fields only those writers set and the target dropped


@dataclass(frozen=True)
class Plan:
    running_version: CalicoVersion | None
    changes: tuple[CrdChange, ...]
    left_in_place: tuple[str, ...]  # live Calico CRDs the target no longer ships; never deleted
    missing_tiers: tuple[str, ...]

    def names_with(self, action: Action) -> tuple[str, ...]:
        return tuple(change.name for change in self.changes if change.action == action)


class DryRuns:
    """The server-side dry-run of each CRD the run would write; for a released file started as soon
    as that CRD alone passed the manifest checks, so the server works while the rest of the file
    parses. Nothing here writes; the plan reads every outcome before anything is applied.

    With `skip_current`, a CRD that already holds the document exactly as this program applied it
    (`already_applied`) is neither dry-run nor, later, written: most CRDs of a patch release are
    byte for byte the previous release's. A CRD whose metadata says so waits for its body (read
    while the file parses) before it is judged; every other CRD is dry-run at once."""

    def __init__(self, cluster: Cluster, live_metadata: dict[str, dict[str, Any]] | None = None,
                 skip_current: bool = False, bodies: BodyReads | None = None) -> None:
        self._cluster = cluster
        self._started: dict[str, Future[dict[str, Any] | ApiError]] = {}
        self._live_metadata = live_metadata
        self._bodies = bodies or {}
        self._skip_current = skip_current
        self._current: set[str] = set()

    def start(self, crd: Crd) -> None:
        if crd.name not in self._started and not self._judged_with_body(crd):
            self._submit(crd)

    def start_rest(self, crds: Sequence[Crd], live: dict[str, dict[str, Any]]) -> None:
        """Start those not started yet (none, when the manifest was validated through start) but
        the CRDs already applied, largest first: the installations CRD (~0.5 MB) takes the server
        longest. `live`: with the bodies of the manifest's CRDs."""
        self._live_metadata = live
        self._current = {crd.name for crd in crds if crd.name not in self._started and self._skip_current
                         and already_applied(live.get(crd.name), crd)}
        for crd in sorted(crds, key=lambda crd: -len(crd.encoded)):
            if crd.name not in self._current and crd.name not in self._started:
                self._submit(crd)

    def outcomes(self, crds: Sequence[Crd]) -> list[dict[str, Any] | ApiError | str]:
        """Each CRD's dry-run answer, or ALREADY_APPLIED where none was needed (after start_rest)."""
        return [ALREADY_APPLIED if crd.name in self._current else self._started[crd.name].result() for crd in crds]

    def close(self) -> None:
        """Cancel the dry-runs not started (a check refused the run); nothing waits for the others."""
        for future in self._started.values():
            future.cancel()

    def _submit(self, crd: Crd) -> None:
        self._started[crd.name] = self._cluster.submit(self._predicted_dry_run, crd)

    def _listed(self, name: str) -> dict[str, Any]:
        return (self._live_metadata or {}).get(name) or {}

    def _predicted_dry_run(self, crd: Crd) -> dict[str, Any] | ApiError:
        listed = self._listed(crd.name)
        return _dry_run(self._cluster, crd, _predicted_generation(listed.get("metadata"), self._live_spec(crd.name, listed), crd))

    def _live_spec(self, name: str, listed: dict[str, Any]) -> dict[str, Any] | None:
        """The live CRD's spec: from its body, waiting for its read where that is still running.
        Run in the pool, where it cannot wait on a task queued behind it: the reads were all
        queued before the first dry-run. A failed read is reported by `with_bodies`."""
        read = self._bodies.get(name)
        if "spec" not in listed and read is not None:
            try:
                listed = read.result() or {}
            except (ClusterError, CancelledError):
                return None
        spec: dict[str, Any] | None = listed.get("spec")
        return spec

    def _judged_with_body(self, crd: Crd) -> bool:
        metadata = self._listed(crd.name).get("metadata")
        return self._skip_current and metadata is not None and _holds(metadata, crd)


ALREADY_APPLIED = "already applied"


def already_applied(live: dict[str, Any] | None, crd: Crd) -> bool:
    """The live CRD holds `crd`'s document as this program applied it (noop.holds_applied_document:
    the spec's generation has not moved since our apply, the document's labels and annotations
    are there) and nothing of Helm's or kubectl's is left to take over. Applying it again would
    change nothing, so it needs no dry-run either."""
    if live is None or "spec" not in live:
        return False
    return _holds(live["metadata"], crd) and not leftovers(live, crd.body)


def _holds(metadata: dict[str, Any], crd: Crd) -> bool:
    own = document_metadata(crd.body)
    document = DocumentMetadata(labels=own.get("labels", {}), annotations=own.get("annotations", {}))
    return holds_applied_document(metadata, crd.digest, document) is None


def _predicted_generation(metadata: dict[str, Any] | None, live_spec: dict[str, Any] | None, crd: Crd) -> int:
    """The generation the apply will leave, as the dry-run's own body records it: 1 for a new CRD,
    the live one where the spec is already the document's (as our apply recorded, or as the live
    spec shows: most CRDs of a release are the previous release's, whoever wrote them), one more
    where the document changes it. A wrong guess costs one more dry-run (`_dry_run`)."""
    if metadata is None:
        return 1
    generation = int(metadata.get("generation") or 1)
    annotations = metadata.get("annotations") or {}
    spec_is_the_documents = ((annotations.get(DIGEST_ANNOTATION) == crd.digest
                              and annotations.get(GENERATION_ANNOTATION) == str(generation))
                             or (live_spec is not None and live_spec == served_spec(crd.body)))
    return generation if spec_is_the_documents else generation + 1


@dataclass(frozen=True)
class Downgrade:
    """The target is older than what the cluster shows: its CRDs or its running Calico."""
    newer: CalicoVersion
    evidence: str  # what shows it, for the report: "CRD x holds the document of v3.30.0"

    def describe(self, target: CalicoVersion) -> str:
        return f"Calico {target} is older than the cluster's {self.newer} ({self.evidence})"


def find_downgrade(live: dict[str, dict[str, Any]], running: CalicoVersion | None,
                   target: CalicoVersion) -> Downgrade | None:
    """Which release the cluster's CRDs are comes from the digests our applies recorded and the
    shipped table (so it is known when no Calico runs): a CRD holding a document first shipped
    after the target would be rewritten with an older schema, whose pruning then drops fields
    (a GlobalNetworkPolicy's spec.tier) on the next write of every object. A running Calico newer
    than the target is a downgrade too."""
    table = release_table()
    newest: tuple[CalicoVersion, str] | None = None
    for name, item in sorted(live.items()):
        digest = ((item.get("metadata") or {}).get("annotations") or {}).get(DIGEST_ANNOTATION)
        shipped = table.first_shipped(name, digest) if digest else None
        if shipped is not None and (newest is None or shipped > newest[0]):
            newest = (shipped, f"CRD {name} holds the document of {shipped}")
    if running is not None and (newest is None or running > newest[0]):
        newest = (running, f"Calico {running} is running")
    if newest is None or not target < newest[0]:
        return None
    return Downgrade(newer=newest[0], evidence=newest[1])


def live_crds(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Every CRD in the cluster by name, metadata only: one LIST serves the checks by name, and a
    cluster with hundreds of large unrelated CRDs costs their names, not their schemas."""
    found = cluster.get(CRDS_PATH, accept=METADATA_ONLY) or {}
    return {item["metadata"]["name"]: item for item in found.get("items") or []}


BodyReads = dict[str, "Future[dict[str, Any] | None]"]


def read_bodies(cluster: Cluster, live: dict[str, dict[str, Any]], names: Iterable[str]) -> BodyReads:
    """Start reading the whole objects of the named live CRDs, concurrently; each read answers
    None for a CRD deleted since the LIST."""
    wanted = [name for name in dict.fromkeys(names) if name in live]
    return {name: cluster.submit(cluster.get, _body_path(name, live[name])) for name in wanted}


def _body_path(name: str, listed: dict[str, Any]) -> str:
    """A read of the CRD no older than the LIST that named it: the apiserver answers that from its
    watch cache, where a read without a resourceVersion goes to etcd and decodes the stored JSON
    (half the server CPU of reading the bodies, measured). The checks read this snapshot; the
    dry-run and the apply see the object as it is when they run."""
    version = (listed.get("metadata") or {}).get("resourceVersion")
    return f"{CRDS_PATH}/{name}" + (f"?resourceVersion={version}" if version else "")


def with_bodies(cluster: Cluster, live: dict[str, dict[str, Any]], manifest: Manifest,
                started: BodyReads | None = None) -> dict[str, dict[str, Any]]:
    """The live CRDs, with whole objects for those the run reads or writes: the manifest's, and
    the policy kinds v3.32 removes. `started`: reads begun already (while the manifest was fetched)."""
    reads = dict(started or {})
    reads.update(read_bodies(cluster, live, [name for name in (*manifest.names, *REMOVED_POLICY_CRDS)
                                             if name not in reads]))
    bodies = {name: read.result() for name, read in reads.items()}
    gone = {name for name, body in bodies.items() if body is None}  # deleted since the LIST
    return {name: bodies.get(name) or metadata for name, metadata in live.items() if name not in gone}


def run_preflight(cluster: Cluster, manifest: Manifest, target: CalicoVersion, mode: ApiMode,
                  live: dict[str, dict[str, Any]], running: CalicoVersion | None, dry_runs: DryRuns | None = None) -> Plan:
    """`running`: the Calico version ClusterInformation reports (the run read it already to
    decide on a downgrade). `dry_runs`: those started while the manifest was validated."""
    own_dry_runs = dry_runs is None
    dry_runs = dry_runs or DryRuns(cluster)
    try:
        return _checks_and_dry_runs(cluster, manifest, target, mode, live, running, dry_runs)
    finally:
        if own_dry_runs:
            dry_runs.close()


def _checks_and_dry_runs(cluster: Cluster, manifest: Manifest, target: CalicoVersion, mode: ApiMode,
                         live: dict[str, dict[str, Any]], running: CalicoVersion | None, dry_runs: DryRuns) -> Plan:
    warnings: list[str] = []
    # The dry-runs write nothing, so they run on while the read-only checks make their round trips.
    # A refusal still wins: the checks raise before the dry-runs' outcome is looked at.
    dry_runs.start_rest(manifest.crds, live)
    _refuse_mode_switch(mode, live)
    _refuse_enterprise(cluster, live)
    _warn_of_skipped_minors(running, target, warnings)
    _refuse_dropped_stored_versions(manifest, live)
    existing_tiers = _existing_tiers(cluster, target, mode, live)
    if target >= V3_32:
        _refuse_removed_policy_kinds(cluster, live)
        _refuse_default_tier_pass(existing_tiers)
    missing = tuple(t.name for t in required_tiers(target) if t.name not in existing_tiers)
    created = tuple(crd.name for crd in manifest.crds if crd.name not in live)
    # Asked alongside the dry-runs, answered after them: a question queued behind dry-runs the
    # server keeps failing would report the deadline instead of the server's answer.
    permissions = ask_later_permissions(cluster, mode, created, missing)
    changes = _dry_run_all(dry_runs, manifest, live)
    require(permissions)
    for warning in warnings:
        log.warning("%s", warning)
    for change in changes:
        if change.removes:
            log.info("CRD %s: removes what only Helm's/kubectl's earlier writes set and the target dropped: %s",
                     change.name, ", ".join(change.removes))
    return Plan(running_version=running, changes=changes,
                left_in_place=left_in_place(live, manifest.names, (crd.group for crd in manifest.crds)),
                missing_tiers=missing)


def _refuse_mode_switch(mode: ApiMode, live: dict[str, dict[str, Any]]) -> None:
    current = cluster_api_mode(set(live))
    if current is not None and current is not mode:
        raise UnsafeUpgrade(
            f"the cluster runs Calico in API mode {current.value} ({current.calico_group} CRDs) and "
            f"this run would apply the {mode.value}-mode file {mode.manifest_file}, switching it: "
            f"drop --api-mode (auto keeps mode {current.value})")


def _refuse_enterprise(cluster: Cluster, live: dict[str, dict[str, Any]]) -> None:
    advice = ("this tool applies open-source Calico's CRDs, which would drop Enterprise fields: "
              "upgrade Calico Enterprise with Tigera's own manifests")
    for marker in sorted(ENTERPRISE_MARKER_CRDS & set(live)):
        raise UnsafeUpgrade(f"Calico Enterprise detected (CRD {marker} exists): {advice}")
    if "installations.operator.tigera.io" in live:
        installation = cluster.get("/apis/operator.tigera.io/v1/installations/default") or {}
        if (installation.get("spec") or {}).get("variant") == ENTERPRISE_VARIANT:
            raise UnsafeUpgrade(f"Calico Enterprise detected (Installation default has variant "
                                f"{ENTERPRISE_VARIANT}): {advice}")


def read_running_version(cluster: Cluster, mode: ApiMode, live: dict[str, dict[str, Any]]) -> CalicoVersion | None:
    if f"clusterinformations.{mode.calico_group}" not in live:
        return None
    info = cluster.get(f"/apis/{mode.calico_api_version}/clusterinformations/default") or {}
    text = (info.get("spec") or {}).get("calicoVersion") or ""
    return parse_running_version(text) if text else None


def _warn_of_skipped_minors(running: CalicoVersion | None, target: CalicoVersion, warnings: list[str]) -> None:
    if running is not None and target > running and skips_too_many_minors(running, target):
        warnings.append(f"upgrading from Calico {running} straight to {target} skips more minor "
                        "releases than Calico supports in one step; upgrade through the minors between")


def _refuse_dropped_stored_versions(manifest: Manifest, live: dict[str, dict[str, Any]]) -> None:
    for crd in manifest.crds:
        stored = ((live.get(crd.name) or {}).get("status") or {}).get("storedVersions") or []
        dropped = [version for version in stored if version not in crd.served_versions]
        if dropped:
            raise UnsafeUpgrade(
                f"CRD {crd.name} has objects stored as {', '.join(dropped)}, which the new manifest "
                f"no longer serves (it serves {', '.join(crd.served_versions)}): migrate them to a "
                "served version and remove the old one from status.storedVersions, then rerun")


def _refuse_removed_policy_kinds(cluster: Cluster, live: dict[str, dict[str, Any]]) -> None:
    found: list[str] = []
    for plural, name in zip(REMOVED_IN_3_32, REMOVED_POLICY_CRDS):
        if name not in live:
            continue
        version = storage_version(live[name])
        for item in cluster.list_items(f"/apis/policy.networking.k8s.io/{version}/{plural}"):
            found.append(f"{live[name]['spec']['names']['kind']}/{item['metadata']['name']}")
    if found:
        raise UnsafeUpgrade(
            f"Calico v3.32 drops AdminNetworkPolicy and BaselineAdminNetworkPolicy, and these exist: "
            f"{', '.join(found)}; move them to Calico policies (or ClusterNetworkPolicy) and delete "
            "them, then rerun")


def _existing_tiers(cluster: Cluster, target: CalicoVersion, mode: ApiMode,
                    live: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The built-in Tiers present now (none while the Tier CRD itself is missing)."""
    if f"tiers.{mode.calico_group}" not in live:
        return {}
    names = {tier.name for tier in required_tiers(target)} | {"default"}
    found = {name: cluster.get(f"{mode.tiers_path}/{name}") for name in sorted(names)}
    return {name: tier for name, tier in found.items() if tier is not None}


def missing_tiers(cluster: Cluster, target: CalicoVersion, mode: ApiMode,
                  live: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    existing = _existing_tiers(cluster, target, mode, live)
    return tuple(tier.name for tier in required_tiers(target) if tier.name not in existing)


def _refuse_default_tier_pass(existing_tiers: dict[str, dict[str, Any]]) -> None:
    tier = existing_tiers.get("default") or {}
    if (tier.get("spec") or {}).get("defaultAction") == "Pass":
        raise UnsafeUpgrade("the default Tier has defaultAction Pass, which Calico v3.32's Tier CRD "
                            "rejects: set it to Deny (review the policies in that Tier first), then rerun")


def require_later_permissions(cluster: Cluster, mode: ApiMode, new_crds: tuple[str, ...],
                              missing_tiers: tuple[str, ...]) -> None:
    """The dry-run proves the CRD writes are allowed; ask the apiserver now about the requests
    that come after them, so a missing rule stops the run before anything is written."""
    require(ask_later_permissions(cluster, mode, new_crds, missing_tiers))


Question = tuple[str, str, str, str | None, str]  # verb, group, resource, name, what for


def ask_later_permissions(cluster: Cluster, mode: ApiMode, new_crds: tuple[str, ...],
                          missing_tiers: tuple[str, ...]) -> list[tuple[Question, Future[bool]]]:
    """Start asking (SelfSubjectAccessReviews); `require` reads the answers."""
    needed: list[Question] = []
    for name in new_crds:  # by name: the chart's role may allow get on the release's CRDs only
        needed.append(("get", "apiextensions.k8s.io", "customresourcedefinitions", name,
                       "to wait until new CRDs are Established"))
    for name in missing_tiers:  # created by a server-side apply: patch, and create for a new object
        needed += [(verb, mode.calico_group, "tiers", name, f"to create the Tier {name}")
                   for verb in ("get", "patch", "create")]
    return [(ask, cluster.submit(cluster.can_i, *ask[:4])) for ask in needed]


def require(answers: list[tuple[Question, Future[bool]]]) -> None:
    for (verb, group, resource, _, purpose), granted in answers:
        if not granted.result():
            raise ClusterError(f'forbidden: cannot {verb} resource "{resource}" in API group '
                               f'"{group}" ({purpose}); grant it in the calico-crd-hook ClusterRole '
                               "(docs/rbac.md)")


def _dry_run_all(dry_runs: DryRuns, manifest: Manifest, live: dict[str, dict[str, Any]]) -> tuple[CrdChange, ...]:
    outcomes = dry_runs.outcomes(manifest.crds)
    for crd, outcome in zip(manifest.crds, outcomes):
        if isinstance(outcome, ApiError) and outcome.status == 413:  # the file's fault, not the cluster's
            raise ManifestRejected(f"the apiserver refused CRD {crd.name} as too large ({len(crd.encoded)} "
                                   f"bytes; HTTP 413: {outcome.server_message[:120]}), so none was applied; "
                                   "use the released file unchanged")
    rejected = [f"{crd.name}: {outcome.server_message}" for crd, outcome in zip(manifest.crds, outcomes)
                if isinstance(outcome, ApiError) and outcome.status in (400, 409, 422)]
    if rejected:
        raise UnsafeUpgrade(f"the apiserver's dry-run rejected {len(rejected)} CRD(s), so none was "
                            f"applied: {'; '.join(rejected)}")
    for outcome in outcomes:
        if isinstance(outcome, ApiError):
            raise outcome
    answers = [outcome for outcome in outcomes if not isinstance(outcome, ApiError)]  # each error raised above
    return tuple(_change(crd, live.get(crd.name), answer) for crd, answer in zip(manifest.crds, answers))


def _dry_run(cluster: Cluster, crd: Crd, predicted_generation: int) -> dict[str, Any] | ApiError:
    """The object as the apply would leave it, metadata only: its generation moves exactly when
    the spec changes, so the server need not encode, nor the run decode, each schema back. The
    body records the generation the apply leaves; where the guess was wrong, the dry-run is made
    again with the generation the server answered, so the body applied is the body dry-run."""
    path = f"{CRDS_PATH}/{crd.name}"
    try:
        answer = cluster.apply(path, crd.encoded_at(predicted_generation), dry_run=True, accept=OBJECT_METADATA_ONLY)
        generation = _generation(answer)
        if isinstance(generation, int) and generation != predicted_generation:
            answer = cluster.apply(path, crd.encoded_at(generation), dry_run=True, accept=OBJECT_METADATA_ONLY)
        return answer
    except ApiError as error:
        return error


def _change(crd: Crd, live: dict[str, Any] | None, dry_run_result: dict[str, Any] | str) -> CrdChange:
    if isinstance(dry_run_result, str):  # ALREADY_APPLIED: nothing was sent, and nothing will be
        return CrdChange(crd.name, Action.UNCHANGED, writes=False, generation=int(_generation(live or {}) or 1))
    generation = int(_generation(dry_run_result) or 1)
    if live is None:
        return CrdChange(crd.name, Action.CREATE, writes=True, generation=generation)
    # The dry-run keeps what Helm's client-side writes own; taking over their ownership removes
    # what the target dropped (a label, an annotation, a names.categories entry). Taken over only
    # then: where nothing would be removed, their shared ownership of equal values changes nothing
    # and the take-over would cost a write of the whole CRD (each later run checks again).
    removes = leftovers(live, crd.body)
    content_differs = _content(live) != _content(dry_run_result) or bool(removes)
    content_differs |= _generation(live) != _generation(dry_run_result)  # the CRD strategy bumps it on a spec change
    # A change of ownership is a write even when the content is equal, and so is recording the
    # document's digest and generation (they make the next run's no-op check possible).
    ownership_differs = _managers(live) != _managers(dry_run_result)
    bookkeeping_differs = _bookkeeping(live) != _bookkeeping(dry_run_result)
    return CrdChange(crd.name, Action.UPDATE if content_differs else Action.UNCHANGED,
                     writes=content_differs or ownership_differs or bookkeeping_differs,
                     generation=generation, takes_over=bool(removes), removes=removes)


def _content(crd: dict[str, Any]) -> tuple[Any, Any]:
    """The CRD's metadata content; its spec is compared through the generation. Our own
    annotations are bookkeeping."""
    metadata = crd.get("metadata") or {}
    return metadata.get("labels") or {}, without_bookkeeping(metadata.get("annotations"))


def _generation(crd: dict[str, Any]) -> Any:
    return (crd.get("metadata") or {}).get("generation")


def _bookkeeping(crd: dict[str, Any]) -> tuple[str | None, str | None]:
    annotations = (crd.get("metadata") or {}).get("annotations") or {}
    return annotations.get(DIGEST_ANNOTATION), annotations.get(GENERATION_ANNOTATION)


def _managers(crd: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
    return sorted((entry.get("manager"), entry.get("operation"), str(entry.get("fieldsV1")))
                  for entry in (crd.get("metadata") or {}).get("managedFields") or [])
