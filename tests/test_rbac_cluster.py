"""Least privilege, proven by the real apiserver's RBAC: the documented ClusterRole is enough, and
every one of its verbs is needed by some upgrade."""

from __future__ import annotations

import pytest

from tests.support.calico import bundle_dir, manifest_path
from tests.support.calico_cluster import (
    TIERS,
    ends_as_it_began,
    install_crds_like_helm,
    set_running_version,
    settled_crd_state,
)
from tests.support.program import run_hook
from tests.support.rbac import (
    bind_service_account,
    documented_cluster_role,
    documented_events_role,
    in_cluster_env,
    release_crd_names,
    without_verb,
)

pytestmark = pytest.mark.cluster


def upgrade_as_service_account(plane, tmp_path, role, target="v3.29.1", name="calico-crd-hook"):
    env = in_cluster_env(plane, bind_service_account(plane, role, name=name), tmp_path)
    return run_hook("apply", "--version", target, "--bundle-dir", str(bundle_dir(tmp_path, target)),
                    "--timeout", "60", env=env)


def test_documented_cluster_role_is_enough_in_cluster(control_plane, tmp_path):
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    set_running_version(control_plane, "v3.28.2")
    run = upgrade_as_service_account(control_plane, tmp_path, documented_cluster_role())
    assert run.code == 0, run
    assert control_plane.get(f"{TIERS}/default")["spec"]["defaultAction"] == "Deny"


def test_the_role_limited_to_the_release_crd_names_is_enough(control_plane, tmp_path):
    """As the chart renders it for a release the table knows: get and patch on those CRDs only."""
    install_crds_like_helm(control_plane, manifest_path("v3.31.7"))
    set_running_version(control_plane, "v3.31.7")
    role = documented_cluster_role(release_crd_names("v3.32.1"))
    token = bind_service_account(control_plane, role)
    env = in_cluster_env(control_plane, token, tmp_path)

    run = run_hook("apply", "--version", "v3.32.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.32.1")),
                   "--timeout", "60", env=env)

    assert run.code == 0, run
    assert control_plane.get(f"{TIERS}/kube-admin") is not None
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    assert control_plane.api("GET", f"{crds}/ippools.crd.projectcalico.org", token=token).status_code == 200
    other = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
             "metadata": {"name": "widgets.example.com"},
             "spec": {"group": "example.com", "scope": "Cluster",
                      "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                      "versions": [{"name": "v1", "served": True, "storage": True,
                                    "schema": {"openAPIV3Schema": {"type": "object"}}}]}}
    assert control_plane.api("POST", crds, other).status_code == 201
    assert control_plane.api("GET", f"{crds}/widgets.example.com", token=token).status_code == 403
    patch = control_plane.api("PATCH", f"{crds}/widgets.example.com", {"metadata": {"labels": {"x": "y"}}},
                              token=token, content_type="application/merge-patch+json")
    assert patch.status_code == 403


@pytest.fixture(scope="module")
def cluster_at_3_31(module_control_plane):
    """Every verb test is refused before any write, so they share one cluster, each with a
    ServiceAccount and ClusterRole of its own."""
    install_crds_like_helm(module_control_plane, manifest_path("v3.31.7"))
    set_running_version(module_control_plane, "v3.31.7")
    with ends_as_it_began(module_control_plane):
        yield module_control_plane


def _every_rule_verb():
    role = documented_cluster_role()
    for index, rule in enumerate(role["rules"]):
        for verb in rule["verbs"]:
            groups = ",".join(rule["apiGroups"])
            yield pytest.param(index, verb, id=f"{verb}-{'+'.join(rule['resources'])}-{groups}")


# 3.31 -> 3.32 uses every v1-mode rule: new CRDs (create), Tier checks and creation, the
# Installation and the AdminNetworkPolicy lists.
@pytest.mark.parametrize("rule_index,verb", list(_every_rule_verb()))
def test_each_documented_verb_is_needed(cluster_at_3_31, tmp_path, rule_index, verb):
    role = documented_cluster_role()
    resources = role["rules"][rule_index]["resources"]
    before = settled_crd_state(cluster_at_3_31, quiet_seconds=0.2)
    run = upgrade_as_service_account(cluster_at_3_31, tmp_path, without_verb(role, rule_index, verb),
                                     target="v3.32.1", name=f"hook-without-{rule_index}-{verb}")
    assert run.code == 5, run
    assert "forbidden" in run.error_line and "ClusterRole" in run.error_line
    assert f'cannot {verb} resource "{resources[0]}"' in run.error_line or \
        any(f'cannot {verb} resource "{r}"' in run.error_line for r in resources)
    assert settled_crd_state(cluster_at_3_31, quiet_seconds=0.2) == before  # refused before anything was written
    assert cluster_at_3_31.get(f"{TIERS}/kube-admin") is None


def test_the_outcome_event_needs_exactly_the_documented_events_role(control_plane, tmp_path):
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    set_running_version(control_plane, "v3.28.2")
    token = bind_service_account(control_plane, documented_cluster_role())
    env = {**in_cluster_env(control_plane, token, tmp_path),
           "CALICO_CRD_HOOK_POD_NAME": "calico-crd-hook-x7k2p", "CALICO_CRD_HOOK_POD_NAMESPACE": "default"}
    apply = ["apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")), "--timeout", "60"]

    without_role = run_hook(*apply, env=env)

    assert without_role.code == 0, without_role  # the outcome stands
    assert "could not record the outcome as an Event on Pod default/calico-crd-hook-x7k2p: forbidden" in without_role.stderr

    role = {**documented_events_role(), "metadata": {"name": "calico-crd-hook", "namespace": "default"}}
    assert control_plane.api("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles", role).status_code == 201
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "calico-crd-hook", "namespace": "default"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "calico-crd-hook"},
               "subjects": [{"kind": "ServiceAccount", "name": "calico-crd-hook", "namespace": "default"}]}
    assert control_plane.api("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
                             binding).status_code == 201
    with_role = run_hook(*apply, env=env)
    refused = run_hook(*apply, "--sha256", "0" * 64, env=env)

    assert with_role.code == 0 and "could not record" not in with_role.stderr, with_role
    assert refused.code == 3, refused
    events = control_plane.get("/api/v1/namespaces/default/events")["items"]
    ours = sorted((e["reason"], e["type"], e["message"]) for e in events
                  if e["involvedObject"].get("name") == "calico-crd-hook-x7k2p")
    assert len(ours) == 2
    assert ours[0] == ("CalicoCRDsApplied", "Normal", "Calico v3.29.1: nothing to do, all 24 CRDs current")
    assert ours[1][:2] == ("CalicoCRDsRefused", "Warning") and ours[1][2].startswith("sha256 mismatch")
