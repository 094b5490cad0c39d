"""The chart patch rendered by the real `helm template` and checked by `helm lint`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.charts import REPO, apply_chart_patch, operator_chart, umbrella_chart
from tests.support.rbac import documented_cluster_role, documented_events_role, release_crd_names

pytestmark = pytest.mark.helm


@pytest.fixture
def helm(helm_binary, tmp_path):
    env = {"HELM_CACHE_HOME": str(tmp_path / "c"), "HELM_CONFIG_HOME": str(tmp_path / "g"),
           "HELM_DATA_HOME": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        completed = subprocess.run([str(helm_binary), *args], capture_output=True, text=True, env=env)
        if check and completed.returncode != 0:
            raise AssertionError(completed.stderr)
        return completed
    return run


def render(helm, chart: Path, *sets: str) -> dict[str, dict]:
    flags = [flag for value in sets for flag in ("--set", value)]
    output = helm("template", "rel", str(chart), "-n", "calico", *flags).stdout
    documents = [doc for doc in yaml.safe_load_all(output) if doc]
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in documents}


def hook_objects(rendered: dict[str, dict]) -> dict[str, dict]:
    return {key: doc for key, doc in rendered.items() if "calico-crd-hook" in key}


def job_of(rendered: dict[str, dict]) -> dict:
    return rendered["Job/rel-calico-crd-hook"]


def container_of(rendered: dict[str, dict]) -> dict:
    return job_of(rendered)["spec"]["template"]["spec"]["containers"][0]


def env_of(rendered: dict[str, dict]) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container_of(rendered)["env"]}


@pytest.fixture
def umbrella(tmp_path) -> Path:
    return umbrella_chart(tmp_path, "v3.29.1", "1.1.0")


def test_lint_is_clean(helm, umbrella):
    result = helm("lint", str(umbrella), "--strict")
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_defaults(helm, umbrella):
    rendered = render(helm, umbrella)
    assert set(hook_objects(rendered)) == {"ServiceAccount/rel-calico-crd-hook", "ClusterRole/calico-rel-calico-crd-hook",
                                           "ClusterRoleBinding/calico-rel-calico-crd-hook", "Job/rel-calico-crd-hook",
                                           "Role/rel-calico-crd-hook", "RoleBinding/rel-calico-crd-hook"}
    # the outcome Event: exactly `create events`, in the release namespace, on the Job's own Pod
    assert rendered["Role/rel-calico-crd-hook"]["rules"] == documented_events_role()["rules"]
    assert rendered["Role/rel-calico-crd-hook"]["metadata"]["namespace"] == "calico"
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container_of(rendered)["env"] if "valueFrom" in e}
    assert downward == {"CALICO_CRD_HOOK_POD_NAME": "metadata.name", "CALICO_CRD_HOOK_POD_NAMESPACE": "metadata.namespace",
                        "CALICO_CRD_HOOK_POD_UID": "metadata.uid"}
    weights = {key: int(doc["metadata"]["annotations"]["helm.sh/hook-weight"]) for key, doc in hook_objects(rendered).items()}
    assert weights["Job/rel-calico-crd-hook"] > max(w for k, w in weights.items() if not k.startswith("Job/"))
    assert weights["ClusterRoleBinding/calico-rel-calico-crd-hook"] > weights["ClusterRole/calico-rel-calico-crd-hook"]
    for doc in hook_objects(rendered).values():
        assert doc["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade,pre-rollback"
        assert doc["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        assert doc["metadata"]["labels"]["helm.sh/chart"] == "calico-1.1.0"
        assert doc["metadata"]["labels"]["app.kubernetes.io/version"] == "0.1.0"
    assert env_of(rendered)["CALICO_CRD_HOOK_ON_DOWNGRADE"] == "keep"
    job = job_of(rendered)
    pod = job["spec"]["template"]["spec"]
    assert env_of(rendered)["CALICO_CRD_HOOK_VERSION"] == "v3.29.1"
    assert job["spec"]["activeDeadlineSeconds"] < 300 and job["spec"]["backoffLimit"] == 1
    assert "ttlSecondsAfterFinished" in job["spec"]
    # the node's resolver: cluster DNS needs the pod network the upgrade may be repairing
    assert (pod["hostNetwork"], pod["dnsPolicy"]) == (True, "Default")
    assert job["spec"]["podFailurePolicy"]["rules"][0] == {
        "action": "FailJob", "onExitCodes": {"containerName": "calico-crd-hook", "operator": "In", "values": [2, 3, 4]}}
    assert pod["tolerations"] == [{"effect": "NoExecute", "operator": "Exists"}, {"effect": "NoSchedule", "operator": "Exists"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    container = container_of(rendered)
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert env_of(rendered)["CALICO_CRD_HOOK_TERMINATION_LOG"] == "/dev/termination-log"
    assert container["envFrom"] == [{"configMapRef": {"name": "kubernetes-services-endpoint", "optional": True}}]
    assert int(env_of(rendered)["CALICO_CRD_HOOK_TIMEOUT"]) < job["spec"]["activeDeadlineSeconds"]
    assert "resources" in container and container["image"] == "calico-crd-hook:0.1.0"


def test_cluster_role_is_exactly_the_documented_one(helm, umbrella):
    """For a release the table knows, get and patch on CRDs are limited to that release's CRD names
    (and the policy CRDs v3.32 removes); for any other version, the documented role as it stands."""
    role = render(helm, umbrella)["ClusterRole/calico-rel-calico-crd-hook"]
    assert role["rules"] == documented_cluster_role(release_crd_names("v3.29.1"))["rules"]
    unknown = render(helm, umbrella, "calicoCrdHook.calicoVersion=v3.99.0")["ClusterRole/calico-rel-calico-crd-hook"]
    assert unknown["rules"] == documented_cluster_role()["rules"]


def test_the_crd_names_template_is_current():
    checked = subprocess.run([sys.executable, str(REPO / "hook" / "tools" / "generate_chart_crd_names.py"), "--check"],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


LONGEST_RELEASE_NAME = "r" * 53  # Helm's limit (pkg/chartutil/validate_name.go, maxReleaseNameLen)


def test_every_name_fits_for_the_longest_release_name(helm, umbrella):
    rendered = render_release(helm, umbrella, LONGEST_RELEASE_NAME, "calicoCrdHook.verify.enabled=true")
    jobs = [doc for doc in hook_objects_of(rendered) if doc["kind"] == "Job"]
    assert len(jobs) == 2
    for job in jobs:  # a Job's name is its Pods' job-name label value
        assert len(job["metadata"]["name"]) <= 63, job["metadata"]["name"]
    verify, main = sorted((job["metadata"]["name"] for job in jobs), key=lambda name: not name.endswith("-verify"))
    assert verify == main[:56] + "-verify"  # cut before the suffix, so the suffix survives
    for doc in hook_objects_of(rendered):
        limit = 63 if doc["kind"] in ("Job", "ServiceAccount", "Role", "RoleBinding") else 253
        assert len(doc["metadata"]["name"]) <= limit, doc["metadata"]["name"]
        for value in doc["metadata"]["labels"].values():
            assert len(value) <= 63


def render_release(helm, chart: Path, release: str, *sets: str) -> list[dict]:
    flags = [flag for value in sets for flag in ("--set", value)]
    output = helm("template", release, str(chart), "-n", "calico", *flags).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def hook_objects_of(documents: list[dict]) -> list[dict]:
    return [doc for doc in documents
            if (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/name") == "calico-crd-hook"]


@pytest.mark.parametrize(("value", "complaint"), [
    ("calicoCrdHook.apiMode=v9", "apiMode"),
    ("calicoCrdHook.onDowngrade=maybe", "onDowngrade"),
    ("calicoCrdHook.hookEvents={post-delete}", "hookEvents"),
    ("calicoCrdHook.logFormat=yaml", "logFormat"),
    ("calicoCrdHook.deletePolicy=never", "deletePolicy"),
    ("calicoCrdHook.backoffLimit=-1", "backoffLimit"),
    ("calicoCrdHook.calicoVersion=latest", "calicoVersion"),
    ("calicoCrdHook.manifests.sha256=abc", "sha256"),
    ("calicoCrdHook.apiModes=v1", "apiModes"),  # a misspelt value
])
def test_a_bad_value_fails_template_and_lint(helm, umbrella, value, complaint):
    """values.schema.json: a wrong value fails at render, not in the Pod."""
    for command in (["template", "rel", str(umbrella)], ["lint", str(umbrella)]):
        failed = helm(*command, "--set", value, check=False)
        assert failed.returncode != 0, command
        assert "values don't meet the specifications of the schema" in failed.stderr + failed.stdout
        assert complaint in failed.stderr + failed.stdout


def test_security_contexts_pass_through_for_an_assigned_uid(helm, umbrella):
    """OpenShift's restricted SCC assigns the UID: a render with no fixed runAsUser or runAsGroup."""
    rendered = render(helm, umbrella, "calicoCrdHook.securityContext.runAsUser=null",
                      "calicoCrdHook.securityContext.runAsGroup=null",
                      "calicoCrdHook.containerSecurityContext.runAsNonRoot=true")
    pod = job_of(rendered)["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container_of(rendered)["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True}


