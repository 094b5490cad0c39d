"""Bad manifests for the manifest policy: the real v3.29.1 file with its Tier CRD edited one way.

Each case edits the Tier CRD (`tiers.crd.projectcalico.org`, small and new in v3.29) and names the
message the program must refuse it with (exit 3, offline) and what the apiserver's own dry-run does
with that CRD: "rejects" where the offline rule mirrors the server (so the tests prove it is never
weaker), "accepts" where only our policy stands between the file and the cluster.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml

from tests.support.calico import manifest_path

TIER_CRD = "tiers.crd.projectcalico.org"
REJECTS, ACCEPTS = "rejects", "accepts"


@dataclass(frozen=True)
class BadTier:
    edit: Callable[[dict[str, Any]], Any]  # edits the Tier CRD in place, or returns its YAML text
    message: str  # a fragment of the one-line error
    server: str  # what the apiserver's dry-run does with the edited CRD
    allowed_groups: str | None = None  # for a group the default list would refuse first


def real_documents(tag: str = "v3.29.1") -> list[dict[str, Any]]:
    """The release file's documents, a fresh copy each call (a test edits them): parsed once."""
    return pickle.loads(_parsed_release(tag))


@cache
def _parsed_release(tag: str) -> bytes:
    return pickle.dumps([d for d in yaml.load_all(manifest_path(tag).read_bytes(), Loader=yaml.CSafeLoader) if d])


@lru_cache(maxsize=1)
def _real_tier() -> dict[str, Any]:
    return tier_document(real_documents())


def dump(documents: list[dict[str, Any]], **options: Any) -> bytes:
    """YAML text of the documents; libyaml's emitter keeps the many cases fast."""
    return yaml.dump_all(documents, Dumper=yaml.CSafeDumper, **options).encode()


def tier_document(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in documents if d["metadata"]["name"] == TIER_CRD)


def edited_tier(case: BadTier) -> tuple[dict[str, Any], str]:
    """The edited Tier CRD as the apiserver would receive it: its object (without status, as the
    program strips it) and its YAML text (with the edit a dict cannot show, such as a repeated key)."""
    tier = copy.deepcopy(_real_tier())
    tier.pop("status", None)
    tier["metadata"].pop("creationTimestamp", None)
    text = case.edit(tier)
    return tier, text if isinstance(text, str) else yaml.dump(tier, Dumper=yaml.CSafeDumper, sort_keys=False)


def manifest_with(case: BadTier) -> bytes:
    """The whole v3.29.1 file, with the Tier CRD replaced by the edited one."""
    return manifest_with_tier_text(edited_tier(case)[1])


def manifest_with_tier_text(tier_text: str) -> bytes:
    """The real v3.29.1 file's own text, with the Tier CRD's document replaced by `tier_text`."""
    texts = list(release_texts())
    index = next(i for i, text in enumerate(texts) if f"name: {TIER_CRD}" in text)
    texts[index] = tier_text
    return "\n---\n".join(texts).encode()


@cache
def release_texts(tag: str = "v3.29.1", file_name: str = "operator-crds.yaml") -> tuple[str, ...]:
    """A real file's documents as its own text, cut at its `---` lines (checked against the parser,
    since a text block could hold such a line)."""
    text = manifest_path(tag, file_name).read_text()
    parts = tuple(part for part in re.split(r"(?m)^---[ \t]*$", text) if yaml.safe_load(part))
    parsed = [d for d in yaml.load_all(text, Loader=yaml.CSafeLoader) if d]
    assert len(parts) == len(parsed), f"{tag}/{file_name}: a document separator inside a text block"
    return parts


def validate_pinned(capsys: Any, tmp_path: Path, data: bytes, *args: str,
                    file_name: str = "operator-crds.yaml") -> tuple[int, str, str]:
    """`validate` of a mirror's copy pinned by its own --sha256, in-process as the CLI runs it:
    (exit code, the error line or "", stderr)."""
    from calico_crd_hook import cli

    path, digest = write_pinned(tmp_path, data, file_name)
    code = cli.main(["validate", "--manifest", str(path), "--sha256", digest, *args])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("calico-crd-hook: error:")]
    return code, errors[-1] if errors else "", captured.err


def write_pinned(tmp_path: Path, data: bytes, name: str = "operator-crds.yaml") -> tuple[Path, str]:
    """A mirror operator's copy, pinned by its own digest (README: a mirror or newer release)."""
    path = tmp_path / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _version(tier: dict[str, Any]) -> dict[str, Any]:
    return tier["spec"]["versions"][0]


