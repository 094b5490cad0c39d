"""Runs the stages in their one direction: version -> source -> manifest -> preflight -> apply ->
tiers -> report. Nothing is written to the cluster before every offline and read-only check passed."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from calico_crd_hook import report
from calico_crd_hook.actions import Action
from calico_crd_hook.apply import apply_crds
from calico_crd_hook.client import Cluster
from calico_crd_hook.diff import CrdDiff, as_json, diff_crds, has_changes, render_text
from calico_crd_hook.errors import EXIT_CHANGES, EXIT_OK, UnsafeUpgrade, UsageError
from calico_crd_hook.kubeconfig import load_credentials
from calico_crd_hook.manifest import Crd, Manifest, validate_manifest
from calico_crd_hook.noop import already_current
from calico_crd_hook.options import Options
from calico_crd_hook.preflight import (
    REMOVED_POLICY_CRDS,
    Downgrade,
    DryRuns,
    Plan,
    find_downgrade,
    live_crds,
    missing_tiers,
    read_bodies,
    read_running_version,
    require_later_permissions,
    run_preflight,
    with_bodies,
)
from calico_crd_hook.releases import ReleaseFile, release_table
from calico_crd_hook.source import DEFAULT_URL_TEMPLATE, SourceOptions, fetch_manifest
from calico_crd_hook.tiers import ensure_tiers, tier_differences
from calico_crd_hook.version import (
    FIRST_VERSION_WITH_V3_MODE,
    ApiMode,
    CalicoVersion,
    parse_version,
    required_tiers,
    resolve_api_mode,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    code: int
    message: str  # one line, for the Event on the Job's Pod


def run(options: Options, started: float) -> Outcome:
    deadline = started + options.timeout
    handlers: dict[str, Callable[[Options, float, float], Outcome]] = {
        "apply": _apply, "diff": _diff, "verify": _verify, "validate": _validate, "bundle": _bundle}
    return handlers[options.command](options, started, deadline)


def _source_options(options: Options) -> SourceOptions:
    chosen = [flag for flag, value in (("--manifest", options.manifest), ("--bundle-dir", options.bundle_dir),
                                       ("--url-template", options.url_template)) if value]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} both name a source: keep one")
    return SourceOptions(
        manifest_file=Path(options.manifest) if options.manifest else None,
        bundle_dir=Path(options.bundle_dir) if options.bundle_dir else None,
        url_template=options.url_template or DEFAULT_URL_TEMPLATE,
        sha256=options.sha256, ca_bundle=Path(options.ca_bundle) if options.ca_bundle else None,
        allow_http=options.allow_http, require_pinned=options.require_pinned)


def _allowed_groups(options: Options, mode: ApiMode) -> frozenset[str]:
    if not options.allowed_groups:
        return mode.default_allowed_groups
    return frozenset(group.strip() for group in options.allowed_groups.split(",") if group.strip())


def _fetch_and_validate(options: Options, target: CalicoVersion | None, mode: ApiMode,
                        deadline: float, on_released_crd: Callable[[Crd], None] | None = None) -> Manifest:
    fetched = fetch_manifest(_source_options(options), target, mode, deadline)
    return validate_manifest(fetched, target, mode, _allowed_groups(options, mode), on_released_crd,
                             options.allow_modified_crds)


def _validate(options: Options, started: float, deadline: float) -> Outcome:
    if not options.version and not options.manifest:
        raise UsageError("validate needs --version, or --manifest FILE to check a file alone")
    target = parse_version(options.version) if options.version else None
    mode = resolve_api_mode(options.api_mode, target or FIRST_VERSION_WITH_V3_MODE, None,  # auto: v1 offline
                            options.calico_api_group)
    manifest = _fetch_and_validate(options, target, mode, deadline)
    groups = sorted({crd.group for crd in manifest.crds})
    duration = time.monotonic() - started
    if options.log_format == "json":
        print(json.dumps({"result": "valid", "manifest": manifest.origin, "crds": len(manifest.crds),
                          "groups": groups, "sha256": manifest.sha256, "duration_seconds": round(duration, 3),
                          "cel_rules_checked_by_the_apiserver_only": manifest.cel_rules}))
    else:
        print(f"ok: {manifest.origin}: {len(manifest.crds)} CRDs ({', '.join(groups)}), "
              f"sha256 {manifest.sha256}, {duration:.2f}s; {manifest.cel_rules} CEL rules are checked by "
              "the apiserver's dry-run only")
    return Outcome(EXIT_OK, f"{manifest.origin} is valid")


def _bundle(options: Options, started: float, deadline: float) -> Outcome:
    versions = options.versions
    if not versions or not options.bundle_dir:
        raise UsageError("bundle needs --version (repeatable) and --bundle-dir DIR (or --out DIR)")
    if options.sha256 and len(versions) > 1:
        raise UsageError("--sha256 pins one file: bundle one version per run when you pass it")
    out = Path(options.bundle_dir)
    for target in (parse_version(text) for text in versions):
        modes = [ApiMode.V1, ApiMode.V3] if target >= FIRST_VERSION_WITH_V3_MODE else [ApiMode.V1]
        for mode in modes:
            # the folder is where the bundle goes, not a source; a bundle is always pinned
            source = replace(_source_options(replace(options, bundle_dir=None)), require_pinned=True)
            fetched = fetch_manifest(source, target, mode, deadline)
            validate_manifest(fetched, target, mode, _allowed_groups(options, mode))
            destination = out / target.tag / mode.manifest_file
            destination.parent.mkdir(parents=True, exist_ok=True)
            temporary = destination.with_suffix(".partial")
            temporary.write_bytes(fetched.data)
            temporary.replace(destination)
            if options.log_format == "json":
                print(json.dumps({"result": "bundled", "file": str(destination), "sha256": fetched.sha256}))
            else:
                print(f"bundled {destination} (sha256 {fetched.sha256})")
    return Outcome(EXIT_OK, f"bundled {', '.join(versions)}")


def _pinned_release(options: Options, target: CalicoVersion) -> dict[ApiMode, ReleaseFile] | None:
    """The target's released files, when the run would apply exactly one of them: the shipped
    digest pins it, or --sha256 names the same file."""
    table = release_table()
    files = {mode: table.file_for(target, mode) for mode in ApiMode}
    found = {mode: file for mode, file in files.items() if file is not None
             and (not options.sha256 or options.sha256.strip().lower() == file.sha256)}
    return found or None


def _already_current(options: Options, cluster: Cluster, live: dict[str, dict[str, Any]],
                     released: ReleaseFile | None, target: CalicoVersion, mode: ApiMode,
                     started: float) -> report.Summary | None:
    if released is None:
        return None
    if not already_current(cluster, live, released, target, mode):
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
    cluster: Cluster
    mode: ApiMode
    manifest: Manifest
    live: dict[str, dict[str, Any]]
    plan: Plan


@dataclass(frozen=True)
class _Kept:
    """A downgrade under --on-downgrade keep: the cluster keeps its newer CRDs."""
    cluster: Cluster
    mode: ApiMode
    live: dict[str, dict[str, Any]]
    running: CalicoVersion | None
    downgrade: Downgrade


def _prepare(options: Options, target: CalicoVersion, deadline: float, started: float,
             fast_path: bool, manifest: Manifest | None = None) -> _Prepared | _Kept | report.Summary:
    """Fetch, validate and run every read-only check and the dry-run; a Summary instead when the
    one-LIST no-op finds nothing to do, a _Kept when the target is a downgrade the run must not
    apply. `fast_path` (apply without --dry-run): the no-op, and no dry-run of a CRD that holds its
    document as we applied it; --dry-run, diff and verify ask the apiserver about every CRD.
    `manifest`: validated already."""
    credentials = load_credentials(options.kubeconfig, options.token_file, options.service_ca_file)
    cluster = Cluster(credentials, deadline, options.concurrency)
    pinned = _pinned_release(options, target)
    live = None
    if pinned is not None or manifest is not None or (options.api_mode == "auto" and target >= FIRST_VERSION_WITH_V3_MODE):
        # One metadata-only read first: the API mode, whether there is anything to do, which release
        # the CRDs are, and the generation each dry-run's body records. Any other file is validated
        # whole before the first request (a misspelt field is refused without a connection).
        live = live_crds(cluster)
    mode = resolve_api_mode(options.api_mode, target, set(live) if live is not None else None,
                            options.calico_api_group)
    released = pinned if fast_path else None
    if released is not None and live is not None:
        done = _already_current(options, cluster, live, released.get(mode), target, mode, started)
        if done is not None:
            return done
    # Asked first, answered while the bodies are read: the direction is decided on it.
    running_read = cluster.submit(read_running_version, cluster, mode, live) if live is not None else None
    prefetch = None
    if live is not None and released is not None and released.get(mode) is not None:
        # The release's CRDs are known by name: read their bodies while the direction is decided
        # and the manifest is fetched (reads only: a run that stops here has written nothing).
        names = [*released[mode].crds, *REMOVED_POLICY_CRDS]
        prefetch = read_bodies(cluster, live, names)
    shipped = release_table().file_for(target, mode)
    running = None
    if live is not None and (shipped is not None or manifest is not None):  # decided before any fetch
        kept, running = _direction(options.on_downgrade, cluster, live, target, mode,
                                   set(shipped.crds) if shipped else set(manifest.names if manifest else ()),
                                   running_read)
        if kept is not None:
            return kept
    dry_runs = DryRuns(cluster, live, skip_current=fast_path, bodies=prefetch)
    try:
        decided = live is not None and (shipped is not None or manifest is not None)
        if manifest is None:  # a released file's CRDs are dry-run as each is validated
            manifest = _fetch_and_validate(options, target, mode, deadline, on_released_crd=dry_runs.start)
        if live is None:
            live = live_crds(cluster)
        if not decided:
            kept, running = _direction(options.on_downgrade, cluster, live, target, mode,
                                       set(shipped.crds) if shipped else set(manifest.names), running_read)
            if kept is not None:
                return kept
        live = with_bodies(cluster, live, manifest, prefetch)
        plan = run_preflight(cluster, manifest, target, mode, live, running, dry_runs)
    finally:
        dry_runs.close()
    return _Prepared(cluster, mode, manifest, live, plan)


def _direction(on_downgrade: str, cluster: Cluster, live: dict[str, dict[str, Any]], target: CalicoVersion,
               mode: ApiMode, target_crds: set[str], running_read: Future[CalicoVersion | None] | None = None,
               ) -> tuple[_Kept | None, CalicoVersion | None]:
    """The running Calico version, and a _Kept when the target is a downgrade to keep away from.
    `refuse` stops the run (exit 4); `apply` goes on and writes the older CRDs. Only the CRDs the
    target ships count: one it no longer ships is left in place, whatever its release.
    `running_read`: the running version's read, started already."""

    running = running_read.result() if running_read is not None else read_running_version(cluster, mode, live)
    downgrade = find_downgrade({name: item for name, item in live.items() if name in target_crds}, running, target)
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


