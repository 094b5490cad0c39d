"""Seeded, derandomized mutations of real release CRD documents for the differential test: each
case is one real document with one to three edits of the kinds the apiserver validates (types,
keywords, extensions, names, versions, printer columns, selectable fields, subresources,
conversion, defaults, regexes, list and map semantics, nesting, CEL rules)."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tests.support.bad_manifests import real_documents

# Small real documents of v3.32.1 (each case costs the server milliseconds), with CEL rules,
# nested objects, arrays of objects and maps among them.
SEED_CRDS = ("tiers.crd.projectcalico.org", "ippools.crd.projectcalico.org", "bgppeers.crd.projectcalico.org",
             "bgpconfigurations.crd.projectcalico.org", "hostendpoints.crd.projectcalico.org",
             "networkpolicies.crd.projectcalico.org", "kubecontrollersconfigurations.crd.projectcalico.org",
             "caliconodestatuses.crd.projectcalico.org", "imagesets.operator.tigera.io", "tigerastatuses.operator.tigera.io")


@dataclass(frozen=True)
class Case:
    index: int
    kinds: tuple[str, ...]  # the mutation kinds applied
    document: dict[str, Any]

    @property
    def touches_cel(self) -> bool:
        return "cel" in self.kinds


def seeds() -> list[dict[str, Any]]:
    documents = {d["metadata"]["name"]: d for d in real_documents("v3.32.1")}
    found = []
    for name in SEED_CRDS:
        document = copy.deepcopy(documents[name])
        document.pop("status", None)
        document["metadata"].pop("creationTimestamp", None)
        found.append(document)
    return found


def cases(count: int, seed: int = 21) -> Iterator[Case]:
    rng = random.Random(seed)
    bases = seeds()
    for index in range(count):
        document = copy.deepcopy(rng.choice(bases))
        kinds = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            kind = rng.choice(list(MUTATIONS))
            MUTATIONS[kind](rng, document)
            kinds.append(kind)
        yield Case(index, tuple(kinds), document)


# --- where to mutate -------------------------------------------------------------------------------

def _schema_nodes(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every schema node of every version, the roots included."""
    found: list[dict[str, Any]] = []
    for version in document["spec"]["versions"]:
        pending = [((version.get("schema") or {}).get("openAPIV3Schema"))]
        while pending:
            node = pending.pop()
            if not isinstance(node, dict):
                continue
            found.append(node)
            pending += list((node.get("properties") or {}).values())
            pending += [node.get("items"), node.get("additionalProperties")]
    return found


def _node(rng: random.Random, document: dict[str, Any], kind: str | None = None) -> dict[str, Any]:
    nodes = [n for n in _schema_nodes(document) if kind is None or n.get("type") == kind]
    return rng.choice(nodes or _schema_nodes(document))


