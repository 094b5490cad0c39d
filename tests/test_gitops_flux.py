"""Flux, as helm-controller v1.6.3 runs a HelmRelease (read at that tag; each rule cited), with the
hook Job in the built image:

- `install.crds` and `upgrade.crds` left empty mean Create (internal/action/crds.go,
  `crdPolicyOrDefault`: DefaultCRDPolicy), whatever the API comments say.
- Before Helm's own install or upgrade runs (so before any hook), `applyCRDs` applies the chart's
  crds/, labelled with the HelmRelease's name and namespace; with server-side apply, the default
  since v1.5, Create is a forced apply (Helm v4 pkg/kube/client.go `makeCreateApplyFunc`) as
  manager helm-controller (main.go, kube.ManagedFieldsManager). Skip applies none.
- Helm's install then runs with SkipCRDs (internal/action/install.go `newInstall`); hooks run as
  with the helm command (`newUpgrade`, `newRollback` pass disableHooks, false by default).
- helm-controller links Helm v4 (go.mod), so Helm 4 plays Helm's part here.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.support import assets
from tests.support.calico import manifest_path
from tests.support.calico_cluster import (
    CRDS,
    crd_state,
    load_documents,
    settled_crd_state,
    tier_names,
    wait_established,
)
from tests.support.charts import hook_chart
from tests.support.helm import Helm

pytestmark = [pytest.mark.gitops, pytest.mark.cluster, pytest.mark.helm, pytest.mark.image]

NAMESPACE = "tigera-operator"
RELEASE = "calico"
ORIGIN_LABELS = {"helm.toolkit.fluxcd.io/name": RELEASE, "helm.toolkit.fluxcd.io/namespace": "flux-system"}


@pytest.fixture
def helm(control_plane, tmp_path) -> Helm:
    return Helm(assets.helm_binary(assets.HELM4_VERSION), control_plane, tmp_path / "helm-home")


def apply_crds_like_helm_controller(helm: Helm, chart: Path) -> None:
    """applyCRDs with the Create policy: the chart's crds/ (its dependencies' included), labelled,
    force-applied server-side as helm-controller; then it waits until they are served."""
    rendered = helm("template", RELEASE, str(chart), "--include-crds", "-n", NAMESPACE).stdout
    crds = [doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "CustomResourceDefinition"]
    for crd in crds:
        crd["metadata"].setdefault("labels", {}).update(ORIGIN_LABELS)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as manifest:
        yaml.safe_dump_all(crds, manifest)
        manifest.flush()
        helm.plane.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=helm-controller",
                           "-f", manifest.name)
    wait_established(helm.plane, [crd["metadata"]["name"] for crd in crds])


def reconcile(helm: Helm, chart: Path, crds_policy: str = "", first: bool = False, *values: str):
    """One reconcile of the HelmRelease: crds/ by the policy, then Helm's install or upgrade."""
    if crds_policy in ("", "Create"):
        apply_crds_like_helm_controller(helm, chart)
    action = ["install", "--skip-crds", "--create-namespace"] if first else ["upgrade"]
    flags = [flag for value in values for flag in ("--set", value)]
    return helm(*action, RELEASE, str(chart), "-n", NAMESPACE, "--timeout", "3m", *flags)


def last_summary(harness) -> dict:
    run = harness.runs[-1]
    assert run["exit_code"] == 0, run
    return json.loads(run["stdout"])["summary"]


def test_flux_default_crd_policy_then_the_hook(helm, image_harness, control_plane, tmp_path, bundle):
    """The default (Create) policy applies the new chart's crds/ before the upgrade, new kinds
    included, and the hook then records them and creates the Tiers; the next reconcile has
    nothing to do, and Flux's origin labels stay."""
    at_3_29 = hook_chart(tmp_path, "v3.29.1", "1.1.0", bundle)
    at_3_30 = hook_chart(tmp_path, "v3.30.7", "1.2.0", bundle)

    reconcile(helm, at_3_29, first=True)
    assert image_harness.runs == []  # pre-upgrade and pre-rollback only
    reconcile(helm, at_3_30)  # 3.29 -> 3.30 renders Goldmane: its CRD came with crds/, before Helm

    upgraded = last_summary(image_harness)
    assert upgraded["target_version"] == "v3.30.7" and upgraded["created"] == []
    assert "baselineadminnetworkpolicy" in upgraded["tiers_created"]
    assert control_plane.get("/apis/operator.tigera.io/v1/goldmanes/default") is not None

    reconcile(helm, at_3_30, "", False, "calicoCrdHook.logFormat=json")  # a values change

    assert last_summary(image_harness)["already_current"] is True
    labels = control_plane.get(f"{CRDS}/tiers.crd.projectcalico.org")["metadata"]["labels"]
    assert {key: labels.get(key) for key in ORIGIN_LABELS} == ORIGIN_LABELS


def test_flux_revert_with_upgrade_crds_skip_keeps_the_newer_crds(helm, image_harness, control_plane, tmp_path,
                                                                 bundle):
    """With `upgrade.crds: Skip` the hook is the only writer of CRDs on upgrades, and a Git revert of
    the chart keeps the newer ones; with the default policy helm-controller itself force-applies
    the older chart's crds/ before any hook runs."""
    at_3_30 = hook_chart(tmp_path, "v3.30.7", "1.2.0", bundle)
    at_3_31 = hook_chart(tmp_path, "v3.31.7", "1.3.0", bundle)
    reconcile(helm, at_3_30, first=True)  # install.crds: Create
    reconcile(helm, at_3_31, "Skip")
    assert last_summary(image_harness)["target_version"] == "v3.31.7"
    before = settled_crd_state(control_plane)

    reconcile(helm, at_3_30, "Skip")  # the revert

    assert last_summary(image_harness)["kept_newer_crds"].startswith("Calico v3.30.7 is older than the cluster's")
    assert crd_state(control_plane) == before
    assert {"default", "adminnetworkpolicy", "baselineadminnetworkpolicy"} <= tier_names(control_plane)

    reconcile(helm, at_3_30, "Create")  # the same revert under the default policy

    shipped = next(doc for doc in load_documents(manifest_path("v3.30.7"))
                   if doc["metadata"]["name"] == "installations.operator.tigera.io")
    live = control_plane.get(f"{CRDS}/installations.operator.tigera.io")
    assert live["spec"]["versions"][0]["schema"] == shipped["spec"]["versions"][0]["schema"]  # regressed by Flux
