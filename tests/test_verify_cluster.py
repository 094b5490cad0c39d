"""`verify` after an upgrade: the old operator's plain Update that reverts a CRD after the hook ran
is detected, and `verify --repair` puts it back through apply's safe path."""

from __future__ import annotations

import json

import pytest

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

FELIX = "felixconfigurations.crd.projectcalico.org"


def args(plane, tmp_path) -> list[str]:
    return ["--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
            "--kubeconfig", str(plane.kubeconfig()), "--timeout", "60"]


@pytest.fixture
def upgraded(control_plane, tmp_path):
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    set_running_version(control_plane, "v3.28.2")
    assert run_hook("apply", *args(control_plane, tmp_path)).code == 0
    return control_plane


def revert_like_the_old_operator(plane, name: str) -> None:
    """A plain Update with the operator's built-in (v3.28.2) copy of the CRD's versions."""
    live = plane.get(f"{CRDS}/{name}")
    old = next(d for d in load_documents(manifest_path("v3.28.2")) if d["metadata"]["name"] == name)
    live["spec"]["versions"] = old["spec"]["versions"]
    response = plane.api("PUT", f"{CRDS}/{name}", live, params={"fieldManager": "tigera-operator"})
    assert response.status_code == 200, response.text[:300]


def test_an_upgraded_cluster_verifies(upgraded, tmp_path):
    run = run_hook("verify", *args(upgraded, tmp_path))
    assert run.code == 0, run
    assert "all 24 CRDs and the Tiers are Calico v3.29.1's" in run.stdout


def test_a_reverted_crd_is_detected_and_repaired(upgraded, tmp_path):
    revert_like_the_old_operator(upgraded, FELIX)
    before = settled_crd_state(upgraded)

    found = run_hook("verify", *args(upgraded, tmp_path), "--log-format", "json")

    assert found.code == 1, found
    differences = json.loads(found.stdout)["differences"]
    assert differences[0].startswith(f"CRD {FELIX} differs from the target")
    assert "v1 .spec.bpfRedirectToPeer added" in differences[0]
    assert crd_state(upgraded) == before  # verify alone writes nothing

    repaired = run_hook("verify", *args(upgraded, tmp_path), "--repair")

    assert repaired.code == 0, repaired
    assert "(after repairing)" in repaired.stdout
    shipped = next(d for d in load_documents(manifest_path("v3.29.1")) if d["metadata"]["name"] == FELIX)
    assert upgraded.get(f"{CRDS}/{FELIX}")["spec"]["versions"] == shipped["spec"]["versions"]
    assert run_hook("verify", *args(upgraded, tmp_path)).code == 0


def test_a_tier_with_other_values_is_reported_and_left_alone(upgraded, tmp_path):
    assert upgraded.api("DELETE", f"{TIERS}/adminnetworkpolicy").status_code == 200
    tier = {"apiVersion": "crd.projectcalico.org/v1", "kind": "Tier", "metadata": {"name": "adminnetworkpolicy"},
            "spec": {"order": 5, "defaultAction": "Pass"}}
    assert upgraded.api("POST", TIERS, tier).status_code == 201

    run = run_hook("verify", *args(upgraded, tmp_path), "--repair")

    assert run.code == 1, run
    assert "Tier adminnetworkpolicy has order 5 and defaultAction Pass, the target's are 1000 and Pass" in run.stdout
    assert upgraded.get(f"{TIERS}/adminnetworkpolicy")["spec"]["order"] == 5  # never changed
