"""Rollbacks and fresh installs with Helm 3, the real charts and the hook Job in the built image.

`helm rollback` runs the pre-rollback hooks of the revision it rolls back to (helm v3.21
pkg/action/rollback.go, `performRollback`); `helm install` creates crds/, then builds every object
(a kind without its CRD fails there), and only then runs pre-install hooks (pkg/action/install.go,
`RunWithContext`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support.calico_cluster import CRDS, TIERS, crd_state, create_custom_resources, settled_crd_state, tier_names
from tests.support.charts import hook_chart, real_chart
from tests.support.helm import Helm
from tests.support.program import run_hook

pytestmark = [pytest.mark.gitops, pytest.mark.cluster, pytest.mark.helm, pytest.mark.image]

NAMESPACE = "tigera-operator"
RELEASE = "calico"


@pytest.fixture
def helm(helm_binary, control_plane, tmp_path) -> Helm:
    return Helm(helm_binary, control_plane, tmp_path / "helm-home")


def summary_of(run: dict) -> dict:
    assert run["exit_code"] == 0, run
    return json.loads(run["stdout"])["summary"]


def install(helm: Helm, chart: Path, check: bool = True):
    return helm("install", RELEASE, str(chart), "-n", NAMESPACE, "--create-namespace", "--timeout", "3m",
                check=check)


def upgrade(helm: Helm, chart: Path, *values: str):
    flags = [flag for value in values for flag in ("--set", value)]
    return helm("upgrade", RELEASE, str(chart), "-n", NAMESPACE, "--timeout", "3m", *flags)


def revisions(helm: Helm) -> list[tuple[int, str]]:
    history = json.loads(helm("history", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    return [(entry["revision"], entry["status"]) for entry in history]


def test_helm_rollback_runs_the_hook_which_keeps_the_newer_crds(helm, image_harness, control_plane, tmp_path,
                                                                bundle):
    at_3_30 = hook_chart(tmp_path, "v3.30.7", "1.2.0", bundle)
    install(helm, at_3_30)
    create_custom_resources(control_plane)
    upgrade(helm, hook_chart(tmp_path, "v3.31.7", "1.3.0", bundle))
    assert summary_of(image_harness.runs[-1])["target_version"] == "v3.31.7"
    before = settled_crd_state(control_plane)

    helm("rollback", RELEASE, "1", "-n", NAMESPACE, "--timeout", "3m")

    rolled_back = summary_of(image_harness.runs[-1])
    assert rolled_back["target_version"] == "v3.30.7"
    assert rolled_back["kept_newer_crds"].startswith("Calico v3.30.7 is older than the cluster's v3.31")
    assert crd_state(control_plane) == before
    assert revisions(helm)[-1] == (3, "deployed")

    upgrade(helm, at_3_30, "calicoCrdHook.logFormat=json")  # a values change of the rolled-back release

    assert summary_of(image_harness.runs[-1])["kept_newer_crds"]
    assert crd_state(control_plane) == before

    helm("rollback", RELEASE, "2", "-n", NAMESPACE, "--timeout", "3m")  # undo the rollback: v3.31 again

    assert summary_of(image_harness.runs[-1])["already_current"] is True
    assert [run["exit_code"] for run in image_harness.runs] == [0, 0, 0, 0]


def test_fresh_install_up_to_3_31_comes_with_crds_and_the_first_upgrade_records_them(helm, image_harness,
                                                                                     control_plane, tmp_path,
                                                                                     bundle):
    chart = hook_chart(tmp_path, "v3.31.7", "1.3.0", bundle)

    install(helm, chart)

    assert image_harness.runs == []  # Helm created crds/; the hook is not an install hook
    assert control_plane.get(f"{CRDS}/tiers.crd.projectcalico.org") is not None
    upgrade(helm, chart, "calicoCrdHook.timeoutSeconds=200")
    first = summary_of(image_harness.runs[-1])
    assert (first["created"], first["updated"]) == ([], [])  # Helm's documents are the release's
    assert set(first["tiers_created"]) == {"default", "adminnetworkpolicy", "baselineadminnetworkpolicy"}
    upgrade(helm, chart, "calicoCrdHook.timeoutSeconds=210")
    assert summary_of(image_harness.runs[-1])["already_current"] is True


def test_fresh_install_of_3_32_needs_its_crds_before_helm(helm, image_harness, control_plane, tmp_path, bundle):
    """v3.32's tigera-operator chart has no crds/: Helm fails while building the objects, before
    any pre-install hook could run. The CLI pre-step brings the CRDs and Tiers first."""
    with_pre_install = hook_chart(tmp_path, "v3.32.1", "1.4.0", bundle, hookEvents=["pre-install", "pre-upgrade"])
    chart = hook_chart(tmp_path, "v3.32.1", "1.4.1", bundle)

    failed = install(helm, with_pre_install, check=False)

    assert failed.returncode != 0
    assert 'no matches for kind "' in failed.stderr and "ensure CRDs are installed first" in failed.stderr
    assert image_harness.runs == []  # hookEvents: [pre-install] cannot help here
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--no-hooks", check=False)

    pre_step = run_hook("apply", "--version", "v3.32.1", "--bundle-dir", str(bundle),
                        "--kubeconfig", str(control_plane.kubeconfig()))
    assert pre_step.code == 0, pre_step
    install(helm, chart)

    assert {"default", "kube-admin", "kube-baseline"} <= tier_names(control_plane)
    assert control_plane.get("/apis/operator.tigera.io/v1/installations/default") is not None
    upgrade(helm, chart, "calicoCrdHook.timeoutSeconds=200")
    assert summary_of(image_harness.runs[-1])["already_current"] is True


def test_fresh_install_of_3_32_with_the_crd_chart_applied_outside_helm(helm, image_harness, control_plane,
                                                                       tmp_path, bundle):
    """The other way: Calico's CRD chart rendered and applied server-side, never owned by the
    release (so `helm uninstall` cannot delete the CRDs); the hook takes them over on upgrades."""
    rendered = helm("template", "calico-crds", str(real_chart("crd.projectcalico.org.v1", "v3.32.1"))).stdout
    path = tmp_path / "crds.yaml"
    path.write_text(rendered)
    applied = control_plane.kubectl("apply", "--server-side", "-f", str(path), check=False)
    assert applied.returncode == 0, applied.stderr
    assert control_plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s",
                                 check=False).returncode == 0
    crd_names = {doc["metadata"]["name"] for doc in yaml.safe_load_all(rendered) if doc}

    chart = hook_chart(tmp_path, "v3.32.1", "1.4.0", bundle)
    install(helm, chart)
    upgrade(helm, chart, "calicoCrdHook.timeoutSeconds=200")

    first = summary_of(image_harness.runs[-1])
    assert first["created"] == [] and set(first["unchanged"]) | set(first["updated"]) == crd_names
    assert {"default", "kube-admin", "kube-baseline"} <= tier_names(control_plane)
    assert control_plane.get(f"{TIERS}/default")["spec"]["defaultAction"] == "Deny"