def _keep_newer_crds(options: Options, kept: _Kept, target: CalicoVersion, started: float) -> report.Summary:
    """Write no CRD; create the Tiers the target needs that are missing (their CRD is there, newer)."""

    missing = missing_tiers(kept.cluster, target, kept.mode, kept.live)
    require_later_permissions(kept.cluster, kept.mode, (), missing)
    created = missing if options.dry_run else ensure_tiers(kept.cluster, target, kept.mode, missing)
    log.warning("%s: keeping the cluster's newer CRDs, none is written (--on-downgrade keep)",
                kept.downgrade.describe(target))
    return report.Summary(
        target_version=target.tag, running_version=kept.running.tag if kept.running else None,
        api_mode=kept.mode.value, manifest="not fetched: the cluster keeps its newer CRDs", manifest_sha256="",
        dry_run=options.dry_run, created=(), updated=(), unchanged=(), left_in_place=(), tiers_created=created,
        duration_seconds=round(time.monotonic() - started, 3),
        kept_newer_crds=kept.downgrade.describe(target))


def _apply(options: Options, started: float, deadline: float) -> Outcome:
    if not options.version:
        raise UsageError("apply needs --version (or CALICO_CRD_HOOK_VERSION)")
    target = parse_version(options.version)
    prepared = _prepare(options, target, deadline, started, fast_path=not options.dry_run)
    if isinstance(prepared, _Kept):
        prepared = _keep_newer_crds(options, prepared, target, started)
    if isinstance(prepared, report.Summary):
        print(report.render(prepared, options.log_format))
        return Outcome(EXIT_OK, report.one_line(prepared))
    cluster, mode, manifest, live, plan = prepared.cluster, prepared.mode, prepared.manifest, prepared.live, prepared.plan
    tiers_created = plan.missing_tiers  # in a dry run: the Tiers that would be created
    if not options.dry_run:
        apply_crds(cluster, manifest, plan, live)
        tiers_created = ensure_tiers(cluster, target, mode, plan.missing_tiers)
    summary = report.Summary(
        target_version=target.tag,
        running_version=plan.running_version.tag if plan.running_version else None,
        api_mode=mode.value, manifest=manifest.origin, manifest_sha256=manifest.sha256,
        dry_run=options.dry_run, created=plan.names_with(Action.CREATE), updated=plan.names_with(Action.UPDATE),
        unchanged=plan.names_with(Action.UNCHANGED), left_in_place=plan.left_in_place,
        tiers_created=tiers_created, duration_seconds=round(time.monotonic() - started, 3))
    print(report.render(summary, options.log_format))
    return Outcome(EXIT_OK, report.one_line(summary))


