"""An older target never rewrites newer CRDs unless asked (--on-downgrade): after `helm rollback`,
a Git revert under Argo CD or Flux, or a values-only upgrade of a rolled-back release, the cluster
keeps its newer CRDs, the run exits 0, and every policy keeps the fields the newer schema has."""

from __future__ import annotations

import pytest
from calico_crd_hook.releases import release_table
from calico_crd_hook.version import ApiMode, parse_version

from tests.support.calico import bundle_dir, manifest_path
from tests.support.calico_cluster import (
    CRDS,
    TIERS,
    crd_state,
    install_crds_like_helm,
    set_running_version,
    settled_crd_state,
    tier_names,
)
from tests.support.program import run_hook

pytestmark = pytest.mark.cluster

GNP = "/apis/crd.projectcalico.org/v1/globalnetworkpolicies"
POLICY = "security.block-metadata"


def apply(plane, tmp_path, tag: str, *extra: str, env: dict[str, str] | None = None):
    return run_hook("apply", "--version", tag, "--bundle-dir", str(bundle_dir(tmp_path, tag)),
                    "--kubeconfig", str(plane.kubeconfig()), "--timeout", "60", *extra, env=env)


def hook_applied(plane, tmp_path, tag: str) -> None:
    """Helm installed v3.28.2's crds/; the hook then brought the CRDs to `tag`."""
    install_crds_like_helm(plane, manifest_path("v3.28.2"))
    run = apply(plane, tmp_path, tag)
    assert run.code == 0, run


def newest_document_release(tag: str) -> str:
    """The newest release that first shipped one of `tag`'s documents: what the run names."""
    file = release_table().file_for(parse_version(tag), ApiMode.V1)
    return str(max(release_table().first_shipped(name, digest) for name, digest in file.crds.items()))


def tiered_policy(plane) -> None:
    """A policy in a Tier of its own: `spec.tier` exists only in the v3.29+ schema."""
    tier = {"apiVersion": "crd.projectcalico.org/v1", "kind": "Tier", "metadata": {"name": "security"},
            "spec": {"order": 100}}
    policy = {"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": POLICY},
              "spec": {"tier": "security", "order": 10, "selector": "all()", "types": ["Egress"],
                       "egress": [{"action": "Deny", "destination": {"nets": ["169.254.169.254/32"]}}]}}
    assert plane.api("POST", TIERS, tier).status_code == 201
    created = plane.api("POST", GNP, policy)
    assert created.status_code == 201, created.text[:300]


def policy_tier_after_a_write(plane) -> str | None:
    """Any later write of the policy (a label, here) prunes what the CRD's schema lacks."""
    patched = plane.api("PATCH", f"{GNP}/{POLICY}", {"metadata": {"labels": {"touched": "yes"}}},
                        content_type="application/merge-patch+json")
    assert patched.status_code == 200, patched.text[:300]
    return plane.get(f"{GNP}/{POLICY}")["spec"].get("tier")


def test_an_older_target_keeps_the_newer_crds_and_every_policy_keeps_its_tier(control_plane, tmp_path):
    """No Calico reports a version: the CRDs' own digests say they are v3.29's."""
    hook_applied(control_plane, tmp_path, "v3.29.1")
    tiered_policy(control_plane)
    before = settled_crd_state(control_plane)

    run = apply(control_plane, tmp_path, "v3.28.2")

    assert run.code == 0, run
    newer = newest_document_release("v3.29.1")
    assert f"calico-crd-hook: Calico v3.28.2 is older than the cluster's {newer} (CRD " in run.stdout
    assert f"holds the document of {newer}): a downgrade" in run.stdout
    assert "the cluster keeps its newer CRDs, none is written" in run.stdout
    assert crd_state(control_plane) == before
    assert policy_tier_after_a_write(control_plane) == "security"


def test_what_keep_prevents_an_applied_downgrade_moves_the_policy_out_of_its_tier(control_plane, tmp_path):
    """--on-downgrade apply does what it says: v3.28's GlobalNetworkPolicy schema has no spec.tier,
    and the apiserver prunes it on the policy's next write."""
    hook_applied(control_plane, tmp_path, "v3.29.1")
    tiered_policy(control_plane)

    run = apply(control_plane, tmp_path, "v3.28.2", "--on-downgrade", "apply")

    assert run.code == 0, run
    assert "its older CRDs replace the newer ones (--on-downgrade apply)" in run.stderr
    assert policy_tier_after_a_write(control_plane) is None