def _schema(tier: dict[str, Any]) -> dict[str, Any]:
    return _version(tier)["schema"]["openAPIV3Schema"]


def _spec_properties(tier: dict[str, Any]) -> dict[str, Any]:
    return _schema(tier)["properties"]["spec"]["properties"]


def _rename(tier: dict[str, Any], **names: str) -> None:
    tier["spec"]["names"].update(names)
    tier["metadata"]["name"] = f"{tier['spec']['names']['plural']}.{tier['spec']['group']}"


def _second_version(tier: dict[str, Any], **fields: Any) -> None:
    tier["spec"]["versions"].append({**copy.deepcopy(_version(tier)), **fields})


def _set(target: Callable[[dict[str, Any]], dict[str, Any]], **fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda tier: target(tier).update(fields)


def _spec(tier: dict[str, Any]) -> dict[str, Any]:
    return tier["spec"]


def _metadata(tier: dict[str, Any]) -> dict[str, Any]:
    return tier["metadata"]


def _printer_column(**column: Any) -> Callable[[dict[str, Any]], None]:
    base = {"name": "Order", "type": "integer", "jsonPath": ".spec.order"}
    return lambda tier: _version(tier).update(additionalPrinterColumns=[{**base, **column}])


def _spec_property(name: str, schema: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda tier: _spec_properties(tier).update({name: schema})


def _deep_list(items: dict[str, Any], **extra: Any) -> Callable[[dict[str, Any]], None]:
    return _spec_property("ports", {"type": "array", **extra, "items": items})


def _duplicate_scope(tier: dict[str, Any]) -> str:
    text = yaml.dump(tier, Dumper=yaml.CSafeDumper, sort_keys=False)
    assert "  scope: Cluster\n" in text
    return text.replace("  scope: Cluster\n", "  scope: Cluster\n  scope: Namespaced\n")


def _annotate(key: str, value: str) -> Callable[[dict[str, Any]], None]:
    def edit(tier: dict[str, Any]) -> None:
        tier["metadata"].setdefault("annotations", {})[key] = value
    return edit


def _new_storage_version(tier: dict[str, Any]) -> None:
    _second_version(tier, name="v2")
    _version(tier)["storage"] = False


def _group(tier: dict[str, Any], group: str) -> None:
    tier["spec"]["group"] = group
    _rename(tier)


WEBHOOK = {"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1"],
                                             "clientConfig": {"url": "https://collector.example.com/convert"}}}
OWNER = {"apiVersion": "v1", "kind": "Namespace", "name": "kube-system", "uid": "5f3c0d2a-0000-4000-8000-000000000001"}

