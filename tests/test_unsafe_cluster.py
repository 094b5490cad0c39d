"""Unsafe upgrades are refused with exit 4, a message that says what to do, and nothing written;
v3 API mode is detected and served through projectcalico.org."""

from __future__ import annotations

import pytest

from tests.support.calico import bundle_dir, manifest_path
from tests.support.calico_cluster import (
    CRDS,
    TIERS,
    ends_as_it_began,
    install_crds_like_helm,
    load_documents,
    set_running_version,
    settled_crd_state,
    tier_names,
)
from tests.support.program import run_hook
from tests.support.rbac import bind_service_account, documented_cluster_role, in_cluster_env

pytestmark = pytest.mark.cluster

V3_TIERS = "/apis/projectcalico.org/v3/tiers"
ANP = {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
       "metadata": {"name": "deny-metadata"},
       "spec": {"priority": 10, "subject": {"namespaces": {}},
                "egress": [{"action": "Deny", "to": [{"networks": ["169.254.169.254/32"]}]}]}}
BANP = {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
        "metadata": {"name": "default"},
        "spec": {"subject": {"namespaces": {}}, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}}


def apply(plane, tmp_path, tag, *extra, file_name="operator-crds.yaml", env=None):
    args = ["apply", "--version", tag, "--bundle-dir", str(bundle_dir(tmp_path, tag, file_name=file_name)),
            "--timeout", "60", *extra]
    if env is None:
        args += ["--kubeconfig", str(plane.kubeconfig())]
    return run_hook(*args, env=env)


def assert_refused_and_unchanged(plane, run, before, *phrases):
    assert run.code == 4, run
    for phrase in phrases:
        assert phrase in run.error_line, run.error_line
    assert settled_crd_state(plane, quiet_seconds=0.3) == before


@pytest.fixture
def cluster_at_3_31(control_plane, tmp_path):
    install_crds_like_helm(control_plane, manifest_path("v3.31.7"))
    set_running_version(control_plane, "v3.31.7")
    return control_plane


def test_admin_network_policies_block_3_32_and_are_listed(cluster_at_3_31, tmp_path):
    plane = cluster_at_3_31
    for body in (ANP, BANP):
        plural = "adminnetworkpolicies" if body["kind"] == "AdminNetworkPolicy" else "baselineadminnetworkpolicies"
        created = plane.api("POST", f"/apis/policy.networking.k8s.io/v1alpha1/{plural}", body)
        assert created.status_code == 201, created.text[:300]
    before = settled_crd_state(plane)
    run = apply(plane, tmp_path, "v3.32.1")
    assert_refused_and_unchanged(plane, run, before, "AdminNetworkPolicy/deny-metadata",
                                 "BaselineAdminNetworkPolicy/default", "delete them, then rerun")


def test_default_tier_with_pass_blocks_3_32(cluster_at_3_31, tmp_path):
    plane = cluster_at_3_31
    tier = {"apiVersion": "crd.projectcalico.org/v1", "kind": "Tier", "metadata": {"name": "default"},
            "spec": {"order": 1000000, "defaultAction": "Pass"}}
    assert plane.api("POST", TIERS, tier).status_code == 201
    before = settled_crd_state(plane)
    run = apply(plane, tmp_path, "v3.32.1")
    assert_refused_and_unchanged(plane, run, before, "default Tier has defaultAction Pass", "set it to Deny")
    assert plane.get(f"{TIERS}/default")["spec"]["defaultAction"] == "Pass"


