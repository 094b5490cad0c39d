"""Read-only checks refuse unsafe upgrades with exit 4 and write nothing; --dry-run writes nothing."""

from __future__ import annotations

import hashlib

import pytest
import yaml
from calico_crd_hook.releases import GENERATION_ANNOTATION

from tests.support.calico import bundle_dir, manifest_path
from tests.support.calico_cluster import (
    CRDS,
    TIERS,
    crd_state,
    install_crds_like_helm,
    load_documents,
    set_running_version,
    settled_crd_state,
)
from tests.support.program import run_hook

pytestmark = pytest.mark.cluster


def apply_args(plane, tmp_path, tag="v3.29.1", *extra):
    return ["apply", "--version", tag, "--bundle-dir", str(bundle_dir(tmp_path, tag)),
            "--kubeconfig", str(plane.kubeconfig()), "--timeout", "60", *extra]


@pytest.fixture
def cluster_at_3_28(control_plane):
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    set_running_version(control_plane, "v3.28.2")
    return control_plane


def test_dry_run_reports_the_plan_and_writes_nothing(cluster_at_3_28, tmp_path):
    plane = cluster_at_3_28
    before = settled_crd_state(plane)

    run = run_hook(*apply_args(plane, tmp_path, "v3.29.1", "--dry-run"))

    assert run.code == 0, run
    assert crd_state(plane) == before
    assert plane.get(f"{CRDS}/tiers.crd.projectcalico.org") is None
    assert "dry run: nothing written" in run.stdout
    assert "2 would be created" in run.stdout
    assert "tiers.crd.projectcalico.org" in run.stdout
    assert "Tiers that would be created: default, adminnetworkpolicy" in run.stdout


def test_downgrade_below_the_running_calico_is_kept_refused_or_applied(cluster_at_3_28, tmp_path):
    """Helm-installed CRDs carry no digest of ours: the running Calico alone shows the downgrade."""
    plane = cluster_at_3_28
    set_running_version(plane, "v3.29.1")
    before = settled_crd_state(plane)

    kept = run_hook(*apply_args(plane, tmp_path, "v3.28.2"))

    assert kept.code == 0, kept
    assert ("calico-crd-hook: Calico v3.28.2 is older than the cluster's v3.29.1 (Calico v3.29.1 is running): "
            "a downgrade") in kept.stdout
    assert "none is written" in kept.stdout and crd_state(plane) == before
    refused = run_hook(*apply_args(plane, tmp_path, "v3.28.2", "--on-downgrade", "refuse"))
    assert refused.code == 4, refused
    assert "Calico v3.28.2 is older than the cluster's v3.29.1 (Calico v3.29.1 is running)" in refused.error_line
    assert "--on-downgrade apply" in refused.error_line
    assert crd_state(plane) == before
    alias = run_hook(*apply_args(plane, tmp_path, "v3.28.2", "--allow-downgrade", "--dry-run"))  # the older flag
    assert alias.code == 0, alias
    assert "its older CRDs replace the newer ones (--on-downgrade apply)" in alias.stderr
    assert "[dry run: nothing written]" in alias.stdout and crd_state(plane) == before
    allowed = run_hook(*apply_args(plane, tmp_path, "v3.28.2", "--on-downgrade=apply"))
    assert allowed.code == 0, allowed
    assert "its older CRDs replace the newer ones (--on-downgrade apply)" in allowed.stderr
    assert "22 unchanged" in allowed.stdout  # v3.28.2's own documents, now recorded as applied


def test_stored_version_the_new_manifest_no_longer_serves_is_refused(control_plane, tmp_path):
    plane = control_plane
    ippools = next(doc for doc in load_documents(manifest_path("v3.28.2"))
                   if doc["metadata"]["name"] == "ippools.crd.projectcalico.org")
    legacy = dict(ippools["spec"]["versions"][0], name="v1beta1", storage=False)
    ippools["spec"]["versions"].append(legacy)
    assert plane.api("POST", CRDS, ippools).status_code == 201
    stored = plane.api("PATCH", f"{CRDS}/ippools.crd.projectcalico.org/status",
                       {"status": {"storedVersions": ["v1beta1", "v1"]}},
                       content_type="application/merge-patch+json")
    assert stored.status_code == 200, stored.text[:300]
    before = settled_crd_state(plane)

    run = run_hook(*apply_args(plane, tmp_path, "v3.29.1"))

    assert run.code == 4, run
    assert "ippools.crd.projectcalico.org has objects stored as v1beta1" in run.error_line
    assert "storedVersions" in run.error_line
    assert crd_state(plane) == before


def test_a_crd_the_apiserver_rejects_stops_every_apply(cluster_at_3_28, tmp_path):
    plane = cluster_at_3_28
    documents = load_documents(manifest_path("v3.29.1"))
    for document in documents:
        if document["metadata"]["name"] == "ippools.crd.projectcalico.org":
            # a CEL rule that does not compile: only the server compiles CEL (docs/manifest-policy.md)
            schema = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            schema["x-kubernetes-validations"] = [{"rule": "self.cidr >", "message": "broken"}]
    modified = tmp_path / "modified.yaml"
    modified.write_text(yaml.dump_all(documents, Dumper=yaml.CSafeDumper))
    digest = hashlib.sha256(modified.read_bytes()).hexdigest()
    before = settled_crd_state(plane)

    run = run_hook("apply", "--version", "v3.29.1", "--manifest", str(modified), "--sha256", digest,
                   "--allow-modified-crds", "--kubeconfig", str(plane.kubeconfig()), "--timeout", "60")

    assert run.code == 4, run
    assert "dry-run rejected 1 CRD(s), so none was applied" in run.error_line
    assert "ippools.crd.projectcalico.org" in run.error_line and "x-kubernetes-validations" in run.error_line
    assert crd_state(plane) == before
    assert plane.get(TIERS) is None


def crd_dry_runs_answered(plane) -> int:
    """The CRD dry-runs the apiserver has answered, by its own request counter."""
    metrics = plane.api("GET", "/metrics", accept="text/plain")
    assert metrics.status_code == 200, metrics.text[:200]
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in metrics.text.splitlines()
               if line.startswith("apiserver_request_total{") and 'dry_run="All"' in line
               and 'resource="customresourcedefinitions"' in line)


@pytest.mark.parametrize("installed,target", [("v3.28.2", "v3.29.1"), ("v3.31.7", "v3.32.1")])
def test_an_upgrade_from_helms_crds_costs_one_dry_run_per_crd(control_plane, tmp_path, installed, target):
    """Most CRDs of a release are the previous release's. The run sees that such a live spec, as
    the apiserver defaulted it, already is the document's, so each dry-run's body records the
    generation its apply leaves at the first try: no CRD costs the server a second dry-run."""
    install_crds_like_helm(control_plane, manifest_path(installed))
    documents = load_documents(manifest_path(target))
    unchanged = {document["metadata"]["name"] for document in load_documents(manifest_path(installed))
                 if document in documents}
    assert unchanged  # the case this test is about: documents the target kept as they were
    before = crd_dry_runs_answered(control_plane)

    run = run_hook(*apply_args(control_plane, tmp_path, target))

    assert run.code == 0, run
    assert crd_dry_runs_answered(control_plane) - before == len(documents)
    for document in documents:
        metadata = control_plane.get(f"{CRDS}/{document['metadata']['name']}")["metadata"]
        assert metadata["annotations"][GENERATION_ANNOTATION] == str(metadata["generation"])
        if document["metadata"]["name"] in unchanged:
            assert metadata["generation"] == 1

