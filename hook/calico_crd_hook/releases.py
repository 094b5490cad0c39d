"""What each Calico release ships: the CRD names and each CRD document's digest, per release file,
and of each document its own labels and annotations, kind, scope, storage version and names
(what a newer release's document is held to, `release_rules`).

The table (`data/release-crds.json`) is generated from the real release files by
`hook/tools/generate_release_crds.py` and shipped beside `SHA256SUMS`; a test keeps the two in step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any

from calico_crd_hook.actions import storage_version
from calico_crd_hook.version import ApiMode, CalicoVersion, parse_version

TABLE_FILE = "data/release-crds.json"
# Written on each CRD in the same apply as its content: the digest of the document applied, so a
# later run can tell from metadata alone that the CRD is exactly that document.
DIGEST_ANNOTATION = "calico-crd-hook.projectcalico.org/document-sha256"
# Written in the same apply: the metadata.generation that apply leaves (its dry-run answered it).
# The generation moves exactly when the spec changes, whoever writes it, so a later run can tell
# from metadata alone that the spec is still the one applied.
GENERATION_ANNOTATION = "calico-crd-hook.projectcalico.org/applied-generation"
BOOKKEEPING_ANNOTATIONS = (DIGEST_ANNOTATION, GENERATION_ANNOTATION)


def without_bookkeeping(annotations: dict[str, str] | None) -> dict[str, str]:
    """A CRD's annotations but this program's own bookkeeping: what a review compares."""
    return {key: value for key, value in (annotations or {}).items() if key not in BOOKKEEPING_ANNOTATIONS}


def document_digest(body: dict[str, Any]) -> str:
    """sha256 of a CRD as applied (status and creationTimestamp removed), in a canonical JSON form,
    so that re-indenting or re-ordering the YAML of a released file does not change it."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ReleaseFile:
    sha256: str  # of the file's bytes, as in SHA256SUMS
    releases: tuple[str, ...]  # every "<tag>/<file>" that shipped exactly these bytes
    crds: dict[str, str]  # CRD name -> document digest


@dataclass(frozen=True)
class DocumentMetadata:
    """A released CRD document's own labels and annotations: with the spec, what it sets."""
    labels: dict[str, str]
    annotations: dict[str, str]


@dataclass(frozen=True)
class DocumentFacts:
    """What a released CRD document declares, beyond its metadata: the facts a later release of
    the same CRD keeps."""
    crd: str
    kind: str
    scope: str
    storage: str
    short_names: tuple[str, ...]
    categories: tuple[str, ...]


@dataclass(frozen=True)
class KnownCrd:
    """One CRD as every release that shipped it declared it."""
    kinds: frozenset[str]
    scopes: frozenset[str]
    storage_versions: frozenset[str]


@dataclass(frozen=True)
class ReleaseTable:
    files: tuple[ReleaseFile, ...]
    documents: dict[str, DocumentMetadata]  # document digest -> its metadata
    facts: dict[str, DocumentFacts]  # document digest -> what it declares

    @cached_property
    def known_crds(self) -> dict[str, KnownCrd]:
        by_name: dict[str, list[DocumentFacts]] = {}
        for facts in self.facts.values():
            by_name.setdefault(facts.crd, []).append(facts)
        return {name: KnownCrd(kinds=frozenset(f.kind for f in found), scopes=frozenset(f.scope for f in found),
                               storage_versions=frozenset(f.storage for f in found))
                for name, found in by_name.items()}

    @cached_property
    def metadata_keys(self) -> tuple[frozenset[str], frozenset[str]]:
        """(label keys, annotation keys) that some release's CRD documents carry."""
        return (frozenset(key for document in self.documents.values() for key in document.labels),
                frozenset(key for document in self.documents.values() for key in document.annotations))

    @property
    def versions(self) -> tuple[CalicoVersion, ...]:
        return tuple(sorted({parse_version(release.split("/")[0]) for file in self.files
                             for release in file.releases}))

    def file_for(self, version: CalicoVersion, mode: ApiMode) -> ReleaseFile | None:
        wanted = f"{version.tag}/{mode.manifest_file}"
        return next((file for file in self.files if wanted in file.releases), None)

    def with_sha256(self, sha256: str) -> ReleaseFile | None:
        return next((file for file in self.files if file.sha256 == sha256), None)

    def with_crds(self, names: frozenset[str]) -> list[ReleaseFile]:
        return [file for file in self.files if frozenset(file.crds) == names]

    def with_documents(self, digests: dict[str, str]) -> ReleaseFile | None:
        return next((file for file in self.files if file.crds == digests), None)

    @cached_property
    def document_digests(self) -> frozenset[str]:
        """Every released CRD document: each was validated when the table was generated."""
        return frozenset(digest for file in self.files for digest in file.crds.values())

    @cached_property
    def _first_shipped(self) -> dict[tuple[str, str], CalicoVersion]:
        first: dict[tuple[str, str], CalicoVersion] = {}
        for file in self.files:
            oldest = parse_version(first_release(file).split("/")[0])
            for name, digest in file.crds.items():
                if (name, digest) not in first or oldest < first[(name, digest)]:
                    first[(name, digest)] = oldest
        return first

    def first_shipped(self, name: str, digest: str) -> CalicoVersion | None:
        """The oldest release whose file holds this document of CRD `name`; None for a document
        no release shipped."""
        return self._first_shipped.get((name, digest))


def parse_table(text: str) -> ReleaseTable:
    decoded = json.loads(text)
    files = tuple(ReleaseFile(sha256=sha256, releases=tuple(entry["releases"]), crds=dict(entry["crds"]))
                  for sha256, entry in sorted(decoded["files"].items()))
    entries = decoded.get("documents") or {}
    documents = {digest: DocumentMetadata(labels=dict(entry.get("labels") or {}),
                                          annotations=dict(entry.get("annotations") or {}))
                 for digest, entry in entries.items()}
    facts = {digest: DocumentFacts(crd=entry["crd"], kind=entry["kind"], scope=entry["scope"], storage=entry["storage"],
                                   short_names=tuple(entry.get("shortNames") or ()),
                                   categories=tuple(entry.get("categories") or ()))
             for digest, entry in entries.items()}
    return ReleaseTable(files, documents, facts)


def document_metadata(body: dict[str, Any]) -> dict[str, dict[str, str]]:
    """What the table records of a document's metadata: its labels and annotations, when any,
    without this program's own bookkeeping."""
    metadata = body.get("metadata") or {}
    found = {"labels": dict(metadata.get("labels") or {}), "annotations": without_bookkeeping(metadata.get("annotations"))}
    return {key: values for key, values in found.items() if values}


def document_facts(body: dict[str, Any]) -> dict[str, Any]:
    """What the table records of a validated document's spec (DocumentFacts, as JSON)."""
    spec, names = body["spec"], body["spec"]["names"]
    found = {"crd": body["metadata"]["name"], "kind": names["kind"], "scope": spec["scope"],
             "storage": storage_version(body),
             "shortNames": list(names.get("shortNames") or []), "categories": list(names.get("categories") or [])}
    return {key: value for key, value in found.items() if value != []}


@lru_cache(maxsize=1)
def release_table() -> ReleaseTable:
    return parse_table(resources.files("calico_crd_hook").joinpath(TABLE_FILE).read_text())


def first_release(file: ReleaseFile) -> str:
    """The oldest release that shipped the file, for messages ("the file of v3.28.0")."""
    return min(file.releases, key=lambda release: parse_version(release.split("/")[0]))