@pytest.mark.parametrize("group", ["crd.projectcalico.org", "projectcalico.org"])  # v1 and v3 API modes
def test_enterprise_license_crd_is_refused(control_plane, tmp_path, group):
    plane = control_plane
    install_crds_like_helm(plane, manifest_path("v3.28.2"))
    licensekeys = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                   "metadata": {"name": f"licensekeys.{group}"},
                   "spec": {"group": group, "scope": "Cluster",
                            "names": {"plural": "licensekeys", "singular": "licensekey", "kind": "LicenseKey"},
                            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                                "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    assert plane.api("POST", CRDS, licensekeys).status_code == 201
    before = settled_crd_state(plane)
    run = apply(plane, tmp_path, "v3.29.1")
    assert_refused_and_unchanged(plane, run, before, "Calico Enterprise detected",
                                 f"licensekeys.{group}", "Tigera's own manifests")


def test_enterprise_installation_variant_is_refused(control_plane, tmp_path):
    plane = control_plane
    install_crds_like_helm(plane, manifest_path("v3.28.2"))
    installation = {"apiVersion": "operator.tigera.io/v1", "kind": "Installation", "metadata": {"name": "default"},
                    "spec": {"variant": "TigeraSecureEnterprise"}}
    created = plane.api("POST", "/apis/operator.tigera.io/v1/installations", installation)
    assert created.status_code == 201, created.text[:300]
    before = settled_crd_state(plane)
    run = apply(plane, tmp_path, "v3.29.1")
    assert_refused_and_unchanged(plane, run, before, "Installation default has variant TigeraSecureEnterprise")


def test_skipping_minors_warns_but_proceeds(control_plane, tmp_path):
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    set_running_version(control_plane, "v3.28.2")
    run = apply(control_plane, tmp_path, "v3.31.7")
    assert run.code == 0, run
    assert "warning: upgrading from Calico v3.28.2 straight to v3.31.7 skips more minor releases" in run.stderr


def _in_v3_mode(plane):
    """A v3.32 cluster in v3 API mode: native projectcalico.org CRDs, no crd.projectcalico.org."""
    install_crds_like_helm(plane, manifest_path("v3.32.1", "v3_projectcalico_org.yaml"))
    info = {"apiVersion": "projectcalico.org/v3", "kind": "ClusterInformation", "metadata": {"name": "default"},
            "spec": {"calicoVersion": "v3.32.0", "datastoreReady": True}}
    assert plane.api("POST", "/apis/projectcalico.org/v3/clusterinformations", info).status_code == 201
    return plane


@pytest.fixture
def v3_mode_cluster(control_plane):
    return _in_v3_mode(control_plane)


@pytest.fixture(scope="module")
def v3_mode_refusals(module_control_plane):
    """The v3-mode refusals write nothing: they share one cluster, each with its own names."""
    with ends_as_it_began(_in_v3_mode(module_control_plane)):
        yield module_control_plane


def test_v3_mode_uses_the_v3_file_and_projectcalico_tiers(v3_mode_cluster, tmp_path):
    plane = v3_mode_cluster
    run = apply(plane, tmp_path, "v3.32.1", file_name="v3_projectcalico_org.yaml")
    assert run.code == 0, run
    assert "Calico v3.32.0 -> v3.32.1 (API mode v3)" in run.stdout
    assert "v3_projectcalico_org.yaml" in run.stdout
    live = {crd["metadata"]["name"] for crd in plane.get(CRDS)["items"]}
    assert not any(name.endswith(".crd.projectcalico.org") for name in live)  # never flipped back
    tiers = {item["metadata"]["name"]: item["spec"] for item in plane.get(V3_TIERS)["items"]}
    assert tiers == {"default": {"order": 1000000, "defaultAction": "Deny"},
                     "kube-admin": {"order": 1000, "defaultAction": "Pass"},
                     "kube-baseline": {"order": 10000000, "defaultAction": "Pass"}}


def test_v3_mode_with_the_documented_role_in_cluster(v3_mode_cluster, tmp_path):
    plane = v3_mode_cluster
    env = in_cluster_env(plane, bind_service_account(plane, documented_cluster_role()), tmp_path)
    run = apply(plane, tmp_path, "v3.32.1", file_name="v3_projectcalico_org.yaml", env=env)
    assert run.code == 0, run
    assert {item["metadata"]["name"] for item in plane.get(V3_TIERS)["items"]} == {"default", "kube-admin", "kube-baseline"}


@pytest.mark.parametrize("rule_index", [1, 2])
def test_v3_mode_needs_the_projectcalico_group_in_each_calico_rule(v3_mode_refusals, tmp_path, rule_index):
    plane = v3_mode_refusals
    role = documented_cluster_role()
    rule = role["rules"][rule_index]
    assert "projectcalico.org" in rule["apiGroups"]
    rule["apiGroups"] = [group for group in rule["apiGroups"] if group != "projectcalico.org"]
    token = bind_service_account(plane, role, name=f"hook-without-v3-rule-{rule_index}")
    env = in_cluster_env(plane, token, tmp_path)
    before = settled_crd_state(plane)
    run = apply(plane, tmp_path, "v3.32.1", file_name="v3_projectcalico_org.yaml", env=env)
    assert run.code == 5, run
    assert "forbidden" in run.error_line and f'"{rule["resources"][0]}"' in run.error_line
    assert settled_crd_state(plane, quiet_seconds=0.3) == before
    assert plane.get(V3_TIERS)["items"] == []


def test_forcing_the_other_mode_is_refused(v3_mode_refusals, tmp_path):
    plane = v3_mode_refusals
    before = settled_crd_state(plane)
    run = apply(plane, tmp_path, "v3.32.1", "--api-mode", "v1")
    assert_refused_and_unchanged(plane, run, before, "runs Calico in API mode v3", "switching it")
    assert not any(name.endswith(".crd.projectcalico.org") for name in before)


def test_v1_mode_3_32_upgrade_keeps_crd_projectcalico(cluster_at_3_31, tmp_path):
    plane = cluster_at_3_31
    run = apply(plane, tmp_path, "v3.32.1")
    assert run.code == 0, run
    assert "(API mode v1)" in run.stdout
    live = {crd["metadata"]["name"] for crd in plane.get(CRDS)["items"]}
    assert not any(n.endswith(".projectcalico.org") and not n.endswith(".crd.projectcalico.org") for n in live)
    assert {"default", "kube-admin", "kube-baseline"} <= tier_names(plane)
    shipped = {doc["metadata"]["name"] for doc in load_documents(manifest_path("v3.32.1"))}
    assert "left in place" in run.stdout and "adminnetworkpolicies.policy.networking.k8s.io" in run.stdout
    assert shipped <= live
