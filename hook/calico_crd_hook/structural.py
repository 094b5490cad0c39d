"""The apiserver's rules that look at a version's schema as a whole, mirrored offline (node-by-node
field checks are crd_policy's): structural schemas, list and map semantics, regular expressions,
defaults and selectable fields. Each rule names the function of k8s.io/apiextensions-apiserver
v0.35 it follows."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from calico_crd_hook.errors import ManifestRejected

Refuse = Callable[[str, str], ManifestRejected]

# Fields a schema node inside allOf/anyOf/oneOf/not must leave out (validateNestedValueValidation:
# "must be empty to be structural").
_NOT_IN_JUNCTORS = ("type", "default", "additionalProperties", "nullable", "x-kubernetes-preserve-unknown-fields",
                    "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string", "x-kubernetes-list-type",
                    "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "description", "title")
_JUNCTORS = ("allOf", "anyOf", "oneOf")
_SCALARS = ("string", "integer", "number", "boolean")
# RE2, which the apiserver compiles patterns with, has none of these (Python's re has them all).
_NOT_RE2 = re.compile(r"\(\?(?:=|!|<=|<!|>|P=)|\\[1-9]|\\Z|[*+?}]\+|\(\?#")
_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def check_version_schema(refuse: Refuse, where: str, root: dict[str, Any]) -> None:
    """A version's openAPIV3Schema, after every node passed the field checks."""
    _check_metadata_and_type_meta(refuse, where, root)
    pending: list[tuple[str, dict[str, Any], bool]] = [(where, root, False)]
    while pending:
        path, node, in_junctor = pending.pop()
        if in_junctor:
            _check_junctor_node(refuse, path, node)
        else:
            _check_structural_node(refuse, path, node)
            _check_list_semantics(refuse, path, node)
            if "default" in node:
                _check_default(refuse, f"{path}.default", node, node["default"])
        if isinstance(node.get("pattern"), str):
            _check_pattern(refuse, f"{path}.pattern", node["pattern"])
        for key, child in (node.get("properties") or {}).items():
            pending.append((f"{path}.properties[{key}]", child, in_junctor))
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                pending.append((f"{path}.{key}", node[key], in_junctor))
        for key in _JUNCTORS:
            if _is_int_or_string_pattern(node, key):
                continue
            for index, child in enumerate(node.get(key) or []):
                pending.append((f"{path}.{key}[{index}]", child, True))
        if isinstance(node.get("not"), dict):
            pending.append((f"{path}.not", node["not"], True))


