"""A CRD ends as a fresh install of the target: what Helm's client-side writes left behind (a label,
an annotation, a names.categories entry the target dropped) is removed, a user's own annotation
stays. On the real apiserver, whose server-side apply decides what is removed."""

from __future__ import annotations

import json

import pytest

from tests.support.calico import manifest_path
from tests.support.calico_cluster import CRDS, crd_state, load_documents, settled_crd_state, wait_established
from tests.support.program import run_hook

pytestmark = pytest.mark.cluster

IPPOOLS = "ippools.crd.projectcalico.org"
USER_ANNOTATION = ("team.example.com/owner", "network")


@pytest.fixture
def helm_leftovers(control_plane):
    """v3.29.1's CRDs as Helm created them, ippools carrying fields an earlier release had set
    (all under Helm's manager), and a user's own `kubectl annotate` on top."""
    for document in load_documents(manifest_path("v3.29.1")):
        if document["metadata"]["name"] == IPPOOLS:
            document["metadata"]["labels"] = {"projectcalico.org/legacy": "true"}
            document["metadata"]["annotations"] = {"projectcalico.org/dropped": "yes"}
            document["spec"]["names"]["categories"] = ["calico"]
        created = control_plane.api("POST", CRDS, document, params={"fieldManager": "helm"})
        assert created.status_code == 201, created.text[:300]
    control_plane.kubectl("annotate", "crd", IPPOOLS, "=".join(USER_ANNOTATION))
    wait_established(control_plane, [IPPOOLS])
    return control_plane


def apply(plane, *extra: str):
    return run_hook("apply", "--version", "v3.29.1", "--manifest", str(manifest_path("v3.29.1")),
                    "--kubeconfig", str(plane.kubeconfig()), "--log-format", "json", *extra)


def summary_of(run) -> dict:
    return json.loads(run.stdout)["summary"]


def test_dry_run_reports_the_leftovers_and_writes_nothing(helm_leftovers):
    before = settled_crd_state(helm_leftovers)
    run = apply(helm_leftovers, "--dry-run")
    assert run.code == 0, run
    assert summary_of(run)["updated"] == [IPPOOLS]  # the dry-run alone would call it unchanged
    assert "metadata.annotations.projectcalico.org/dropped" in run.stderr
    assert crd_state(helm_leftovers) == before


def test_apply_removes_what_only_helm_set_and_keeps_the_users_annotation(helm_leftovers):
    run = apply(helm_leftovers)

    assert run.code == 0, run
    assert summary_of(run)["updated"] == [IPPOOLS]
    live = helm_leftovers.get(f"{CRDS}/{IPPOOLS}")
    annotations = live["metadata"].get("annotations") or {}
    assert "labels" not in live["metadata"]
    assert "projectcalico.org/dropped" not in annotations
    assert "categories" not in live["spec"]["names"]
    assert annotations[USER_ANNOTATION[0]] == USER_ANNOTATION[1]
    assert live["spec"]["conversion"] == {"strategy": "None"}  # a server default: set back, not lost
    managers = {entry["manager"] for entry in live["metadata"]["managedFields"]}
    assert "helm" not in managers and "kubectl-annotate" in managers
    # taken over only where something had to go: elsewhere Helm's entry stays, and nothing else
    # was written for it (the other CRDs only gained the digest annotation)
    others = [crd for crd in helm_leftovers.get(CRDS)["items"] if crd["metadata"]["name"] != IPPOOLS]
    assert all("helm" in {entry["manager"] for entry in crd["metadata"]["managedFields"]} for crd in others)

    again = apply(helm_leftovers)
    assert again.code == 0 and summary_of(again).get("already_current") is True, again


def test_the_take_over_is_guarded_by_the_resource_version(helm_leftovers):
    """The take-over patch names the resourceVersion it was computed from: computed before a
    user's write, the apiserver refuses it (take_over() then reads again), so that write's
    ownership is never folded away."""
    from calico_crd_hook.ownership import merged_entries

    stale = helm_leftovers.get(f"{CRDS}/{IPPOOLS}")["metadata"]
    helm_leftovers.kubectl("annotate", "crd", IPPOOLS, "team.example.com/ticket=NET-1")
    patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": stale["resourceVersion"]},
             {"op": "replace", "path": "/metadata/managedFields", "value": merged_entries(stale)}]
    refused = helm_leftovers.api("PATCH", f"{CRDS}/{IPPOOLS}", patch, content_type="application/json-patch+json")
    assert refused.status_code == 422  # what take_over() meets, and answers by reading again

    run = apply(helm_leftovers)
    assert run.code == 0, run
    annotations = helm_leftovers.get(f"{CRDS}/{IPPOOLS}")["metadata"]["annotations"]
    assert annotations["team.example.com/ticket"] == "NET-1"
    assert "projectcalico.org/dropped" not in annotations
