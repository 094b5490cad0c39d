"""Operational edges a careful operator hits: numbers from flags and variables, kubeconfig files,
which cluster a Pod talks to, secrets in reprs, JSON output, API-mode detection."""

from __future__ import annotations

import json

import pytest
from calico_crd_hook.errors import UsageError
from calico_crd_hook.kubeconfig import Credentials, load_credentials
from calico_crd_hook.version import ApiMode, parse_version, resolve_api_mode

from tests.support.calico import manifest_path
from tests.support.program import run_hook


@pytest.mark.parametrize("args,env,message", [
    ([], {"CALICO_CRD_HOOK_TIMEOUT": "abc"}, "CALICO_CRD_HOOK_TIMEOUT must be a number, not 'abc'"),
    ([], {"CALICO_CRD_HOOK_CONCURRENCY": "x"}, "CALICO_CRD_HOOK_CONCURRENCY must be an integer, not 'x'"),
    ([], {"CALICO_CRD_HOOK_CONCURRENCY": "0"}, "CALICO_CRD_HOOK_CONCURRENCY must be between 1 and 64, not '0'"),
    (["--timeout", "nan"], {}, "--timeout must be between 0.001 and 86400, not 'nan'"),
    (["--timeout", "inf"], {}, "--timeout must be between 0.001 and 86400, not 'inf'"),
    (["--timeout", "1e999"], {}, "--timeout must be between 0.001 and 86400, not '1e999'"),
    (["--timeout", "-5"], {}, "--timeout must be between 0.001 and 86400, not '-5'"),
    (["--concurrency", "2.5"], {}, "--concurrency must be an integer, not '2.5'"),
    (["--concurrency", "1000"], {}, "--concurrency must be between 1 and 64, not '1000'"),
])
def test_every_bad_number_is_a_usage_error(args, env, message, tmp_path):
    run = run_hook("apply", "--version", "v3.29.1", "--kubeconfig", str(tmp_path / "unused"), *args, env=env)
    assert run.code == 2, run
    assert message in run.error_line
    assert run.stderr.strip().splitlines() == [run.error_line]


def test_a_good_number_from_the_environment_is_used(tmp_path):
    run = run_hook("validate", "--manifest", str(manifest_path("v3.29.1")), env={"CALICO_CRD_HOOK_TIMEOUT": " 30 "})
    assert run.code == 0, run


def _kubeconfig(tmp_path, cluster: dict, user: dict) -> str:
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
              "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", **cluster}}],
              "users": [{"name": "u", "user": user}], "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize("cluster,user,field", [
    ({"certificate-authority": "missing-ca.crt"}, {"token": "t"}, "certificate-authority"),
    ({}, {"client-certificate": "/nonexistent/client.crt", "client-key": "/nonexistent/client.key"}, "client-certificate"),
    ({}, {"tokenFile": "gone/token"}, "tokenFile"),
])
def test_a_kubeconfig_naming_a_missing_file_is_a_usage_error(tmp_path, cluster, user, field):
    run = run_hook("apply", "--version", "v3.29.1", "--kubeconfig", _kubeconfig(tmp_path, cluster, user))
    assert run.code == 2, run
    assert f"kubeconfig {tmp_path / 'kubeconfig'}: {field} names " in run.error_line
    assert "which does not exist: fix the kubeconfig, or mount the file" in run.error_line


def test_kubeconfig_environment_wins_over_the_in_cluster_service_account(tmp_path, monkeypatch):
    """client-go's order: a Pod whose KUBECONFIG names another cluster talks to that cluster."""
    kubeconfig = _kubeconfig(tmp_path, {}, {"token": "from-kubeconfig"})
    (tmp_path / "token").write_text("from-service-account")
    (tmp_path / "ca.crt").write_text("unused")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    chosen = load_credentials(None, str(tmp_path / "token"), str(tmp_path / "ca.crt"))
    assert chosen.source == f"kubeconfig {kubeconfig}"
    monkeypatch.delenv("KUBECONFIG")
    chosen = load_credentials(None, str(tmp_path / "token"), str(tmp_path / "ca.crt"))
    assert chosen.source == "in-cluster ServiceAccount"
    assert chosen.server == "https://10.0.0.1:443"


def test_credentials_never_show_the_token():
    credentials = Credentials(server="https://x", token="s3cr3t-token-value")
    assert "s3cr3t" not in repr(credentials)


def test_json_mode_prints_only_json_with_timestamps(tmp_path):
    run = run_hook("validate", "--manifest", str(manifest_path("v3.29.1")), "--log-format", "json")
    assert run.code == 0, run
    summary = json.loads(run.stdout)
    assert summary["result"] == "valid" and summary["crds"] == 24
    for line in run.stderr.strip().splitlines():
        assert "time" in json.loads(line)
    failed = run_hook("validate", "--version", "v3.29", "--log-format", "json")
    error = json.loads(failed.stderr.strip().splitlines()[-1])
    assert error["level"] == "error" and error["exit_code"] == 2 and error["time"].endswith("Z")


V3_32 = parse_version("v3.32.1")


@pytest.mark.parametrize("names,configured,expected", [
    ({"tiers.crd.projectcalico.org", "tiers.projectcalico.org"}, None, ApiMode.V1),
    ({"tiers.projectcalico.org"}, None, ApiMode.V3),
    ({"tiers.crd.projectcalico.org", "migrations.migration.projectcalico.org"}, None, ApiMode.V1),
    ({"migrations.migration.projectcalico.org"}, None, ApiMode.V1),  # another API, not v3 mode
    ({"tiers.crd.projectcalico.org"}, "projectcalico.org/v3", ApiMode.V3),
    ({"tiers.projectcalico.org"}, "crd.projectcalico.org/v1", ApiMode.V1),
])
def test_api_mode_follows_calicos_own_rule(names, configured, expected):
    assert resolve_api_mode("auto", V3_32, names, configured) is expected


def test_api_mode_v3_needs_v3_32():
    with pytest.raises(UsageError, match="needs Calico v3.32.0"):
        resolve_api_mode("v3", parse_version("v3.31.7"), None)


def test_a_misspelt_field_is_refused_before_any_request(tmp_path):
    """The apply asks the apiserver not to re-check fields (fieldValidation=Ignore) only because the
    policy refuses unknown fields offline first: no connection is ever made for such a file."""
    import socket
    import threading

    from tests.support.bad_manifests import dump, real_documents, tier_document, write_pinned

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    connections: list[object] = []

    def count() -> None:
        while True:
            try:
                accepted, _ = listener.accept()
            except OSError:
                return
            connections.append(accepted)
            accepted.close()
    threading.Thread(target=count, daemon=True).start()
    kubeconfig = _kubeconfig(tmp_path, {"server": f"https://127.0.0.1:{listener.getsockname()[1]}"}, {"token": "t"})
    documents = real_documents()
    tier_document(documents)["spec"]["versions"][0]["servd"] = True
    path, digest = write_pinned(tmp_path, dump(documents))  # plain YAML; only the field name is wrong

    run = run_hook("apply", "--version", "v3.29.1", "--manifest", str(path), "--sha256", digest,
                   "--allow-modified-crds", "--kubeconfig", kubeconfig, "--timeout", "10")
    listener.close()

    assert run.code == 3, run
    assert "Additional properties are not allowed ('servd' was unexpected)" in run.error_line
    assert connections == []
