"""The manifest policy for one CRD: what a Calico release may contain, checked offline.

Two kinds of rule live here. Most mirror the apiserver's own CRD validation in
k8s.io/apiextensions-apiserver v0.35.4, pkg/apis/apiextensions/validation/validation.go (cited by
function), so that nothing the server would refuse reaches it. The others are stricter than the
server on purpose: the server accepts them, and a Calico release never contains them (marked
"policy"). Each failure names the CRD, the field path and the rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from calico_crd_hook import structural
from calico_crd_hook.errors import ManifestRejected

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

# Under the apiserver's 3 MiB request limit and etcd's default 1.5 MiB value limit; the largest real
# CRD (installations.operator.tigera.io, v3.32.1) is 0.64 MB of compact JSON.
MAX_CRD_BYTES = 1536 * 1024
# A release holds 22-32 CRDs.
MAX_DOCUMENTS = 100

# k8s.io/apimachinery/pkg/util/validation: the name forms, matched whole.
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_MAX, _SUBDOMAIN_MAX = 63, 253
_ANNOTATIONS_MAX_BYTES = 256 * 1024  # apimachinery api/validation TotalAnnotationSizeLimitB

_SCOPES = ("Cluster", "Namespaced")
_OPENAPI_TYPES = ("array", "boolean", "integer", "number", "object", "string")  # openapiV3Types
_PRINTER_COLUMN_TYPES = ("boolean", "date", "integer", "number", "string")  # printerColumnDatatypes
_PRINTER_COLUMN_FORMATS = ("byte", "date", "date-time", "double", "float", "int32", "int64", "password")
_LIST_TYPES = ("atomic", "map", "set")
_MAP_TYPES = ("atomic", "granular")
# specStandardValidatorV3.validate: schema keywords the apiserver refuses anywhere.
_FORBIDDEN_KEYWORDS = ("$ref", "additionalItems", "definitions", "dependencies", "id", "patternProperties")
# The metadata a CRD in a release carries (policy); creationTimestamp: null is stripped before this.
_ALLOWED_METADATA = ("annotations", "labels", "name")


class _Refusal:
    """Builds the one-line refusal for one CRD."""

    def __init__(self, crd_name: str) -> None:
        self.crd_name = crd_name

    def __call__(self, path: str, rule: str, way_out: str = "use the released file unchanged") -> ManifestRejected:
        return ManifestRejected(f"CRD {self.crd_name}: {path}: {rule}; {way_out}")


def check_metadata(crd_name: str, metadata: dict[str, Any]) -> None:
    """Policy: a release's CRD names itself and may carry labels and annotations, nothing else.
    ownerReferences would let garbage collection delete the CRD (and every Calico object), a
    finalizer would block its deletion, and the rest belongs to the server."""
    refuse = _Refusal(crd_name)
    for key in metadata:
        if key not in _ALLOWED_METADATA:
            raise refuse(f"metadata.{key}", f"a CRD in a Calico manifest carries only "
                         f"{', '.join(_ALLOWED_METADATA)}, and {key} is not one of them")
    for key, value in (metadata.get("labels") or {}).items():  # ValidateLabels
        _check_qualified_name(refuse, f"metadata.labels[{key}]", key)
        if not isinstance(value, str) or len(value) > _LABEL_MAX or not _LABEL_VALUE.fullmatch(value):
            raise refuse(f"metadata.labels[{key}]", f"value {_shown(value)} is not a valid label value")
    annotations = metadata.get("annotations") or {}
    for key, value in annotations.items():  # ValidateAnnotations: qualified names, case-blind
        _check_qualified_name(refuse, f"metadata.annotations[{key}]", key.lower())
        if not isinstance(value, str):
            raise refuse(f"metadata.annotations[{key}]", "an annotation's value must be a string")
    if sum(len(k) + len(v) for k, v in annotations.items()) > _ANNOTATIONS_MAX_BYTES:
        raise refuse("metadata.annotations", f"annotations exceed {_ANNOTATIONS_MAX_BYTES} bytes in total")


def _check_qualified_name(refuse: _Refusal, path: str, key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if ("/" in key and not _is_subdomain(prefix)) or len(name) > _LABEL_MAX or not _QUALIFIED_NAME.fullmatch(name):
        raise refuse(path, f"{_shown(key)} is not a qualified name ([prefix/]name)")


def check_size(crd_name: str, encoded: bytes) -> None:
    if len(encoded) > MAX_CRD_BYTES:
        raise _Refusal(crd_name)("the whole CRD", f"{len(encoded)} bytes of JSON is over the "
                                 f"{MAX_CRD_BYTES}-byte cap per CRD (the largest Calico CRD is about "
                                 "640 KB, and the apiserver refuses requests over 3 MiB)")


def check_spec(crd_name: str, spec: dict[str, Any]) -> None:
    """validateCustomResourceDefinitionSpec and ValidateCustomResourceDefinition, after the
    structural JSON Schema has checked every field's type."""
    refuse = _Refusal(crd_name)
    _check_group(refuse, spec["group"])
    if spec["scope"] not in _SCOPES:  # validateEnumStrings(scope)
        raise refuse("spec.scope", f"{_shown(spec['scope'])} is not one of {', '.join(_SCOPES)}")
    _check_names(refuse, spec["names"])
    if crd_name != f"{spec['names']['plural']}.{spec['group']}":  # ValidateCustomResourceDefinition
        raise refuse("metadata.name", f"the name is not <plural>.<group> "
                     f"({spec['names']['plural']}.{spec['group']}), which the apiserver requires")
    if spec.get("preserveUnknownFields"):  # validatePreserveUnknownFields
        raise refuse("spec.preserveUnknownFields", "must be false in apiextensions.k8s.io/v1")
    _check_conversion(refuse, spec.get("conversion"))
    _check_versions(refuse, spec["versions"])


