"""What an upgrade changes inside each CRD, for review before it happens (`calico-crd-hook diff`).

The same comparison serves a cluster (its live CRDs against the target manifest) and a pull request
(one manifest against another, offline): CRDs created, versions added and removed, the storage
version moved, schema properties added and removed as field paths, printer columns added and
removed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from calico_crd_hook.actions import Action, left_in_place, storage_version
from calico_crd_hook.releases import without_bookkeeping


@dataclass(frozen=True)
class CrdDiff:
    name: str
    action: Action
    versions_added: tuple[str, ...] = ()
    versions_removed: tuple[str, ...] = ()
    storage_moved: tuple[str, str] | None = None  # (from, to)
    properties_added: tuple[str, ...] = ()  # "<version> <path>", e.g. "v1 .spec.cni.specVersion"
    properties_removed: tuple[str, ...] = ()
    columns_added: tuple[str, ...] = ()  # "<version> <column name>"
    columns_removed: tuple[str, ...] = ()
    other_changes: bool = False  # anything else of the spec, labels or annotations


def diff_crds(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]],
              calico_groups: frozenset[str]) -> list[CrdDiff]:
    """`old`: the CRDs there now (live, or the older manifest's), by name; `new`: the target's.
    CRDs of the Calico groups that the target no longer ships are left in place, never deleted."""
    found = [_one(name, old.get(name), body) for name, body in new.items()]
    return found + [CrdDiff(name, Action.LEAVE_IN_PLACE) for name in left_in_place(old, new, calico_groups)]


def has_changes(diffs: list[CrdDiff]) -> bool:
    return any(diff.action in (Action.CREATE, Action.UPDATE) for diff in diffs)


def _one(name: str, old: dict[str, Any] | None, new: dict[str, Any]) -> CrdDiff:
    if old is None:
        return CrdDiff(name, Action.CREATE, versions_added=tuple(_versions(new)))
    old_versions, new_versions = _versions(old), _versions(new)
    added = tuple(v for v in new_versions if v not in old_versions)
    removed = tuple(v for v in old_versions if v not in new_versions)
    storage = (storage_version(old), storage_version(new))
    props_added, props_removed, cols_added, cols_removed = [], [], [], []
    for version in (v for v in new_versions if v in old_versions):
        old_paths, new_paths = _schema_paths(old_versions[version]), _schema_paths(new_versions[version])
        props_added += [f"{version} {path}" for path in sorted(new_paths - old_paths)]
        props_removed += [f"{version} {path}" for path in sorted(old_paths - new_paths)]
        old_columns, new_columns = _columns(old_versions[version]), _columns(new_versions[version])
        cols_added += [f"{version} {column}" for column in new_columns if column not in old_columns]
        cols_removed += [f"{version} {column}" for column in old_columns if column not in new_columns]
    other = _content(old) != _content(new)
    detailed = bool(added or removed or storage[0] != storage[1] or props_added or props_removed
                    or cols_added or cols_removed)
    return CrdDiff(name, Action.UPDATE if detailed or other else Action.UNCHANGED, added, removed,
                   storage if storage[0] != storage[1] else None, tuple(props_added), tuple(props_removed),
                   tuple(cols_added), tuple(cols_removed), other and not detailed)


def _versions(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {version["name"]: version for version in (crd.get("spec") or {}).get("versions") or []}


def _columns(version: dict[str, Any]) -> list[str]:
    return [f"{column.get('name')} ({column.get('jsonPath')})" for column in version.get("additionalPrinterColumns") or []]


def _schema_paths(version: dict[str, Any]) -> set[str]:
    """Every field path the version's schema declares: `.spec.ports[].name`, `.metadata.labels.*`."""
    root = (version.get("schema") or {}).get("openAPIV3Schema") or {}
    paths: set[str] = set()
    pending: list[tuple[str, Any]] = [("", root)]
    while pending:
        path, node = pending.pop()
        if not isinstance(node, dict):
            continue
        for key, child in (node.get("properties") or {}).items():
            paths.add(f"{path}.{key}")
            pending.append((f"{path}.{key}", child))
        if isinstance(node.get("items"), dict):
            pending.append((f"{path}[]", node["items"]))
        if isinstance(node.get("additionalProperties"), dict):
            pending.append((f"{path}.*", node["additionalProperties"]))
    return paths


def _content(crd: dict[str, Any]) -> tuple[Any, ...]:
    """What a review cares about: the spec's versions and names and scope, labels, annotations
    (the digest annotation and server-set fields aside)."""
    spec = crd.get("spec") or {}
    metadata = crd.get("metadata") or {}
    annotations = without_bookkeeping(metadata.get("annotations"))
    return (spec.get("versions"), spec.get("names"), spec.get("scope"), spec.get("group"),
            metadata.get("labels") or {}, annotations)


def render_text(diffs: list[CrdDiff], header: str) -> str:
    lines = [header]
    for diff in diffs:
        if diff.action == Action.UNCHANGED:
            continue
        lines.append(f"{diff.name}: {diff.action}")
        for label, values in (("versions added", diff.versions_added), ("versions removed", diff.versions_removed),
                              ("property added", diff.properties_added), ("property removed", diff.properties_removed),
                              ("printer column added", diff.columns_added),
                              ("printer column removed", diff.columns_removed)):
            lines += [f"  {label}: {value}" for value in values] if label.startswith(("property", "printer")) \
                else ([f"  {label}: {', '.join(values)}"] if values else [])
        if diff.storage_moved:
            lines.append(f"  storage version moved: {diff.storage_moved[0]} -> {diff.storage_moved[1]}")
        if diff.other_changes:
            lines.append("  other changes (descriptions, validation rules, names or metadata)")
    lines.append(", ".join(f"{sum(1 for diff in diffs if diff.action == action)} {action}" for action in Action))
    return "\n".join(lines)


def as_json(diffs: list[CrdDiff]) -> list[dict[str, Any]]:
    return [asdict(diff) for diff in diffs]