def _property_paths(schema: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, child in (schema.get("properties") or {}).items():
        if isinstance(child, dict):
            found.append(f"{prefix}.{key}")
            found += _property_paths(child, f"{prefix}.{key}")
    return found


def _version(rng: random.Random, document: dict[str, Any]) -> dict[str, Any]:
    return rng.choice(document["spec"]["versions"])


# --- the mutations ----------------------------------------------------------------------------------

TYPES = ["string", "integer", "number", "boolean", "object", "array", "bogus", "null"]
VALUES: list[Any] = ["text", "", 42, -1, 0, 2.5, True, False, None, {}, [], {"unknown": 1}, ["a", 1], {"name": "x"}]
PATTERNS = ["^[a-z]+$", "(", "[a-", "a{2,1}", "(?=x)y", "(?<!a)b", "\\p{L}+", "(?i)abc", "a**", "\\1", "[[:alpha:]]",
            "\\d+(\\.\\d+)?", "^(?P<name>x)$", "\\Z", "x{1001}"]
CEL_RULES = ["self.size() > 0", "self.name == oldSelf.name", "self.missing > 1", "self >", "has(self.spec)",
             "self.all(x, x != '')", "1 +", "self == oldSelf", "isURL(self)", "self.matches('[')"]


def _type(rng: random.Random, document: dict[str, Any]) -> None:
    node = _node(rng, document)
    choice = rng.choice(TYPES + ["remove"])
    if choice == "remove":
        node.pop("type", None)
    else:
        node["type"] = choice


def _keyword(rng: random.Random, document: dict[str, Any]) -> None:
    node = _node(rng, document)
    keyword = rng.choice(["minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "multipleOf", "enum",
                          "format", "required", "minItems", "maxItems", "minProperties", "maxProperties",
                          "description", "title", "nullable", "example", "externalDocs", "uniqueItems"])
    value = rng.choice(VALUES + [3, -5, ["missing"], ["name"], "int32", "date-time", "bogus-format", 0.5])
    if keyword == "enum":
        value = rng.choice([[], ["a", "b"], [1, "a"], [None], "a"])
    node[keyword] = value


def _extension(rng: random.Random, document: dict[str, Any]) -> None:
    node = _node(rng, document)
    extension = rng.choice(["x-kubernetes-embedded-resource", "x-kubernetes-int-or-string",
                            "x-kubernetes-preserve-unknown-fields", "x-kubernetes-map-type"])
    node[extension] = rng.choice([True, False, "granular", "atomic", "bogus"] if extension.endswith("map-type")
                                 else [True, True, False])


def _list_semantics(rng: random.Random, document: dict[str, Any]) -> None:
    node = _node(rng, document, "array")
    node["x-kubernetes-list-type"] = rng.choice(["map", "set", "atomic", "map"])
    if rng.random() < 0.5:
        node["x-kubernetes-list-map-keys"] = rng.choice([["name"], ["missing"], [], ["name", "name"]])


def _properties_and_items(rng: random.Random, document: dict[str, Any]) -> None:
    node = _node(rng, document)
    if rng.random() < 0.5:
        node["items"] = {"type": rng.choice(["string", "object"])}
    else:
        node["properties"] = {"extra": {"type": "string"}}


def _default(rng: random.Random, document: dict[str, Any]) -> None:
    node = _node(rng, document)
    node["default"] = rng.choice(VALUES)


def _regex(rng: random.Random, document: dict[str, Any]) -> None:
    node = _node(rng, document, "string")
    node["pattern"] = rng.choice(PATTERNS)


def _names(rng: random.Random, document: dict[str, Any]) -> None:
    names = document["spec"]["names"]
    field = rng.choice(["kind", "listKind", "singular", "shortNames", "categories"])
    names[field] = rng.choice({"kind": ["tier", "Tier Two", names["kind"] + "X"],
                               "listKind": [names["kind"], "Lst", ""],
                               "singular": ["Single", "x_y", "x"],
                               "shortNames": [["ab", "ab"], ["AB"], ["ok"]],
                               "categories": [["all"], ["A B"], ["calico"]]}[field])


def _versions(rng: random.Random, document: dict[str, Any]) -> None:
    version = _version(rng, document)
    choice = rng.choice(["served", "storage", "name", "deprecated", "copy"])
    if choice == "served":
        version["served"] = False
    elif choice == "storage":
        version["storage"] = not version.get("storage")
    elif choice == "name":
        version["name"] = rng.choice(["v1beta", "V1", "v1.1", "version1"])
    elif choice == "deprecated":
        version["deprecationWarning"] = "old"
        version["deprecated"] = rng.choice([True, False])
    else:
        copied = copy.deepcopy(version)
        copied["name"], copied["storage"] = "v2", False
        document["spec"]["versions"].append(copied)


def _printer_column(rng: random.Random, document: dict[str, Any]) -> None:
    version = _version(rng, document)
    version.setdefault("additionalPrinterColumns", []).append({
        "name": rng.choice(["Order", "", "order"]), "type": rng.choice(["string", "integer", "datetime", "date"]),
        "jsonPath": rng.choice([".spec.order", "spec.order", ".spec.missing", ".metadata.name", ".spec[*]"]),
        **({"priority": rng.choice([-1, 0, 1])} if rng.random() < 0.3 else {}),
        **({"format": rng.choice(["int32", "bogus"])} if rng.random() < 0.3 else {})})


def _selectable_field(rng: random.Random, document: dict[str, Any]) -> None:
    version = _version(rng, document)
    schema = (version.get("schema") or {}).get("openAPIV3Schema") or {}
    paths = _property_paths(schema)
    choices = [*rng.sample(paths, min(3, len(paths))), ".spec.missing", "spec.x", ".metadata.name", ".status.x"]
    version.setdefault("selectableFields", []).append({"jsonPath": rng.choice(choices)})


def _subresources(rng: random.Random, document: dict[str, Any]) -> None:
    version = _version(rng, document)
    version["subresources"] = rng.choice([
        {"status": {}}, {"status": {"x": 1}},
        {"scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
        {"scale": {"specReplicasPath": "spec.replicas", "statusReplicasPath": ".status.replicas"}},
        {"scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".spec.replicas",
                   "labelSelectorPath": ".status.selector"}}])


def _conversion(rng: random.Random, document: dict[str, Any]) -> None:
    document["spec"]["conversion"] = rng.choice([{"strategy": "None"}, {"strategy": "Webhook"},
                                                 {"strategy": "None", "webhook": {"conversionReviewVersions": ["v1"]}}])


def _nesting(rng: random.Random, document: dict[str, Any]) -> None:
    node = _node(rng, document)
    junctor = rng.choice(["allOf", "anyOf", "oneOf", "not"])
    inner = rng.choice([{"type": "string"}, {"required": ["name"]}, {"properties": {"a": {"type": "string"}}},
                        {"minLength": 1}, {"default": 1}, {"description": "x"}])
    node[junctor] = inner if junctor == "not" else [inner]


def _cel(rng: random.Random, document: dict[str, Any]) -> None:
    node = _node(rng, document)
    node["x-kubernetes-validations"] = [{"rule": rng.choice(CEL_RULES), "message": "m"}]


MUTATIONS: dict[str, Callable[[random.Random, dict[str, Any]], None]] = {
    "type": _type, "keyword": _keyword, "extension": _extension, "list": _list_semantics,
    "properties+items": _properties_and_items, "default": _default, "regex": _regex, "names": _names,
    "versions": _versions, "printer column": _printer_column, "selectable field": _selectable_field,
    "subresources": _subresources, "conversion": _conversion, "nesting": _nesting, "cel": _cel,
}


def encoded(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()