def _check_group(refuse: _Refusal, group: str) -> None:
    if not _is_subdomain(group):
        raise refuse("spec.group", f"{_shown(group)} is not a DNS-1123 subdomain")
    if "." not in group:
        raise refuse("spec.group", f"{_shown(group)} should be a domain with at least one dot")


def _check_names(refuse: _Refusal, names: dict[str, Any]) -> None:
    """ValidateCustomResourceDefinitionNames, and the required names of the spec."""
    for key in ("plural", "singular", "kind", "listKind"):
        if not names.get(key):
            raise refuse(f"spec.names.{key}", "is required")
    for key in ("plural", "singular"):
        _check_dns1035(refuse, f"spec.names.{key}", names[key])
    for key in ("kind", "listKind"):  # mixed case allowed, otherwise a DNS-1035 label
        _check_dns1035(refuse, f"spec.names.{key}", names[key].lower(), shown=names[key])
    if names["kind"] == names["listKind"]:
        raise refuse("spec.names.listKind", "kind and listKind may not be the same")
    for key in ("shortNames", "categories"):
        for index, value in enumerate(names.get(key) or []):
            _check_dns1035(refuse, f"spec.names.{key}[{index}]", value)


def _check_conversion(refuse: _Refusal, conversion: dict[str, Any] | None) -> None:
    """validateCustomResourceConversion: strategy None or Webhook. Policy: never Webhook, which
    would send every read of the kind to whatever the webhook names. Calico converts nothing."""
    if conversion is None:
        return
    strategy = conversion.get("strategy")
    if strategy != "None":
        rule = ("a conversion webhook would receive every read and write of the kind, and no Calico "
                "release uses one") if strategy == "Webhook" else f"{_shown(strategy)} must be None"
        raise refuse("spec.conversion.strategy", rule)
    for key in ("webhook", "webhookClientConfig", "conversionReviewVersions"):
        if key in conversion:
            raise refuse(f"spec.conversion.{key}", "must not be set when the strategy is None")


