"""Faults end in a retry that converges or a clear error, never in a state a rerun cannot repair."""

from __future__ import annotations

import copy
import subprocess
import threading
import time

import pytest
from calico_crd_hook.releases import DIGEST_ANNOTATION, GENERATION_ANNOTATION

from tests.support.calico import bundle_dir, manifest_path
from tests.support.calico_cluster import (
    CRDS,
    install_crds_like_helm,
    load_documents,
    set_running_version,
    tier_names,
    wait_established,
    wait_until,
)
from tests.support.controlplane import free_port
from tests.support.etcd import leave_crd_installing
from tests.support.program import HOOK_COMMAND, hook_env, run_hook

pytestmark = pytest.mark.cluster


def test_unreachable_apiserver_retries_until_the_deadline(control_plane, tmp_path):
    kubeconfig = control_plane.kubeconfig()
    kubeconfig.write_text(kubeconfig.read_text().replace(control_plane.server, f"https://127.0.0.1:{free_port()}"))
    started = time.monotonic()
    run = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                   "--kubeconfig", str(kubeconfig), "--timeout", "5")
    elapsed = time.monotonic() - started
    assert run.code == 5, run
    assert "did not answer" in run.error_line and "before the deadline" in run.error_line
    assert "raise --timeout" in run.error_line
    assert run.stderr.count("retrying in") >= 3
    assert 4 <= elapsed < 15


def test_apiserver_that_comes_back_within_the_deadline_converges(control_plane, tmp_path):
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    set_running_version(control_plane, "v3.28.2")
    control_plane.stop_apiserver()
    restart = threading.Timer(3.0, control_plane.start_apiserver)
    restart.start()
    run = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                   "--kubeconfig", str(control_plane.kubeconfig()), "--timeout", "90")
    restart.join()
    assert run.code == 0, run
    assert "cannot reach the apiserver" in run.stderr
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}


def test_apiserver_killed_in_the_middle_of_the_apply(control_plane, tmp_path):
    """Killed after the first CRD is applied and started again: the run retries and finishes;
    should it not, a rerun must."""
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    set_running_version(control_plane, "v3.28.2")
    process = subprocess.Popen(
        [*HOOK_COMMAND, "apply", "--version", "v3.29.1",
         "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")), "--kubeconfig", str(control_plane.kubeconfig()),
         "--timeout", "90", "--concurrency", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=hook_env())
    seen: list[str] = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("info: applied CRD"):
            control_plane.stop_apiserver(kill=True)
            break
    time.sleep(1.0)
    control_plane.start_apiserver()
    rest_of_stderr = process.stderr.read()
    stdout = process.stdout.read()
    code = process.wait(timeout=120)
    stderr = "".join(seen) + rest_of_stderr
    assert any(line.startswith("info: applied CRD") for line in seen), stderr
    if code != 0:  # the run may give up; what it left behind must not block the next one
        assert code == 5, stderr
        rerun = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                         "--kubeconfig", str(control_plane.kubeconfig()), "--timeout", "90")
        assert rerun.code == 0, rerun
    else:
        assert "Tiers created: default, adminnetworkpolicy" in stdout
        assert "cannot reach the apiserver" in stderr or "HTTP 5" in stderr
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}
    shipped = {doc["metadata"]["name"]: doc for doc in load_documents(manifest_path("v3.29.1"))}
    wait_established(control_plane, list(shipped), timeout=5)
    for name, document in shipped.items():
        live = control_plane.get(f"{CRDS}/{name}")
        assert live["spec"]["versions"][0]["schema"] == document["spec"]["versions"][0]["schema"], name


def test_force_takes_over_fields_another_manager_owns(control_plane, tmp_path):
    install_crds_like_helm(control_plane, manifest_path("v3.29.1"))
    name = "felixconfigurations.crd.projectcalico.org"
    document = next(d for d in load_documents(manifest_path("v3.29.1")) if d["metadata"]["name"] == name)
    drifted = copy.deepcopy({k: v for k, v in document.items() if k != "status"})
    drifted["metadata"] = {"name": name}
    spec_schema = drifted["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec_schema["description"] = "rewritten by an older operator"
    taken = control_plane.api("PATCH", f"{CRDS}/{name}", drifted, content_type="application/apply-patch+yaml",
                              params={"fieldManager": "tigera-operator", "force": "true"})
    assert taken.status_code == 200, taken.text[:300]

    run = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                   "--kubeconfig", str(control_plane.kubeconfig()))

    assert run.code == 0, run
    assert name in run.stdout.split("updated:")[1].splitlines()[0]
    live = control_plane.get(f"{CRDS}/{name}")
    assert live["spec"]["versions"][0]["schema"] == document["spec"]["versions"][0]["schema"]
    owners = {entry["manager"]: entry for entry in live["metadata"]["managedFields"]}
    assert "calico-crd-hook" in owners
    assert "description" not in str(owners.get("tigera-operator", {}).get("fieldsV1", ""))


