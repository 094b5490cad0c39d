"""Stage 3: parse the manifest and validate it offline, before any cluster call.

Parsing is strict (no duplicate keys, only values JSON can carry); each CRD then passes the manifest
policy (`crd_policy`), and the set of CRDs must be the one the target release ships (`releases`)."""

from __future__ import annotations

import gc
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import yaml

from calico_crd_hook import crd_policy
from calico_crd_hook.errors import ManifestRejected
from calico_crd_hook.releases import (DIGEST_ANNOTATION, GENERATION_ANNOTATION, ReleaseFile, document_digest,
                                      first_release, release_table)
from calico_crd_hook.source import FetchedManifest
from calico_crd_hook.version import (ENTERPRISE_MARKER_CRDS, V3_29, ApiMode,
                                     CalicoVersion, parse_version)

log = logging.getLogger(__name__)

# libyaml's parser is about ten times faster on these multi-megabyte files.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Deeper than any release (37 levels), far below what would exhaust Python's recursion in the JSON
# encoder or the schema validator.
MAX_NESTING = 64
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1
# An int64 has at most 19 digits (64 in binary); longer text is refused before int() sees it.
_MAX_INTEGER_TEXT = 80
_USE_RELEASED = "use the released file unchanged"


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
        assert self.encoded.count(digest_entry) == 1
        return self.encoded.replace(digest_entry, digest_entry + b"," + recorded)


@dataclass(frozen=True)
class Manifest:
    crds: tuple[Crd, ...]
    origin: str
    sha256: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(crd.name for crd in self.crds)


_ALIAS_MESSAGE = ("the manifest uses YAML anchors or aliases, which Calico CRD manifests never do: "
                  "use the released file unchanged")
_STR, _INT = "tag:yaml.org,2002:str", "tag:yaml.org,2002:int"
_UNTAGGED = (None, "!")
_COLLECTION_TAGS = {yaml.MappingStartEvent: "tag:yaml.org,2002:map", yaml.SequenceStartEvent: "tag:yaml.org,2002:seq"}
_NO_KEY = object()  # the mapping being built waits for a key, not a value


def _built_documents(data: bytes) -> Iterator[Any]:
    """Each document built straight from libyaml's events, with PyYAML's safe resolution of plain
    scalars. Three times faster than PyYAML's composer and constructor on a release file, and
    stricter: refuses what kubectl refuses or JSON cannot carry, where PyYAML would quietly pick."""
    loader = _BaseLoader(data)
    resolvers, resolve, constructors = loader.yaml_implicit_resolvers, loader.resolve, loader.yaml_constructors
    containers: list[Any] = []
    keys: list[Any] = []  # per open mapping: the key waiting for its value (or _NO_KEY)
    document: Any = None
    try:
        while loader.check_event():
            event = loader.get_event()
            kind = type(event)
            if kind is yaml.ScalarEvent:
                if event.anchor is not None:
                    raise ManifestRejected(_ALIAS_MESSAGE)
                text, tag = event.value, event.tag
                if tag in _UNTAGGED:  # as PyYAML's resolver: only plain scalars may be other than strings
                    tag = resolve(yaml.ScalarNode, text, event.implicit) if event.implicit[0] and (
                        not text or text[0] in resolvers) else _STR
                if containers and keys[-1] is _NO_KEY and type(containers[-1]) is dict:
                    keys[-1] = _mapping_key(tag, text, containers[-1], event)
                    continue
                value = text if tag == _STR else _constructed(loader, constructors, tag, event)
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                _check_collection_start(event, containers, keys)
                containers.append({} if kind is yaml.MappingStartEvent else [])
                keys.append(_NO_KEY)
                continue
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                value = containers.pop()
                keys.pop()
            elif kind is yaml.DocumentEndEvent:
                yield document
                document = None
                continue
            elif kind is yaml.AliasEvent:
                raise ManifestRejected(_ALIAS_MESSAGE)  # also what stops a "billion laughs"
            else:
                continue  # stream and document starts
            if not containers:
                document = value
            elif type(containers[-1]) is list:
                containers[-1].append(value)
            else:  # a value: keys were taken above, and a collection never starts as a key
                containers[-1][keys[-1]] = value
                keys[-1] = _NO_KEY
    finally:
        loader.dispose()


