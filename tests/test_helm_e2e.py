"""End to end: real `helm install` / `helm upgrade` of an umbrella chart whose dependency is
Calico's real tigera-operator chart, carrying the chart patch, against the real control plane.
Helm 3 runs every scenario, Helm 4 those where it behaves differently (`any_helm`). The harness
stands in for the kubelet and the Job controller; the scenarios marked `image` run the Job's
container in the image built from our Dockerfile, the others run the same command as a local
process."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest

from tests.support.calico import manifest_path
from tests.support.calico_cluster import (
    CRDS,
    CUSTOM_RESOURCES,
    TIERS,
    crd_state,
    create_custom_resources,
    load_documents,
    settled_crd_state,
    tier_names,
    wait_established,
    wait_until,
)
from tests.support.charts import JOB_IMAGE, JOB_IMAGE_NAME, umbrella_chart
from tests.support.charts import hook_chart as chart
from tests.support.helm import Helm
from tests.support.httpserver import LocalCA, LocalServer, body
from tests.support.jobharness import ImageRunner, JobHarness
from tests.support.program import run_hook

pytestmark = [pytest.mark.cluster, pytest.mark.helm]

NAMESPACE = "calico-system-test"
RELEASE = "calico"
HOOK = f"{RELEASE}-calico-crd-hook"
CLUSTER_HOOK = f"{NAMESPACE}-{RELEASE}-calico-crd-hook"  # cluster-scoped: unique per namespace
ANP_PATH = "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies"


@pytest.fixture
def helm(helm_binary, control_plane, tmp_path) -> Helm:
    """Helm 3, for the scenarios where Helm 4 behaves the same."""
    return Helm(helm_binary, control_plane, tmp_path / "helm-home")


@pytest.fixture
def any_helm(any_helm_binary, control_plane, tmp_path) -> Helm:
    """Helm 3 and Helm 4, for the scenarios where they differ: Helm 4 creates crds/ by server-side
    apply (so the hook's take-over differs), reports a failed hook its own way, and adopts objects
    with --take-ownership."""
    return Helm(any_helm_binary, control_plane, tmp_path / "helm-home")


def install(helm: Helm, tmp_path: Path, bundle: Path, tag: str = "v3.28.2") -> None:
    """The umbrella at `tag`: Helm creates the real chart's crds/, then the Calico objects a
    running cluster has (policies, pools, Felix and BGP configuration)."""
    helm("install", RELEASE, str(chart(tmp_path, tag, "1.0.0", bundle)), "-n", NAMESPACE,
         "--create-namespace", "--timeout", "2m")
    create_custom_resources(helm.plane)


def upgrade(helm: Helm, target: Path, check: bool = True):
    return helm("upgrade", RELEASE, str(target), "-n", NAMESPACE, "--timeout", "3m", check=check)


def calico_objects(plane) -> dict[str, tuple]:
    """Each Calico object's spec and resourceVersion: equal means not rewritten, not even equal."""
    found = {path: plane.get(path) for path in CUSTOM_RESOURCES}
    return {path: (obj["spec"], obj["metadata"]["resourceVersion"]) for path, obj in found.items() if obj}


def assert_unchanged(plane, before: dict[str, tuple]) -> None:
    """Same resourceVersion (never rewritten) and the same spec, except fields a newer CRD's
    schema defaults: the apiserver adds those when it reads an old object, without writing it."""
    after = calico_objects(plane)
    assert after.keys() == before.keys()
    for path, (spec, version) in after.items():
        old_spec, old_version = before[path]
        assert version == old_version, f"{path} was rewritten"
        added = {key: value for key, value in spec.items() if key not in old_spec}
        assert {key: spec[key] for key in old_spec} == old_spec, path
        assert added == {key: value for key, value in _schema_defaults(plane, path).items() if key in added}, path


def _schema_defaults(plane, path: str) -> dict:
    group, version, *rest = path.removeprefix("/apis/").split("/")
    plural = rest[-2]
    crd = plane.get(f"{CRDS}/{plural}.{group}")
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    properties = schema["properties"]["spec"].get("properties") or {}
    return {key: prop["default"] for key, prop in properties.items() if "default" in prop}


def hook_resources(plane) -> dict[str, object]:
    return {
        "job": plane.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{HOOK}"),
        "serviceaccount": plane.get(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{HOOK}"),
        "clusterrole": plane.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{CLUSTER_HOOK}"),
        "clusterrolebinding": plane.get(f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{CLUSTER_HOOK}"),
    }


def revisions(helm: Helm) -> list[tuple[int, str]]:
    history = json.loads(helm("history", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    return [(entry["revision"], entry["status"]) for entry in history]


def events_of(plane, pod: str) -> list[dict]:
    listed = plane.get(f"/api/v1/namespaces/{NAMESPACE}/events") or {}
    return [event for event in listed.get("items", []) if event["involvedObject"].get("name") == pod]


def assert_upgrade_failed_on_previous_revision(helm: Helm, failed, before: dict, objects: dict) -> None:
    assert failed.returncode != 0
    assert "pre-upgrade hooks failed" in failed.stderr
    assert revisions(helm) == [(1, "deployed"), (2, "failed")]  # the release stays on revision 1
    assert crd_state(helm.plane) == before
    assert_unchanged(helm.plane, objects)


# --- in the image ---------------------------------------------------------------------------------

@pytest.mark.image
def test_helm_upgrade_3_28_to_3_29_runs_the_hook_in_its_image(any_helm, image_harness, control_plane, tmp_path, bundle):
    helm = any_helm
    install(helm, tmp_path, bundle)
    objects = calico_objects(control_plane)
    assert control_plane.get(f"{CRDS}/tiers.crd.projectcalico.org") is None  # the reported failure
    assert image_harness.runs == []  # pre-upgrade only: nothing ran on install

    upgraded = upgrade(helm, chart(tmp_path, "v3.29.1", "1.1.0", bundle))

    assert "has been upgraded" in upgraded.stdout
    [run] = image_harness.runs
    assert run["exit_code"] == 0, run
    assert run["env"]["CALICO_CRD_HOOK_VERSION"] == "v3.29.1"  # resolved from the real subchart
    wait_established(control_plane, ["tiers.crd.projectcalico.org"], timeout=1)
    assert control_plane.get(f"{TIERS}/default")["spec"] == {"order": 1000000, "defaultAction": "Deny"}
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}
    assert_unchanged(control_plane, objects)  # every policy, pool and configuration untouched
    assert all(found is None for found in hook_resources(control_plane).values())  # cleaned up
    assert revisions(helm) == [(1, "superseded"), (2, "deployed")]
    # the downward API named the Pod: the outcome is an Event on it
    [event] = events_of(control_plane, run["pod"])
    assert event["reason"] == "CalicoCRDsApplied" and "v3.29.1" in event["message"]


@pytest.mark.image
def test_failing_hook_fails_the_upgrade_and_keeps_the_job(any_helm, image_harness, control_plane, tmp_path, bundle):
    helm = any_helm
    install(helm, tmp_path, bundle)
    before, objects = settled_crd_state(control_plane), calico_objects(control_plane)

    failed = upgrade(helm, chart(tmp_path, "v3.29.1", "1.1.0", bundle, sha256="0" * 64), check=False)

    assert_upgrade_failed_on_previous_revision(helm, failed, before, objects)
    assert control_plane.get(f"{CRDS}/tiers.crd.projectcalico.org") is None
    job = control_plane.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{HOOK}")
    assert job is not None and any(c["type"] == "Failed" for c in job["status"]["conditions"])
    # a refusal (exit 3) is not retried: the pod failure policy fails the Job at once
    assert [run["exit_code"] for run in image_harness.runs] == [3]
    assert {c["reason"] for c in job["status"]["conditions"] if c["type"] == "Failed"} == {"PodFailurePolicy"}
    pods = control_plane.get(f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=job-name%3D{HOOK}")["items"]
    message = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert message.startswith("calico-crd-hook: error: sha256 mismatch")  # written to the mounted file
    assert "\n" not in message.strip()
    assert [event["reason"] for event in events_of(control_plane, pods[0]["metadata"]["name"])] == ["CalicoCRDsRefused"]


@pytest.mark.image
def test_the_job_runs_as_an_arbitrary_uid_in_its_image(helm, image_harness, control_plane, tmp_path, bundle):
    """OpenShift's restricted SCC assigns a UID from the namespace's range, with group 0, to a Pod
    that fixes none (the chart renders none with runAsUser and runAsGroup null): the program must
    run as that user in its image."""
    install(helm, tmp_path, bundle)
    assigned = {"runAsNonRoot": True, "runAsUser": 1000770000, "runAsGroup": 0}

    upgrade(helm, chart(tmp_path, "v3.29.1", "1.1.0", bundle, securityContext=assigned))

    [run] = image_harness.runs
    assert run["exit_code"] == 0, run
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}


@pytest.fixture(scope="session")
def bundled_image(image_builder, program_image, tmp_path_factory) -> str:
    """Built with `CALICO_VERSIONS=v3.29.1` from an internal mirror over HTTPS with its own CA (the
    Dockerfile's CALICO_URL_TEMPLATE and CALICO_CA_BUNDLE build arguments), once per session."""
    from tests.support.image import build_program_image

    ca = LocalCA(tmp_path_factory.mktemp("mirror-tls"))
    ca.ca_cert.chmod(0o644)
    with LocalServer(tls=ca) as mirror:
        mirror.route("/calico/v3.29.1/operator-crds.yaml", body(manifest_path("v3.29.1").read_bytes()))
        bundled = build_program_image(
            image_builder, "localhost/calico-crd-hook:test-bundled",
            {"CALICO_VERSIONS": "v3.29.1", "CALICO_URL_TEMPLATE": mirror.base + "/calico/{version}/{file}",
             "CALICO_CA_BUNDLE": "/run/mirror-ca.crt"}, mounts={str(ca.ca_cert): "/run/mirror-ca.crt"})
    assert mirror.served.hits == {"/calico/v3.29.1/operator-crds.yaml": 1}  # fetched at build time only
    return bundled


@pytest.mark.image
def test_air_gapped_bundle_baked_into_the_image(helm, control_plane, image_builder, bundled_image, tmp_path, bundle):
    """The manifest baked in at build time: the Job needs no volume and no network but the apiserver's."""
    install(helm, tmp_path, bundle)
    runner = ImageRunner(image_builder, {JOB_IMAGE_NAME: bundled_image})
    target = umbrella_chart(tmp_path / "chart-1.1.0", "v3.29.1", "1.1.0", {"calicoCrdHook": {
        "image": JOB_IMAGE, "manifests": {"useImageBundle": True}}})

    with JobHarness(control_plane, runner) as harness:
        upgrade(helm, target)

    [run] = harness.runs
    assert run["exit_code"] == 0, run
    assert json.loads(run["stdout"])["summary"]["manifest"] == "/opt/calico-crd-hook/bundle/v3.29.1/operator-crds.yaml"
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}


# --- the same command as a local process ----------------------------------------------------------

def test_repeated_upgrade_is_a_no_op(helm, harness, control_plane, tmp_path, bundle):
    install(helm, tmp_path, bundle)
    target = chart(tmp_path, "v3.29.1", "1.1.0", bundle)
    upgrade(helm, target)
    before_crds, before_tiers = settled_crd_state(control_plane), control_plane.get(TIERS)["items"]

    upgrade(helm, target)

    assert [run["exit_code"] for run in harness.runs] == [0, 0]
    summary = json.loads(harness.runs[1]["stdout"])["summary"]
    assert summary["already_current"] is True  # the one-LIST no-op, with Helm in the loop
    assert summary["duration_seconds"] < 10  # Argo CD runs it on every sync: it must stay cheap
    assert crd_state(control_plane) == before_crds
    assert control_plane.get(TIERS)["items"] == before_tiers


def test_new_kinds_need_the_crds_before_helm_upgrade(helm, harness, control_plane, tmp_path, bundle):
    """3.29 -> 3.30: the real chart renders Goldmane and Whisker, whose CRDs 3.29 lacks, so Helm
    rejects the release before any hook runs. The way through: `calico-crd-hook apply` first, then
    `helm upgrade`. The Calico objects survive the whole chain 3.28 -> 3.29 -> 3.30 -> 3.31."""
    install(helm, tmp_path, bundle)
    objects = calico_objects(control_plane)
    upgrade(helm, chart(tmp_path, "v3.29.1", "1.1.0", bundle))
    to_3_30 = chart(tmp_path, "v3.30.7", "1.2.0", bundle)

    rejected = upgrade(helm, to_3_30, check=False)

    assert rejected.returncode != 0
    assert 'no matches for kind "Goldmane"' in rejected.stderr or 'no matches for kind "Whisker"' in rejected.stderr
    assert len(harness.runs) == 1  # the pre-upgrade hook never ran
    assert control_plane.get(f"{CRDS}/goldmanes.operator.tigera.io") is None

    first = run_hook("apply", "--version", "v3.30.7", "--bundle-dir", str(bundle),
                     "--kubeconfig", str(control_plane.kubeconfig()))
    assert first.code == 0, first
    upgrade(helm, to_3_30)
    assert control_plane.get("/apis/operator.tigera.io/v1/goldmanes/default") is not None
    assert "baselineadminnetworkpolicy" in tier_names(control_plane)
    upgrade(helm, chart(tmp_path, "v3.31.7", "1.3.0", bundle))
    assert [run["exit_code"] for run in harness.runs] == [0, 0, 0]
    assert_unchanged(control_plane, objects)


def test_air_gapped_from_a_gzipped_configmap(helm, harness, control_plane, tmp_path, bundle):
    """The README's ConfigMap recipe: the gzipped file fits the 1 MiB limit."""
    compressed = gzip.compress((bundle / "v3.29.1" / "operator-crds.yaml").read_bytes())
    install(helm, tmp_path, bundle)
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "calico-crds-v3-29-1"},
                  "binaryData": {"operator-crds.yaml.gz": base64.b64encode(compressed).decode()}}
    created = control_plane.api("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", config_map)
    assert created.status_code == 201, created.text[:300]
    volume = {"configMap": {"name": "calico-crds-v3-29-1",
                            "items": [{"key": "operator-crds.yaml.gz", "path": "v3.29.1/operator-crds.yaml.gz"}]}}
    target = umbrella_chart(tmp_path / "chart-1.1.0", "v3.29.1", "1.1.0",
                            {"calicoCrdHook": {"manifests": {"volume": volume}}})

    upgrade(helm, target)

    [run] = harness.runs
    assert run["exit_code"] == 0, run
    assert json.loads(run["stdout"])["summary"]["manifest"].endswith("v3.29.1/operator-crds.yaml.gz")
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}


