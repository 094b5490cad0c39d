"""The command-line contract: usage errors, environment variables, validate and bundle."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.support.calico import bundle_dir, manifest_path
from tests.support.httpserver import LocalCA, LocalServer, body
from tests.support.program import run_hook


@pytest.mark.parametrize("version", ["3.29", "v3.29.1-rc1", "latest"])
def test_malformed_version_is_a_usage_error(version, tmp_path):
    run = run_hook("validate", "--version", version, "--bundle-dir", str(tmp_path))
    assert run.code == 2, run
    assert run.error_line == (f"calico-crd-hook: error: invalid Calico version {version!r}: "
                              "give a release such as v3.29.1 or 3.29.1")
    assert len(run.stderr.strip().splitlines()) == 1


def test_unknown_flag_is_one_line_with_exit_2():
    run = run_hook("apply", "--versoin", "v3.29.1")
    assert run.code == 2
    assert run.stderr.strip().splitlines() == [run.error_line]
    assert "unrecognized arguments: --versoin" in run.error_line


def test_apply_without_a_version_is_a_usage_error():
    run = run_hook("apply", "--kubeconfig", "/nonexistent")
    assert run.code == 2
    assert "apply needs --version" in run.error_line


def test_two_sources_are_a_usage_error(tmp_path):
    run = run_hook("validate", "--version", "v3.29.1", "--manifest", str(manifest_path("v3.29.1")),
                   "--bundle-dir", str(tmp_path))
    assert run.code == 2
    assert "--manifest and --bundle-dir both name a source" in run.error_line


def test_missing_kubeconfig_is_a_usage_error(tmp_path):
    run = run_hook("apply", "--version", "v3.29.1", "--kubeconfig", str(tmp_path / "nope"))
    assert run.code == 2
    assert "kubeconfig" in run.error_line and "does not exist" in run.error_line


def test_validate_a_file_alone():
    run = run_hook("validate", "--manifest", str(manifest_path("v3.30.7")))
    assert run.code == 0, run
    assert "32 CRDs (crd.projectcalico.org, operator.tigera.io, policy.networking.k8s.io)" in run.stdout


def test_validate_checks_the_shipped_digest_of_a_local_file_for_a_known_version():
    run = run_hook("validate", "--version", "v3.29.1", "--manifest", str(manifest_path("v3.28.2")))
    assert run.code == 3
    assert "sha256 mismatch" in run.error_line


def test_flags_come_from_the_environment(tmp_path):
    run = run_hook("validate", env={"CALICO_CRD_HOOK_VERSION": "3.29.1",
                                    "CALICO_CRD_HOOK_BUNDLE_DIR": str(bundle_dir(tmp_path, "v3.29.1")),
                                    "CALICO_CRD_HOOK_LOG_FORMAT": "json"})
    assert run.code == 0, run
    assert json.loads(run.stdout)["crds"] == 24


def test_boolean_environment_values_are_checked():
    run = run_hook("apply", "--version", "v3.29.1", env={"CALICO_CRD_HOOK_DRY_RUN": "maybe"})
    assert run.code == 2
    assert "CALICO_CRD_HOOK_DRY_RUN='maybe' is not a boolean" in run.error_line


def test_missing_bundle_file_says_how_to_add_it(tmp_path):
    run = run_hook("validate", "--version", "v3.30.7", "--bundle-dir", str(tmp_path))
    assert run.code == 2
    assert "calico-crd-hook bundle --version v3.30.7" in run.error_line


def test_json_errors_and_termination_log(tmp_path):
    termination_log = tmp_path / "termination-log"
    run = run_hook("validate", "--version", "v3.29.1", "--manifest", str(manifest_path("v3.28.2")),
                   "--log-format", "json", "--termination-log", str(termination_log))
    assert run.code == 3
    error = json.loads(run.stderr.strip().splitlines()[-1])
    assert error["exit_code"] == 3 and "sha256 mismatch" in error["msg"]
    assert termination_log.read_text().startswith("calico-crd-hook: error: sha256 mismatch")


def test_bundle_downloads_verifies_and_lays_out(tmp_path):
    ca = LocalCA(tmp_path / "tls")
    with LocalServer(tls=ca) as server:
        for tag in ("v3.29.1", "v3.32.1"):
            server.route(f"/{tag}/manifests/operator-crds.yaml", body(manifest_path(tag).read_bytes()))
        server.route("/v3.32.1/manifests/v3_projectcalico_org.yaml",
                     body(manifest_path("v3.32.1", "v3_projectcalico_org.yaml").read_bytes()))
        out = tmp_path / "out"
        run = run_hook("bundle", "--version", "v3.29.1", "--version", "3.32.1", "--out", str(out),
                       "--url-template", server.base + "/{version}/manifests/{file}",
                       "--ca-bundle", str(ca.ca_cert))
    assert run.code == 0, run
    laid_out = sorted(str(p.relative_to(out)) for p in out.rglob("*.yaml"))
    assert laid_out == ["v3.29.1/operator-crds.yaml", "v3.32.1/operator-crds.yaml",
                        "v3.32.1/v3_projectcalico_org.yaml"]
    for relative in laid_out:
        tag, name = relative.split("/")
        assert (out / relative).read_bytes() == manifest_path(tag, name).read_bytes()
    again = run_hook("validate", "--version", "v3.32.1", "--bundle-dir", str(out))
    assert again.code == 0, again


def test_bundle_refuses_a_version_no_digest_pins(tmp_path):
    with LocalServer() as server:
        server.route("/v9.0.0/manifests/operator-crds.yaml", body(manifest_path("v3.29.1").read_bytes()))
        run = run_hook("bundle", "--version", "v9.0.0", "--out", str(tmp_path / "out"), "--allow-http",
                       "--url-template", server.base + "/{version}/manifests/{file}")
    assert run.code == 2
    assert "no known digest for Calico v9.0.0" in run.error_line and "--sha256" in run.error_line
    assert not (tmp_path / "out").exists()


def test_unknown_version_with_a_given_digest_is_accepted(tmp_path):
    data = manifest_path("v3.29.1").read_bytes()
    with LocalServer() as server:
        server.route("/v3.29.99/manifests/operator-crds.yaml", body(data))
        run = run_hook("validate", "--version", "v3.29.99", "--allow-http", "--require-pinned",
                       "--sha256", hashlib.sha256(data).hexdigest(),
                       "--url-template", server.base + "/{version}/manifests/{file}")
    assert run.code == 0, run


def test_gzipped_bundle_file_fits_a_configmap_and_validates(tmp_path):
    import gzip

    folder = tmp_path / "bundle" / "v3.32.1"
    folder.mkdir(parents=True)
    compressed = gzip.compress(manifest_path("v3.32.1").read_bytes())
    assert len(compressed) < 1024 * 1024 * 3 // 4  # base64 in binaryData stays under a ConfigMap's 1 MiB
    (folder / "operator-crds.yaml.gz").write_bytes(compressed)
    run = run_hook("validate", "--version", "v3.32.1", "--bundle-dir", str(tmp_path / "bundle"))
    assert run.code == 0, run
    assert "operator-crds.yaml.gz: 32 CRDs" in run.stdout


def test_gzip_bomb_stops_at_the_size_cap(tmp_path):
    import gzip

    folder = tmp_path / "bundle" / "v3.29.1"
    folder.mkdir(parents=True)
    (folder / "operator-crds.yaml.gz").write_bytes(gzip.compress(b"#" * (64 * 1024 * 1024)))
    run = run_hook("validate", "--version", "v3.29.1", "--bundle-dir", str(tmp_path / "bundle"))
    assert run.code == 3
    assert "expands to more than 16777216 bytes" in run.error_line


def test_require_pinned_refuses_an_unknown_version_without_a_digest():
    with LocalServer() as server:
        server.route("/v3.29.99/manifests/operator-crds.yaml", body(manifest_path("v3.29.1").read_bytes()))
        run = run_hook("validate", "--version", "v3.29.99", "--allow-http", "--require-pinned",
                       "--url-template", server.base + "/{version}/manifests/{file}")
        assert run.code == 2
        assert "no known digest for Calico v3.29.99 and --require-pinned is set: pass --sha256" in run.error_line
        assert server.served.hits == {}  # refused before downloading
        unpinned = run_hook("validate", "--version", "v3.29.99", "--allow-http",
                            "--url-template", server.base + "/{version}/manifests/{file}")
    assert unpinned.code == 0, unpinned
    assert "warning: no digest pins" in unpinned.stderr


def test_kubeconfig_that_skips_tls_verification_is_refused(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    run = run_hook("apply", "--version", "v3.29.1", "--kubeconfig", str(kubeconfig))
    assert run.code == 2
    assert "insecure-skip-tls-verify" in run.error_line and "always verifies" in run.error_line
