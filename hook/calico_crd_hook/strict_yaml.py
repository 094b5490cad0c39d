"""A strict YAML reader for manifests: each document built straight from libyaml's events with
PyYAML's safe resolution of plain scalars, holding only values JSON can carry. Three times faster
than PyYAML's composer and constructor on a release file, and stricter: it refuses what kubectl
refuses or JSON cannot carry (anchors and aliases, duplicate or non-string keys, tagged
collections, timestamps, non-finite numbers, integers past int64), where PyYAML would quietly pick."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import yaml

from calico_crd_hook.crd_policy import MAX_DOCUMENTS
from calico_crd_hook.errors import ManifestRejected

# libyaml's parser is about ten times faster on these multi-megabyte files.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Deeper than any release (37 levels), far below what would exhaust Python's recursion in the JSON
# encoder or the schema validator.
MAX_NESTING = 64
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1
# An int64 has at most 19 digits (64 in binary); longer text is refused before int() sees it.
_MAX_INTEGER_TEXT = 80
USE_RELEASED = "use the released file unchanged"


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
                               f"Calico's files never do and JSON cannot carry: {USE_RELEASED}")


def _non_string_key(line: int) -> ManifestRejected:
    return ManifestRejected(f"the manifest has a mapping key that is not a string at line {line}, "
                            f"and JSON keys are strings; {USE_RELEASED}")


def _mapping_key(tag: str, key: Any, mapping: dict[str, Any], event: Any) -> str:
    line = event.start_mark.line + 1
    if tag != _STR:
        raise _non_string_key(line)
    # PyYAML keeps the last of two equal keys, so `scope: Cluster` then `scope: Namespaced` would
    # silently become a namespaced CRD.
    if key in mapping:
        raise ManifestRejected(f"the manifest repeats the key {key!r} in one mapping at line {line} "
                               f"(kubectl refuses duplicate keys, and YAML parsers disagree on which "
                               f"wins); {USE_RELEASED}")
    return str(key)


def _constructed(loader: Any, constructors: dict[Any, Any], tag: str, event: Any) -> Any:
    """A non-string scalar by PyYAML's safe constructors: ints, floats, booleans and nulls, and the
    timestamps and binaries that the JSON check refuses with their path."""
    line = event.start_mark.line + 1
    if tag == _INT and len(event.value) > _MAX_INTEGER_TEXT:
        raise ManifestRejected(f"the integer at line {line} has {len(event.value)} characters, far past "
                               f"int64; {USE_RELEASED}")
    construct = constructors.get(tag) or constructors[None]  # None: PyYAML's "no constructor" error
    try:
        return construct(loader, yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark))
    except yaml.YAMLError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):  # PyYAML's constructors crash so
        raise ManifestRejected(f"the value {event.value[:40]!r} at line {line} is not a valid YAML {_short(tag)}: "
                               f"quote it, or {USE_RELEASED}") from None


def _short(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


def parse_documents(data: bytes) -> list[Any]:
    """The documents, each holding only values JSON can carry (checked before anything else
    walks or encodes them)."""
    return list(parsed_documents(data))


def parsed_documents(data: bytes) -> Iterator[Any]:
    """parse_documents, one document at a time: each can be checked while the rest parse."""
    count = 0
    try:
        for document in _built_documents(data):
            count += 1  # empty documents too: a file of a million `---` is no release either
            if count > MAX_DOCUMENTS:
                raise ManifestRejected(f"the manifest holds more than {MAX_DOCUMENTS} documents (empty ones "
                                       f"counted), and a Calico release holds at most 32; {USE_RELEASED}")
            if document is None:
                continue
            _check_json_values(count, document)
            yield document
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ManifestRejected(f"the manifest is not valid YAML{line} ({problem}): "
                               "fetch the released file again") from None


def documents_largest_first(data: bytes) -> Iterator[tuple[int, Any]]:
    """(index in the file, document) for each document, the largest parsed first. The text is cut
    at its `---` lines (YAML allows no such line inside a scalar) and each part parsed on its own."""
    starts = [0] + [match.start() + 1 for match in _DOCUMENT_MARKER.finditer(data)]
    parts = [data[start:end] for start, end in zip(starts, [*starts[1:], len(data)])]
    found: list[tuple[int, bytes]] = sorted(enumerate(parts), key=lambda part: -len(part[1]))
    for position, part in found:
        for document in parsed_documents(part):
            yield position, document


_DOCUMENT_MARKER = re.compile(rb"\n---(?=[ \t\r\n]|$)")


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
    raise ManifestRejected(f"{what}: {path.removeprefix('.') or 'the top level'}: {problem}; {USE_RELEASED}")


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
