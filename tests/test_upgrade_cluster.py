"""The reported failure and the upgrade chain, against a real etcd + kube-apiserver."""

from __future__ import annotations

import pytest

from tests.support.calico import bundle_dir, manifest_path
from tests.support.calico_cluster import (
    CRDS,
    CUSTOM_RESOURCES,
    TIERS,
    crd_state,
    create_custom_resources,
    install_crds_like_helm,
    load_documents,
    set_running_version,
    settled_crd_state,
    tier_names,
    wait_established,
)
from tests.support.program import run_hook

pytestmark = pytest.mark.cluster


def tier(plane, name: str) -> dict | None:
    return plane.get(f"{TIERS}/{name}")


@pytest.fixture
def cluster_at_3_28(control_plane):
    """A cluster installed by Helm at v3.28.2: CRDs from crds/, Calico running, policies in place."""
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    set_running_version(control_plane, "v3.28.2")
    create_custom_resources(control_plane)
    return control_plane


def test_reported_upgrade_3_28_to_3_29_creates_tier_crd_and_tiers(cluster_at_3_28, tmp_path):
    plane = cluster_at_3_28
    before = {path: plane.get(path) for path in CUSTOM_RESOURCES}
    assert plane.get(f"{CRDS}/tiers.crd.projectcalico.org") is None  # the reported failure

    run = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                   "--kubeconfig", str(plane.kubeconfig()), "--timeout", "120")

    assert run.code == 0, run
    wait_established(plane, ["tiers.crd.projectcalico.org", "adminnetworkpolicies.policy.networking.k8s.io"],
                     timeout=1)
    default = tier(plane, "default")
    assert default["spec"] == {"order": 1000000, "defaultAction": "Deny"}
    assert tier(plane, "adminnetworkpolicy")["spec"] == {"order": 1000, "defaultAction": "Pass"}
    assert tier_names(plane) == {"default", "adminnetworkpolicy"}
    assert {path: plane.get(path) for path in CUSTOM_RESOURCES} == before  # policies untouched
    live = {crd["metadata"]["name"] for crd in plane.get(CRDS)["items"]}
    assert live == {doc["metadata"]["name"] for doc in load_documents(manifest_path("v3.29.1"))}
    assert "v3.28.2 -> v3.29.1" in run.stdout
    assert "2 were created" in run.stdout and "Tiers created: default, adminnetworkpolicy" in run.stdout


def test_applied_crds_match_the_manifest_and_are_owned_by_the_hook(cluster_at_3_28, tmp_path):
    plane = cluster_at_3_28
    run = run_hook("apply", "--version", "3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                   "--kubeconfig", str(plane.kubeconfig()))
    assert run.code == 0, run
    for document in load_documents(manifest_path("v3.29.1")):
        live = plane.get(f"{CRDS}/{document['metadata']['name']}")
        assert live["spec"]["versions"][0]["schema"] == document["spec"]["versions"][0]["schema"]
        managers = {entry["manager"] for entry in live["metadata"]["managedFields"]
                    if entry["operation"] == "Apply"}
        assert managers == {"calico-crd-hook"}


def test_second_run_changes_nothing(cluster_at_3_28, tmp_path):
    plane = cluster_at_3_28
    args = ["apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
            "--kubeconfig", str(plane.kubeconfig())]
    assert run_hook(*args).code == 0
    set_running_version(plane, "v3.29.1")
    before_crds, before_tiers = settled_crd_state(plane), plane.get(TIERS)["items"]

    rerun = run_hook(*args)
    full_rerun = run_hook(*args, "--dry-run")  # the full path, which a dry run always takes

    assert rerun.code == 0, rerun
    assert "nothing to do" in rerun.stdout  # the one-LIST no-op (test_noop_cluster.py)
    assert full_rerun.code == 0, full_rerun
    assert "0 would be created, 0 would be updated, 24 unchanged" in full_rerun.stdout
    assert "Tiers that would be created: none" in full_rerun.stdout
    assert crd_state(plane) == before_crds  # neither generation nor resourceVersion moved
    assert plane.get(TIERS)["items"] == before_tiers


def test_upgrade_chain_creates_the_tiers_of_each_version(control_plane, tmp_path):
    plane = control_plane
    tags = ["v3.29.1", "v3.30.7", "v3.31.7", "v3.32.1"]
    bundle = bundle_dir(tmp_path, *tags)
    expected_tiers = {
        "v3.29.1": {"default", "adminnetworkpolicy"},
        "v3.30.7": {"default", "adminnetworkpolicy", "baselineadminnetworkpolicy"},
        "v3.31.7": {"default", "adminnetworkpolicy", "baselineadminnetworkpolicy"},
        # v3.32 adds its own and never deletes the older ones
        "v3.32.1": {"default", "adminnetworkpolicy", "baselineadminnetworkpolicy", "kube-admin", "kube-baseline"},
    }
    install_crds_like_helm(plane, manifest_path("v3.29.1"))
    set_running_version(plane, "v3.29.1")
    for tag in tags:
        run = run_hook("apply", "--version", tag, "--bundle-dir", str(bundle), "--kubeconfig",
                       str(plane.kubeconfig()))
        assert run.code == 0, (tag, run)
        assert tier_names(plane) == expected_tiers[tag], tag
        shipped = {doc["metadata"]["name"] for doc in load_documents(manifest_path(tag))}
        live = {crd["metadata"]["name"] for crd in plane.get(CRDS)["items"]}
        assert shipped <= live, tag
        set_running_version(plane, tag)
    assert tier(plane, "kube-admin")["spec"] == {"order": 1000, "defaultAction": "Pass"}
    assert tier(plane, "kube-baseline")["spec"] == {"order": 10000000, "defaultAction": "Pass"}
    assert tier(plane, "default")["spec"] == {"order": 1000000, "defaultAction": "Deny"}


def test_existing_tier_is_never_modified(cluster_at_3_28, tmp_path):
    plane = cluster_at_3_28
    install_crds_like_helm(plane, manifest_path("v3.29.1"), only={"tiers.crd.projectcalico.org"})
    custom = {"apiVersion": "crd.projectcalico.org/v1", "kind": "Tier", "metadata": {"name": "default"},
              "spec": {"order": 500000, "defaultAction": "Deny"}}
    assert plane.api("POST", TIERS, custom).status_code == 201
    before = tier(plane, "default")

    run = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                   "--kubeconfig", str(plane.kubeconfig()))

    assert run.code == 0, run
    assert tier(plane, "default") == before
    assert "Tiers created: adminnetworkpolicy" in run.stdout