def _diff(options: Options, started: float, deadline: float) -> Outcome:
    """What the upgrade changes, read-only: exit 0 for no changes, 1 for changes (as diff and
    kubectl diff), the other codes as for apply."""
    target = parse_version(options.version) if options.version else None
    if options.from_manifest:
        if not options.manifest:
            raise UsageError("diff --from-manifest A compares it with --manifest B: name the target file too")
        mode = resolve_api_mode(options.api_mode, target or FIRST_VERSION_WITH_V3_MODE, None,
                                options.calico_api_group)
        older = replace(options, manifest=options.from_manifest, sha256=None)
        before = _fetch_and_validate(older, None, mode, deadline)
        manifest = _fetch_and_validate(options, target, mode, deadline)
        old = {crd.name: crd.body for crd in before.crds}
        where = (before.origin, manifest.origin)
        tiers = tuple(tier.name for tier in required_tiers(target)) if target else ()
        tiers_label = "Tiers the target version needs (created where missing)"
    else:
        if target is None:
            raise UsageError("diff needs --version, or --from-manifest A --manifest B to compare two files")
        prepared = _prepare(options, target, deadline, started, fast_path=False)
        if isinstance(prepared, _Kept):
            return _diff_kept(options, prepared, target)
        assert isinstance(prepared, _Prepared)
        manifest, mode = prepared.manifest, prepared.mode
        old = {name: body for name, body in prepared.live.items() if "spec" in body}
        where = ("the cluster", manifest.origin)
        tiers = prepared.plan.missing_tiers
        tiers_label = "Tiers that would be created"
    diffs = diff_crds(old, {crd.name: crd.body for crd in manifest.crds},
                      frozenset(crd.group for crd in manifest.crds))
    changes = has_changes(diffs) or (bool(tiers) and not options.from_manifest)
    if options.log_format == "json":
        print(json.dumps({"from": where[0], "to": where[1], "api_mode": mode.value, "changes": changes,
                          "crds": as_json(diffs), "tiers_needed": list(tiers)}))
    else:
        print(render_text(diffs, f"calico-crd-hook diff: {where[0]} -> {where[1]} (API mode {mode.value})"))
        print(f"{tiers_label}: {', '.join(tiers) or 'none'}")
    return Outcome(EXIT_CHANGES, "changes found") if changes else Outcome(EXIT_OK, "no changes")


