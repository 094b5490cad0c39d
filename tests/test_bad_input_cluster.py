"""Every bad input: a one-line error naming the problem and the way out, the documented exit code,
and a cluster left exactly as it was. Real HTTPS server on 127.0.0.1, real control plane."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable

import pytest
import yaml

from tests.support.calico import manifest_path
from tests.support.calico_cluster import (
    CRDS,
    ends_as_it_began,
    install_crds_like_helm,
    load_documents,
    set_running_version,
    settled_crd_state,
)
from tests.support.httpserver import LocalCA, LocalServer, body
from tests.support.program import run_hook

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(module_control_plane):
    install_crds_like_helm(module_control_plane, manifest_path("v3.28.2"))
    set_running_version(module_control_plane, "v3.28.2")
    with ends_as_it_began(module_control_plane):
        yield module_control_plane


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ca = LocalCA(tmp_path_factory.mktemp("tls"))
    with LocalServer(tls=ca) as local:
        local.ca = ca
        yield local


def documents_3_29() -> list[dict]:
    return load_documents(manifest_path("v3.29.1"))


def edited(edit: Callable[[list[dict]], list[dict] | None]) -> bytes:
    documents = documents_3_29()
    result = edit(documents)
    return yaml.dump_all(result if result is not None else documents, Dumper=yaml.CSafeDumper).encode()


def rename(documents: list[dict], index: int, group: str) -> None:
    documents[index]["spec"]["group"] = group
    documents[index]["metadata"]["name"] = f"{documents[index]['spec']['names']['plural']}.{group}"


ALIAS_BOMB = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]).encode()
CLUSTER_ROLE_BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "sneaky"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
    "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:authenticated"}]}


def _with_first_line(real: bytes, line: bytes) -> bytes:
    """The release file with `line` added to its first CRD's top level."""
    marker = b"kind: CustomResourceDefinition\n"
    assert marker in real
    return real.replace(marker, marker + line + b"\n", 1)


def redirect_loop(request) -> None:
    request.send_response(302)
    request.send_header("Location", request.path)
    request.send_header("Content-Length", "0")
    request.end_headers()


# name: (route for the manifest path or None for a 404, pin the served body's digest?, exit code, message)
CASES = {
    "truncated body": (lambda real: body(real[:40_000], declared_length=len(real)), False, 3, "could not download"),
    "html page with 200": (lambda real: body(b"<html><body>proxy login</body></html>", content_type="text/html"),
                           False, 3, "returned an HTML page, not a YAML manifest"),
    "404": (None, False, 3, "(HTTP 404): check that the version exists"),
    "500": (lambda real: body(b"internal error", status=500), False, 3, "could not download"),
    "redirect loop": (lambda real: redirect_loop, False, 3, "too many redirects"),
    "sha256 mismatch": (lambda real: body(real.replace(b"Calico", b"Cal1co", 1)), False, 3, "sha256 mismatch"),
    "over the size cap": (lambda real: body(b"#" * 1000, declared_length=32 * 1024 * 1024), False, 3,
                          "over the 16777216-byte cap"),
    "invalid yaml": (lambda real: body(real[:5000] + b"\n  : : [\n"), True, 3, "is not valid YAML at line"),
    "alias bomb": (lambda real: body(ALIAS_BOMB), True, 3, "anchors or aliases"),
    # PyYAML's own constructors crashed on this (ValueError); the event-built parse refuses it
    "impossible date": (lambda real: body(_with_first_line(real, b"example: 2024-02-30")), True, 3,
                        "'2024-02-30' at line"),
    "tagged collection": (lambda real: body(_with_first_line(real, b"example: !!set {a, b}")), True, 3,
                          "tags a collection as !!set at line"),
    "non-CRD object": (lambda real: body(real + b"\n---\n" + yaml.safe_dump(CLUSTER_ROLE_BINDING).encode()), True, 3,
                       "(ClusterRoleBinding sneaky, apiVersion rbac.authorization.k8s.io/v1) is not an"),
    "foreign group": (lambda real: body(edited(lambda d: rename(d, 0, "evil.example.com"))), True, 3,
                      "is in group 'evil.example.com'"),
    "an edited document of the release": (lambda real: body(edited(lambda d: d[0]["spec"].update(scope="Everywhere") or
                                                      d[0]["spec"].update(versions="v1"))),
                             True, 3, "CRD apiservers.operator.tigera.io differs from Calico v3.29.1's document at spec.scope"),
    "duplicate names": (lambda real: body(edited(lambda d: d + [copy.deepcopy(d[3])])), True, 3, "appears twice"),
    "name not plural.group": (lambda real: body(edited(lambda d: d[0]["metadata"].update(name="x.crd.projectcalico.org"))),
                              True, 3, "is not <plural>.<group>"),
    "tier CRD missing": (lambda real: body(edited(lambda d: [x for x in d if not x["metadata"]["name"].startswith("tiers.")])),
                         True, 3, "lacks the tiers.crd.projectcalico.org CRD"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_manifest_changes_nothing(cluster, server, case, tmp_path):
    make_route, pin, code, message = CASES[case]
    path = f"/{case.replace(' ', '-')}/v3.29.1/manifests/operator-crds.yaml"
    real = manifest_path("v3.29.1").read_bytes()
    route = make_route(real) if make_route else None
    extra: list[str] = []
    if route:
        server.route(path, route)
    if pin:  # a mirror operator pins their own file, so validation is what must catch it
        served = _served_bytes(server, path)
        extra = ["--sha256", hashlib.sha256(served).hexdigest()]
    before = settled_crd_state(cluster, quiet_seconds=0.2)

    run = run_hook("apply", "--version", "v3.29.1", "--kubeconfig", str(cluster.kubeconfig()),
                   "--url-template", server.base + f"/{case.replace(' ', '-')}" + "/{version}/manifests/{file}",
                   "--ca-bundle", str(server.ca.ca_cert), "--timeout", "30", *extra)

    assert run.code == code, run
    assert message in run.error_line
    assert run.stderr.strip().splitlines()[-1] == run.error_line  # one line, and the last word
    assert ": " in run.error_line.removeprefix("calico-crd-hook: error: ")  # the problem, then the way out
    assert settled_crd_state(cluster, quiet_seconds=0.2) == before
    assert cluster.get(f"{CRDS}/tiers.crd.projectcalico.org") is None


def _served_bytes(server: LocalServer, path: str) -> bytes:
    import requests

    return requests.get(server.base + path, verify=str(server.ca.ca_cert), timeout=10).content


@pytest.mark.parametrize("version,code,message", [
    ("v3.29", 2, "invalid Calico version 'v3.29': give a release such as v3.29.1"),
    ("3.29.1-beta", 2, "invalid Calico version"),
    ("v3.29.99", 3, "no manifest at"),  # no such tag
])
def test_bad_version_changes_nothing(cluster, server, version, code, message):
    before = settled_crd_state(cluster, quiet_seconds=0.2)
    run = run_hook("apply", "--version", version, "--kubeconfig", str(cluster.kubeconfig()),
                   "--url-template", server.base + "/{version}/manifests/{file}",
                   "--ca-bundle", str(server.ca.ca_cert), "--timeout", "30")
    assert run.code == code, run
    assert message in run.error_line
    assert settled_crd_state(cluster, quiet_seconds=0.2) == before