def _check_collection_start(event: Any, containers: list[Any], keys: list[Any]) -> None:
    if event.anchor is not None:
        raise ManifestRejected(_ALIAS_MESSAGE)
    line = event.start_mark.line + 1
    if containers and type(containers[-1]) is dict and keys[-1] is _NO_KEY:
        raise _non_string_key(line)
    if event.tag not in _UNTAGGED and event.tag != _COLLECTION_TAGS[type(event)]:
        raise ManifestRejected(f"the manifest tags a collection as {_short(event.tag)} at line {line}, which "
                               f"Calico's files never do and JSON cannot carry: {_USE_RELEASED}")


def _non_string_key(line: int) -> ManifestRejected:
    return ManifestRejected(f"the manifest has a mapping key that is not a string at line {line}, "
                            f"and JSON keys are strings; {_USE_RELEASED}")


def _mapping_key(tag: str, key: Any, mapping: dict[str, Any], event: Any) -> str:
    line = event.start_mark.line + 1
    if tag != _STR:
        raise _non_string_key(line)
    # PyYAML keeps the last of two equal keys, so `scope: Cluster` then `scope: Namespaced` would
    # silently become a namespaced CRD.
    if key in mapping:
        raise ManifestRejected(f"the manifest repeats the key {key!r} in one mapping at line {line} "
                               f"(kubectl refuses duplicate keys, and YAML parsers disagree on which "
                               f"wins); {_USE_RELEASED}")
    return key


def _constructed(loader: Any, constructors: dict[Any, Any], tag: str, event: Any) -> Any:
    """A non-string scalar by PyYAML's safe constructors: ints, floats, booleans and nulls, and the
    timestamps and binaries that the JSON check refuses with their path."""
    line = event.start_mark.line + 1
    if tag == _INT and len(event.value) > _MAX_INTEGER_TEXT:
        raise ManifestRejected(f"the integer at line {line} has {len(event.value)} characters, far past "
                               f"int64; {_USE_RELEASED}")
    construct = constructors.get(tag) or constructors[None]  # None: PyYAML's "no constructor" error
    try:
        return construct(loader, yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark))
    except yaml.YAMLError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):  # PyYAML's constructors crash so
        raise ManifestRejected(f"the value {event.value[:40]!r} at line {line} is not a valid YAML {_short(tag)}: "
                               f"quote it, or {_USE_RELEASED}") from None


