"""No token, password or key ever reaches the logs, the summary or an error line."""

from __future__ import annotations

import json

import pytest

from tests.support.calico import bundle_dir, manifest_path
from tests.support.calico_cluster import install_crds_like_helm, set_running_version
from tests.support.httpserver import LocalServer
from tests.support.program import run_hook
from tests.support.rbac import bind_service_account, documented_cluster_role, in_cluster_env, without_verb

pytestmark = pytest.mark.cluster


def assert_secret_absent(secret: str, *outputs: str) -> None:
    for output in outputs:
        assert secret not in output
        assert secret[-24:] not in output  # not even a tail of it


def test_service_account_token_never_printed(control_plane, tmp_path):
    plane = control_plane
    install_crds_like_helm(plane, manifest_path("v3.28.2"))
    set_running_version(plane, "v3.28.2")
    role = documented_cluster_role()
    token = bind_service_account(plane, without_verb(role, 0, "create"), name="reduced")
    good_token = bind_service_account(plane, role)
    bundle = str(bundle_dir(tmp_path, "v3.29.1"))
    runs = []
    for log_format in ("text", "json"):
        forbidden = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", bundle, "--log-format", log_format,
                             env=in_cluster_env(plane, token, tmp_path))
        assert forbidden.code == 5, forbidden
        runs.append(forbidden)
    unauthorized = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", bundle,
                            env=in_cluster_env(plane, good_token[:-5] + "AAAAA", tmp_path))
    assert unauthorized.code == 5 and "401 Unauthorized" in unauthorized.error_line, unauthorized
    success = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", bundle, "--log-format", "json",
                       env=in_cluster_env(plane, good_token, tmp_path))
    assert success.code == 0, success
    assert json.loads(success.stdout)["summary"]["tiers_created"] == ["default", "adminnetworkpolicy"]
    for run in runs + [unauthorized, success]:
        assert_secret_absent(token, run.stdout, run.stderr)
        assert_secret_absent(good_token, run.stdout, run.stderr)


def test_admin_token_from_kubeconfig_never_printed(control_plane, tmp_path):
    kubeconfig = control_plane.kubeconfig()
    kubeconfig.write_text(kubeconfig.read_text().replace(control_plane.server, "https://127.0.0.1:1"))
    run = run_hook("apply", "--version", "v3.29.1", "--bundle-dir", str(bundle_dir(tmp_path, "v3.29.1")),
                   "--kubeconfig", str(kubeconfig), "--timeout", "2")
    assert run.code == 5
    assert_secret_absent(control_plane.admin_token, run.stdout, run.stderr)


def test_credentials_in_a_mirror_url_are_redacted():
    with LocalServer() as server:
        template = server.base.replace("http://", "http://mirror-user:s3cr3t-pa55@") + "/{version}/{file}"
        run = run_hook("validate", "--version", "v3.29.1", "--allow-http", "--url-template", template)
    assert run.code == 3, run
    assert "no manifest at http://<redacted>@127.0.0.1" in run.error_line
    assert "s3cr3t-pa55" not in run.stdout + run.stderr