def _diff_kept(options: Options, kept: _Kept, target: CalicoVersion) -> Outcome:
    """A downgrade under --on-downgrade keep, as apply would do it: no CRD changes; the missing
    Tiers would be created."""
    tiers = missing_tiers(kept.cluster, target, kept.mode, kept.live)
    reason = kept.downgrade.describe(target)
    if options.log_format == "json":
        print(json.dumps({"from": "the cluster", "to": f"Calico {target}", "api_mode": kept.mode.value,
                          "changes": bool(tiers), "kept_newer_crds": reason, "crds": [], "tiers_needed": list(tiers)}))
    else:
        print(f"calico-crd-hook diff: {reason}: the cluster keeps its newer CRDs (--on-downgrade keep), "
              "no CRD would change")
        print(f"Tiers that would be created: {', '.join(tiers) or 'none'}")
    return Outcome(EXIT_CHANGES, "Tiers would be created") if tiers else Outcome(EXIT_OK, "no changes")


def _verify(options: Options, started: float, deadline: float) -> Outcome:
    """After the upgrade: are the live CRDs the target's, as the apiserver would store them (the
    server-side dry-run of each, so defaulting is no difference), and do the Tiers exist with the
    target's values? Exit 0 when so, 1 when not (each difference reported); with --repair, a
    difference is re-applied through the same safe path as apply, and checked again."""
    if not options.version:
        raise UsageError("verify needs --version (or CALICO_CRD_HOOK_VERSION)")
    target = parse_version(options.version)
    manifest = None
    for attempt in ("check", "recheck"):
        prepared = _prepare(options, target, deadline, started, fast_path=False, manifest=manifest)  # fetched once
        if isinstance(prepared, _Kept):
            return _verify_kept(options, prepared, target)
        assert isinstance(prepared, _Prepared)
        plan, manifest = prepared.plan, prepared.manifest
        drifted = [change.name for change in plan.changes if change.action != Action.UNCHANGED]
        details = {diff.name: diff for diff in diff_crds(
            {name: body for name, body in prepared.live.items() if "spec" in body},
            {crd.name: crd.body for crd in manifest.crds}, frozenset())}
        tiers = tier_differences(prepared.cluster, target, prepared.mode)
        problems = [_drift_line(name, plan, details.get(name)) for name in drifted] + tiers
        if not problems:
            return _verified(options, target, prepared, attempt == "recheck")
        for problem in problems:
            log.warning("%s", problem)
        if not options.repair or attempt == "recheck":
            break
        log.warning("repairing: re-applying %d CRD(s) and the missing Tiers", len(drifted))
        apply_crds(prepared.cluster, manifest, plan, prepared.live)
        ensure_tiers(prepared.cluster, target, prepared.mode, plan.missing_tiers)
    summary = {"result": "differs", "target_version": target.tag, "differences": problems}
    message = f"the cluster differs from Calico {target}: " + "; ".join(problems)
    if options.log_format == "json":
        print(json.dumps(summary))
    else:
        print(f"calico-crd-hook verify: {message}")
    return Outcome(EXIT_CHANGES, message)


