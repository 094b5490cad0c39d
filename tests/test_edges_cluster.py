"""Operational edges against the real apiserver: a server error that never heals, and a cluster
crowded with unrelated CRDs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.calico import bundle_dir, manifest_path
from tests.support.calico_cluster import (
    CRDS,
    install_crds_like_helm,
    set_running_version,
    settled_crd_state,
    wait_until,
)
from tests.support.controlplane import free_port
from tests.support.program import HOOK_COMMAND, hook_env, run_hook

pytestmark = pytest.mark.cluster

WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


def broken_crd_webhook(plane) -> str:
    """A webhook on every CRD write whose service is gone: each write then answers HTTP 500."""
    name = "broken-crd-webhook"
    webhook = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
               "metadata": {"name": name},
               "webhooks": [{"name": "crds.broken.example.com", "admissionReviewVersions": ["v1"],
                             "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 1,
                             "clientConfig": {"url": f"https://127.0.0.1:{free_port()}/validate"},
                             "rules": [{"apiGroups": ["apiextensions.k8s.io"], "apiVersions": ["v1"],
                                        "operations": ["CREATE", "UPDATE"],
                                        "resources": ["customresourcedefinitions"]}]}]}
    assert plane.api("POST", WEBHOOKS, webhook).status_code == 201
    return name


def test_a_server_error_that_never_heals_is_reported_with_what_the_server_said(control_plane, tmp_path):
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    set_running_version(control_plane, "v3.28.2")
    broken_crd_webhook(control_plane)
    probe = _crowding_crd(0, 10)  # any CRD write: once the webhook is in force, it fails with 500
    wait_until(lambda: control_plane.api("POST", CRDS, probe, params={"dryRun": "All"}).status_code == 500,
               "the apiserver calls the webhook")
    before = settled_crd_state(control_plane, quiet_seconds=0.2)

    run = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                   "--kubeconfig", str(control_plane.kubeconfig()), "--timeout", "8")

    assert run.code == 5, run
    assert "kept failing PATCH" in run.error_line and "until the deadline; its last answer: HTTP 500" in run.error_line
    assert "failed calling webhook" in run.error_line
    assert "did not answer" not in run.error_line
    assert settled_crd_state(control_plane, quiet_seconds=0.2) == before


def _crowding_crd(index: int, description_bytes: int) -> dict:
    group = f"crowd{index}.example.com"
    schema = {"type": "object", "description": "x" * description_bytes,
              "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"widgets.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": schema}}]}}


def _timed_dry_run(plane, tmp_path) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one `apply --dry-run`: every read, every dry-run, no write."""
    measure = ("import resource, subprocess, sys, time; started = time.monotonic(); "
               "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
               "print(code, time.monotonic() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", measure, *HOOK_COMMAND, "apply", "--dry-run",
                             "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                             "--kubeconfig", str(plane.kubeconfig()), "--timeout", "120"],
                            capture_output=True, text=True, env=hook_env(), check=True)
    code, seconds, peak = result.stdout.split()
    assert code == "0", result
    return float(seconds), int(peak)


@pytest.mark.slow
def test_three_hundred_unrelated_crds_cost_neither_memory_nor_time(control_plane, tmp_path):
    install_crds_like_helm(control_plane, manifest_path("v3.28.2"))
    set_running_version(control_plane, "v3.28.2")
    alone = [_timed_dry_run(control_plane, tmp_path) for _ in range(3)]

    # 300 CRDs of other projects, 20 of them carrying 1 MB schemas (Crossplane providers are like this).
    for index in range(300):
        crowding = _crowding_crd(index, 1_000_000 if index % 15 == 0 else 2_000)
        response = control_plane.api("POST", CRDS, crowding)
        assert response.status_code == 201, response.text[:300]
    listed = control_plane.api("GET", CRDS)
    assert len(listed.content) > 20_000_000  # what a full LIST would have to read and hold
    crowded = [_timed_dry_run(control_plane, tmp_path) for _ in range(3)]

    alone_seconds, alone_peak = min(s for s, _ in alone), min(p for _, p in alone)
    crowded_seconds, crowded_peak = min(s for s, _ in crowded), min(p for _, p in crowded)
    print(json.dumps({"alone": alone, "crowded": crowded}))
    assert crowded_peak < alone_peak + 10 * 1024, (alone, crowded)  # KiB: flat, not +20 MB of schemas
    assert crowded_seconds < alone_seconds * 1.5 + 0.5, (alone, crowded)
