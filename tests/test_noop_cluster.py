"""The one-LIST no-op: a rerun at the same release decides "nothing to do" from the CRDs' digest
annotations, and never mistakes an interrupted run, a reverting operator, a hand edit or an
unserved CRD for "current"."""

from __future__ import annotations

import hashlib
import time

import pytest
from calico_crd_hook.client import FIELD_MANAGER, Cluster
from calico_crd_hook.errors import EXIT_UNSAFE_UPGRADE
from calico_crd_hook.kubeconfig import load_credentials
from calico_crd_hook.manifest import validate_manifest
from calico_crd_hook.releases import DIGEST_ANNOTATION, document_digest, release_table
from calico_crd_hook.source import FetchedManifest
from calico_crd_hook.version import ApiMode, parse_version

from tests.support.calico import bundle_dir, manifest_path
from tests.support.calico_cluster import (
    CRDS,
    TIERS,
    crd_state,
    install_crds_like_helm,
    load_documents,
    set_running_version,
    settled_crd_state,
    tier_names,
    wait_established,
    wait_until,
)
from tests.support.controlplane import free_port
from tests.support.etcd import leave_crd_installing
from tests.support.program import run_hook

pytestmark = pytest.mark.cluster

NOTHING_TO_DO = "calico-crd-hook: Calico v3.29.1 (API mode v1): nothing to do"


def apply_3_29(plane, tmp_path, *extra: str):
    return run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                    "--kubeconfig", str(plane.kubeconfig()), "--timeout", "60", *extra)


@pytest.fixture
def upgraded(control_plane, tmp_path):
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    set_running_version(control_plane, "v3.28.2")
    first = apply_3_29(control_plane, tmp_path)
    assert first.code == 0, first
    assert "nothing to do" not in first.stdout
    return control_plane


def test_every_crd_records_the_digest_of_its_document(upgraded):
    for document in load_documents(manifest_path("v3.29.1")):
        body = {key: value for key, value in document.items() if key != "status"}
        body["metadata"] = {k: v for k, v in body["metadata"].items() if k != "creationTimestamp"}
        live = upgraded.get(f"{CRDS}/{document['metadata']['name']}")
        assert live["metadata"]["annotations"][DIGEST_ANNOTATION] == document_digest(body)


def test_a_rerun_has_nothing_to_do_and_needs_neither_the_manifest_nor_a_write(upgraded, tmp_path):
    before = settled_crd_state(upgraded)
    # The manifest's source is gone: a run that needed it would fail.
    rerun = run_hook("apply", "--version", "v3.29.1", "--kubeconfig", str(upgraded.kubeconfig()),
                     "--url-template", f"https://127.0.0.1:{free_port()}/{{version}}/{{file}}", "--timeout", "20")
    assert rerun.code == 0, rerun
    assert rerun.stdout.startswith(NOTHING_TO_DO)
    assert "all 24 CRDs carry the digests of operator-crds.yaml of v3.29.1" in rerun.stdout
    assert crd_state(upgraded) == before
    took = float(rerun.stdout.rsplit("took ", 1)[1].rstrip("s\n"))
    assert took < 1.0


def test_a_dry_run_always_checks_everything(upgraded, tmp_path):
    run = apply_3_29(upgraded, tmp_path, "--dry-run")
    assert run.code == 0, run
    assert "nothing to do" not in run.stdout and "24 unchanged" in run.stdout


def test_a_missing_tier_is_not_current(upgraded, tmp_path):
    assert upgraded.api("DELETE", f"{TIERS}/adminnetworkpolicy").status_code == 200
    run = apply_3_29(upgraded, tmp_path)
    assert run.code == 0, run
    assert "Tier adminnetworkpolicy is missing): taking the full path" in run.stderr
    assert tier_names(upgraded) == {"default", "adminnetworkpolicy"}


