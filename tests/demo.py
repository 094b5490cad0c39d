"""Demo: start a local control plane, reproduce the reported 3.28.2 -> 3.29.1 failure, fix it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.assets import control_plane_assets
from tests.support.calico import bundle_dir, manifest_path
from tests.support.calico_cluster import create_custom_resources, install_crds_like_helm, set_running_version
from tests.support.controlplane import ControlPlane
from tests.support.program import run_hook


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="calico-crd-hook-demo-") as folder:
        workdir = Path(folder)
        step("starting etcd and kube-apiserver on 127.0.0.1")
        plane = ControlPlane(control_plane_assets(), workdir / "control-plane").start()
        try:
            step("installing the Calico v3.28.2 CRDs the way Helm installs crds/ (once, never upgraded)")
            install_crds_like_helm(plane, manifest_path("v3.28.2"))
            set_running_version(plane, "v3.28.2")
            create_custom_resources(plane)
            step("after `helm upgrade` to v3.29.1 without the hook, the Tier CRD is still missing:")
            missing = plane.kubectl("get", "tiers.crd.projectcalico.org", check=False)
            print(missing.stderr.strip() or missing.stdout.strip())
            print("(calico-node would now fail: resource does not exist: Tier(default))")
            step("running: calico-crd-hook apply --version v3.29.1")
            run = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(workdir, "v3.29.1")),
                           "--kubeconfig", str(plane.kubeconfig()))
            print(run.stderr, end="", file=sys.stderr)
            print(run.stdout, end="")
            if run.code != 0:
                return run.code
            step("kubectl get tiers")
            print(plane.kubectl("get", "tiers.crd.projectcalico.org", "-o",
                                "custom-columns=NAME:.metadata.name,ORDER:.spec.order,DEFAULT:.spec.defaultAction").stdout)
            step("running it again changes nothing")
            again = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(workdir, "v3.29.1")),
                             "--kubeconfig", str(plane.kubeconfig()))
            print(again.stdout, end="")
            return again.code
        finally:
            plane.stop()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as error:
        print(error.stderr, file=sys.stderr)
        sys.exit(1)
