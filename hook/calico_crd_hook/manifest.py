"""Stage 3: validate the manifest offline, before any cluster call.

Parsed strictly (`strict_yaml`: no duplicate keys, only values JSON can carry), each CRD then passes
the manifest policy (`crd_policy`), and the set of CRDs must be the one the target release ships
(`releases`)."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from calico_crd_hook import crd_policy, release_rules, structural
from calico_crd_hook.document_tree import differences
from calico_crd_hook.errors import ManifestRejected
from calico_crd_hook.releases import (
    BOOKKEEPING_ANNOTATIONS,
    DIGEST_ANNOTATION,
    GENERATION_ANNOTATION,
    ReleaseFile,
    document_digest,
    first_release,
    release_table,
    without_bookkeeping,
)
from calico_crd_hook.source import FetchedManifest
from calico_crd_hook.strict_yaml import documents_largest_first, parsed_documents
from calico_crd_hook.version import ENTERPRISE_MARKER_CRDS, V3_29, ApiMode, CalicoVersion, parse_version

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Crd:
    name: str
    group: str
    kind: str
    served_versions: tuple[str, ...]
    digest: str  # of the manifest's document (releases.document_digest)
    body: dict[str, Any]  # what is applied: status and creationTimestamp stripped, the digest annotated
    encoded: bytes = field(repr=False)  # the request body, encoded once for the dry-run and the apply

    def encoded_at(self, generation: int) -> bytes:
        """The request body that also records the generation the write leaves
        (releases.GENERATION_ANNOTATION). Spliced in after the digest annotation, which the
        encoding holds exactly once (a document cannot contain its own digest), so a 0.5 MB body
        is not encoded again."""
        digest_entry = json.dumps({DIGEST_ANNOTATION: self.digest}, separators=(",", ":"))[1:-1].encode()
        recorded = json.dumps({GENERATION_ANNOTATION: str(generation)}, separators=(",", ":"))[1:-1].encode()
        if self.encoded.count(digest_entry) == 1:
            return self.encoded.replace(digest_entry, digest_entry + b"," + recorded)
        metadata = self.body.get("metadata") or {}  # a body built by hand: encode it again
        annotations = {**(metadata.get("annotations") or {}), GENERATION_ANNOTATION: str(generation)}
        return json.dumps({**self.body, "metadata": {**metadata, "annotations": annotations}},
                          separators=(",", ":")).encode()


@dataclass(frozen=True)
class Manifest:
    crds: tuple[Crd, ...]
    origin: str
    sha256: str

    @property
    def cel_rules(self) -> int:
        """The CEL rules (x-kubernetes-validations) its CRDs hold: only the apiserver compiles them."""
        return sum(structural.cel_rule_count(crd.body) for crd in self.crds)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(crd.name for crd in self.crds)


@dataclass(frozen=True)
class TargetRelease:
    """The shipped table's documents of the target release: a file for a known version must hold
    exactly these, as parsed (`allow_modified`: differing ones are applied, their differences shown)."""
    version: CalicoVersion
    digests: dict[str, str]  # CRD name -> document digest
    allow_modified: bool = False


def validate_manifest(fetched: FetchedManifest, target: CalicoVersion | None, mode: ApiMode,
                      allowed_groups: frozenset[str], on_released_crd: Callable[[Crd], None] | None = None,
                      allow_modified: bool = False) -> Manifest:
    """`on_released_crd`: when the file is byte for byte a released one (every document known
    good), called with each CRD as soon as it alone passed its checks, while the rest parse (the run
    starts its read-only dry-run then). Any other file is judged whole before a single request
    carries any of it, so a misspelt field is refused before a connection is made."""
    table = release_table()
    released = table.with_sha256(fetched.sha256)
    target_file = table.file_for(target, mode) if target is not None else None
    expected = TargetRelease(target, target_file.crds, allow_modified) if target and target_file else None
    crds = validate_documents(fetched.data, fetched.origin, allowed_groups,
                              released.crds if released else None,
                              on_crd=on_released_crd if released else None, target=expected)
    tier_crd = f"tiers.{mode.calico_group}"
    if target is not None and target >= V3_29 and tier_crd not in {crd.name for crd in crds}:
        raise ManifestRejected(f"the manifest for Calico {target} lacks the {tier_crd} CRD that "
                               "this version needs: it is not that release's file")
    _check_release_set(crds, fetched, target, mode, released is not None, target_file, allow_modified)
    return Manifest(crds=tuple(crds), origin=fetched.origin, sha256=fetched.sha256)


def validate_documents(data: bytes, origin: str, allowed_groups: frozenset[str],
                       shipped_digests: dict[str, str] | None = None, trust_shipped: bool = True,
                       on_crd: Callable[[Crd], None] | None = None, target: TargetRelease | None = None) -> list[Crd]:
    """Every document parsed strictly and checked against the CRD rules; the set is not judged.
    `shipped_digests`: the documents' digests, when the file is byte for byte a released one.
    A document the release table lists was validated when the table was generated, so the schema
    rules are not run on it again (`trust_shipped=False` runs them: the table's generator). Any
    other document must also follow what every release does (`release_rules`), and, for a known
    `target`, is refused unless modified CRDs are allowed."""
    gc.disable()  # the parse builds millions of objects and frees none: no cycles to look for
    try:
        return _validate_documents(data, origin, allowed_groups, shipped_digests or {},
                                   release_table().document_digests if trust_shipped else frozenset(), on_crd,
                                   target if trust_shipped else None)
    finally:
        gc.enable()


def _validate_documents(data: bytes, origin: str, allowed_groups: frozenset[str], shipped_digests: dict[str, str],
                        trusted: frozenset[str], on_crd: Callable[[Crd], None] | None,
                        target: TargetRelease | None) -> list[Crd]:
    crds: list[tuple[int, Crd]] = []
    seen: set[str] = set()
    # A released file is read largest document first, so that the dry-run the server takes longest
    # over (installations) starts first; any other file in order, so a refusal names the first fault.
    read = documents_largest_first(data) if on_crd is not None and shipped_digests else enumerate(parsed_documents(data))
    for position, document in read:
        crd = _validate_document(position + 1, document, allowed_groups, shipped_digests, trusted, target)
        if crd.name in seen:
            raise ManifestRejected(f"CRD {crd.name} appears twice in the manifest: "
                                   "use the released file unchanged")
        seen.add(crd.name)
        crds.append((position, crd))
        if on_crd is not None:
            on_crd(crd)
    if not crds:
        raise ManifestRejected(f"{origin} holds no CustomResourceDefinition: "
                               "check the source points at operator-crds.yaml")
    return [crd for _, crd in sorted(crds, key=lambda item: item[0])]


def _validate_document(index: int, document: Any, allowed_groups: frozenset[str], shipped_digests: dict[str, str],
                       trusted: frozenset[str], target: TargetRelease | None) -> Crd:
    if not isinstance(document, dict):
        raise ManifestRejected(f"document {index} is a {type(document).__name__}, not a Kubernetes "
                               "object: the file must hold only CustomResourceDefinitions")
    metadata: dict[str, Any] = document["metadata"] if isinstance(document.get("metadata"), dict) else {}
    name = metadata.get("name")
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if (api_version, kind) != ("apiextensions.k8s.io/v1", "CustomResourceDefinition"):
        raise ManifestRejected(
            f"document {index} ({kind or 'no kind'} {name or '<unnamed>'}, apiVersion {api_version}) is not an "
            "apiextensions.k8s.io/v1 CustomResourceDefinition: the file must hold only CRDs")
    if not isinstance(document.get("metadata"), dict) or not isinstance(name, str) or not name:
        raise ManifestRejected(f"document {index} ({kind}) has no metadata.name, which every CRD of a "
                               "release has: use the released file unchanged")
    spec: dict[str, Any] = document["spec"] if isinstance(document.get("spec"), dict) else {}
    group = spec.get("group")
    if group not in allowed_groups:
        raise ManifestRejected(
            f"CRD {name} is in group {group!r}, not one of {', '.join(sorted(allowed_groups))}: "
            "this is not a Calico CRD manifest for this API mode; use Calico's released file")
    if name in ENTERPRISE_MARKER_CRDS:
        raise ManifestRejected(f"CRD {name} belongs to Calico Enterprise, and no open-source release ships "
                               "it (applied, it would make every later run refuse the cluster as Enterprise); "
                               "use the released file unchanged")
    body = _strip_server_fields(document)
    digest = shipped_digests.get(name) or document_digest(body)
    if digest not in trusted:
        if target is not None and name in target.digests:
            _check_modified(name, body, target)
        crd_policy.check_size(name, json.dumps(body, separators=(",", ":")).encode())  # before the slow checks
        _check_shell_schema(name, body)  # what is validated is exactly what is sent
        crd_policy.check_metadata(name, body["metadata"])
        crd_policy.check_spec(name, spec)
        release_rules.check_unreleased_document(name, body)
    body = _with_digest(body, digest)
    encoded = json.dumps(body, separators=(",", ":")).encode()
    crd_policy.check_size(name, encoded)
    versions = spec["versions"]
    return Crd(name=name, group=str(group), kind=spec["names"]["kind"],
               served_versions=tuple(v["name"] for v in versions if v.get("served")),
               digest=digest, body=body, encoded=encoded)


def _check_modified(name: str, body: dict[str, Any], target: TargetRelease) -> None:
    """A known release's CRD that is no released document: refused, or with --allow-modified-crds
    applied with its differences shown (after every other rule)."""
    found = differences(body, target.digests[name], limit=20 if target.allow_modified else 1)
    if not target.allow_modified:
        raise ManifestRejected(
            f"CRD {name} differs from Calico {target.version}'s document at {found[0]}: a known release's "
            "file must be that release's; use the released file unchanged, or pass --allow-modified-crds "
            "to apply modified CRDs")
    log.warning("CRD %s differs from Calico %s's document (--allow-modified-crds): %s", name, target.version,
                "; ".join(found))


def released_view(body: dict[str, Any]) -> dict[str, Any]:
    """A Crd's body as a release file holds it: without the digest annotation the run adds."""
    metadata = body["metadata"]
    annotations = without_bookkeeping(metadata.get("annotations"))
    view = {key: value for key, value in metadata.items() if key != "annotations"}
    return {**body, "metadata": {**view, **({"annotations": annotations} if annotations else {})}}


def _with_digest(body: dict[str, Any], digest: str) -> dict[str, Any]:
    metadata = body["metadata"]
    annotations = {**(metadata.get("annotations") or {}), DIGEST_ANNOTATION: digest}
    return {**body, "metadata": {**metadata, "annotations": annotations}}


def _strip_server_fields(document: dict[str, Any]) -> dict[str, Any]:
    """The apiserver owns status and creationTimestamp; files up to v3.29 carry empty ones. Our own
    bookkeeping annotations (a document exported from a cluster carries them) are the run's to write."""
    body = {key: value for key, value in document.items() if key != "status"}
    metadata = document.get("metadata")
    if isinstance(metadata, dict) and "creationTimestamp" in metadata and metadata["creationTimestamp"] is None:
        body["metadata"] = metadata = {k: v for k, v in metadata.items() if k != "creationTimestamp"}
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if isinstance(metadata, dict) and isinstance(annotations, dict) and any(
            key in annotations for key in BOOKKEEPING_ANNOTATIONS):
        body["metadata"] = {**metadata, "annotations": without_bookkeeping(annotations)}
    return body


def _check_shell_schema(name: str, document: dict[str, Any]) -> None:
    error = _first_schema_error(document)
    if error is not None:
        raise ManifestRejected(f"CRD {name} fails the CustomResourceDefinition schema: {error}; "
                               "use the released file unchanged")


def _first_schema_error(document: dict[str, Any]) -> str | None:
    from jsonschema.exceptions import best_match  # only for documents no release shipped (crd_policy)

    error = best_match(crd_policy.crd_shell_validator().iter_errors(document))
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path) or "the top level"
    return f"{where}: {error.message[:200]}"