def test_internal_mirror_with_its_ca_from_a_configmap(helm, harness, control_plane, tmp_path, bundle):
    ca = LocalCA(tmp_path / "tls")
    with LocalServer(tls=ca) as mirror:
        mirror.route("/calico/v3.29.1/operator-crds.yaml", body(manifest_path("v3.29.1").read_bytes()))
        install(helm, tmp_path, bundle)
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "mirror-ca"},
                      "data": {"ca.crt": ca.ca_cert.read_text()}}
        assert control_plane.api("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", config_map).status_code == 201
        manifests = {"urlTemplate": mirror.base + "/calico/{version}/{file}", "caBundle": {"configMap": "mirror-ca"}}
        target = umbrella_chart(tmp_path / "chart-1.1.0", "v3.29.1", "1.1.0",
                                {"calicoCrdHook": {"manifests": manifests}})
        upgrade(helm, target)
    [run] = harness.runs
    assert run["exit_code"] == 0, run
    assert mirror.served.hits == {"/calico/v3.29.1/operator-crds.yaml": 1}
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}


# --- v3.31 -> v3.32: the operator chart no longer carries CRDs ------------------------------------

def test_3_31_to_3_32_the_hook_brings_the_crds(helm, harness, control_plane, tmp_path, bundle):
    install(helm, tmp_path, bundle, "v3.31.7")
    objects = calico_objects(control_plane)

    upgrade(helm, chart(tmp_path, "v3.32.1", "1.1.0", bundle))

    [run] = harness.runs
    assert run["exit_code"] == 0, run
    summary = json.loads(run["stdout"])["summary"]
    assert summary["target_version"] == "v3.32.1" and summary["updated"]
    live = {crd["metadata"]["name"] for crd in control_plane.get(CRDS)["items"]}
    assert {doc["metadata"]["name"] for doc in load_documents(manifest_path("v3.32.1"))} <= live
    assert {"default", "kube-admin", "kube-baseline"} <= tier_names(control_plane)
    assert_unchanged(control_plane, objects)
    assert revisions(helm) == [(1, "superseded"), (2, "deployed")]


