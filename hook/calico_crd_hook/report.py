"""Stage 8: the summary an operator reads in the Job's log, as text or one JSON object."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Summary:
    target_version: str
    running_version: str | None
    api_mode: str
    manifest: str
    manifest_sha256: str
    dry_run: bool
    created: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]
    left_in_place: tuple[str, ...]
    tiers_created: tuple[str, ...]
    duration_seconds: float
    already_current: bool = False  # decided from the CRDs' digests, nothing fetched or written
    kept_newer_crds: str | None = None  # a downgrade under --on-downgrade keep: why no CRD was written


def one_line(summary: Summary) -> str:
    """For an Event: what happened, in one line."""
    if summary.already_current:
        return f"Calico {summary.target_version}: nothing to do, all {len(summary.unchanged)} CRDs current"
    if summary.kept_newer_crds:
        return (f"{summary.kept_newer_crds}: kept the newer CRDs, none written; Tiers created: "
                f"{', '.join(summary.tiers_created) or 'none'}")
    return (f"Calico {summary.running_version or 'unknown'} -> {summary.target_version}: "
            f"{len(summary.created)} CRDs created, {len(summary.updated)} updated, {len(summary.unchanged)} "
            f"unchanged; Tiers created: {', '.join(summary.tiers_created) or 'none'}")


def render(summary: Summary, log_format: str) -> str:
    if log_format == "json":
        return json.dumps({"summary": asdict(summary)}, sort_keys=True)
    if summary.already_current:
        return (f"calico-crd-hook: Calico {summary.target_version} (API mode {summary.api_mode}): nothing to do\n"
                f"  all {len(summary.unchanged)} CRDs carry the digests of {summary.manifest.split(' (')[0]} "
                f"(sha256 {summary.manifest_sha256}) and hold those documents as applied; the Tiers exist\n"
                f"  took {summary.duration_seconds:.2f}s")
    tiers_label = "Tiers that would be created" if summary.dry_run else "Tiers created"
    if summary.kept_newer_crds:
        return "\n".join([
            f"calico-crd-hook: {summary.kept_newer_crds}: a downgrade (API mode {summary.api_mode})"
            f"{' [dry run: nothing written]' if summary.dry_run else ''}",
            "  CRDs: the cluster keeps its newer CRDs, none is written (--on-downgrade keep; "
            "--on-downgrade apply would write the older ones)",
            f"  {tiers_label}: {', '.join(summary.tiers_created) or 'none'}",
            f"  took {summary.duration_seconds:.2f}s"])
    verb = "would be" if summary.dry_run else "were"
    lines = [
        f"calico-crd-hook: Calico {summary.running_version or 'unknown'} -> {summary.target_version} "
        f"(API mode {summary.api_mode}){' [dry run: nothing written]' if summary.dry_run else ''}",
        f"  manifest: {summary.manifest} (sha256 {summary.manifest_sha256})",
        f"  CRDs: {len(summary.created)} {verb} created, {len(summary.updated)} {verb} updated, "
        f"{len(summary.unchanged)} unchanged",
    ]
    for label, names in (("created", summary.created), ("updated", summary.updated)):
        if names:
            lines.append(f"    {label}: {', '.join(names)}")
    if summary.left_in_place:
        lines.append(f"  left in place (no longer shipped, never deleted): {', '.join(summary.left_in_place)}")
    lines.append(f"  {tiers_label}: {', '.join(summary.tiers_created) or 'none'}")
    lines.append(f"  took {summary.duration_seconds:.2f}s")
    return "\n".join(lines)
