"""The manifest policy against the real apiserver: where the server also refuses a bad CRD, the
offline rule is proven no weaker than it; where the server would accept it, the policy is all that
stands between the file and the cluster. Both are shown by sending the very CRD to the server's
dry-run, and by running the program, which refuses offline and changes nothing."""

from __future__ import annotations

import json
import time

import pytest
import requests
from calico_crd_hook.client import Cluster
from calico_crd_hook.errors import EXIT_MANIFEST_REJECTED, ManifestRejected
from calico_crd_hook.kubeconfig import load_credentials
from calico_crd_hook.manifest import Crd, Manifest
from calico_crd_hook.preflight import live_crds, run_preflight
from calico_crd_hook.release_rules import BUILT_IN_CATEGORIES, BUILT_IN_SHORT_NAMES
from calico_crd_hook.version import ApiMode, parse_version

from tests.support.bad_manifests import (
    ACCEPTS,
    BAD_TIERS,
    REJECTS,
    RELEASE_RULE_CASES,
    TIER_CRD,
    dump,
    edited_tier,
    manifest_with,
    real_documents,
    tier_document,
    write_pinned,
)
from tests.support.calico import manifest_path
from tests.support.calico_cluster import CRDS, ends_as_it_began, install_crds_like_helm, settled_crd_state
from tests.support.program import run_hook

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(module_control_plane):
    install_crds_like_helm(module_control_plane, manifest_path("v3.28.2"))
    with ends_as_it_began(module_control_plane):
        yield module_control_plane


def dry_run_apply(plane, name: str, body: bytes) -> requests.Response:
    """`body` (YAML or JSON) as a server-side apply would send it (dry-run: nothing is kept)."""
    return requests.patch(f"{plane.server}{CRDS}/{name}", data=body,
                          params={"fieldManager": "policy-test", "force": "true", "dryRun": "All"},
                          headers={"Authorization": f"Bearer {plane.admin_token}",
                                   "Content-Type": "application/apply-patch+yaml"},
                          verify=str(plane.ca_file), timeout=60)


def server_dry_run(plane, case_name: str) -> requests.Response:
    """The edited Tier CRD, as the YAML a server-side apply would send."""
    tier, text = edited_tier(BAD_TIERS[case_name])
    return dry_run_apply(plane, tier["metadata"]["name"], text.encode())


@pytest.mark.parametrize("case", [name for name, bad in BAD_TIERS.items() if bad.server == REJECTS])
def test_the_apiserver_also_refuses_what_the_policy_mirrors(cluster, case):
    response = server_dry_run(cluster, case)
    assert response.status_code in (400, 422), (response.status_code, response.text[:400])


@pytest.mark.parametrize("case", [name for name, bad in BAD_TIERS.items() if bad.server == ACCEPTS])
def test_the_apiserver_would_write_what_only_the_policy_refuses(cluster, case):
    response = server_dry_run(cluster, case)
    assert response.status_code in (200, 201), (response.status_code, response.text[:1000])


@pytest.mark.parametrize("case", ["scope Galaxy", "conversion webhook", "duplicate key flips the scope",
                                  "ownerReferences", "storage version not served", "int64 overflow",
                                  "default of another type", "embedded resource not an object", "properties and items",
                                  "map list without keys", "pattern not a regular expression",
                                  "selectable field naming no field", *RELEASE_RULE_CASES])
def test_apply_refuses_offline_and_changes_nothing(cluster, case, tmp_path):
    """With modified CRDs allowed, so that the rule itself is what refuses (without, any modified
    document of a known release is refused first)."""
    bad = BAD_TIERS[case]
    path, digest = write_pinned(tmp_path, manifest_with(bad))
    before = settled_crd_state(cluster, quiet_seconds=0.2)

    run = run_hook("apply", "--version", "v3.29.1", "--manifest", str(path), "--sha256", digest,
                   "--allow-modified-crds", "--kubeconfig", str(cluster.kubeconfig()), "--timeout", "30")

    assert run.code == 3, run
    assert bad.message in run.error_line
    assert run.stderr.strip().splitlines()[-1] == run.error_line
    assert settled_crd_state(cluster, quiet_seconds=0.2) == before
    assert cluster.get(f"{CRDS}/{TIER_CRD}") is None