def test_refused_crd_names_fail_fast_instead_of_waiting_for_the_deadline(control_plane, tmp_path):
    """Another CRD of the group already claims kind Tier: the new Tier CRD can never be served."""
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    squatter = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": "oldtiers.crd.projectcalico.org"},
                "spec": {"group": "crd.projectcalico.org", "scope": "Cluster",
                         "names": {"plural": "oldtiers", "singular": "oldtier", "kind": "Tier", "listKind": "TierList"},
                         "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                             "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    assert control_plane.api("POST", CRDS, squatter).status_code == 201
    wait_established(control_plane, ["oldtiers.crd.projectcalico.org"])
    started = time.monotonic()
    run = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                   "--kubeconfig", str(control_plane.kubeconfig()), "--timeout", "120")
    assert run.code == 5, run
    assert "CRD tiers.crd.projectcalico.org was applied but its names were refused" in run.error_line
    assert "KindConflict" in run.error_line and "is already in use" in run.error_line
    assert time.monotonic() - started < 30
    deleted = control_plane.api("DELETE", f"{CRDS}/oldtiers.crd.projectcalico.org")
    assert deleted.status_code == 200
    fixed = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                     "--kubeconfig", str(control_plane.kubeconfig()), "--timeout", "120")
    assert fixed.code == 0, fixed
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}


def test_crd_left_installing_by_a_crashed_apiserver_is_requeued(control_plane, tmp_path):
    """An apiserver that stops between accepting a new CRD's names and establishing it leaves the
    CRD at Established=False for good. The run must notice, requeue it, and finish the upgrade;
    a run that skipped the CRD because its content is current must not report success unserved."""
    args = ["apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
            "--kubeconfig", str(control_plane.kubeconfig()), "--timeout", "60"]
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    assert run_hook(*args).code == 0  # every CRD now current and ours: a rerun writes none
    leave_crd_installing(control_plane, "tiers.crd.projectcalico.org")
    shipped = next(doc for doc in load_documents(manifest_path("v3.29.1"))
                   if doc["metadata"]["name"] == "tiers.crd.projectcalico.org")

    run = run_hook(*args)

    assert run.code == 0, run
    assert "0 were created, 0 were updated, 24 unchanged" in run.stdout
    assert "CRD tiers.crd.projectcalico.org is still not Established" in run.stderr
    wait_established(control_plane, ["tiers.crd.projectcalico.org"], timeout=1)
    live = control_plane.get(f"{CRDS}/tiers.crd.projectcalico.org")
    annotations = dict(live["metadata"].get("annotations") or {})
    assert annotations.pop(DIGEST_ANNOTATION)  # the digest of the document, as on every applied CRD
    assert annotations.pop(GENERATION_ANNOTATION) == str(live["metadata"]["generation"])  # and what the apply left
    assert annotations == shipped["metadata"].get("annotations")  # no trace of the requeue left
    assert live["spec"]["versions"][0]["schema"] == shipped["spec"]["versions"][0]["schema"]
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}


def test_a_refused_requeue_is_a_cluster_error_not_a_crash(control_plane, tmp_path):
    """An admission policy refusing the requeue write: exit 5 naming the refusal (it was exit 1,
    'unexpected ApiError', as the only place the refusal escaped unconverted)."""
    args = ["apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
            "--kubeconfig", str(control_plane.kubeconfig()), "--timeout", "60"]
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    assert run_hook(*args).code == 0
    leave_crd_installing(control_plane, "tiers.crd.projectcalico.org")
    policies = "/apis/admissionregistration.k8s.io/v1"
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": "no-requeue"},
              "spec": {"failurePolicy": "Fail",
                       "matchConstraints": {"resourceRules": [{"apiGroups": ["apiextensions.k8s.io"],
                                                               "apiVersions": ["v1"], "operations": ["UPDATE"],
                                                               "resources": ["customresourcedefinitions"]}]},
                       "validations": [{"expression": "!has(object.metadata.annotations) || !('calico-crd-hook"
                                                      ".projectcalico.org/requeue' in object.metadata.annotations)",
                                        "message": "requeue annotations are refused here"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": "no-requeue"}, "spec": {"policyName": "no-requeue", "validationActions": ["Deny"]}}
    assert control_plane.api("POST", f"{policies}/validatingadmissionpolicies", policy).status_code == 201
    assert control_plane.api("POST", f"{policies}/validatingadmissionpolicybindings", binding).status_code == 201
    marked = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
              "metadata": {"name": "tiers.crd.projectcalico.org",
                           "annotations": {"calico-crd-hook.projectcalico.org/requeue": "probe"}}}
    wait_until(lambda: control_plane.api("PATCH", f"{CRDS}/tiers.crd.projectcalico.org", marked,
                                         content_type="application/apply-patch+yaml",
                                         params={"fieldManager": "probe", "dryRun": "All"}).status_code in (403, 422),
               "the admission policy is in force")

    run = run_hook(*args)

    assert run.code == 5, run
    assert "requeue annotations are refused here" in run.error_line
    assert "unexpected" not in run.stderr