@pytest.mark.parametrize("refusal", ["admin-network-policy-in-use", "default-tier-pass"])
def test_3_32_refusals_stop_the_upgrade(helm, harness, control_plane, tmp_path, bundle, refusal):
    """v3.32 drops AdminNetworkPolicy support and gives the default Tier a fixed Deny: a cluster that
    relies on either must not be upgraded by the hook, and the release stays where it was."""
    install(helm, tmp_path, bundle, "v3.31.7")
    if refusal == "admin-network-policy-in-use":
        anp = {"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
               "metadata": {"name": "deny-metadata"},
               "spec": {"priority": 10, "subject": {"namespaces": {}},
                        "egress": [{"action": "Deny", "to": [{"networks": ["169.254.169.254/32"]}]}]}}
        assert control_plane.api("POST", ANP_PATH, anp).status_code == 201
    else:
        tier = {"apiVersion": "crd.projectcalico.org/v1", "kind": "Tier", "metadata": {"name": "default"},
                "spec": {"order": 1000000, "defaultAction": "Pass"}}
        assert control_plane.api("POST", TIERS, tier).status_code == 201
    before, objects = settled_crd_state(control_plane), calico_objects(control_plane)

    failed = upgrade(helm, chart(tmp_path, "v3.32.1", "1.1.0", bundle), check=False)

    assert_upgrade_failed_on_previous_revision(helm, failed, before, objects)
    [run] = harness.runs
    assert run["exit_code"] == 4, run
    expected = "AdminNetworkPolicy" if refusal == "admin-network-policy-in-use" else "defaultAction Pass"
    assert expected in run["message"]