def _check_versions(refuse: _Refusal, versions: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for index, version in enumerate(versions):
        where = f"spec.versions[{index}]"
        _check_dns1035(refuse, f"{where}.name", version["name"])
        if version["name"] in seen:
            raise refuse(f"{where}.name", f"version {_shown(version['name'])} appears twice; "
                         "version names must be unique")
        seen.add(version["name"])
        _check_deprecation(refuse, where, version)
        for column_index, column in enumerate(version.get("additionalPrinterColumns") or []):
            _check_printer_column(refuse, f"{where}.additionalPrinterColumns[{column_index}]", column)
        _check_scale(refuse, f"{where}.subresources.scale", (version.get("subresources") or {}).get("scale"))
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:  # requireOpenAPISchema
            raise refuse(f"{where}.schema.openAPIV3Schema", "is required")
        check_root_schema(refuse, f"{where}.schema.openAPIV3Schema", schema)
        structural.check_version_schema(refuse, f"{where}.schema.openAPIV3Schema", schema)
        structural.check_selectable_fields(refuse, where, version)
        structural.check_root_with_subresources(refuse, where, version)
    structural.check_versions_alike(refuse, versions)
    storage = [version for version in versions if version.get("storage")]
    if len(storage) != 1:
        raise refuse("spec.versions", f"{len(storage)} storage versions: must have exactly one version "
                     "marked as storage version")
    if not storage[0].get("served"):  # policy: the apiserver allows it, and the kind then vanishes
        raise refuse("spec.versions", f"the storage version {storage[0]['name']} is not served, so no "
                     "client could read the objects")


def _check_deprecation(refuse: _Refusal, where: str, version: dict[str, Any]) -> None:
    """validateDeprecationWarning."""
    warning = version.get("deprecationWarning")
    if warning is None:
        return
    if not version.get("deprecated"):
        raise refuse(f"{where}.deprecationWarning", "can only be set for deprecated versions")
    if not warning or len(warning) > 256 or not warning.isprintable():
        raise refuse(f"{where}.deprecationWarning", "must be 1-256 printable characters")


def _check_printer_column(refuse: _Refusal, where: str, column: dict[str, Any]) -> None:
    """ValidateCustomResourceColumnDefinition."""
    if not column.get("name"):
        raise refuse(f"{where}.name", "is required")
    if column.get("type") not in _PRINTER_COLUMN_TYPES:
        raise refuse(f"{where}.type", f"{_shown(column.get('type'))} is not one of {', '.join(_PRINTER_COLUMN_TYPES)}")
    if column.get("format") and column["format"] not in _PRINTER_COLUMN_FORMATS:
        raise refuse(f"{where}.format", f"{_shown(column['format'])} is not one of {', '.join(_PRINTER_COLUMN_FORMATS)}")
    _check_json_path(refuse, f"{where}.jsonPath", column.get("jsonPath"))


def _check_scale(refuse: _Refusal, where: str, scale: dict[str, Any] | None) -> None:
    """ValidateCustomResourceDefinitionSubresources."""
    if scale is None:
        return
    for key, under in (("specReplicasPath", (".spec.",)), ("statusReplicasPath", (".status.",)),
                       ("labelSelectorPath", (".spec.", ".status."))):
        path = scale.get(key)
        if path is None and key == "labelSelectorPath":
            continue
        _check_json_path(refuse, f"{where}.{key}", path)
        if not str(path).startswith(under):
            raise refuse(f"{where}.{key}", f"should be a json path under {' or '.join(under)}")


def _check_json_path(refuse: _Refusal, where: str, path: str | None) -> None:
    """validateSimpleJSONPath."""
    if not path or not path.startswith("."):
        raise refuse(where, f"{_shown(path)} must be a simple json path starting with .")


def check_root_schema(refuse: _Refusal, where: str, schema: Any) -> None:
    """A version's openAPIV3Schema: the whole tree, then the rules only the root has."""
    walk_schema(refuse, where, schema)
    if schema.get("type") != "object":  # structural schema: "must be object at the root"
        raise refuse(f"{where}.type", "must be object at the root")
    if schema.get("nullable"):  # validateCustomResourceDefinitionValidation
        raise refuse(f"{where}.nullable", "nullable cannot be true at the root")
    if "additionalProperties" in schema:  # validateStructuralInvariants
        raise refuse(f"{where}.additionalProperties", "must not be used at the root")
    if schema.get("x-kubernetes-preserve-unknown-fields"):  # policy: it turns off pruning whole
        raise refuse(f"{where}.x-kubernetes-preserve-unknown-fields", "a release never keeps unknown "
                     "fields of a whole object: every Calico kind has a full schema")


# --- the schema tree ------------------------------------------------------------------------------
#
# The JSON Schema generated from the apiserver's OpenAPI cannot follow a schema below `items` or
# `additionalProperties` (their Go types are unions the OpenAPI leaves open), so the walk below
# checks every JSONSchemaProps node of the tree against that same generated definition: the field
# set (unknown fields refused, as strict field validation does) and each field's type; and it
# applies ValidateCustomResourceDefinitionOpenAPISchema's rules at every node.

_SCHEMA_PROPS = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps"
_REF_PREFIX = "#/$defs/io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1."


def walk_schema(refuse: _Refusal, where: str, root: Any) -> None:
    fields = _schema_fields()
    pending = [(where, root)]
    while pending:
        path, node = pending.pop()
        if not isinstance(node, dict):
            raise refuse(path, f"is {_type_name(node)}, not a schema object")
        for key, value in node.items():
            check = fields.get(key)
            if check is None:
                raise refuse(f"{path}.{key}", "unknown field of a JSON schema")
            for child_path, child in check(refuse, f"{path}.{key}", value):
                pending.append((child_path, child))
        _check_schema_node(refuse, path, node)


def _check_schema_node(refuse: _Refusal, path: str, node: dict[str, Any]) -> None:
    for keyword in _FORBIDDEN_KEYWORDS:
        if keyword in node:
            raise refuse(f"{path}.{keyword}", f"{keyword} is not supported in a CRD schema")
    kind = node.get("type")
    if kind is not None and kind not in _OPENAPI_TYPES:
        raise refuse(f"{path}.type", f"{_shown(kind)} is not one of {', '.join(_OPENAPI_TYPES)}")
    if isinstance(node.get("items"), list):
        raise refuse(f"{path}.items", "items must be a schema object and not an array")
    if node.get("uniqueItems"):
        raise refuse(f"{path}.uniqueItems", "uniqueItems cannot be true (quadratic to check)")
    additional = node.get("additionalProperties")
    if node.get("properties") and additional is not None and additional is not True:
        raise refuse(f"{path}.additionalProperties", "additionalProperties and properties are mutually exclusive")
    if node.get("x-kubernetes-preserve-unknown-fields") is False:
        raise refuse(f"{path}.x-kubernetes-preserve-unknown-fields", "must be true or undefined")
    _check_extension(refuse, path, node, "x-kubernetes-list-type", "array", _LIST_TYPES)
    _check_extension(refuse, path, node, "x-kubernetes-map-type", "object", _MAP_TYPES)


def _check_extension(refuse: _Refusal, path: str, node: dict[str, Any], key: str, needed_type: str,
                     accepted: tuple[str, ...]) -> None:
    if key not in node:
        return
    if node.get("type") != needed_type:
        raise refuse(f"{path}.type", f"must be {needed_type} if {key} is specified")
    if node[key] not in accepted:
        raise refuse(f"{path}.{key}", f"{_shown(node[key])} is not one of {', '.join(accepted)}")


_Check = Callable[[_Refusal, str, Any], list[tuple[str, Any]]]


@lru_cache(maxsize=1)
def _schema_fields() -> dict[str, _Check]:
    """One check per JSONSchemaProps field, read from the generated definition; each returns the
    sub-schemas to walk next."""
    definitions = _generated_schema()["$defs"]
    return {name: _field_check(declared, definitions)
            for name, declared in definitions[_SCHEMA_PROPS]["properties"].items()}


def _field_check(declared: dict[str, Any], definitions: dict[str, Any]) -> _Check:
    ref = declared.get("$ref", "").removeprefix(_REF_PREFIX)
    if ref == "JSONSchemaProps":
        return lambda refuse, path, value: [(path, value)]
    if ref == "JSONSchemaPropsOrBool":
        return lambda refuse, path, value: [] if isinstance(value, bool) else [(path, value)]
    if ref in ("JSONSchemaPropsOrArray", "JSONSchemaPropsOrStringArray"):
        return _schema_or_list
    if ref == "JSON":
        return lambda refuse, path, value: []  # any JSON value
    if ref:
        return _by_definition(definitions[_REF_PREFIX.removeprefix("#/$defs/") + ref])
    kind = declared.get("type")
    if kind == "object":  # properties, definitions, ...: a map of sub-schemas
        return _schema_map
    if kind == "array":
        item_check = _field_check(declared["items"], definitions)
        return lambda refuse, path, value: _each(refuse, path, value, item_check)
    return _primitive(str(kind))


def _schema_map(refuse: _Refusal, path: str, value: Any) -> list[tuple[str, Any]]:
    if not isinstance(value, dict):
        raise refuse(path, f"is {_type_name(value)}, not a map of schemas")
    return [(f"{path}.{key}", child) for key, child in value.items()]


def _schema_or_list(refuse: _Refusal, path: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, list):  # a tuple schema, or dependencies' property names
        return [(f"{path}[{index}]", child) for index, child in enumerate(value) if not isinstance(child, str)]
    return [(path, value)]


def _each(refuse: _Refusal, path: str, value: Any, item_check: _Check) -> list[tuple[str, Any]]:
    if not isinstance(value, list):
        raise refuse(path, f"is {_type_name(value)}, not a list")
    found: list[tuple[str, Any]] = []
    for index, item in enumerate(value):
        found += item_check(refuse, f"{path}[{index}]", item)
    return found


_PYTHON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "boolean": (bool,), "integer": (int,),
                                             "number": (int, float)}