def test_an_interrupted_run_is_not_current(control_plane, tmp_path):
    """A run that died half-way: some CRDs applied with their digests, the rest still Helm's."""
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    set_running_version(control_plane, "v3.28.2")
    data = manifest_path("v3.29.1").read_bytes()
    manifest = validate_manifest(FetchedManifest(data, "test", hashlib.sha256(data).hexdigest()),
                                 parse_version("v3.29.1"), ApiMode.V1, ApiMode.V1.default_allowed_groups)
    cluster = Cluster(load_credentials(str(control_plane.kubeconfig())), time.monotonic() + 60)
    for crd in manifest.crds[: len(manifest.crds) // 2]:  # what the dead run had written
        cluster.apply(f"{CRDS}/{crd.name}", crd.encoded)

    run = apply_3_29(control_plane, tmp_path)

    assert run.code == 0, run
    assert "nothing to do" not in run.stdout
    assert any(reason in run.stderr for reason in ("does not carry the target's digest", "is missing",
                                                   "has no generation recorded by our apply"))
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}
    assert apply_3_29(control_plane, tmp_path).stdout.startswith(NOTHING_TO_DO)  # and now it is


def test_a_reverting_operator_is_not_current(upgraded, tmp_path):
    """The old operator's plain Update of its built-in copy (here: the v3.28 description), which
    keeps our annotations: the digest alone would say current, the generation says otherwise."""
    name = "felixconfigurations.crd.projectcalico.org"
    live = upgraded.get(f"{CRDS}/{name}")
    applied = live["metadata"]["generation"]
    old = next(d for d in load_documents(manifest_path("v3.28.2")) if d["metadata"]["name"] == name)
    live["spec"]["versions"] = old["spec"]["versions"]
    reverted = upgraded.api("PUT", f"{CRDS}/{name}", live, params={"fieldManager": "tigera-operator"})
    assert reverted.status_code == 200, reverted.text[:300]

    run = apply_3_29(upgraded, tmp_path)

    assert run.code == 0, run
    assert f"CRD {name} changed since our apply (generation {applied + 1}, applied at {applied})" in run.stderr
    assert "1 were updated" in run.stdout and name in run.stdout
    shipped = next(d for d in load_documents(manifest_path("v3.29.1")) if d["metadata"]["name"] == name)
    assert upgraded.get(f"{CRDS}/{name}")["spec"]["versions"] == shipped["spec"]["versions"]


def test_a_hand_edit_is_not_current(upgraded, tmp_path):
    name = "ippools.crd.projectcalico.org"
    applied = upgraded.get(f"{CRDS}/{name}")["metadata"]["generation"]
    edit = [{"op": "replace", "path": "/spec/versions/0/schema/openAPIV3Schema/description", "value": "edited"}]
    edited = upgraded.api("PATCH", f"{CRDS}/{name}", edit, content_type="application/json-patch+json",
                          params={"fieldManager": "kubectl-edit"})
    assert edited.status_code == 200, edited.text[:300]

    run = apply_3_29(upgraded, tmp_path)

    assert run.code == 0, run
    assert f"CRD {name} changed since our apply (generation {applied + 1}, applied at {applied})" in run.stderr
    live = upgraded.get(f"{CRDS}/{name}")
    assert live["spec"]["versions"][0]["schema"]["openAPIV3Schema"].get("description") != "edited"
    managers = {entry["manager"] for entry in live["metadata"]["managedFields"]}
    assert FIELD_MANAGER in managers


def test_a_crd_left_unserved_is_not_current(upgraded, tmp_path):
    leave_crd_installing(upgraded, "tiers.crd.projectcalico.org")
    run = apply_3_29(upgraded, tmp_path)
    assert run.code == 0, run
    assert "CRD tiers.crd.projectcalico.org is not served): taking the full path" in run.stderr
    wait_established(upgraded, ["tiers.crd.projectcalico.org"], timeout=1)


def test_a_manifest_pinned_to_another_file_takes_the_full_path(upgraded, tmp_path):
    path = tmp_path / "operator-crds.yaml"
    path.write_bytes(manifest_path("v3.29.1").read_bytes() + b"\n# a mirror's comment\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    run = run_hook("apply", "--version", "v3.29.1", "--manifest", str(path), "--sha256", digest,
                   "--kubeconfig", str(upgraded.kubeconfig()), "--timeout", "60")
    assert run.code == 0, run
    assert "nothing to do" not in run.stdout and "24 unchanged" in run.stdout


