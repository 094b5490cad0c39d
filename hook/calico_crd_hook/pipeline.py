"""Runs the stages in their one direction: version -> source -> manifest -> preflight -> apply ->
tiers -> report. Nothing is written to the cluster before every offline and read-only check passed."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from calico_crd_hook import report
from calico_crd_hook.errors import EXIT_CHANGES, EXIT_OK, UsageError
from calico_crd_hook.manifest import Crd, Manifest, validate_manifest
from calico_crd_hook.releases import ReleaseFile, release_table
from calico_crd_hook.source import DEFAULT_URL_TEMPLATE, SourceOptions, fetch_manifest
from calico_crd_hook.version import (FIRST_VERSION_WITH_V3_MODE, ApiMode, CalicoVersion, parse_version, required_tiers,
                                     resolve_api_mode)

log = logging.getLogger(__name__)


def run(args: argparse.Namespace, started: float) -> int:
    deadline = started + args.timeout
    handlers = {"apply": _apply, "diff": _diff, "verify": _verify, "validate": _validate, "bundle": _bundle}
    return handlers[args.command](args, started, deadline)


def _source_options(args: argparse.Namespace) -> SourceOptions:
    chosen = [flag for flag, value in (("--manifest", args.manifest), ("--bundle-dir", args.bundle_dir),
                                       ("--url-template", args.url_template)) if value]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} both name a source: keep one")
    return SourceOptions(
        manifest_file=Path(args.manifest) if args.manifest else None,
        bundle_dir=Path(args.bundle_dir) if args.bundle_dir else None,
        url_template=args.url_template or DEFAULT_URL_TEMPLATE,
        sha256=args.sha256, ca_bundle=Path(args.ca_bundle) if args.ca_bundle else None,
        allow_http=args.allow_http, require_pinned=args.require_pinned)


def _allowed_groups(args: argparse.Namespace, mode: ApiMode) -> frozenset[str]:
    if not args.allowed_groups:
        return mode.default_allowed_groups
    return frozenset(group.strip() for group in args.allowed_groups.split(",") if group.strip())


def _fetch_and_validate(args: argparse.Namespace, target: CalicoVersion | None, mode: ApiMode,
                        deadline: float, on_released_crd: Callable[[Crd], None] | None = None) -> Manifest:
    fetched = fetch_manifest(_source_options(args), target, mode, deadline)
    return validate_manifest(fetched, target, mode, _allowed_groups(args, mode), on_released_crd)


def _validate(args: argparse.Namespace, started: float, deadline: float) -> int:
    if not args.version and not args.manifest:
        raise UsageError("validate needs --version, or --manifest FILE to check a file alone")
    target = parse_version(args.version) if args.version else None
    mode = resolve_api_mode(args.api_mode, target or FIRST_VERSION_WITH_V3_MODE, None,  # auto: v1 offline
                            os.environ.get("CALICO_API_GROUP"))
    manifest = _fetch_and_validate(args, target, mode, deadline)
    groups = sorted({crd.group for crd in manifest.crds})
    duration = time.monotonic() - started
    if args.log_format == "json":
        print(json.dumps({"result": "valid", "manifest": manifest.origin, "crds": len(manifest.crds),
                          "groups": groups, "sha256": manifest.sha256, "duration_seconds": round(duration, 3)}))
    else:
        print(f"ok: {manifest.origin}: {len(manifest.crds)} CRDs ({', '.join(groups)}), "
              f"sha256 {manifest.sha256}, {duration:.2f}s")
    return EXIT_OK


def _bundle(args: argparse.Namespace, started: float, deadline: float) -> int:
    versions = args.versions or [v for v in (os.environ.get("CALICO_CRD_HOOK_VERSIONS") or "").split(",") if v.strip()]
    if not versions or not args.out:
        raise UsageError("bundle needs --version (repeatable) and --out DIR")
    if args.manifest or args.bundle_dir:
        raise UsageError("bundle downloads from --url-template; --manifest and --bundle-dir do not apply")
    if args.sha256 and len(versions) > 1:
        raise UsageError("--sha256 pins one file: bundle one version per run when you pass it")
    out = Path(args.out)
    for target in (parse_version(text) for text in versions):
        modes = [ApiMode.V1, ApiMode.V3] if target >= FIRST_VERSION_WITH_V3_MODE else [ApiMode.V1]
        for mode in modes:
            options = replace(_source_options(args), require_pinned=True)  # a bundle is always pinned
            fetched = fetch_manifest(options, target, mode, deadline)
            validate_manifest(fetched, target, mode, _allowed_groups(args, mode))
            destination = out / target.tag / mode.manifest_file
            destination.parent.mkdir(parents=True, exist_ok=True)
            temporary = destination.with_suffix(".partial")
            temporary.write_bytes(fetched.data)
            temporary.replace(destination)
            if args.log_format == "json":
                print(json.dumps({"result": "bundled", "file": str(destination), "sha256": fetched.sha256}))
            else:
                print(f"bundled {destination} (sha256 {fetched.sha256})")
    return EXIT_OK


def _pinned_release(args: argparse.Namespace, target: CalicoVersion) -> dict[ApiMode, ReleaseFile] | None:
    """The target's released files, when the run would apply exactly one of them: the shipped
    digest pins it, or --sha256 names the same file."""
    table = release_table()
    files = {mode: table.file_for(target, mode) for mode in ApiMode}
    found = {mode: file for mode, file in files.items() if file is not None
             and (not args.sha256 or args.sha256.strip().lower() == file.sha256)}
    return found or None


def _already_current(args: argparse.Namespace, cluster, live: dict[str, dict[str, Any]],  # type: ignore[no-untyped-def]
                     released: ReleaseFile | None, target: CalicoVersion, mode: ApiMode,
                     started: float) -> report.Summary | None:
    from calico_crd_hook.noop import already_current

    if released is None:
        return None
    if not already_current(cluster, live, released, target, mode, args.concurrency):
        return None
    return report.Summary(
        target_version=target.tag, running_version=None, api_mode=mode.value,
        manifest=f"{mode.manifest_file} of {target} (not fetched: already current)",
        manifest_sha256=released.sha256, dry_run=False, created=(), updated=(),
        unchanged=tuple(sorted(released.crds)), left_in_place=(), tiers_created=(),
        duration_seconds=round(time.monotonic() - started, 3), already_current=True)


@dataclass(frozen=True)
class _Prepared:
    """Everything up to the first write: the plan `apply` carries out and `diff` reports."""
    cluster: Any
    mode: ApiMode
    manifest: Manifest
    live: dict[str, dict[str, Any]]
    plan: Any


@dataclass(frozen=True)
class _Kept:
    """A downgrade under --on-downgrade keep: the cluster keeps its newer CRDs."""
    cluster: Any
    mode: ApiMode
    live: dict[str, dict[str, Any]]
    running: CalicoVersion | None
    downgrade: Any


def _prepare(args: argparse.Namespace, target: CalicoVersion, deadline: float, started: float,
             fast_path: bool, manifest: Manifest | None = None, on_downgrade: str | None = None
             ) -> _Prepared | _Kept | report.Summary:
    """Fetch, validate and run every read-only check and the dry-run; a Summary instead when the
    one-LIST no-op finds nothing to do, a _Kept when the target is a downgrade the run must not
    apply. `fast_path` (apply without --dry-run): the no-op, and no dry-run of a CRD that holds its
    document as we applied it; --dry-run, diff and verify ask the apiserver about every CRD.
    `manifest`: validated already. `on_downgrade`: the policy, when not the run's option (diff
    shows what applying an older target would change)."""
    from calico_crd_hook.cluster import Cluster, load_credentials
    from calico_crd_hook.preflight import (REMOVED_POLICY_CRDS, DryRuns, PreflightOptions, live_crds, read_bodies,
                                          run_preflight, with_bodies)

    credentials = load_credentials(args.kubeconfig, args.token_file, args.service_ca_file)
    cluster = Cluster(credentials, deadline, args.concurrency)
    live = None
    released = _pinned_release(args, target) if fast_path else None
    if released is not None or (args.api_mode == "auto" and target >= FIRST_VERSION_WITH_V3_MODE):
        live = live_crds(cluster)  # one read: the API mode, and whether there is anything to do
    mode = resolve_api_mode(args.api_mode, target, set(live) if live is not None else None,
                            os.environ.get("CALICO_API_GROUP"))
    running = None
    if live is not None:
        if released is not None:
            done = _already_current(args, cluster, live, released.get(mode), target, mode, started)
            if done is not None:
                return done
        kept, running = _direction(on_downgrade or args.on_downgrade, cluster, live, target, mode)
        if kept is not None:  # decided before the manifest is fetched: none of it would be used
            return kept
    prefetch = None
    if released is not None and released.get(mode) is not None and live is not None:
        # The release's CRDs are known by name: read their bodies while the manifest is fetched.
        names = [*released[mode].crds, *REMOVED_POLICY_CRDS]
        background = ThreadPoolExecutor(max_workers=1)
        prefetch = background.submit(read_bodies, cluster, live, names, args.concurrency)
        background.shutdown(wait=False)
    dry_runs = DryRuns(cluster, args.concurrency, live, skip_current=fast_path)
    try:
        if manifest is None:  # a released file's CRDs are dry-run as each is validated
            manifest = _fetch_and_validate(args, target, mode, deadline, on_released_crd=dry_runs.start)
        if live is None:
            live = live_crds(cluster)
            kept, running = _direction(on_downgrade or args.on_downgrade, cluster, live, target, mode)
            if kept is not None:
                return kept
        live = with_bodies(cluster, live, manifest, args.concurrency, prefetch.result() if prefetch else None)
        plan = run_preflight(cluster, manifest, target, mode, live, running, PreflightOptions(args.concurrency),
                             dry_runs)
    finally:
        dry_runs.close()
    return _Prepared(cluster, mode, manifest, live, plan)


def _direction(on_downgrade: str, cluster: Any, live: dict[str, dict[str, Any]], target: CalicoVersion,
               mode: ApiMode) -> tuple[_Kept | None, CalicoVersion | None]:
    """The running Calico version, and a _Kept when the target is a downgrade to keep away from.
    `refuse` stops the run (exit 4); `apply` goes on and writes the older CRDs."""
    from calico_crd_hook.errors import UnsafeUpgrade
    from calico_crd_hook.preflight import find_downgrade, read_running_version

    running = read_running_version(cluster, mode, live)
    downgrade = find_downgrade(live, running, target)
    if downgrade is None:
        return None, running
    if on_downgrade == "refuse":
        raise UnsafeUpgrade(f"{downgrade.describe(target)}: applying its CRDs would rewrite newer schemas "
                            "and prune fields in use; pass --on-downgrade keep to keep the newer CRDs, or "
                            "--on-downgrade apply if you mean to downgrade them")
    if on_downgrade == "apply":
        log.warning("%s: its older CRDs replace the newer ones (--on-downgrade apply)", downgrade.describe(target))
        return None, running
    return _Kept(cluster, mode, live, running, downgrade), running


def _keep_newer_crds(args: argparse.Namespace, kept: _Kept, target: CalicoVersion, started: float) -> report.Summary:
    """Write no CRD; create the Tiers the target needs that are missing (their CRD is there, newer)."""
    from calico_crd_hook.preflight import missing_tiers, require_later_permissions
    from calico_crd_hook.tiers import ensure_tiers

    missing = missing_tiers(kept.cluster, target, kept.mode, kept.live)
    require_later_permissions(kept.cluster, kept.mode, (), missing, args.concurrency)
    created = missing if args.dry_run else ensure_tiers(kept.cluster, target, kept.mode, missing)
    log.warning("%s: keeping the cluster's newer CRDs, none is written (--on-downgrade keep)",
                kept.downgrade.describe(target))
    return report.Summary(
        target_version=target.tag, running_version=kept.running.tag if kept.running else None,
        api_mode=kept.mode.value, manifest="not fetched: the cluster keeps its newer CRDs", manifest_sha256="",
        dry_run=args.dry_run, created=(), updated=(), unchanged=(), left_in_place=(), tiers_created=created,
        duration_seconds=round(time.monotonic() - started, 3),
        kept_newer_crds=kept.downgrade.describe(target))


def _apply(args: argparse.Namespace, started: float, deadline: float) -> int:
    from calico_crd_hook.apply import apply_crds
    from calico_crd_hook.preflight import CREATE, UNCHANGED, UPDATE
    from calico_crd_hook.tiers import ensure_tiers

    if not args.version:
        raise UsageError("apply needs --version (or CALICO_CRD_HOOK_VERSION)")
    target = parse_version(args.version)
    prepared = _prepare(args, target, deadline, started, fast_path=not args.dry_run)
    if isinstance(prepared, _Kept):
        prepared = _keep_newer_crds(args, prepared, target, started)
    if isinstance(prepared, report.Summary):
        print(report.render(prepared, args.log_format))
        args.outcome = report.one_line(prepared)
        return EXIT_OK
    cluster, mode, manifest, live, plan = prepared.cluster, prepared.mode, prepared.manifest, prepared.live, prepared.plan
    tiers_created = plan.missing_tiers  # in a dry run: the Tiers that would be created
    if not args.dry_run:
        apply_crds(cluster, manifest, plan, live, args.concurrency)
        tiers_created = ensure_tiers(cluster, target, mode, plan.missing_tiers)
    summary = report.Summary(
        target_version=target.tag,
        running_version=plan.running_version.tag if plan.running_version else None,
        api_mode=mode.value, manifest=manifest.origin, manifest_sha256=manifest.sha256,
        dry_run=args.dry_run, created=plan.names_with(CREATE), updated=plan.names_with(UPDATE),
        unchanged=plan.names_with(UNCHANGED), left_in_place=plan.left_in_place,
        tiers_created=tiers_created, duration_seconds=round(time.monotonic() - started, 3))
    print(report.render(summary, args.log_format))
    args.outcome = report.one_line(summary)
    return EXIT_OK


def _diff(args: argparse.Namespace, started: float, deadline: float) -> int:
    """What the upgrade changes, read-only: exit 0 for no changes, 1 for changes (as diff and
    kubectl diff), the other codes as for apply."""
    from calico_crd_hook.diff import as_json, diff_crds, has_changes, render_text

    target = parse_version(args.version) if args.version else None
    if args.from_manifest:
        if not args.manifest:
            raise UsageError("diff --from-manifest A compares it with --manifest B: name the target file too")
        mode = resolve_api_mode(args.api_mode, target or FIRST_VERSION_WITH_V3_MODE, None,
                                os.environ.get("CALICO_API_GROUP"))
        older = argparse.Namespace(**{**vars(args), "manifest": args.from_manifest, "sha256": None})
        before = _fetch_and_validate(older, None, mode, deadline)
        manifest = _fetch_and_validate(args, target, mode, deadline)
        old = {crd.name: crd.body for crd in before.crds}
        where = (before.origin, manifest.origin)
        tiers = tuple(tier.name for tier in required_tiers(target)) if target else ()
        tiers_label = "Tiers the target version needs (created where missing)"
    else:
        if target is None:
            raise UsageError("diff needs --version, or --from-manifest A --manifest B to compare two files")
        prepared = _prepare(args, target, deadline, started, fast_path=False, on_downgrade="apply")
        assert isinstance(prepared, _Prepared)
        manifest, mode = prepared.manifest, prepared.mode
        old = {name: body for name, body in prepared.live.items() if "spec" in body}
        where = ("the cluster", manifest.origin)
        tiers = prepared.plan.missing_tiers
        tiers_label = "Tiers that would be created"
    diffs = diff_crds(old, {crd.name: crd.body for crd in manifest.crds},
                      frozenset(crd.group for crd in manifest.crds))
    changes = has_changes(diffs) or (bool(tiers) and not args.from_manifest)
    if args.log_format == "json":
        print(json.dumps({"from": where[0], "to": where[1], "api_mode": mode.value, "changes": changes,
                          "crds": as_json(diffs), "tiers_needed": list(tiers)}))
    else:
        print(render_text(diffs, f"calico-crd-hook diff: {where[0]} -> {where[1]} (API mode {mode.value})"))
        print(f"{tiers_label}: {', '.join(tiers) or 'none'}")
    return EXIT_CHANGES if changes else EXIT_OK


def _verify(args: argparse.Namespace, started: float, deadline: float) -> int:
    """After the upgrade: are the live CRDs the target's, as the apiserver would store them (the
    server-side dry-run of each, so defaulting is no difference), and do the Tiers exist with the
    target's values? Exit 0 when so, 1 when not (each difference reported); with --repair, a
    difference is re-applied through the same safe path as apply, and checked again."""
    from calico_crd_hook.apply import apply_crds
    from calico_crd_hook.diff import diff_crds
    from calico_crd_hook.tiers import ensure_tiers, tier_differences

    if not args.version:
        raise UsageError("verify needs --version (or CALICO_CRD_HOOK_VERSION)")
    from calico_crd_hook.preflight import UNCHANGED

    target = parse_version(args.version)
    manifest = None
    for attempt in ("check", "recheck"):
        prepared = _prepare(args, target, deadline, started, fast_path=False, manifest=manifest)  # fetched once
        if isinstance(prepared, _Kept):
            return _verify_kept(args, prepared, target)
        assert isinstance(prepared, _Prepared)
        plan, manifest = prepared.plan, prepared.manifest
        drifted = [change.name for change in plan.changes if change.action != UNCHANGED]
        details = {diff.name: diff for diff in diff_crds(
            {name: body for name, body in prepared.live.items() if "spec" in body},
            {crd.name: crd.body for crd in manifest.crds}, frozenset())}
        tiers = tier_differences(prepared.cluster, target, prepared.mode)
        problems = [_drift_line(name, plan, details.get(name)) for name in drifted] + tiers
        if not problems:
            _print_verified(args, target, prepared, attempt == "recheck")
            return EXIT_OK
        for problem in problems:
            log.warning("%s", problem)
        if not args.repair or attempt == "recheck":
            break
        log.warning("repairing: re-applying %d CRD(s) and the missing Tiers", len(drifted))
        apply_crds(prepared.cluster, manifest, plan, prepared.live, args.concurrency)
        ensure_tiers(prepared.cluster, target, prepared.mode, plan.missing_tiers)
    summary = {"result": "differs", "target_version": target.tag, "differences": problems}
    args.outcome = f"the cluster differs from Calico {target}: " + "; ".join(problems)
    if args.log_format == "json":
        print(json.dumps(summary))
    else:
        print(f"calico-crd-hook verify: {args.outcome}")
    return EXIT_CHANGES


def _verify_kept(args: argparse.Namespace, kept: _Kept, target: CalicoVersion) -> int:
    """After a rollback or a revert (--on-downgrade keep): the newer CRDs are meant to stay, so only
    the Tiers are checked; --repair creates missing ones, never a CRD."""
    from calico_crd_hook.tiers import ensure_tiers, tier_differences

    problems = tier_differences(kept.cluster, target, kept.mode)
    if problems and args.repair:
        from calico_crd_hook.preflight import missing_tiers

        ensure_tiers(kept.cluster, target, kept.mode, missing_tiers(kept.cluster, target, kept.mode, kept.live))
        problems = tier_differences(kept.cluster, target, kept.mode)
    kept_line = f"{kept.downgrade.describe(target)}: the cluster keeps its newer CRDs (--on-downgrade keep)"
    args.outcome = kept_line + (f"; {'; '.join(problems)}" if problems else "; the Tiers are the target's")
    if args.log_format == "json":
        print(json.dumps({"result": "differs" if problems else "kept", "target_version": target.tag,
                          "kept_newer_crds": kept.downgrade.describe(target), "differences": problems}))
    else:
        print(f"calico-crd-hook verify: {args.outcome}")
    return EXIT_CHANGES if problems else EXIT_OK


def _drift_line(name: str, plan: Any, detail: Any) -> str:
    from calico_crd_hook.preflight import CREATE

    action = next(change.action for change in plan.changes if change.name == name)
    if action == CREATE:
        return f"CRD {name} is missing"
    parts = [*(f"{p} added" for p in getattr(detail, "properties_added", ())),
             *(f"{p} removed" for p in getattr(detail, "properties_removed", ()))]
    shown = ", ".join(parts[:4]) + (f" and {len(parts) - 4} more" if len(parts) > 4 else "")
    return f"CRD {name} differs from the target" + (f" (the target has, against the live one: {shown})" if shown else "")


def _print_verified(args: argparse.Namespace, target: CalicoVersion, prepared: _Prepared, repaired: bool) -> None:
    count = len(prepared.manifest.crds)
    args.outcome = f"all {count} CRDs and the Tiers are Calico {target}'s{' (after repairing)' if repaired else ''}"
    if args.log_format == "json":
        print(json.dumps({"result": "repaired" if repaired else "verified", "target_version": target.tag,
                          "crds": count, "api_mode": prepared.mode.value}))
    else:
        print(f"calico-crd-hook verify: all {count} CRDs and the Tiers are Calico {target}'s"
              f"{' (after repairing)' if repaired else ''}")
