"""Argo CD, as its sync engine runs a Helm source (tests/support/argocd.py, each rule cited to
gitops-engine and argo-cd): the real umbrella charts around Calico's tigera-operator charts, the
hook Job run in the image built from our Dockerfile, several syncs in a row, chart bumps
3.29 -> 3.30 -> 3.31 and a Git revert."""

from __future__ import annotations

import json

import pytest
from calico_crd_hook.releases import release_table
from calico_crd_hook.version import ApiMode, parse_version

from tests.support.argocd import SSA_MANAGER, Application, ArgoCdSync, SyncFailed
from tests.support.calico import manifest_path
from tests.support.calico_cluster import CRDS, crd_state, load_documents, settled_crd_state, tier_names
from tests.support.charts import hook_chart
from tests.support.helm import Helm

pytestmark = [pytest.mark.gitops, pytest.mark.cluster, pytest.mark.helm, pytest.mark.image]

NAMESPACE = "tigera-operator"
APP = "calico"
SKIP_CRDS_APP = Application(APP, NAMESPACE, skip_crds=True,
                            sync_options=frozenset({"ServerSideApply=true", "SkipDryRunOnMissingResource=true"}))


@pytest.fixture
def argo_cd(control_plane, helm_binary, image_harness, tmp_path):
    created = control_plane.api("POST", "/api/v1/namespaces",
                                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    assert created.status_code == 201, created.text[:300]
    helm = Helm(helm_binary, control_plane, tmp_path / "helm-home")
    return lambda app: ArgoCdSync(control_plane, helm, app)


def summaries(harness) -> list[dict]:
    return [json.loads(run["stdout"])["summary"] if run["exit_code"] == 0 else {"exit_code": run["exit_code"]}
            for run in harness.runs]


def holds_release_documents(plane, tag: str) -> bool:
    """Every CRD of the release holds that release's document (our digests say which)."""
    released = release_table().file_for(parse_version(tag), ApiMode.V1).crds
    listed = plane.get(CRDS)["items"]
    digests = {item["metadata"]["name"]: (item["metadata"].get("annotations") or {}).get(
        "calico-crd-hook.projectcalico.org/document-sha256") for item in listed}
    return all(digests.get(name) == digest for name, digest in released.items())


def installation_versions(plane) -> list[dict]:
    return plane.get(f"{CRDS}/installations.operator.tigera.io")["spec"]["versions"]


def test_argo_cd_with_the_charts_crds_syncs_bumps_and_takes_the_fast_path(argo_cd, control_plane, image_harness,
                                                                         tmp_path, bundle):
    """The Application most users write: ServerSideApply=true, the chart's crds/ included. Every
    sync runs the hook as PreSync; then Argo CD applies crds/ itself as argocd-controller, and the
    next sync's hook still finds the CRDs current by their content."""
    sync = argo_cd(Application(APP, NAMESPACE))
    charts = {tag: hook_chart(tmp_path, tag, version, bundle)
              for tag, version in (("v3.29.1", "1.1.0"), ("v3.30.7", "1.2.0"), ("v3.31.7", "1.3.0"))}

    first = sync.sync(charts["v3.29.1"])
    repeat = sync.sync(charts["v3.29.1"])

    assert first.phases_run == ["PreSync", "Sync"]
    assert first.hooks[-1] == "Job/calico-calico-crd-hook"
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}
    managers = {entry["manager"] for entry in control_plane.get(f"{CRDS}/tiers.crd.projectcalico.org")
                ["metadata"]["managedFields"]}
    assert {SSA_MANAGER, "calico-crd-hook"} <= managers  # Argo CD re-applied crds/ after the hook
    done = summaries(image_harness)
    assert done[0]["created"] and not done[0]["already_current"]
    assert done[1]["already_current"] is True
    print(f"\nArgo CD repeated sync: hook run {done[1]['duration_seconds']:.2f}s; whole sync {repeat.seconds:.1f}s")

    for tag in ("v3.30.7", "v3.31.7"):  # chart bumps: the new kinds' CRDs are in this sync
        bumped = sync.sync(charts[tag])
        bump_summary = summaries(image_harness)[-1]
        assert bump_summary["target_version"] == tag and bump_summary["updated"]
        assert holds_release_documents(control_plane, tag)
        print(f"Argo CD sync after the bump to {tag}: hook run {bump_summary['duration_seconds']:.2f}s, "
              f"whole sync {bumped.seconds:.1f}s")
    sync.sync(charts["v3.31.7"])  # after Argo CD re-applied the newer crds/ too
    assert summaries(image_harness)[-1]["already_current"] is True
    assert control_plane.get("/apis/operator.tigera.io/v1/goldmanes/default") is not None
    assert "baselineadminnetworkpolicy" in tier_names(control_plane)

    reverted = sync.sync(charts["v3.30.7"])  # a Git revert of the bump

    kept = summaries(image_harness)[-1]
    assert kept["kept_newer_crds"] and (kept["created"], kept["updated"]) == ([], [])  # the hook wrote no CRD
    assert reverted.phases_run == ["PreSync", "Sync"]
    # ... but Argo CD's own Sync phase force-applies the older chart's crds/: the reason the
    # README asks for skipCrds (next test)
    shipped = next(doc for doc in load_documents(manifest_path("v3.30.7"))
                   if doc["metadata"]["name"] == "installations.operator.tigera.io")
    assert installation_versions(control_plane)[0]["schema"] == shipped["spec"]["versions"][0]["schema"]


