"""End to end: real `helm install` / `helm upgrade` of an umbrella chart carrying the chart patch,
against the real control plane; the harness stands in for the kubelet and the Job controller."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support.calico_cluster import (CRDS, TIERS, crd_state, settled_crd_state, tier_names,
                                          wait_established)
from tests.support.program import run_hook
from tests.support.calico import bundle_dir
from tests.support.charts import umbrella_chart
from tests.support.helm import Helm
from tests.support.jobharness import JobHarness

pytestmark = [pytest.mark.cluster, pytest.mark.helm]

NAMESPACE = "calico-system-test"
RELEASE = "calico"
HOOK = f"{RELEASE}-calico-crd-hook"
CLUSTER_HOOK = f"{NAMESPACE}-{RELEASE}-calico-crd-hook"  # cluster-scoped: unique per namespace


@pytest.fixture
def helm(helm_binary, control_plane, tmp_path) -> Helm:
    return Helm(helm_binary, control_plane, tmp_path / "helm-home")


@pytest.fixture
def harness(control_plane):
    with JobHarness(control_plane, Path(sys.executable).parent) as running:
        yield running


@pytest.fixture
def bundle(tmp_path) -> Path:
    """Manifests on a host path, mounted into the Job as a volume: the air-gapped setup."""
    return bundle_dir(tmp_path, "v3.28.2", "v3.29.1", "v3.30.7")


def chart(tmp_path: Path, tag: str, chart_version: str, bundle: Path, sha256: str = "") -> Path:
    manifests = {"volume": {"hostPath": {"path": str(bundle), "type": "Directory"}}, "sha256": sha256}
    return umbrella_chart(tmp_path / f"chart-{chart_version}", tag, chart_version,
                          {"calicoCrdHook": {"manifests": manifests}})


def install_3_28(helm: Helm, tmp_path: Path, bundle: Path) -> None:
    helm("install", RELEASE, str(chart(tmp_path, "v3.28.2", "1.0.0", bundle)), "-n", NAMESPACE,
         "--create-namespace", "--timeout", "2m")


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


def test_helm_upgrade_3_28_to_3_29_runs_the_hook(helm, harness, control_plane, tmp_path, bundle):
    install_3_28(helm, tmp_path, bundle)
    assert control_plane.get(f"{CRDS}/tiers.crd.projectcalico.org") is None  # the reported failure
    assert harness.runs == []  # pre-upgrade only: nothing ran on install

    upgraded = helm("upgrade", RELEASE, str(chart(tmp_path, "v3.29.1", "1.1.0", bundle)), "-n", NAMESPACE,
                    "--timeout", "3m")

    assert "has been upgraded" in upgraded.stdout
    [run] = harness.runs
    assert run["exit_code"] == 0, run
    assert run["env"]["CALICO_CRD_HOOK_VERSION"] == "v3.29.1"  # resolved from the subchart
    wait_established(control_plane, ["tiers.crd.projectcalico.org"], timeout=1)
    assert control_plane.get(f"{TIERS}/default")["spec"] == {"order": 1000000, "defaultAction": "Deny"}
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}
    assert all(found is None for found in hook_resources(control_plane).values())  # cleaned up
    assert revisions(helm) == [(1, "superseded"), (2, "deployed")]


def test_failing_hook_fails_the_upgrade_and_keeps_the_job(helm, harness, control_plane, tmp_path, bundle):
    install_3_28(helm, tmp_path, bundle)
    before = settled_crd_state(control_plane)

    failed = helm("upgrade", RELEASE, str(chart(tmp_path, "v3.29.1", "1.1.0", bundle, sha256="0" * 64)),
                  "-n", NAMESPACE, "--timeout", "3m", check=False)

    assert failed.returncode != 0
    assert "pre-upgrade hooks failed" in failed.stderr
    assert revisions(helm) == [(1, "deployed"), (2, "failed")]
    assert crd_state(control_plane) == before
    assert control_plane.get(f"{CRDS}/tiers.crd.projectcalico.org") is None
    job = control_plane.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{HOOK}")
    assert job is not None and any(c["type"] == "Failed" for c in job["status"]["conditions"])
    # a refusal (exit 3) is not retried: the pod failure policy fails the Job at once
    assert [run["exit_code"] for run in harness.runs] == [3]
    assert {c["reason"] for c in job["status"]["conditions"] if c["type"] == "Failed"} == {"PodFailurePolicy"}
    pods = control_plane.get(f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=job-name%3D{HOOK}")["items"]
    message = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert message.startswith("calico-crd-hook: error: sha256 mismatch")
    assert "\n" not in message.strip()


def test_repeated_upgrade_is_a_no_op(helm, harness, control_plane, tmp_path, bundle):
    install_3_28(helm, tmp_path, bundle)
    target = chart(tmp_path, "v3.29.1", "1.1.0", bundle)
    helm("upgrade", RELEASE, str(target), "-n", NAMESPACE, "--timeout", "3m")
    before_crds, before_tiers = settled_crd_state(control_plane), control_plane.get(TIERS)["items"]

    helm("upgrade", RELEASE, str(target), "-n", NAMESPACE, "--timeout", "3m")

    assert [run["exit_code"] for run in harness.runs] == [0, 0]
    summary = json.loads(harness.runs[1]["stdout"])["summary"]
    assert (summary["created"], summary["updated"], summary["tiers_created"]) == ([], [], [])
    assert summary["duration_seconds"] < 10  # Argo CD runs it on every sync: it must stay cheap
    assert crd_state(control_plane) == before_crds
    assert control_plane.get(TIERS)["items"] == before_tiers


def test_new_kinds_need_the_crds_before_helm_upgrade(helm, harness, control_plane, tmp_path, bundle):
    """3.29 -> 3.30 renders Goldmane and Whisker, whose CRDs 3.29 lacks: Helm rejects the release
    before any hook runs. The way through: `calico-crd-hook apply` first, then `helm upgrade`."""
    install_3_28(helm, tmp_path, bundle)
    helm("upgrade", RELEASE, str(chart(tmp_path, "v3.29.1", "1.1.0", bundle)), "-n", NAMESPACE, "--timeout", "3m")
    to_3_30 = chart(tmp_path, "v3.30.7", "1.2.0", bundle)

    rejected = helm("upgrade", RELEASE, str(to_3_30), "-n", NAMESPACE, "--timeout", "3m", check=False)

    assert rejected.returncode != 0
    assert 'no matches for kind "Goldmane"' in rejected.stderr or 'no matches for kind "Whisker"' in rejected.stderr
    assert len(harness.runs) == 1  # the pre-upgrade hook never ran
    assert control_plane.get(f"{CRDS}/goldmanes.operator.tigera.io") is None

    first = run_hook("apply", "--version", "v3.30.7", "--bundle-dir", str(bundle),
                     "--kubeconfig", str(control_plane.kubeconfig()))
    assert first.code == 0, first
    helm("upgrade", RELEASE, str(to_3_30), "-n", NAMESPACE, "--timeout", "3m")
    assert control_plane.get("/apis/operator.tigera.io/v1/goldmanes/default") is not None
    assert "baselineadminnetworkpolicy" in tier_names(control_plane)
    assert harness.runs[-1]["exit_code"] == 0


def test_air_gapped_from_a_gzipped_configmap(helm, harness, control_plane, tmp_path, bundle):
    """The README's ConfigMap recipe: the gzipped file fits the 1 MiB limit."""
    import base64
    import gzip

    compressed = gzip.compress((bundle / "v3.29.1" / "operator-crds.yaml").read_bytes())
    install_3_28(helm, tmp_path, bundle)
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "calico-crds-v3-29-1"},
                  "binaryData": {"operator-crds.yaml.gz": base64.b64encode(compressed).decode()}}
    created = control_plane.api("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", config_map)
    assert created.status_code == 201, created.text[:300]
    volume = {"configMap": {"name": "calico-crds-v3-29-1",
                            "items": [{"key": "operator-crds.yaml.gz", "path": "v3.29.1/operator-crds.yaml.gz"}]}}
    target = umbrella_chart(tmp_path / "chart-1.1.0", "v3.29.1", "1.1.0",
                            {"calicoCrdHook": {"manifests": {"volume": volume}}})

    helm("upgrade", RELEASE, str(target), "-n", NAMESPACE, "--timeout", "3m")

    [run] = harness.runs
    assert run["exit_code"] == 0, run
    assert json.loads(run["stdout"])["summary"]["manifest"].endswith("v3.29.1/operator-crds.yaml.gz")
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}