# --- a partly current cluster: only what changes is dry-run and written ----------------------------

FREEZE = "calico-crd-hook-test-freeze"


def freeze_crd(plane, name: str) -> None:
    """A ValidatingAdmissionPolicy that denies every update of one CRD, dry-runs included, as a
    cluster's change-freeze policy would."""
    rules = [{"apiGroups": ["apiextensions.k8s.io"], "apiVersions": ["v1"], "operations": ["UPDATE"],
              "resources": ["customresourcedefinitions"]}]
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": FREEZE},
              "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": rules},
                       "validations": [{"expression": f"object.metadata.name != '{name}'",
                                        "message": f"{name} is frozen"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": FREEZE}, "spec": {"policyName": FREEZE, "validationActions": ["Deny"]}}
    for path, body in (("validatingadmissionpolicies", policy), ("validatingadmissionpolicybindings", binding)):
        created = plane.api("POST", f"/apis/admissionregistration.k8s.io/v1/{path}", body)
        assert created.status_code == 201, created.text[:300]
    probe = {"metadata": {"labels": {"probe": "x"}}}
    wait_until(lambda: plane.api("PATCH", f"{CRDS}/{name}", probe, content_type="application/merge-patch+json",
                                 params={"dryRun": "All"}).status_code != 200, f"the freeze of {name} to apply")


def hook_applied_3_28(plane, tmp_path) -> None:
    """Helm installed v3.28.2, then the hook applied v3.28.2 itself: every CRD carries our apply."""
    install_crds_like_helm(plane, manifest_path("v3.28.2"))
    set_running_version(plane, "v3.28.2")
    run = run_hook("apply", "--version", "v3.28.2", "--bundle-dir", str(bundle_dir(tmp_path, "v3.28.2")),
                   "--kubeconfig", str(plane.kubeconfig()), "--timeout", "60")
    assert run.code == 0, run


def documents_by_change() -> tuple[list[str], list[str]]:
    """(CRDs whose document v3.29.1 keeps byte for byte from v3.28.2, CRDs whose document it changes)."""
    table = release_table()
    old = table.file_for(parse_version("v3.28.2"), ApiMode.V1).crds
    new = table.file_for(parse_version("v3.29.1"), ApiMode.V1).crds
    return ([name for name, digest in new.items() if old.get(name) == digest],
            [name for name, digest in new.items() if name in old and old[name] != digest])


def test_a_crd_that_already_holds_its_document_is_neither_dry_run_nor_written(control_plane, tmp_path):
    hook_applied_3_28(control_plane, tmp_path)
    same, changed = documents_by_change()
    assert "ippools.crd.projectcalico.org" in same and "felixconfigurations.crd.projectcalico.org" in changed
    freeze_crd(control_plane, "ippools.crd.projectcalico.org")  # a dry-run of it would now be refused
    before = crd_state(control_plane)

    run = apply_3_29(control_plane, tmp_path)

    assert run.code == 0, run
    after = crd_state(control_plane)
    assert all(after[name] == before[name] for name in same)  # not one write to what was current
    assert all(after[name] != before[name] for name in changed)
    assert f"{len(changed)} were updated" in run.stdout and f"{len(same)} unchanged" in run.stdout
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}


def test_a_crd_the_upgrade_changes_is_still_dry_run_first(control_plane, tmp_path):
    """The other side of the freeze: the dry-run of a CRD that changes meets the policy, and the
    run stops before any write."""
    hook_applied_3_28(control_plane, tmp_path)
    freeze_crd(control_plane, "felixconfigurations.crd.projectcalico.org")
    before = settled_crd_state(control_plane)

    run = apply_3_29(control_plane, tmp_path)

    assert run.code == EXIT_UNSAFE_UPGRADE, run
    assert "felixconfigurations.crd.projectcalico.org is frozen" in run.stderr
    assert "so none was applied" in run.stderr
    assert crd_state(control_plane) == before and tier_names(control_plane) == set()


# --- identical re-applies by other managers leave the next run on the fast path --------------------

def test_argo_cd_re_applying_the_same_crds_leaves_the_next_runs_nothing_to_do(upgraded, tmp_path):
    """Argo CD's Sync phase applies the chart's crds/ after the PreSync hook: server-side, forced,
    as manager argocd-controller (gitops-engine pkg/utils/kube/resource_ops.go newApplyOptions;
    argo-cd common/common.go ArgoCDSSAManager)."""
    before = settled_crd_state(upgraded)
    reapplied = upgraded.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=argocd-controller",
                                 "-f", str(manifest_path("v3.29.1")))
    assert reapplied.returncode == 0, reapplied.stderr

    runs = [apply_3_29(upgraded, tmp_path) for _ in range(2)]

    assert [run.code for run in runs] == [0, 0], runs
    assert all(run.stdout.startswith(NOTHING_TO_DO) for run in runs), runs
    assert {name: generation for name, (_, generation) in crd_state(upgraded).items()} == {
        name: generation for name, (_, generation) in before.items()}  # no spec moved