def _primitive(kind: str) -> _Check:
    expected = _PYTHON_TYPES[kind]

    def check(refuse: _Refusal, path: str, value: Any) -> list[tuple[str, Any]]:
        if not isinstance(value, expected) or (isinstance(value, bool) and kind != "boolean"):
            raise refuse(path, f"is {_type_name(value)}, not {kind}")
        return []
    return check


def _by_definition(definition: dict[str, Any]) -> _Check:
    """A small closed object (ValidationRule, ExternalDocumentation): the JSON Schema checks it."""
    # Here, not at the top: only a document no release shipped meets the JSON Schema, so a released
    # file, the no-op and the cluster-only paths never pay for the import (bench/results.md).
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(definition)

    def check(refuse: _Refusal, path: str, value: Any) -> list[tuple[str, Any]]:
        error = next(iter(validator.iter_errors(value)), None)
        if error is not None:
            where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
            raise refuse(path + where, error.message[:200])
        return []
    return check


@lru_cache(maxsize=1)
def _generated_schema() -> dict[str, Any]:
    text = resources.files("calico_crd_hook").joinpath("data/customresourcedefinition.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


@lru_cache(maxsize=1)
def crd_shell_validator() -> Draft202012Validator:
    """The generated JSON Schema with the version schemas left to `walk_schema`, compiled once."""
    from jsonschema import Draft202012Validator  # only for documents no release shipped, as above

    schema = json.loads(json.dumps(_generated_schema()))  # a copy to cut
    validation = schema["$defs"]["io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceValidation"]
    validation["properties"]["openAPIV3Schema"] = {"type": "object"}
    return Draft202012Validator(schema)


# --- small helpers --------------------------------------------------------------------------------

def _check_dns1035(refuse: _Refusal, path: str, value: str, shown: str | None = None) -> None:
    if len(value) > _LABEL_MAX or not _DNS1035_LABEL.fullmatch(value):
        raise refuse(path, f"{_shown(shown or value)} is not a DNS-1035 label (lower-case letters, digits "
                     "and '-', starting with a letter, at most 63 characters)")


def _is_subdomain(value: str) -> bool:
    return len(value) <= _SUBDOMAIN_MAX and _DNS1123_SUBDOMAIN.fullmatch(value) is not None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return {dict: "a map", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
