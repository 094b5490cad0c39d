"""What a run does to each CRD, in one vocabulary for preflight (the plan), apply's report, diff
and verify; and the two facts of a CRD they all read: its storage version, and which live CRDs the
target leaves in place."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    """The words are the report's: `created`, `updated`, `unchanged`, `left in place`."""
    CREATE = "created"
    UPDATE = "updated"
    UNCHANGED = "unchanged"
    LEAVE_IN_PLACE = "left in place"  # a Calico CRD the target no longer ships: never deleted


def storage_version(crd: dict[str, Any]) -> str:
    """The version objects are stored as; "" for a CRD without one (the apiserver and the manifest
    policy both refuse such a CRD, so a live or validated one always has it)."""
    versions = (crd.get("spec") or {}).get("versions") or []
    return next((str(version.get("name")) for version in versions if version.get("storage")), "")


def left_in_place(existing: Iterable[str], shipped: Iterable[str], calico_groups: Iterable[str]) -> tuple[str, ...]:
    """CRDs of the target's groups that exist now and the target no longer ships, sorted by name."""
    shipped, groups = set(shipped), set(calico_groups)
    return tuple(sorted(name for name in existing
                        if name not in shipped and name.partition(".")[2] in groups))