def test_the_operators_identical_update_leaves_the_next_run_nothing_to_do(upgraded, tmp_path):
    """The v3.30+ operator's manage-crds writes its built-in copies by a plain Update at start."""
    for document in load_documents(manifest_path("v3.29.1")):
        name = document["metadata"]["name"]
        live = upgraded.get(f"{CRDS}/{name}")
        written = upgraded.api("PUT", f"{CRDS}/{name}", live, params={"fieldManager": "operator"})
        assert written.status_code == 200, written.text[:300]

    run = apply_3_29(upgraded, tmp_path)

    assert run.code == 0, run
    assert run.stdout.startswith(NOTHING_TO_DO)


def test_a_changed_annotation_of_the_document_is_repaired(upgraded, tmp_path):
    """Metadata changes move no generation: the document's own labels and annotations are compared."""
    name = "apiservers.operator.tigera.io"
    key = "controller-gen.kubebuilder.io/version"
    shipped = next(d for d in load_documents(manifest_path("v3.29.1")) if d["metadata"]["name"] == name)
    edited = upgraded.api("PATCH", f"{CRDS}/{name}", {"metadata": {"annotations": {key: "v9.9.9"}}},
                          content_type="application/merge-patch+json", params={"fieldManager": "someone"})
    assert edited.status_code == 200, edited.text[:300]

    run = apply_3_29(upgraded, tmp_path)

    assert run.code == 0, run
    assert f"CRD {name} has annotation {key}='v9.9.9', not the release's " in run.stderr
    assert upgraded.get(f"{CRDS}/{name}")["metadata"]["annotations"][key] == shipped["metadata"]["annotations"][key]
    assert apply_3_29(upgraded, tmp_path).stdout.startswith(NOTHING_TO_DO)


def test_crds_applied_before_generations_were_recorded_take_the_full_path_once(upgraded, tmp_path):
    """An earlier version of this program recorded the digest only: the first run records the
    generation too, writing no spec; the next has nothing to do."""
    for document in load_documents(manifest_path("v3.29.1")):
        name = document["metadata"]["name"]
        removed = upgraded.api("PATCH", f"{CRDS}/{name}", [
            {"op": "remove", "path": "/metadata/annotations/calico-crd-hook.projectcalico.org~1applied-generation"}],
            content_type="application/json-patch+json")
        assert removed.status_code == 200, removed.text[:300]
    generations = {name: generation for name, (_, generation) in crd_state(upgraded).items()}

    first = apply_3_29(upgraded, tmp_path)

    assert first.code == 0, first
    assert "has no generation recorded by our apply" in first.stderr and "24 unchanged" in first.stdout
    assert {name: generation for name, (_, generation) in crd_state(upgraded).items()} == generations
    assert apply_3_29(upgraded, tmp_path).stdout.startswith(NOTHING_TO_DO)