def _short(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


def parse_documents(data: bytes) -> list[Any]:
    """The documents, each holding only values JSON can carry (checked before anything else
    walks or encodes them)."""
    return list(_parsed_documents(data))


def _parsed_documents(data: bytes) -> Iterator[Any]:
    """parse_documents, one document at a time: each can be checked while the rest parse."""
    count = 0
    try:
        for document in _built_documents(data):
            if document is None:
                continue
            count += 1
            if count > crd_policy.MAX_DOCUMENTS:
                raise ManifestRejected(f"the manifest holds more than {crd_policy.MAX_DOCUMENTS} documents, "
                                       f"and a Calico release holds at most 32 CRDs; {_USE_RELEASED}")
            _check_json_values(count, document)
            yield document
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ManifestRejected(f"the manifest is not valid YAML{line} ({problem}): "
                               "fetch the released file again") from None


def _check_json_values(index: int, document: Any) -> None:
    """Only strings, booleans, null, finite numbers and int64 integers, at most MAX_NESTING deep.
    A timestamp, binary, set or .inf would otherwise crash the JSON encoder or be sent as non-JSON.
    The fast pass keeps no paths; a second pass finds the path only when something is wrong."""
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        node, depth = pending.pop()
        kind = type(node)
        if kind is dict or kind is list:
            if depth > MAX_NESTING:
                break
            pending.extend((child, depth + 1) for child in (node.values() if kind is dict else node))
        elif not (kind is str or kind is bool or node is None or
                  (kind is int and _INT64_MIN <= node <= _INT64_MAX) or (kind is float and math.isfinite(node))):
            break
    else:
        return
    path, problem = _first_non_json_value(document)
    metadata = document.get("metadata") if isinstance(document, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    what = f"CRD {name}" if isinstance(name, str) else f"document {index}"
    raise ManifestRejected(f"{what}: {path.removeprefix('.') or 'the top level'}: {problem}; {_USE_RELEASED}")


def _first_non_json_value(document: Any) -> tuple[str, str]:
    pending: list[tuple[Any, str, int]] = [(document, "", 1)]
    while pending:
        node, path, depth = pending.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_NESTING:
                return path, f"nested deeper than {MAX_NESTING} levels, and no Calico CRD nests past 40"
            children = node.items() if isinstance(node, dict) else enumerate(node)
            pending.extend((child, f"{path}.{key}" if isinstance(node, dict) else f"{path}[{key}]", depth + 1)
                           for key, child in reversed(list(children)))
        elif isinstance(node, int) and not isinstance(node, bool):
            if not _INT64_MIN <= node <= _INT64_MAX:
                return path, f"the integer {node} does not fit in int64"
        elif isinstance(node, float):
            if not math.isfinite(node):
                return path, f"{node} is not a finite number, which JSON cannot carry"
        elif not (isinstance(node, (str, bool)) or node is None):
            what = {"date": "a YAML timestamp (quote it)", "datetime": "a YAML timestamp (quote it)",
                    "bytes": "YAML !!binary", "set": "a YAML !!set", "tuple": "a YAML !!omap or !!pairs entry"}
            return path, f"{what.get(type(node).__name__, type(node).__name__)} is not a JSON value"
    raise AssertionError("the fast pass found a problem the slow pass did not")  # pragma: no cover


def validate_manifest(fetched: FetchedManifest, target: CalicoVersion | None, mode: ApiMode,
                      allowed_groups: frozenset[str], on_released_crd: Callable[[Crd], None] | None = None) -> Manifest:
    """`on_released_crd`: when the file is byte for byte a released one (every document known
    good), called with each CRD as soon as it alone passed its checks, while the rest parse (the run
    starts its read-only dry-run then). Any other file is judged whole before a single request
    carries any of it, so a misspelt field is refused before a connection is made."""
    released = release_table().with_sha256(fetched.sha256)
    crds = validate_documents(fetched.data, fetched.origin, allowed_groups,
                              released.crds if released else None,
                              on_crd=on_released_crd if released else None)
    tier_crd = f"tiers.{mode.calico_group}"
    if target is not None and target >= V3_29 and tier_crd not in {crd.name for crd in crds}:
        raise ManifestRejected(f"the manifest for Calico {target} lacks the {tier_crd} CRD that "
                               "this version needs: it is not that release's file")
    _check_release_set(crds, fetched, target, mode)
    return Manifest(crds=tuple(crds), origin=fetched.origin, sha256=fetched.sha256)


def validate_documents(data: bytes, origin: str, allowed_groups: frozenset[str],
                       shipped_digests: dict[str, str] | None = None, trust_shipped: bool = True,
                       on_crd: Callable[[Crd], None] | None = None) -> list[Crd]:
    """Every document parsed strictly and checked against the CRD rules; the set is not judged.
    `shipped_digests`: the documents' digests, when the file is byte for byte a released one.
    A document the release table lists was validated when the table was generated, so the schema
    rules are not run on it again (`trust_shipped=False` runs them: the table's generator)."""
    gc.disable()  # the parse builds millions of objects and frees none: no cycles to look for
    try:
        return _validate_documents(data, origin, allowed_groups, shipped_digests or {},
                                   release_table().document_digests if trust_shipped else frozenset(), on_crd)
    finally:
        gc.enable()


def _validate_documents(data: bytes, origin: str, allowed_groups: frozenset[str], shipped_digests: dict[str, str],
                        trusted: frozenset[str], on_crd: Callable[[Crd], None] | None) -> list[Crd]:
    crds: list[Crd] = []
    seen: set[str] = set()
    for index, document in enumerate(_parsed_documents(data), start=1):
        crd = _validate_document(index, document, allowed_groups, shipped_digests, trusted)
        if crd.name in seen:
            raise ManifestRejected(f"CRD {crd.name} appears twice in the manifest: "
                                   "use the released file unchanged")
        seen.add(crd.name)
        crds.append(crd)
        if on_crd is not None:
            on_crd(crd)
    if not crds:
        raise ManifestRejected(f"{origin} holds no CustomResourceDefinition: "
                               "check the source points at operator-crds.yaml")
    return crds


def _validate_document(index: int, document: Any, allowed_groups: frozenset[str], shipped_digests: dict[str, str],
                       trusted: frozenset[str]) -> Crd:
    if not isinstance(document, dict):
        raise ManifestRejected(f"document {index} is a {type(document).__name__}, not a Kubernetes "
                               "object: the file must hold only CustomResourceDefinitions")
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    name = metadata.get("name")
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if (api_version, kind) != ("apiextensions.k8s.io/v1", "CustomResourceDefinition"):
        raise ManifestRejected(
            f"document {index} ({kind or 'no kind'} {name or '<unnamed>'}, apiVersion {api_version}) is not an "
            "apiextensions.k8s.io/v1 CustomResourceDefinition: the file must hold only CRDs")
    if not isinstance(document.get("metadata"), dict) or not isinstance(name, str) or not name:
        raise ManifestRejected(f"document {index} ({kind}) has no metadata.name, which every CRD of a "
                               "release has: use the released file unchanged")
    spec = document.get("spec") if isinstance(document.get("spec"), dict) else {}
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
        crd_policy.check_size(name, json.dumps(body, separators=(",", ":")).encode())  # before the slow checks
        _check_shell_schema(name, body)  # what is validated is exactly what is sent
        crd_policy.check_metadata(name, body["metadata"])
        crd_policy.check_spec(name, spec)
    body = _with_digest(body, digest)
    encoded = json.dumps(body, separators=(",", ":")).encode()
    crd_policy.check_size(name, encoded)
    versions = spec["versions"]
    return Crd(name=name, group=group, kind=spec["names"]["kind"],
               served_versions=tuple(v["name"] for v in versions if v.get("served")),
               digest=digest, body=body, encoded=encoded)


def _with_digest(body: dict[str, Any], digest: str) -> dict[str, Any]:
    metadata = body["metadata"]
    annotations = {**(metadata.get("annotations") or {}), DIGEST_ANNOTATION: digest}
    return {**body, "metadata": {**metadata, "annotations": annotations}}


def _strip_server_fields(document: dict[str, Any]) -> dict[str, Any]:
    """The apiserver owns status and creationTimestamp; files up to v3.29 carry empty ones."""
    body = {key: value for key, value in document.items() if key != "status"}
    metadata = document.get("metadata")
    if isinstance(metadata, dict) and "creationTimestamp" in metadata and metadata["creationTimestamp"] is None:
        body["metadata"] = {k: v for k, v in metadata.items() if k != "creationTimestamp"}
    return body


def _check_shell_schema(name: str, document: dict[str, Any]) -> None:
    error = _first_schema_error(document)
    if error is not None:
        raise ManifestRejected(f"CRD {name} fails the CustomResourceDefinition schema: {error}; "
                               "use the released file unchanged")


def _first_schema_error(document: dict[str, Any]) -> str | None:
    from jsonschema.exceptions import best_match

    error = best_match(crd_policy.crd_shell_validator().iter_errors(document))
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path) or "the top level"
    return f"{where}: {error.message[:200]}"




def _check_release_set(crds: list[Crd], fetched: FetchedManifest, target: CalicoVersion | None,
                       mode: ApiMode) -> None:
    """For a release in the shipped table, the manifest must hold exactly that release's CRDs."""
    table = release_table()
    if table.with_sha256(fetched.sha256) is not None and target is None:
        return  # byte for byte a released file
    released = table.file_for(target, mode) if target is not None else None
    if released is None:
        known = table.versions
        what = f"Calico {target}" if target else "a manifest given without --version"
        log.warning("the CRD set of %s is unchecked: the shipped table covers releases %s to %s; "
                    "only the group and CRD rules apply", what, known[0], known[-1])
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
    changed = sorted(name for name, digest in digests.items() if released.crds[name] != digest)
    log.warning("%d CRD(s) differ from Calico %s's released documents (%s): applying them as pinned",
                len(changed), target, _listed(changed))


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