def test_the_jobs_delete_policy_and_the_downgrade_policy_are_values(helm, umbrella):
    rendered = render(helm, umbrella, "calicoCrdHook.deletePolicy=before-hook-creation",
                      "calicoCrdHook.onDowngrade=refuse")
    assert job_of(rendered)["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert env_of(rendered)["CALICO_CRD_HOOK_ON_DOWNGRADE"] == "refuse"


def test_one_value_turns_it_all_off(helm, umbrella):
    assert hook_objects(render(helm, umbrella, "calicoCrdHook.enabled=false")) == {}


def test_explicit_version_wins(helm, umbrella):
    assert env_of(render(helm, umbrella, "calicoCrdHook.calicoVersion=v3.30.7"))["CALICO_CRD_HOOK_VERSION"] == "v3.30.7"


def test_patched_into_the_operator_chart_itself_uses_app_version(helm, tmp_path):
    chart = operator_chart(tmp_path, "v3.29.1")
    apply_chart_patch(chart)
    rendered = render(helm, chart)
    assert env_of(rendered)["CALICO_CRD_HOOK_VERSION"] == "v3.29.1"
    assert job_of(rendered)["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_no_resolvable_version_fails_with_the_value_to_set(helm, tmp_path):
    chart = tmp_path / "plain"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(yaml.safe_dump({"apiVersion": "v2", "name": "plain", "version": "1.0.0"}))
    apply_chart_patch(chart)
    failed = helm("template", "rel", str(chart), check=False)
    assert failed.returncode != 0
    assert "set calicoCrdHook.calicoVersion" in failed.stderr


def test_pre_install_and_pod_placement_options(helm, umbrella):
    rendered = render(helm, umbrella, "calicoCrdHook.hookEvents={pre-install,pre-upgrade}",
                      "calicoCrdHook.hostNetwork=false", "calicoCrdHook.priorityClassName=system-cluster-critical",
                      "calicoCrdHook.nodeSelector.role=infra", "calicoCrdHook.tolerations=null",
                      "calicoCrdHook.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                      ".nodeSelectorTerms[0].matchExpressions[0].key=zone",
                      "calicoCrdHook.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                      ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists")
    for doc in hook_objects(rendered).values():
        assert doc["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod = job_of(rendered)["spec"]["template"]["spec"]
    assert (pod["hostNetwork"], pod["dnsPolicy"]) == (False, "ClusterFirst")
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"role": "infra"}
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"] == [{"key": "zone", "operator": "Exists"}]


def test_operator_values_flow_into_the_job(helm, umbrella):
    rendered = render(helm, umbrella, "tigera-operator.kubernetesServiceEndpoint.host=10.0.0.10",
                      "tigera-operator.kubernetesServiceEndpoint.port=6443",
                      "tigera-operator.imagePullSecrets.regcred=e30=",
                      "tigera-operator.priorityClassName=system-node-critical")
    env = env_of(rendered)
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("10.0.0.10", "6443")
    pod = job_of(rendered)["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-node-critical"


def test_source_security_and_extra_options(helm, umbrella):
    rendered = render(helm, umbrella, "calicoCrdHook.manifests.urlTemplate=https://mirror.local/{version}/{file}",
                      "calicoCrdHook.manifests.sha256=" + "ab" * 32, "calicoCrdHook.manifests.requirePinned=true",
                      "calicoCrdHook.manifests.allowHttp=true", "calicoCrdHook.manifests.caBundle.configMap=mirror-ca",
                      "calicoCrdHook.proxy.httpsProxy=http://proxy:3128", "calicoCrdHook.proxy.noProxy=.svc",
                      "calicoCrdHook.proxy.httpProxy=http://proxy:3128",
                      "calicoCrdHook.extraEnv[0].name=CALICO_CRD_HOOK_CONCURRENCY",
                      "calicoCrdHook.extraEnv[0].value=2", "calicoCrdHook.extraEnv[1].name=NODE",
                      "calicoCrdHook.extraEnv[1].valueFrom.fieldRef.fieldPath=spec.nodeName",
                      "calicoCrdHook.image.digest=sha256:" + "c" * 64,
                      "calicoCrdHook.image.registry=registry.local", "calicoCrdHook.imagePullSecrets={mine}",
                      "calicoCrdHook.resources.limits.memory=256Mi", "calicoCrdHook.backoffLimit=0",
                      "calicoCrdHook.ttlSecondsAfterFinished=60", "calicoCrdHook.logFormat=text")
    env = env_of(rendered)
    assert {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in container_of(rendered)["env"]
    assert env["CALICO_CRD_HOOK_URL_TEMPLATE"] == "https://mirror.local/{version}/{file}"
    assert env["CALICO_CRD_HOOK_SHA256"] == "ab" * 32
    assert env["CALICO_CRD_HOOK_REQUIRE_PINNED"] == env["CALICO_CRD_HOOK_ALLOW_HTTP"] == "true"
    assert env["CALICO_CRD_HOOK_CA_BUNDLE"] == "/etc/calico-crd-hook/ca/ca.crt"
    assert (env["HTTPS_PROXY"], env["HTTP_PROXY"], env["NO_PROXY"]) == ("http://proxy:3128", "http://proxy:3128", ".svc")
    assert env["CALICO_CRD_HOOK_CONCURRENCY"] == "2" and env["CALICO_CRD_HOOK_LOG_FORMAT"] == "text"
    job = job_of(rendered)
    pod = job["spec"]["template"]["spec"]
    assert {"name": "ca-bundle", "configMap": {"name": "mirror-ca"}} in pod["volumes"]
    assert container_of(rendered)["image"] == "registry.local/calico-crd-hook@sha256:" + "c" * 64
    assert pod["imagePullSecrets"] == [{"name": "mine"}]
    assert container_of(rendered)["resources"]["limits"]["memory"] == "256Mi"
    assert (job["spec"]["backoffLimit"], job["spec"]["ttlSecondsAfterFinished"]) == (0, 60)


def test_air_gapped_sources(helm, umbrella):
    baked = env_of(render(helm, umbrella, "calicoCrdHook.manifests.useImageBundle=true"))
    assert baked["CALICO_CRD_HOOK_BUNDLE_DIR"] == "/opt/calico-crd-hook/bundle"
    rendered = render(helm, umbrella, "calicoCrdHook.manifests.volume.configMap.name=calico-crds")
    assert env_of(rendered)["CALICO_CRD_HOOK_BUNDLE_DIR"] == "/bundle"
    pod = job_of(rendered)["spec"]["template"]["spec"]
    assert {"name": "bundle", "configMap": {"name": "calico-crds"}} in pod["volumes"]
    assert {"name": "bundle", "mountPath": "/bundle", "readOnly": True} in container_of(rendered)["volumeMounts"]


def test_argo_cd_sees_the_hooks_in_helm_template_output(helm, umbrella):
    """Argo CD renders with `helm template` and maps these annotations to PreSync hooks."""
    output = helm("template", "rel", str(umbrella), "-n", "calico").stdout
    hooks = [doc for doc in yaml.safe_load_all(output) if doc and "helm.sh/hook" in doc["metadata"].get("annotations", {})]
    assert {doc["kind"] for doc in hooks} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Job"}


def test_cluster_scoped_names_differ_per_namespace(helm, umbrella):
    """Two releases named alike in two namespaces must not share (or delete) one ClusterRole."""
    def cluster_names(namespace: str) -> set[str]:
        output = helm("template", "rel", str(umbrella), "-n", namespace).stdout
        documents = [doc for doc in yaml.safe_load_all(output) if doc and "calico-crd-hook" in doc["metadata"]["name"]]
        binding = next(doc for doc in documents if doc["kind"] == "ClusterRoleBinding")
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-calico-crd-hook", "namespace": namespace}]
        return {doc["metadata"]["name"] for doc in documents if doc["kind"].startswith("Cluster")}
    assert cluster_names("team-a") == {"team-a-rel-calico-crd-hook"}
    assert cluster_names("team-b") == {"team-b-rel-calico-crd-hook"}


def test_installation_pull_secrets_of_the_operator_chart_are_used(helm, umbrella):
    rendered = render(helm, umbrella, "tigera-operator.installation.imagePullSecrets[0].name=existing",
                      "tigera-operator.imagePullSecrets.created=e30=")
    assert job_of(rendered)["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "existing"}, {"name": "created"}]


@pytest.mark.parametrize("operator_chart", [None, "tigera-operatr"])
def test_an_aliased_dependency_without_its_name_fails_rendering(helm, umbrella, operator_chart):
    chart_file = umbrella / "Chart.yaml"
    chart = yaml.safe_load(chart_file.read_text())
    chart["dependencies"][0]["alias"] = "calico-operator"
    chart_file.write_text(yaml.safe_dump(chart))
    sets = [f"calicoCrdHook.operatorChart={operator_chart}"] if operator_chart else []
    flags = [flag for value in sets for flag in ("--set", value)]
    failed = helm("template", "rel", str(umbrella), *flags, check=False)
    assert failed.returncode != 0
    name = operator_chart or "tigera-operator"
    assert f'this chart has no dependency named "{name}" (it has: calico-operator)' in failed.stderr
    assert "set calicoCrdHook.operatorChart to the tigera-operator dependency's name or alias" in failed.stderr


def test_aliased_operator_dependency(helm, umbrella):
    chart_file = umbrella / "Chart.yaml"
    chart = yaml.safe_load(chart_file.read_text())
    chart["dependencies"][0]["alias"] = "calico-operator"
    chart_file.write_text(yaml.safe_dump(chart))
    rendered = render(helm, umbrella, "calicoCrdHook.operatorChart=calico-operator",
                      "calico-operator.nodeSelector.pool=system")
    assert env_of(rendered)["CALICO_CRD_HOOK_VERSION"] == "v3.29.1"
    # the aliased subchart's defaults, coalesced with the umbrella's override
    assert job_of(rendered)["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux",
                                                                            "pool": "system"}


def test_remaining_pod_and_program_options(helm, umbrella):
    rendered = render(helm, umbrella, "calicoCrdHook.podLabels.team=net", "calicoCrdHook.podAnnotations.note=x",
                      "calicoCrdHook.dnsPolicy=Default", "calicoCrdHook.servicesEndpointConfigMap=",
                      "calicoCrdHook.apiMode=v3", "calicoCrdHook.timeoutSeconds=100",
                      "calicoCrdHook.activeDeadlineSeconds=120", "calicoCrdHook.securityContext.runAsUser=1001")
    template = job_of(rendered)["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "net"
    assert template["metadata"]["annotations"] == {"note": "x"}
    assert template["spec"]["dnsPolicy"] == "Default"
    assert template["spec"]["securityContext"]["runAsUser"] == 1001
    assert "envFrom" not in container_of(rendered)
    env = env_of(rendered)
    assert (env["CALICO_CRD_HOOK_API_MODE"], env["CALICO_CRD_HOOK_TIMEOUT"]) == ("v3", "100")
    assert job_of(rendered)["spec"]["activeDeadlineSeconds"] == 120


def test_the_optional_post_upgrade_verify_job(helm, umbrella):
    assert "Job/rel-calico-crd-hook-verify" not in render(helm, umbrella)  # off by default
    rendered = render(helm, umbrella, "calicoCrdHook.verify.enabled=true", "calicoCrdHook.verify.weight=5")
    verify = rendered["Job/rel-calico-crd-hook-verify"]
    annotations = verify["metadata"]["annotations"]
    assert (annotations["helm.sh/hook"], annotations["helm.sh/hook-weight"]) == ("post-upgrade", "5")
    container = verify["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["verify", "--repair"]
    assert {e["name"]: e.get("value") for e in container["env"]}["CALICO_CRD_HOOK_VERSION"] == "v3.29.1"
    assert container_of(rendered)["args"] == ["apply"]  # the pre-upgrade Job is unchanged
    for kind in ("ServiceAccount/rel-calico-crd-hook", "ClusterRole/calico-rel-calico-crd-hook",
                 "ClusterRoleBinding/calico-rel-calico-crd-hook", "Role/rel-calico-crd-hook",
                 "RoleBinding/rel-calico-crd-hook"):
        assert rendered[kind]["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade,pre-rollback,post-upgrade"
    check_only = render(helm, umbrella, "calicoCrdHook.verify.enabled=true", "calicoCrdHook.verify.repair=false")
    assert check_only["Job/rel-calico-crd-hook-verify"]["spec"]["template"]["spec"]["containers"][0]["args"] == ["verify"]
    lint = helm("lint", str(umbrella), "--strict", "--set", "calicoCrdHook.verify.enabled=true")
    assert "0 chart(s) failed" in lint.stdout