def test_after_a_rollback_the_older_running_calico_does_not_hide_the_newer_crds(control_plane, tmp_path):
    """`helm rollback` to v3.28: calico-node reports v3.28.2 while the CRDs stay v3.29's; the next
    upgrade of that revision (a values change) runs the hook with target v3.28.2."""
    hook_applied(control_plane, tmp_path, "v3.29.1")
    set_running_version(control_plane, "v3.28.2")
    before = settled_crd_state(control_plane)

    run = apply(control_plane, tmp_path, "v3.28.2")

    assert run.code == 0, run
    assert f"older than the cluster's {newest_document_release('v3.29.1')} (CRD " in run.stdout
    assert crd_state(control_plane) == before
    assert control_plane.get(f"{CRDS}/tiers.crd.projectcalico.org") is not None


def test_a_git_revert_with_the_newer_calico_running_passes_and_creates_missing_tiers(control_plane, tmp_path):
    hook_applied(control_plane, tmp_path, "v3.30.7")
    set_running_version(control_plane, "v3.30.7")
    assert control_plane.api("DELETE", f"{TIERS}/adminnetworkpolicy").status_code == 200
    before = settled_crd_state(control_plane)

    run = apply(control_plane, tmp_path, "v3.29.1")

    assert run.code == 0, run
    assert "Tiers created: adminnetworkpolicy" in run.stdout
    assert crd_state(control_plane) == before
    assert {"default", "adminnetworkpolicy", "baselineadminnetworkpolicy"} <= tier_names(control_plane)
    verified = run_hook("verify", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                        "--kubeconfig", str(control_plane.kubeconfig()))
    assert verified.code == 0, verified
    assert "the cluster keeps its newer CRDs (--on-downgrade keep); the Tiers are the target's" in verified.stdout
    assert crd_state(control_plane) == before


def test_refuse_stops_with_exit_4_and_the_variable_sets_the_policy(control_plane, tmp_path):
    hook_applied(control_plane, tmp_path, "v3.29.1")
    before = settled_crd_state(control_plane)

    refused = apply(control_plane, tmp_path, "v3.28.2", env={"CALICO_CRD_HOOK_ON_DOWNGRADE": "refuse"})
    misspelt = apply(control_plane, tmp_path, "v3.28.2", env={"CALICO_CRD_HOOK_ON_DOWNGRADE": "ignore"})

    assert refused.code == 4, refused
    assert "is older than the cluster's" in refused.error_line
    assert "pass --on-downgrade keep to keep the newer CRDs" in refused.error_line
    assert misspelt.code == 2, misspelt
    assert "CALICO_CRD_HOOK_ON_DOWNGRADE='ignore': use keep, refuse, apply" in misspelt.error_line
    assert crd_state(control_plane) == before


def test_the_same_release_again_is_no_downgrade(control_plane, tmp_path):
    hook_applied(control_plane, tmp_path, "v3.29.1")
    set_running_version(control_plane, "v3.29.1")
    run = apply(control_plane, tmp_path, "v3.29.1")
    assert run.code == 0, run
    assert "nothing to do" in run.stdout


def test_crds_the_target_no_longer_ships_do_not_make_it_a_downgrade(control_plane, tmp_path):
    """After a deliberate downgrade v3.32 -> v3.31, the CRDs only v3.32 ships stay in place with v3.32's
    documents; an upgrade to a v3.31 release must still write its CRDs."""
    install_crds_like_helm(control_plane, manifest_path("v3.31.7"))
    assert apply(control_plane, tmp_path, "v3.32.1").code == 0
    downgraded = apply(control_plane, tmp_path, "v3.31.7", "--on-downgrade", "apply")
    assert downgraded.code == 0, downgraded
    assert control_plane.get(f"{CRDS}/clusternetworkpolicies.policy.networking.k8s.io") is not None

    again = apply(control_plane, tmp_path, "v3.31.7", "--dry-run")

    assert again.code == 0, again
    assert "older than the cluster's" not in again.stdout + again.stderr
    assert "left in place (no longer shipped, never deleted): clusternetworkpolicies" in again.stdout