def test_a_crd_the_apiserver_finds_too_large_is_a_manifest_problem(cluster):
    """Past the offline cap (say, an older program's larger cap, or a smaller server limit) the
    server's own 413 is reported as what it is: exit 3, the manifest, not the cluster."""
    tier = tier_document(real_documents())
    tier.pop("status")
    tier["metadata"].pop("creationTimestamp")
    tier["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = "x" * (3 << 20)
    oversized = Crd(name=TIER_CRD, group="crd.projectcalico.org", kind="Tier", served_versions=("v1",), digest="0" * 64,
                    body=tier, encoded=json.dumps(tier).encode())
    manifest = Manifest(crds=(oversized,), origin="test", sha256="0" * 64)
    client = Cluster(load_credentials(str(cluster.kubeconfig())), time.monotonic() + 30, 1)
    before = settled_crd_state(cluster, quiet_seconds=0.2)

    with pytest.raises(ManifestRejected) as refused:
        run_preflight(client, manifest, parse_version("v3.28.2"), ApiMode.V1, live_crds(client), None)

    assert refused.value.exit_code == EXIT_MANIFEST_REJECTED
    assert f"the apiserver refused CRD {TIER_CRD} as too large" in refused.value.message
    assert "HTTP 413" in refused.value.message
    assert settled_crd_state(cluster, quiet_seconds=0.2) == before


def test_the_built_in_short_names_and_categories_are_the_apiservers(cluster):
    """release_rules' list of what built-in resources claim, against the real apiserver's discovery."""
    short_names, categories = set(), set()
    versions = ["/api/v1", *(f"/apis/{version['groupVersion']}" for group in cluster.get("/apis")["groups"]
                             for version in group["versions"])]
    for path in versions:
        for resource in (cluster.get(path) or {}).get("resources", []):
            if "/" not in resource["name"] and not resource["name"].endswith(".projectcalico.org"):
                short_names |= set(resource.get("shortNames") or [])
                categories |= set(resource.get("categories") or [])
    calico = {name for crd in cluster.get(CRDS)["items"] for name in crd["spec"]["names"].get("shortNames") or []}
    assert short_names - calico <= BUILT_IN_SHORT_NAMES and {"po", "svc", "deploy"} <= short_names
    assert categories <= BUILT_IN_CATEGORIES and "all" in categories


def test_a_known_release_edited_as_the_server_would_accept_is_refused_and_changes_nothing(cluster, tmp_path):
    """A mirror's v3.29.1 whose Tier CRD caps the order at 10: the server's dry-run takes it, the
    release's document is what stops it."""
    documents = real_documents()
    tier = tier_document(documents)
    tier.pop("status")
    schema = tier["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"]["properties"]["order"]["maximum"] = 10
    response = dry_run_apply(cluster, TIER_CRD, json.dumps(tier).encode())
    assert response.status_code in (200, 201), response.text[:400]
    path, digest = write_pinned(tmp_path, dump(documents))
    before = settled_crd_state(cluster, quiet_seconds=0.2)

    run = run_hook("apply", "--version", "v3.29.1", "--manifest", str(path), "--sha256", digest,
                   "--kubeconfig", str(cluster.kubeconfig()), "--timeout", "30")

    assert run.code == 3, run
    assert (f"CRD {TIER_CRD} differs from Calico v3.29.1's document at "
            "spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.order.maximum (added)") in run.error_line
    assert settled_crd_state(cluster, quiet_seconds=0.2) == before
    assert cluster.get(f"{CRDS}/{TIER_CRD}") is None
