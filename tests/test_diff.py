"""`diff`: offline between two real release files, as a pull request bumping Calico would run it, and
against the real control plane, where it writes nothing."""

from __future__ import annotations

import json

import pytest
from calico_crd_hook import cli

from tests.support.calico import bundle_dir, manifest_path
from tests.support.calico_cluster import install_crds_like_helm, set_running_version, settled_crd_state
from tests.support.program import run_hook


def diff(capsys, old_tag: str, new_tag: str, *extra: str) -> tuple[int, str, str]:
    code = cli.main(["diff", "--version", new_tag, "--from-manifest", str(manifest_path(old_tag)),
                     "--manifest", str(manifest_path(new_tag)), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_3_28_to_3_29_shows_the_tier_crd_and_the_tiers(capsys):
    code, out, err = diff(capsys, "v3.28.2", "v3.29.1")
    assert code == 1, err  # changes found, as diff and kubectl diff say it
    assert "tiers.crd.projectcalico.org: created" in out
    assert "adminnetworkpolicies.policy.networking.k8s.io: created" in out
    assert "Tiers the target version needs (created where missing): default, adminnetworkpolicy" in out
    assert "2 created," in out


def test_3_31_to_3_32_shows_fields_leaving_ippools_and_kinds_dropped(capsys):
    code, out, err = diff(capsys, "v3.31.7", "v3.32.1")
    assert code == 1, err
    lines = out.splitlines()
    ippools = lines.index("ippools.crd.projectcalico.org: updated")
    removed = [line for line in lines[ippools + 1:] if line.startswith("  ")]
    assert "  property removed: v1 .spec.ipip" in removed
    assert "  property removed: v1 .spec.nat-outgoing" in removed
    assert "adminnetworkpolicies.policy.networking.k8s.io: left in place" in out
    assert "baselineadminnetworkpolicies.policy.networking.k8s.io: left in place" in out
    assert "clusternetworkpolicies.policy.networking.k8s.io: created" in out


def test_the_same_file_has_no_changes(capsys):
    code, out, err = diff(capsys, "v3.29.1", "v3.29.1")
    assert code == 0, err
    assert "0 created, 0 updated, 24 unchanged, 0 left in place" in out


def test_json_for_ci_tools(capsys):
    code, out, _ = diff(capsys, "v3.28.2", "v3.29.1", "--log-format", "json")
    document = json.loads(out)
    assert code == 1 and document["changes"] is True
    created = {entry["name"] for entry in document["crds"] if entry["action"] == "created"}
    assert created == {"tiers.crd.projectcalico.org", "adminnetworkpolicies.policy.networking.k8s.io"}
    assert document["tiers_needed"] == ["default", "adminnetworkpolicy"]


def test_a_bad_target_file_is_refused_as_validate_would(capsys, tmp_path):
    broken = tmp_path / "operator-crds.yaml"
    broken.write_text(manifest_path("v3.29.1").read_text().replace("scope: Cluster", "scope: Galaxy", 1))
    code = cli.main(["diff", "--from-manifest", str(manifest_path("v3.28.2")), "--manifest", str(broken)])
    assert code == 3
    assert "'Galaxy' is not one of Cluster, Namespaced" in capsys.readouterr().err


@pytest.mark.cluster
def test_against_the_cluster_it_writes_nothing_and_shows_what_apply_will_do(control_plane, tmp_path):
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    set_running_version(control_plane, "v3.28.2")
    args = ["--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
            "--kubeconfig", str(control_plane.kubeconfig())]
    before = settled_crd_state(control_plane)

    found = run_hook("diff", *args)

    assert found.code == 1, found
    assert "calico-crd-hook diff: the cluster -> " in found.stdout
    assert "tiers.crd.projectcalico.org: created" in found.stdout
    assert "networkpolicies.crd.projectcalico.org: updated\n  property added: v1 .spec.tier" in found.stdout
    assert "Tiers that would be created: default, adminnetworkpolicy" in found.stdout
    assert settled_crd_state(control_plane) == before

    assert run_hook("apply", *args).code == 0
    after = run_hook("diff", *args, "--log-format", "json")
    assert after.code == 0, after
    document = json.loads(after.stdout)
    assert document["changes"] is False and document["tiers_needed"] == []
    assert {entry["action"] for entry in document["crds"]} == {"unchanged"}


@pytest.mark.cluster
def test_a_downgrade_is_reported_as_apply_would_handle_it(control_plane, tmp_path):
    install_crds_like_helm(control_plane, manifest_path("v3.29.1"))
    set_running_version(control_plane, "v3.30.7")
    args = ("diff", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
            "--kubeconfig", str(control_plane.kubeconfig()))

    kept = run_hook(*args)
    refused = run_hook(*args, "--on-downgrade", "refuse")
    applied = run_hook(*args, "--on-downgrade", "apply")

    assert kept.code == 1, kept  # keep: no CRD changes, the missing Tiers would be created
    assert ("calico-crd-hook diff: Calico v3.29.1 is older than the cluster's v3.30.7 (Calico v3.30.7 is running): "
            "the cluster keeps its newer CRDs") in kept.stdout
    assert "Tiers that would be created: default, adminnetworkpolicy" in kept.stdout
    assert refused.code == 4, refused
    assert "Calico v3.29.1 is older than the cluster's v3.30.7 (Calico v3.30.7 is running)" in refused.error_line
    assert applied.code == 1 and "24 unchanged" in applied.stdout, applied