def test_argo_cd_with_skip_crds_keeps_the_newer_crds_on_a_git_revert(argo_cd, control_plane, image_harness,
                                                                    tmp_path, bundle):
    """The Application the README recommends with the hook: skipCrds, so the hook is the only
    writer of CRDs; SkipDryRunOnMissingResource, since the kinds of a first sync (or of a bump) are
    served only once the PreSync hook has created their CRDs."""
    charts = {tag: hook_chart(tmp_path, tag, version, bundle)
              for tag, version in (("v3.30.7", "1.2.0"), ("v3.31.7", "1.3.0"))}
    without_option = argo_cd(Application(APP, NAMESPACE, skip_crds=True))

    not_valid = "one or more synchronization tasks are not valid: (APIServer|Installation).operator.tigera.io"
    with pytest.raises(SyncFailed, match=not_valid):
        without_option.sync(charts["v3.30.7"])
    assert image_harness.runs == []  # refused before PreSync: nothing ran

    sync = argo_cd(SKIP_CRDS_APP)
    sync.sync(charts["v3.30.7"])
    sync.sync(charts["v3.30.7"])
    sync.sync(charts["v3.31.7"])
    assert [s.get("already_current") for s in summaries(image_harness)] == [False, True, False]
    assert holds_release_documents(control_plane, "v3.31.7")
    before = settled_crd_state(control_plane)

    reverted = sync.sync(charts["v3.30.7"])

    assert reverted.phases_run == ["PreSync", "Sync"]  # the sync succeeds
    kept = summaries(image_harness)[-1]
    assert kept["kept_newer_crds"].startswith("Calico v3.30.7 is older than the cluster's v3.31")
    assert crd_state(control_plane) == before  # not one CRD written, by the hook or by Argo CD
    assert holds_release_documents(control_plane, "v3.31.7")


def test_client_side_apply_cannot_carry_the_installation_crd(control_plane, tmp_path):
    """Why ServerSideApply=true: without it Argo CD applies client-side, storing the whole object in
    the last-applied-configuration annotation, over the apiserver's 262,144-byte limit."""
    document = next(doc for doc in load_documents(manifest_path("v3.29.1"))
                    if doc["metadata"]["name"] == "installations.operator.tigera.io")
    path = tmp_path / "installations.yaml"
    path.write_text(json.dumps(document))

    applied = control_plane.kubectl("apply", "-f", str(path), check=False)

    assert applied.returncode != 0
    assert "metadata.annotations: Too long: may not be more than 262144 bytes" in applied.stderr
    assert control_plane.get(f"{CRDS}/installations.operator.tigera.io") is None