_POLICY_TIERS: dict[str, BadTier] = {
    # --- the apiserver's own rules, mirrored offline ------------------------------------------------
    "scope Galaxy": BadTier(_set(_spec, scope="Galaxy"), "spec.scope: 'Galaxy' is not one of Cluster, Namespaced", REJECTS),
    "group with capitals": BadTier(lambda t: _group(t, "crd.ProjectCalico.org"),
                                   "spec.group: 'crd.ProjectCalico.org' is not a DNS-1123 subdomain", REJECTS,
                                   allowed_groups="crd.ProjectCalico.org,crd.projectcalico.org,operator.tigera.io,policy.networking.k8s.io"),
    "group without a dot": BadTier(lambda t: _group(t, "calico"), "'calico' should be a domain with at least one dot",
                                   REJECTS, allowed_groups="calico,crd.projectcalico.org,operator.tigera.io,policy.networking.k8s.io"),
    "plural with capitals": BadTier(lambda t: _rename(t, plural="Tiers"), "spec.names.plural: 'Tiers' is not a DNS-1035 label", REJECTS),
    "singular with underscore": BadTier(lambda t: _rename(t, singular="the_tier"), "spec.names.singular: 'the_tier' is not a DNS-1035", REJECTS),
    "kind with punctuation": BadTier(lambda t: _rename(t, kind="Tier!"), "spec.names.kind: 'Tier!' is not a DNS-1035", REJECTS),
    "listKind equals kind": BadTier(lambda t: _rename(t, listKind="Tier"), "kind and listKind may not be the same", REJECTS),
    "short name ending in a dash": BadTier(lambda t: _rename(t, shortNames=["tr-"]), "spec.names.shortNames[0]: 'tr-'", REJECTS),
    "category with capitals": BadTier(lambda t: _rename(t, categories=["Calico"]), "spec.names.categories[0]: 'Calico'", REJECTS),
    "version name with capitals": BadTier(_set(_version, name="V1"), "spec.versions[0].name: 'V1' is not a DNS-1035", REJECTS),
    "version listed twice": BadTier(lambda t: _second_version(t, storage=False), "version 'v1' appears twice", REJECTS),
    "two storage versions": BadTier(lambda t: _second_version(t, name="v2"), "2 storage versions", REJECTS),
    "no storage version": BadTier(_set(_version, storage=False), "0 storage versions", REJECTS),
    "conversion None with a webhook": BadTier(_set(_spec, conversion={"strategy": "None", **{k: v for k, v in WEBHOOK.items() if k != "strategy"}}),
                                              "spec.conversion.webhook: must not be set when the strategy is None", REJECTS),
    "conversion strategy unknown": BadTier(_set(_spec, conversion={"strategy": "Magic"}), "spec.conversion.strategy: 'Magic' must be None", REJECTS),
    "preserveUnknownFields true": BadTier(_set(_spec, preserveUnknownFields=True), "spec.preserveUnknownFields: must be false", REJECTS),
    "no schema": BadTier(lambda t: _version(t).pop("schema"), "spec.versions[0].schema.openAPIV3Schema: is required", REJECTS),
    "root schema not an object": BadTier(_set(_schema, type="array"), "openAPIV3Schema.type: must be object at the root", REJECTS),
    "root schema nullable": BadTier(_set(_schema, nullable=True), "nullable cannot be true at the root", REJECTS),
    "bogus type below items": BadTier(_deep_list({"type": "bogus"}),
                                      "properties.spec.properties.ports.items.type: 'bogus' is not one of array", REJECTS),
    "uniqueItems": BadTier(_deep_list({"type": "string"}, uniqueItems=True), "uniqueItems cannot be true", REJECTS),
    "properties and additionalProperties": BadTier(_spec_property("labels", {
        "type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}}),
        "additionalProperties and properties are mutually exclusive", REJECTS),
    "schema $ref": BadTier(_spec_property("other", {"$ref": "#/definitions/x"}),
                           "properties.other.$ref: $ref is not supported", REJECTS),
    "list type unknown": BadTier(_deep_list({"type": "string"}, **{"x-kubernetes-list-type": "sorted"}),
                                 "x-kubernetes-list-type: 'sorted' is not one of atomic, map, set", REJECTS),
    "printer column type unknown": BadTier(_printer_column(type="datetime"),
                                           "additionalPrinterColumns[0].type: 'datetime' is not one of", REJECTS),
    "printer column path without a dot": BadTier(_printer_column(jsonPath="spec.order"),
                                                 "jsonPath: 'spec.order' must be a simple json path starting with .", REJECTS),
    "deprecation warning not deprecated": BadTier(_set(_version, deprecationWarning="old"),
                                                  "deprecationWarning: can only be set for deprecated versions", REJECTS),
    "label key invalid": BadTier(_set(_metadata, labels={"bad key!": "x"}), "metadata.labels[bad key!]: 'bad key!' is not a qualified name", REJECTS),
    "generateName": BadTier(_set(_metadata, generateName="tiers-"), "metadata.generateName:", REJECTS),
    "label value too long": BadTier(_set(_metadata, labels={"team": "x" * 64}), "is not a valid label value", REJECTS),
    # the six classes the differential test found (tests/test_differential_cluster.py)
    "default of another type": BadTier(_spec_property("mode", {"type": "string", "default": 42}),
                                       "properties[mode].default: the default does not match its schema: the value must be "
                                       "of type string", REJECTS),
    "embedded resource not an object": BadTier(_spec_property("inline", {"type": "string",
                                                                         "x-kubernetes-embedded-resource": True}),
                                               "properties[inline].type: must be object if x-kubernetes-embedded-resource",
                                               REJECTS),
    "properties and items": BadTier(_spec_property("both", {"type": "array", "properties": {"a": {"type": "string"}},
                                                             "items": {"type": "string"}}),
                                    "properties[both].type: must be object if properties are specified",
                                    ACCEPTS),  # v1.35.4 takes both on an array; no release has them
    "map list without keys": BadTier(_deep_list({"type": "object", "properties": {"name": {"type": "string"}}},
                                                **{"x-kubernetes-list-type": "map"}),
                                     "x-kubernetes-list-map-keys: must not be empty if x-kubernetes-list-type is map", REJECTS),
    "pattern not a regular expression": BadTier(_spec_property("name", {"type": "string", "pattern": "[a-"}),
                                                "properties[name].pattern: '[a-' must be a valid regular expression", REJECTS),
    "selectable field naming no field": BadTier(_set(_version, selectableFields=[{"jsonPath": ".spec.missing"}]),
                                                "selectableFields[0].jsonPath: '.spec.missing' is an invalid path: does not "
                                                "refer to a valid field", REJECTS),
    # --- stricter than the server: a Calico release never has these -------------------------------
    "conversion webhook": BadTier(_set(_spec, conversion=WEBHOOK), "a conversion webhook would receive every read", ACCEPTS),
    "ownerReferences": BadTier(_set(_metadata, ownerReferences=[OWNER]), "metadata.ownerReferences: a CRD in a Calico manifest carries only", ACCEPTS),
    "finalizers": BadTier(_set(_metadata, finalizers=["example.com/keep"]), "metadata.finalizers:", ACCEPTS),
    "namespace": BadTier(_set(_metadata, namespace="kube-system"), "metadata.namespace:", ACCEPTS),
    "creationTimestamp set": BadTier(_set(_metadata, creationTimestamp="2024-01-01T00:00:00Z"), "metadata.creationTimestamp:", ACCEPTS),
    "root preserves unknown fields": BadTier(_set(_schema, **{"x-kubernetes-preserve-unknown-fields": True}),
                                             "openAPIV3Schema.x-kubernetes-preserve-unknown-fields: a release never keeps", ACCEPTS),
    "storage version not served": BadTier(_set(_version, served=False), "the storage version v1 is not served", ACCEPTS),
    "duplicate key flips the scope": BadTier(_duplicate_scope, "repeats the key 'scope' in one mapping", ACCEPTS),
    "unknown field below items": BadTier(_deep_list({"type": "string", "maxLenght": 3}),
                                         "properties.ports.items.maxLenght: unknown field of a JSON schema", ACCEPTS),
    "int64 overflow": BadTier(lambda t: _spec_properties(t)["order"].update(maximum=2 ** 64),
                              "properties.order.maximum: the integer 18446744073709551616 does not fit in int64", ACCEPTS),
}
# What every release does (release_rules, derived from the shipped table): these also apply to a
# version newer than the table.
_RELEASE_RULE_TIERS: dict[str, BadTier] = {
    "Helm's managed-by label": BadTier(_set(_metadata, labels={"app.kubernetes.io/managed-by": "Helm"}),
                                       "metadata.labels[app.kubernetes.io/managed-by] is Helm's ownership marker", ACCEPTS),
    "Helm's release annotation": BadTier(_annotate("meta.helm.sh/release-name", "calico"),
                                         "metadata.annotations[meta.helm.sh/release-name] is Helm's ownership marker", ACCEPTS),
    "Argo CD's tracking annotation": BadTier(_annotate("argocd.argoproj.io/tracking-id", "calico:/Tier:/default"),
                                             "is Argo CD's ownership marker", ACCEPTS),
    "Argo CD's instance label": BadTier(_set(_metadata, labels={"app.kubernetes.io/instance": "calico"}),
                                        "metadata.labels[app.kubernetes.io/instance] is Argo CD's ownership marker", ACCEPTS),
    "Flux's label": BadTier(_set(_metadata, labels={"helm.toolkit.fluxcd.io/name": "calico"}), "is Flux's ownership marker",
                            ACCEPTS),
    "kubectl's last-applied": BadTier(_annotate("kubectl.kubernetes.io/last-applied-configuration", "{}"),
                                      "is kubectl's ownership marker", ACCEPTS),
    "a label no release uses": BadTier(_set(_metadata, labels={"team": "network"}),
                                       "metadata.labels[team] is not one of the labels Calico's releases use (none)", ACCEPTS),
    "a built-in short name": BadTier(lambda t: _rename(t, shortNames=["po"]),
                                     "spec.names.shortNames: 'po' is a built-in resource's short name", ACCEPTS),
    "the category all": BadTier(lambda t: _rename(t, categories=["all"]), "spec.names.categories: 'all' is a built-in category",
                                ACCEPTS),
    "a homoglyph property": BadTier(lambda t: _spec_properties(t).update({"\u043erder": {"type": "number"}}),
                                    "properties.spec.properties[\\u043erder]: a property name of other than ASCII", ACCEPTS),
    "scope changed": BadTier(_set(_spec, scope="Namespaced"), "spec.scope Namespaced is not the scope every release gave it",
                             ACCEPTS),
    "kind changed": BadTier(lambda t: _rename(t, kind="Level", listKind="LevelList"),
                            "spec.names.kind Level is not the kind its releases gave it", ACCEPTS),
    "a new storage version": BadTier(_new_storage_version, "storage version v2 is new", ACCEPTS),
}
BAD_TIERS = {**_POLICY_TIERS, **_RELEASE_RULE_TIERS}
RELEASE_RULE_CASES = tuple(_RELEASE_RULE_TIERS)
