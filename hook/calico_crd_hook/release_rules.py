"""What every Calico release's CRDs have in common, derived from the shipped table: the rules a
document no release shipped (a release newer than the table, a file given without a version, or a
modified one let through with --allow-modified-crds) must follow on top of the apiserver's.

Each rule stops something the apiserver accepts and a release never needs: another tool's ownership
marker (that tool may then adopt the CRD and later delete it, with every object of its kind), a
short name or category that shadows a built-in resource in kubectl, a property name that only looks
like a real field, a CRD that changes its scope, kind or storage version under existing objects."""

from __future__ import annotations

import re
from typing import Any

from calico_crd_hook.actions import storage_version
from calico_crd_hook.errors import ManifestRejected
from calico_crd_hook.releases import release_table
from calico_crd_hook.strict_yaml import USE_RELEASED

# Ownership markers, by the tool that reads them:
# Helm adopts an object whose label and annotations name its release (helm pkg/action/validate.go,
# appManagedByLabel, helmReleaseNameAnnotation, helmReleaseNamespaceAnnotation); Argo CD tracks
# (and prunes) what carries its instance label or tracking annotation (argo-cd common/common.go,
# LabelKeyAppInstance, AnnotationKeyAppInstance); Flux's controllers label what they own
# `<controller>.toolkit.fluxcd.io/name` (helm-controller internal/postrender/common_renderer.go and
# internal/action/crds.go); kubectl's client-side apply keeps its last-applied-configuration
# (k8s.io/api core/v1 annotation_key_constants.go, LastAppliedConfigAnnotation).
_OWNERSHIP_KEYS = {
    "app.kubernetes.io/managed-by": "Helm",
    "meta.helm.sh/release-name": "Helm",
    "meta.helm.sh/release-namespace": "Helm",
    "app.kubernetes.io/instance": "Argo CD",
    "argocd.argoproj.io/tracking-id": "Argo CD",
    "kubectl.kubernetes.io/last-applied-configuration": "kubectl",
}
_OWNERSHIP_PREFIXES = (("meta.helm.sh/", "Helm"), ("helm.sh/", "Helm"), ("argocd.argoproj.io/", "Argo CD"),
                       ("fluxcd.io/", "Flux"), ("kubectl.kubernetes.io/", "kubectl"))
_FLUX_DOMAIN = ".toolkit.fluxcd.io/"

# The short names and categories of Kubernetes' built-in resources (v1.35's discovery; a test
# compares this list with the test apiserver's). A CRD that claims one takes it over in kubectl.
BUILT_IN_SHORT_NAMES = frozenset({
    "cj", "cm", "crd", "crds", "cs", "csr", "deploy", "ds", "ep", "ev", "hpa", "ing", "ip", "limits", "netpol",
    "no", "ns", "pc", "pdb", "po", "pv", "pvc", "quota", "rc", "rs", "sa", "sc", "sts", "svc", "vac"})
BUILT_IN_CATEGORIES = frozenset({"all", "api-extensions"})
# Calico's generated property names (checked on every release file): ASCII letters, digits, _ and -.
_PROPERTY_NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_unreleased_document(name: str, body: dict[str, Any]) -> None:
    """Refuse (exit 3) what no Calico release's CRD does; `body` passed the apiserver's rules."""
    _check_metadata_keys(name, body["metadata"])
    _check_names(name, body["spec"]["names"])
    _check_known_crd(name, body["spec"])
    for index, version in enumerate(body["spec"]["versions"]):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if isinstance(schema, dict):
            _check_property_names(name, f"spec.versions[{index}].schema.openAPIV3Schema", schema)


def _check_metadata_keys(name: str, metadata: dict[str, Any]) -> None:
    label_keys, annotation_keys = release_table().metadata_keys
    for where, keys, allowed in (("labels", metadata.get("labels") or {}, label_keys),
                                 ("annotations", metadata.get("annotations") or {}, annotation_keys)):
        for key in keys:
            owner = _owner(key)
            if owner:
                raise ManifestRejected(
                    f"CRD {name}: metadata.{where}[{key}] is {owner}'s ownership marker: {owner} could adopt "
                    f"the CRD and later delete it with every object of its kind; remove it (no release "
                    "carries it)")
            if key not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                raise ManifestRejected(
                    f"CRD {name}: metadata.{where}[{key}] is not one of the {where} Calico's releases "
                    f"use ({known}); {USE_RELEASED}")


def _owner(key: str) -> str | None:
    if key in _OWNERSHIP_KEYS:
        return _OWNERSHIP_KEYS[key]
    if _FLUX_DOMAIN in key or key.startswith("toolkit.fluxcd.io/"):
        return "Flux"
    return next((owner for prefix, owner in _OWNERSHIP_PREFIXES if key.startswith(prefix)), None)


def _check_names(name: str, names: dict[str, Any]) -> None:
    for short_name in names.get("shortNames") or []:
        if short_name in BUILT_IN_SHORT_NAMES:
            raise ManifestRejected(f"CRD {name}: spec.names.shortNames: {short_name!r} is a built-in "
                                   "resource's short name, which kubectl would then resolve to this CRD; "
                                   f"{USE_RELEASED}")
    for category in names.get("categories") or []:
        if category in BUILT_IN_CATEGORIES:
            raise ManifestRejected(f"CRD {name}: spec.names.categories: {category!r} is a built-in category "
                                   f"(`kubectl get {category}` would list this kind too, and `kubectl delete "
                                   f"{category} --all` delete it); {USE_RELEASED}")


def _check_known_crd(name: str, spec: dict[str, Any]) -> None:
    """A CRD some release shipped keeps its scope, kind and storage version: changing any of them
    under existing objects strands or rewrites them."""
    known = release_table().known_crds.get(name)
    if known is None:
        return
    if spec["scope"] not in known.scopes:
        raise ManifestRejected(f"CRD {name}: spec.scope {spec['scope']} is not the scope every release gave it "
                               f"({', '.join(sorted(known.scopes))}): existing objects would be stranded; {USE_RELEASED}")
    if spec["names"]["kind"] not in known.kinds:
        raise ManifestRejected(f"CRD {name}: spec.names.kind {spec['names']['kind']} is not the kind its releases "
                               f"gave it ({', '.join(sorted(known.kinds))}); {USE_RELEASED}")
    storage = storage_version({"spec": spec})
    if storage not in known.storage_versions:
        raise ManifestRejected(f"CRD {name}: storage version {storage} is new (its releases store "
                               f"{', '.join(sorted(known.storage_versions))}): objects would be rewritten as a "
                               "version this program has not seen a release use; use a calico-crd-hook release "
                               "whose table knows it")


def _check_property_names(name: str, path: str, root: dict[str, Any]) -> None:
    pending = [(path, root)]
    while pending:
        where, node = pending.pop()
        for key, child in (node.get("properties") or {}).items():
            if not _PROPERTY_NAME.fullmatch(key):
                shown = key.encode("unicode_escape").decode()
                raise ManifestRejected(f"CRD {name}: {where}.properties[{shown}]: a property name of other than "
                                       "ASCII letters, digits, _ and - (Calico generates only those; this one may "
                                       f"only look like a real field); {USE_RELEASED}")
            if isinstance(child, dict):
                pending.append((f"{where}.properties.{key}", child))
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                pending.append((f"{where}.{key}", node[key]))
        for key in ("allOf", "anyOf", "oneOf"):
            for index, child in enumerate(node.get(key) or []):
                if isinstance(child, dict):
                    pending.append((f"{where}.{key}[{index}]", child))