# allowedFieldsAtRootSchema of validateCustomResourceDefinitionValidation, as JSON names: all a root
# schema may have when the status subresource is enabled (its type then only "object").
_ROOT_WITH_STATUS = frozenset({
    "description", "type", "format", "title", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf", "required", "items",
    "properties", "externalDocs", "example", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations"})


def check_root_with_subresources(refuse: Refuse, where: str, version: dict[str, Any]) -> None:
    """validateCustomResourceDefinitionValidation: with a status subresource, the root schema has
    only allowedFieldsAtRootSchema."""
    root = (version.get("schema") or {}).get("openAPIV3Schema") or {}
    extra = sorted(set(root) - _ROOT_WITH_STATUS)
    if "status" in (version.get("subresources") or {}) and extra:
        raise refuse(f"{where}.schema.openAPIV3Schema.{extra[0]}", "is not among the fields allowed at the "
                     "root of the schema if the status subresource is enabled")


def check_versions_alike(refuse: Refuse, versions: list[dict[str, Any]]) -> None:
    """The apiserver keeps a schema all versions share once, for the whole CRD; per-version
    selectableFields then may not differ (validateCustomResourceDefinitionVersion: "may only be set
    when version.schema.openAPIV3Schema is not included")."""
    if len(versions) < 2 or any(version.get("schema") != versions[0].get("schema") for version in versions):
        return
    if any(version.get("selectableFields") != versions[0].get("selectableFields") for version in versions):
        raise refuse("spec.versions[0].selectableFields", "must be the same in every version when every "
                     "version has the same schema")


def check_selectable_fields(refuse: Refuse, where: str, version: dict[str, Any]) -> None:
    """validateSelectableFields and ValidFieldPath: each a path to a string, integer or boolean
    field the schema declares, outside any list; unique; at most 8."""
    fields = version.get("selectableFields") or []
    if len(fields) > 8:
        raise refuse(f"{where}.selectableFields", f"{len(fields)} fields: must have at most 8")
    root = (version.get("schema") or {}).get("openAPIV3Schema") or {}
    seen: set[str] = set()
    for index, selectable in enumerate(fields):
        path = f"{where}.selectableFields[{index}].jsonPath"
        json_path = selectable.get("jsonPath") if isinstance(selectable, dict) else None
        if not isinstance(json_path, str) or not json_path.startswith("."):
            raise refuse(path, f"{json_path!r} is an invalid path: it must start with .")
        if json_path in seen:
            raise refuse(path, f"{json_path!r} is listed twice")
        seen.add(json_path)
        node: Any = root
        for name in json_path[1:].split("."):
            node = (node.get("properties") or {}).get(name) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise refuse(path, f"{json_path!r} is an invalid path: does not refer to a valid field")
        if node.get("type") not in ("string", "integer", "boolean"):
            raise refuse(path, f"{json_path!r} must point to a field of type string, boolean or integer")


def cel_rule_count(body: dict[str, Any]) -> int:
    """The x-kubernetes-validations rules of every version's schema: CEL, which only the apiserver
    compiles (docs/manifest-policy.md)."""
    count = 0
    for version in (body.get("spec") or {}).get("versions") or []:
        pending: list[Any] = [((version.get("schema") or {}).get("openAPIV3Schema"))]
        while pending:
            node = pending.pop()
            if isinstance(node, dict):
                rules = node.get("x-kubernetes-validations")
                count += len(rules) if isinstance(rules, list) else 0
                pending += [child for key, child in node.items() if key != "x-kubernetes-validations"]
            elif isinstance(node, list):
                pending += node
    return count


# --- structure --------------------------------------------------------------------------------------

_INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]


def _matches(pattern: str, value: str) -> bool | None:
    """None where the pattern is beyond Python's re (the pattern check refused it already)."""
    try:
        return _as_python(pattern).search(value) is not None
    except re.error:
        return None


def _is_int_or_string_pattern(node: dict[str, Any], junctor: str) -> bool:
    """isIntOrStringAnyOfPattern: an int-or-string node may say so in anyOf (or in allOf's anyOf)."""
    if not node.get("x-kubernetes-int-or-string"):
        return False
    if junctor == "anyOf":
        return node.get("anyOf") == _INT_OR_STRING_ANY_OF
    return junctor == "allOf" and node.get("allOf") == [{"anyOf": _INT_OR_STRING_ANY_OF}]


def _check_structural_node(refuse: Refuse, path: str, node: dict[str, Any]) -> None:
    """validateStructuralInvariants and validateStructuralCompleteness."""
    kind = node.get("type")
    lenient = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    if not kind and not lenient:
        raise refuse(f"{path}.type", "must not be empty for specified fields (a structural schema types every node)")
    if kind == "array" and not isinstance(node.get("items"), dict):
        raise refuse(f"{path}.items", "must be specified for an array")
    if "items" in node and kind != "array":
        raise refuse(f"{path}.type", "must be array if items are specified")
    if node.get("properties") and kind not in ("object", None):
        raise refuse(f"{path}.type", "must be object if properties are specified")
    if node.get("x-kubernetes-embedded-resource"):
        if kind != "object":
            raise refuse(f"{path}.type", "must be object if x-kubernetes-embedded-resource is true")
        if not node.get("properties") and not node.get("x-kubernetes-preserve-unknown-fields"):
            raise refuse(f"{path}.properties", "must not be empty if x-kubernetes-embedded-resource is true "
                         "without x-kubernetes-preserve-unknown-fields")
    for key in _JUNCTORS + ("not",):  # what a junctor names must exist in the structural part
        branches = node.get(key)
        for branch in ([branches] if isinstance(branches, dict) else branches or []):
            if not isinstance(branch, dict):
                continue
            missing = [name for name in branch.get("properties") or {} if name not in (node.get("properties") or {})]
            if missing and not node.get("x-kubernetes-preserve-unknown-fields"):
                raise refuse(f"{path}.{key}.properties[{missing[0]}]", "must be specified in the structural part too")
            if "items" in branch and "items" not in node:
                raise refuse(f"{path}.{key}.items", "must be specified in the structural part too")


def _check_junctor_node(refuse: Refuse, path: str, node: dict[str, Any]) -> None:
    for key in _NOT_IN_JUNCTORS:
        if key in node and not (key in ("description", "title") and not node[key]):
            raise refuse(f"{path}.{key}", "must be empty to be structural (inside allOf, anyOf, oneOf or not)")


def _check_metadata_and_type_meta(refuse: Refuse, where: str, root: dict[str, Any]) -> None:
    """validateStructuralMetadataInvariants: apiVersion and kind strings; metadata an object that
    names at most name and generateName, as strings, with no default."""
    properties = root.get("properties") or {}
    for key in ("apiVersion", "kind"):
        node = properties.get(key)
        if isinstance(node, dict) and node.get("type") != "string":
            raise refuse(f"{where}.properties[{key}].type", "must be string")
        if isinstance(node, dict) and "default" in node:
            raise refuse(f"{where}.properties[{key}].default", f"must not be set in top-level {key}")
    metadata = properties.get("metadata")
    if not isinstance(metadata, dict):
        return
    if metadata.get("type") != "object":
        raise refuse(f"{where}.properties[metadata].type", "must be object")
    if "default" in metadata:
        raise refuse(f"{where}.properties[metadata].default", "must not be set in top-level metadata")
    inner = metadata.get("properties") or {}
    if set(metadata) - {"type", "properties"} or set(inner) - {"name", "generateName"} or any(
            set(child) - {"type"} or child.get("type") != "string" for child in inner.values() if isinstance(child, dict)):
        raise refuse(f"{where}.properties[metadata]", "must not specify anything other than name and generateName "
                     "(as strings)")


def _check_list_semantics(refuse: Refuse, path: str, node: dict[str, Any]) -> None:
    """validateListSetsAndMaps: map lists name their keys, which are scalar properties of object
    items; set lists hold scalars or atomic maps."""
    list_type, keys = node.get("x-kubernetes-list-type"), node.get("x-kubernetes-list-map-keys")
    items: dict[str, Any] = node["items"] if isinstance(node.get("items"), dict) else {}
    if keys and list_type != "map":
        raise refuse(f"{path}.x-kubernetes-list-type", "must be map if x-kubernetes-list-map-keys is non-empty")
    if list_type == "map":
        if not keys:
            raise refuse(f"{path}.x-kubernetes-list-map-keys", "must not be empty if x-kubernetes-list-type is map")
        if items.get("type") != "object":
            raise refuse(f"{path}.items.type", "must be object if parent array's x-kubernetes-list-type is map")
        item_properties = items.get("properties") or {}
        if len(set(keys)) != len(keys) or any(key not in item_properties for key in keys):
            raise refuse(f"{path}.x-kubernetes-list-map-keys", "entries must all be names of item properties, once each")
        for key in keys:
            if (item_properties[key] or {}).get("type") not in _SCALARS:
                raise refuse(f"{path}.items.properties[{key}].type", "must be a scalar type if it is a map key")
    if list_type == "set":
        if items.get("type") == "object" and items.get("x-kubernetes-map-type") != "atomic":
            raise refuse(f"{path}.items.x-kubernetes-map-type", "must be atomic as item of a list with "
                         "x-kubernetes-list-type=set")
        if items.get("type") == "array" and items.get("x-kubernetes-list-type", "atomic") != "atomic":
            raise refuse(f"{path}.items.x-kubernetes-list-type", "must be atomic as item of a list with "
                         "x-kubernetes-list-type=set")


def _check_pattern(refuse: Refuse, path: str, pattern: str) -> None:
    """ValidateCustomResourceDefinitionOpenAPISchema compiles each pattern as Go's regexp (RE2)."""
    problem = None
    try:
        _as_python(pattern)
    except re.error as error:
        problem = str(error)
    if problem is None and _NOT_RE2.search(pattern):
        problem = "lookaround, backreference, possessive or \\Z, which RE2 does not have"
    if problem is None and any(int(m.group(1)) > 1000 or int(m.group(2) or 0) > 1000
                               for m in _REPEAT.finditer(pattern)):
        problem = "a repeat count over 1000"
    if problem:
        raise refuse(path, f"{pattern!r} must be a valid regular expression ({problem})")


_INLINE_FLAGS = re.compile(r"\(\?([imsU]+)\)")


def _as_python(pattern: str) -> re.Pattern[str]:
    """RE2 takes flags (`(?i)`) anywhere, Python only at the start: moved there to compile."""
    flags = 0
    for letters in _INLINE_FLAGS.findall(pattern):
        flags |= (re.IGNORECASE if "i" in letters else 0) | (re.MULTILINE if "m" in letters else 0) | (
            re.DOTALL if "s" in letters else 0)
    with warnings.catch_warnings():  # `[[:alpha:]]`: a POSIX class to RE2, a "possible nested set" to Python
        warnings.simplefilter("ignore", FutureWarning)
        return re.compile(_INLINE_FLAGS.sub("", pattern), flags)


# --- defaults ---------------------------------------------------------------------------------------

def _check_default(refuse: Refuse, path: str, node: dict[str, Any], value: Any) -> None:
    """ValidateDefaults: a default must validate against its own schema, after pruning."""
    problem = value_problem(node, value)
    if problem:
        raise refuse(path, f"the default does not match its schema: {problem}")


def value_problem(schema: dict[str, Any], value: Any, where: str = "") -> str | None:
    """The first way `value` fails `schema` (type, enum, bounds, format, required, unknown fields),
    or None."""
    if value is None:
        return None if schema.get("nullable") else f"{where or 'the value'} must not be null"
    problem = _type_problem(schema, value, where)
    if problem or schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields"):
        return problem
    if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
        return f"{where or 'the value'} {value!r} is not one of the enum's values"
    return _bounds_problem(schema, value, where) or _children_problem(schema, value, where) or _junctor_problem(
        schema, value, where)


def _junctor_problem(schema: dict[str, Any], value: Any, where: str) -> str | None:
    """allOf: every branch holds; anyOf: one at least; oneOf: exactly one; not: its branch fails."""
    name = where or "the value"
    holds = [[value_problem(branch, value, where) is None for branch in schema.get(key) or [] if isinstance(branch, dict)]
             for key in _JUNCTORS]
    all_of, any_of, one_of = holds
    if not all(all_of):
        return f"{name} fails a schema of allOf"
    if any_of and not any(any_of):
        return f"{name} fails every schema of anyOf"
    if one_of and sum(one_of) != 1:
        return f"{name} must match exactly one schema of oneOf"
    if isinstance(schema.get("not"), dict) and value_problem(schema["not"], value, where) is None:
        return f"{name} must not validate the schema inside 'not'"
    return None


def _type_problem(schema: dict[str, Any], value: Any, where: str) -> str | None:
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        return None if ok else f"{where or 'the value'} must be an integer or a string"
    expected = schema.get("type")
    checks: dict[str, Callable[[Any], bool]] = {
        "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer(),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list)}
    if expected in checks and not checks[expected](value):
        return f"{where or 'the value'} must be of type {expected}"
    return None


def _bounds_problem(schema: dict[str, Any], value: Any, where: str) -> str | None:
    name = where or "the value"
    if isinstance(value, str):
        if isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
            return f"{name} is longer than maxLength"
        if isinstance(schema.get("minLength"), int) and len(value) < schema["minLength"]:
            return f"{name} is shorter than minLength"
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and _matches(pattern, value) is False:
            return f"{name} does not match the pattern {pattern!r}"
        if not _format_holds(schema.get("format"), value):
            return f"{name} must be of format {schema.get('format')}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if (isinstance(low, (int, float)) and value < low) or (isinstance(high, (int, float)) and value > high):
            return f"{name} is outside its minimum or maximum"
    if isinstance(value, list):
        if isinstance(schema.get("minItems"), int) and len(value) < schema["minItems"]:
            return f"{name} has fewer than minItems items"
        if isinstance(schema.get("maxItems"), int) and len(value) > schema["maxItems"]:
            return f"{name} has more than maxItems items"
    return None


def _children_problem(schema: dict[str, Any], value: Any, where: str) -> str | None:
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, child in value.items():
            if key in properties:
                problem = value_problem(properties[key], child, f"{where}.{key}")
            elif isinstance(additional, dict):
                problem = value_problem(additional, child, f"{where}.{key}")
            else:
                problem = None if additional is True else f"{where}.{key} is an unknown field (it would be pruned)"
            if problem:
                return problem
        missing = [key for key in schema.get("required") or [] if key not in value]
        if missing:
            return f"{where}.{missing[0]} is required"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            problem = value_problem(schema["items"], item, f"{where}[{index}]")
            if problem:
                return problem
    return None


_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _format_holds(format_name: Any, value: str) -> bool:
    """The formats a release's schemas use, as the apiserver's format registry checks them; any
    other format is left to the server's dry-run."""
    def parses(parse: Callable[[str], Any]) -> bool:
        try:
            parse(value)
        except (ValueError, binascii.Error):
            return False
        return True
    checks: dict[str, Callable[[], bool]] = {
        "cidr": lambda: parses(lambda v: ipaddress.ip_network(v, strict=False)),
        "ipv4": lambda: parses(ipaddress.IPv4Address), "ipv6": lambda: parses(ipaddress.IPv6Address),
        "date-time": lambda: bool(_DATE_TIME.fullmatch(value)), "date": lambda: bool(_DATE.fullmatch(value)),
        "byte": lambda: parses(lambda v: base64.b64decode(v, validate=True)), "uuid": lambda: parses(uuid.UUID)}
    return checks[format_name]() if isinstance(format_name, str) and format_name in checks else True