def test_a_tier_created_meanwhile_is_left_as_it_is(control_plane):
    """Calico may create a Tier between preflight and the tiers stage: the apply without force
    must then neither fail the run nor change that Tier, whatever its values."""
    import time

    from calico_crd_hook.client import Cluster
    from calico_crd_hook.kubeconfig import load_credentials
    from calico_crd_hook.tiers import ensure_tiers
    from calico_crd_hook.version import ApiMode, parse_version

    install_crds_like_helm(control_plane, manifest_path("v3.29.1"), only={"tiers.crd.projectcalico.org"})
    for name, spec in (("default", {"order": 999, "defaultAction": "Deny"}),
                       ("adminnetworkpolicy", {"order": 1000, "defaultAction": "Pass"})):
        created = control_plane.api("PATCH", f"{TIERS}/{name}", {"apiVersion": "crd.projectcalico.org/v1", "kind": "Tier",
                                                                 "metadata": {"name": name}, "spec": spec},
                                    content_type="application/apply-patch+yaml", params={"fieldManager": "calico"})
        assert created.status_code == 201, created.text[:300]
    before = {name: tier(control_plane, name) for name in ("default", "adminnetworkpolicy")}
    cluster = Cluster(load_credentials(str(control_plane.kubeconfig())), time.monotonic() + 30)

    created = ensure_tiers(cluster, parse_version("v3.29.1"), ApiMode.V1, missing=("default", "adminnetworkpolicy"))

    assert created == ()
    assert tier(control_plane, "default") == before["default"]  # other values: a conflict, untouched
    assert tier(control_plane, "adminnetworkpolicy")["spec"] == before["adminnetworkpolicy"]["spec"]


def test_blocked_default_tier_fails_with_exit_5(cluster_at_3_28, tmp_path):
    """A policy engine that refuses the default Tier: the run must fail loudly, not report success."""
    plane = cluster_at_3_28
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": "no-default-tier"},
              "spec": {"failurePolicy": "Fail",
                       "matchConstraints": {"resourceRules": [{"apiGroups": ["crd.projectcalico.org"], "apiVersions": ["*"],
                                                               "operations": ["CREATE"], "resources": ["tiers"]}]},
                       "validations": [{"expression": "object.metadata.name != 'default'",
                                        "message": "default Tier blocked by policy"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": "no-default-tier"},
               "spec": {"policyName": "no-default-tier", "validationActions": ["Deny"]}}
    assert plane.api("POST", "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies", policy).status_code == 201
    assert plane.api("POST", "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings",
                     binding).status_code == 201
    import time

    time.sleep(2)  # the admission plugin picks up new policies asynchronously

    run = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                   "--kubeconfig", str(plane.kubeconfig()))

    assert run.code == 5, run
    assert "default Tier blocked by policy" in run.error_line
    assert tier(plane, "default") is None
