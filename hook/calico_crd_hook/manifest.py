"""Stage 3: parse the manifest and validate it offline, before any cluster call."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any

import yaml

from calico_crd_hook.errors import ManifestRejected
from calico_crd_hook.source import FetchedManifest
from calico_crd_hook.version import FIRST_VERSION_WITH_TIERS, ApiMode, CalicoVersion

# libyaml's parser is about ten times faster on these multi-megabyte files.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# An anchor or alias token: & or * and a name, after an indicator or at a line start. Only a
# cheap filter: a hit is confirmed (or not) by the parser's own events.
_ANCHOR_OR_ALIAS_CANDIDATE = re.compile(rb"[&*][0-9A-Za-z_-]")
_TOKEN_LEADERS = b":-[,{?\n"


@dataclass(frozen=True)
class Crd:
    name: str
    group: str
    kind: str
    served_versions: tuple[str, ...]
    body: dict[str, Any]  # what is applied: status and creationTimestamp stripped

    @cached_property
    def encoded(self) -> bytes:
        """The request body, encoded once for the dry-run and the apply."""
        return json.dumps(self.body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Manifest:
    crds: tuple[Crd, ...]
    origin: str
    sha256: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(crd.name for crd in self.crds)


class _AliasRefusingLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """An alias is a node reached twice; refusing it here also stops a "billion laughs"."""

    def construct_object(self, node, deep=False):  # type: ignore[no-untyped-def]
        if node in self.constructed_objects:
            raise ManifestRejected(_ALIAS_MESSAGE)
        return super().construct_object(node, deep)


_ALIAS_MESSAGE = ("the manifest uses YAML anchors or aliases, which Calico CRD manifests never do: "
                  "use the released file unchanged")


def parse_documents(data: bytes) -> list[Any]:
    _refuse_anchors_and_aliases(data)
    try:
        return [doc for doc in yaml.load_all(data, Loader=_AliasRefusingLoader) if doc is not None]
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ManifestRejected(f"the manifest is not valid YAML{line} ({problem}): "
                               "fetch the released file again") from None


def _refuse_anchors_and_aliases(data: bytes) -> None:
    if not any(_is_token_start(data, match.start())
               for match in _ANCHOR_OR_ALIAS_CANDIDATE.finditer(data)):
        return
    try:
        for event in yaml.parse(data, Loader=_BaseLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise ManifestRejected(_ALIAS_MESSAGE)
    except yaml.YAMLError:
        return  # the full parse reports the syntax error with its line


def _is_token_start(data: bytes, position: int) -> bool:
    index = position - 1
    while index >= 0 and data[index] in b" \t":
        index -= 1
    return index < 0 or data[index] in _TOKEN_LEADERS


def validate_manifest(fetched: FetchedManifest, target: CalicoVersion | None, mode: ApiMode,
                      allowed_groups: frozenset[str]) -> Manifest:
    documents = parse_documents(fetched.data)
    if not documents:
        raise ManifestRejected(f"{fetched.origin} holds no CustomResourceDefinition: "
                               "check the source points at operator-crds.yaml")
    crds: list[Crd] = []
    seen: set[str] = set()
    for index, document in enumerate(documents, start=1):
        crd = _validate_document(index, document, allowed_groups)
        if crd.name in seen:
            raise ManifestRejected(f"CRD {crd.name} appears twice in the manifest: "
                                   "use the released file unchanged")
        seen.add(crd.name)
        crds.append(crd)
    tier_crd = f"tiers.{mode.calico_group}"
    if target is not None and target >= FIRST_VERSION_WITH_TIERS and tier_crd not in seen:
        raise ManifestRejected(f"the manifest for Calico {target} lacks the {tier_crd} CRD that "
                               "this version needs: it is not that release's file")
    return Manifest(crds=tuple(crds), origin=fetched.origin, sha256=fetched.sha256)


def _validate_document(index: int, document: Any, allowed_groups: frozenset[str]) -> Crd:
    if not isinstance(document, dict):
        raise ManifestRejected(f"document {index} is a {type(document).__name__}, not a Kubernetes "
                               "object: the file must hold only CustomResourceDefinitions")
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    name = metadata.get("name", "<unnamed>")
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if (api_version, kind) != ("apiextensions.k8s.io/v1", "CustomResourceDefinition"):
        raise ManifestRejected(
            f"document {index} ({kind or 'no kind'} {name}, apiVersion {api_version}) is not an "
            "apiextensions.k8s.io/v1 CustomResourceDefinition: the file must hold only CRDs")
    spec = document.get("spec") if isinstance(document.get("spec"), dict) else {}
    group = spec.get("group")
    if group not in allowed_groups:
        raise ManifestRejected(
            f"CRD {name} is in group {group!r}, not one of {', '.join(sorted(allowed_groups))}: "
            "this file is not a Calico CRD manifest for this API mode")
    body = _strip_server_fields(document)
    _check_schema(name, body)  # what is validated is exactly what is sent
    plural = spec["names"]["plural"]
    if name != f"{plural}.{group}":
        raise ManifestRejected(f"CRD name {name!r} is not <plural>.<group> ({plural}.{group}): "
                               "the apiserver would reject it")
    versions = spec["versions"]
    storage = [v["name"] for v in versions if v.get("storage")]
    if len(storage) != 1:
        raise ManifestRejected(f"CRD {name} has {len(storage)} storage versions, not exactly one: "
                               "use the released file unchanged")
    return Crd(name=name, group=group, kind=spec["names"]["kind"],
               served_versions=tuple(v["name"] for v in versions if v.get("served")),
               body=body)


def _strip_server_fields(document: dict[str, Any]) -> dict[str, Any]:
    """The apiserver owns status and creationTimestamp; files up to v3.29 carry empty ones."""
    body = {key: value for key, value in document.items() if key != "status"}
    if isinstance(document.get("metadata"), dict):
        body["metadata"] = {k: v for k, v in document["metadata"].items() if k != "creationTimestamp"}
    return body


def _check_schema(name: str, document: dict[str, Any]) -> None:
    error = _first_schema_error(document)
    if error is not None:
        raise ManifestRejected(f"CRD {name} fails the CustomResourceDefinition schema: {error}; "
                               "use the released file unchanged")


def _first_schema_error(document: dict[str, Any]) -> str | None:
    from jsonschema.exceptions import best_match

    error = best_match(_crd_validator().iter_errors(document))
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path) or "the top level"
    return f"{where}: {error.message[:200]}"


@lru_cache(maxsize=1)
def _crd_validator():  # type: ignore[no-untyped-def]
    """Compiled once per process: the schema is large and recursive."""
    from jsonschema import Draft202012Validator

    schema_text = resources.files("calico_crd_hook").joinpath(
        "data/customresourcedefinition.schema.json").read_text()
    return Draft202012Validator(json.loads(schema_text))