@pytest.mark.slow
def test_the_crd_chart_as_a_second_dependency_is_a_trap(any_helm, harness, control_plane, tmp_path, bundle):
    """What a user meets who adds v3.32.1's CRD chart (crd.projectcalico.org.v1) to the umbrella
    instead of relying on the hook; the README's advice comes from this. Its CRDs are templates,
    so Helm wants to own CRDs it did not create."""
    helm = any_helm
    install(helm, tmp_path, bundle, "v3.31.7")
    before, objects = settled_crd_state(control_plane), calico_objects(control_plane)
    manifests = {"volume": {"hostPath": {"path": str(bundle), "type": "Directory"}}}
    target = umbrella_chart(tmp_path / "with-crd-chart", "v3.32.1", "1.1.0", {"calicoCrdHook": {"manifests": manifests}},
                            extra_dependencies=(("crd.projectcalico.org.v1", "v3.32.1"),))

    refused = upgrade(helm, target, check=False)

    # Helm refuses to import the existing CRDs, before any hook runs
    assert refused.returncode != 0 and "cannot be imported into the current release" in refused.stderr
    assert harness.runs == [] and crd_state(control_plane) == before

    adopted = helm("upgrade", RELEASE, str(target), "-n", NAMESPACE, "--timeout", "3m", "--take-ownership",
                   check=False)

    assert [run["exit_code"] for run in harness.runs] == [0]  # the hook brought the CRDs and Tiers
    assert adopted.returncode != 0  # ... and Helm still fails the upgrade, in either version
    helm_4 = "helm-v4" in str(helm.binary)
    if helm_4:  # server-side apply without force: the hook's fields conflict
        assert 'conflict with "calico-crd-hook"' in adopted.stderr
    else:  # Helm 3 adopts the CRDs it could (its labels on them), then trips on those the hook created
        ippools = control_plane.get(f"{CRDS}/ippools.crd.projectcalico.org")
        assert ippools["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"

    # tigera-operator's pre-delete Job needs its operator image: skipped here
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--no-hooks", "--timeout", "2m")

    if helm_4:  # Helm 4 deletes only what the release owns: the CRDs and every object stay
        assert control_plane.get(f"{CRDS}/ippools.crd.projectcalico.org") is not None
        assert_unchanged(control_plane, objects)
    else:  # Helm 3 deletes the CRDs it adopted, and with them every policy, pool and configuration
        wait_until(lambda: calico_objects(control_plane) == {},
                   "the apiserver finishes deleting the adopted CRDs and their objects")
        assert control_plane.get(f"{CRDS}/ippools.crd.projectcalico.org") is None