def _verify_kept(options: Options, kept: _Kept, target: CalicoVersion) -> Outcome:
    """After a rollback or a revert (--on-downgrade keep): the newer CRDs are meant to stay, so only
    the Tiers are checked; --repair creates missing ones, never a CRD."""
    problems = tier_differences(kept.cluster, target, kept.mode)
    if problems and options.repair:
        ensure_tiers(kept.cluster, target, kept.mode, missing_tiers(kept.cluster, target, kept.mode, kept.live))
        problems = tier_differences(kept.cluster, target, kept.mode)
    kept_line = f"{kept.downgrade.describe(target)}: the cluster keeps its newer CRDs (--on-downgrade keep)"
    message = kept_line + (f"; {'; '.join(problems)}" if problems else "; the Tiers are the target's")
    if options.log_format == "json":
        print(json.dumps({"result": "differs" if problems else "kept", "target_version": target.tag,
                          "kept_newer_crds": kept.downgrade.describe(target), "differences": problems}))
    else:
        print(f"calico-crd-hook verify: {message}")
    return Outcome(EXIT_CHANGES if problems else EXIT_OK, message)


def _drift_line(name: str, plan: Plan, detail: CrdDiff | None) -> str:
    action = next(change.action for change in plan.changes if change.name == name)
    if action == Action.CREATE:
        return f"CRD {name} is missing"
    parts = [*(f"{p} added" for p in (detail.properties_added if detail else ())),
             *(f"{p} removed" for p in (detail.properties_removed if detail else ()))]
    shown = ", ".join(parts[:4]) + (f" and {len(parts) - 4} more" if len(parts) > 4 else "")
    return f"CRD {name} differs from the target" + (f" (the target has, against the live one: {shown})" if shown else "")


def _verified(options: Options, target: CalicoVersion, prepared: _Prepared, repaired: bool) -> Outcome:
    count = len(prepared.manifest.crds)
    message = f"all {count} CRDs and the Tiers are Calico {target}'s{' (after repairing)' if repaired else ''}"
    if options.log_format == "json":
        print(json.dumps({"result": "repaired" if repaired else "verified", "target_version": target.tag,
                          "crds": count, "api_mode": prepared.mode.value}))
    else:
        print(f"calico-crd-hook verify: {message}")
    return Outcome(EXIT_OK, message)