def _check_release_set(crds: list[Crd], fetched: FetchedManifest, target: CalicoVersion | None, mode: ApiMode,
                       a_released_file: bool, released: ReleaseFile | None, allow_modified: bool) -> None:
    """For a release in the shipped table, the manifest must hold exactly that release's CRDs.
    `a_released_file`: byte for byte some release's file; `released`: the target's file in the table."""
    table = release_table()
    if a_released_file and target is None:
        return
    if released is None:
        known = table.versions
        what = f"Calico {target}" if target else "a manifest given without --version"
        log.warning("the CRD set of %s is unchecked: the shipped table covers releases %s to %s; "
                    "the group, CRD and release rules apply (docs/manifest-policy.md)", what, known[0], known[-1])
        return
    if fetched.sha256 == released.sha256:
        return
    names = frozenset(crd.name for crd in crds)
    expected = frozenset(released.crds)
    if names != expected:
        raise ManifestRejected(f"the manifest's CRDs are not Calico {target}'s ({mode.manifest_file}): "
                               f"{_set_difference(names, expected)}{_looks_like(table.with_crds(names))}; "
                               "use that release's file unchanged")
    digests = {crd.name: crd.digest for crd in crds}
    if digests == released.crds:
        return  # the release's own documents, re-serialized
    other = table.with_documents(digests)
    if other is not None:
        raise ManifestRejected(f"the manifest is the file of Calico {first_release(other).split('/')[0]}, "
                               f"not of {target}: fetch {target}'s {mode.manifest_file}")
    # Documents of other releases mixed in (modified ones were judged as they were read)
    mixed = sorted(name for name, digest in digests.items()
                   if released.crds[name] != digest and digest in table.document_digests)
    if mixed and not allow_modified:
        shipped = table.first_shipped(mixed[0], digests[mixed[0]])
        raise ManifestRejected(f"CRD {mixed[0]} is Calico {shipped}'s document, not {target}'s"
                               f"{f' (and {len(mixed) - 1} more)' if len(mixed) > 1 else ''}: a known release's "
                               "file must be that release's; use the released file unchanged, or pass "
                               "--allow-modified-crds to apply modified CRDs")
    if mixed:
        log.warning("%d CRD(s) hold other releases' documents, not Calico %s's (--allow-modified-crds): %s",
                    len(mixed), target, _listed(mixed))


def _set_difference(names: frozenset[str], expected: frozenset[str]) -> str:
    parts = []
    if names - expected:
        parts.append(f"{len(names - expected)} not in that release ({_listed(sorted(names - expected))})")
    if expected - names:
        parts.append(f"{len(expected - names)} missing ({_listed(sorted(expected - names))})")
    return ", ".join(parts)


def _looks_like(files: list[ReleaseFile]) -> str:
    if not files:
        return ""
    tags = sorted({release.split("/")[0] for file in files for release in file.releases}, key=parse_version)
    return f"; that is the set of Calico {tags[0]}" + (f" to {tags[-1]}" if len(tags) > 1 else "")


def _listed(names: list[str], shown: int = 4) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