def test_internal_mirror_with_its_ca_from_a_configmap(helm, harness, control_plane, tmp_path, bundle):
    from tests.support.calico import manifest_path
    from tests.support.httpserver import LocalCA, LocalServer, body

    ca = LocalCA(tmp_path / "tls")
    with LocalServer(tls=ca) as mirror:
        mirror.route("/calico/v3.29.1/operator-crds.yaml", body(manifest_path("v3.29.1").read_bytes()))
        install_3_28(helm, tmp_path, bundle)
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "mirror-ca"},
                      "data": {"ca.crt": ca.ca_cert.read_text()}}
        assert control_plane.api("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", config_map).status_code == 201
        manifests = {"urlTemplate": mirror.base + "/calico/{version}/{file}", "caBundle": {"configMap": "mirror-ca"}}
        target = umbrella_chart(tmp_path / "chart-1.1.0", "v3.29.1", "1.1.0",
                                {"calicoCrdHook": {"manifests": manifests}})
        helm("upgrade", RELEASE, str(target), "-n", NAMESPACE, "--timeout", "3m")
    [run] = harness.runs
    assert run["exit_code"] == 0, run
    assert mirror.served.hits == {"/calico/v3.29.1/operator-crds.yaml": 1}
    assert tier_names(control_plane) == {"default", "adminnetworkpolicy"}
