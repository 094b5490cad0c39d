"""What Argo CD's sync does with an Application whose source is a Helm chart, step by step as its
code does it, against the real apiserver; the hook Jobs run through the JobHarness (the image).

Each rule cites where Argo CD or its engine (github.com/argoproj/gitops-engine, tag v0.7.3; and
argo-cd v3.5.1 for server-side apply, which v0.7.3 lacks) decides it:

- Render: `helm template <chart> --name-template <app> --namespace <ns> --kube-version <v>
  --api-versions <each>` and `--include-crds` unless the source sets `skipCrds`; never
  `--is-upgrade` (argo-cd util/helm/cmd.go `Cmd.template`; util/helm/helmver.go).
- Tracking: every rendered object but CRDs gets `argocd.argoproj.io/tracking-id`
  (argo-cd reposerver/repository/repository.go `GenerateManifests`, util/argo/resource_tracking.go
  `SetAppInstance`; annotation tracking is the v3 default, util/settings/settings.go).
- Hooks: `helm.sh/hook` pre-install and pre-upgrade are PreSync, post-install and post-upgrade
  PostSync; any other Helm hook (rollback, delete, test) is dropped (gitops-engine
  pkg/sync/hook/helm/type.go `Types`, pkg/sync/ignore/ignore.go `Ignore`). The hook weight is the
  wave (pkg/sync/hook/helm/weight.go `Weight`, pkg/sync/syncwaves/waves.go `Wave`); delete
  policies map one to one, BeforeHookCreation by default (pkg/sync/hook/helm/delete_policy.go).
- Validity before anything runs: a kind the apiserver does not serve fails the whole operation,
  unless its CRD is part of this sync or SkipDryRunOnMissingResource=true (pkg/sync/sync_context.go
  `getSyncTasks`, `hasCRDOfGroupKind`).
- Order: phase (PreSync, Sync, PostSync), then wave, then kind (Namespace ... CustomResourceDefinition,
  ClusterRole ... Job later), then name (pkg/sync/sync_tasks.go `Less`, its kind order); a wave
  starts once the hooks of the previous one are done (pkg/sync/sync_context.go `Sync`).
- A hook Job is done when Complete (Healthy) or Failed (Degraded: the operation fails)
  (pkg/health/health_job.go `getBatchv1JobHealth`); an existing BeforeHookCreation hook is deleted
  before it is created again (pkg/sync/sync_task.go `deleteBeforeCreation`); HookSucceeded hooks
  go once the whole operation succeeded (pkg/sync/sync_context.go `deleteHooks`).
- Apply: with ServerSideApply=true, a forced server-side apply as manager `argocd-controller`
  (argo-cd common/common.go `ArgoCDSSAManager`, controller/sync.go; gitops-engine
  pkg/utils/kube/resource_ops.go `newApplyOptions` sets ForceConflicts); otherwise kubectl's
  client-side apply, which stores the last-applied-configuration annotation.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.controlplane import ControlPlane
from tests.support.helm import Helm

TRACKING_ANNOTATION = "argocd.argoproj.io/tracking-id"
SSA_MANAGER = "argocd-controller"
PRE_SYNC, SYNC, POST_SYNC = "PreSync", "Sync", "PostSync"
_HELM_HOOK_PHASE = {"pre-install": PRE_SYNC, "pre-upgrade": PRE_SYNC, "post-install": POST_SYNC,
                    "post-upgrade": POST_SYNC}
# gitops-engine pkg/sync/sync_tasks.go: the kind order within a wave (kinds not listed come after).
_KIND_ORDER = ["Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
               "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
               "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
               "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList",
               "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController",
               "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob",
               "IngressClass", "Ingress", "APIService"]


class SyncFailed(AssertionError):
    pass


@dataclass
class Application:
    """The parts of an Argo CD Application that change what a sync does."""
    name: str
    namespace: str
    skip_crds: bool = False  # spec.source.helm.skipCrds
    sync_options: frozenset[str] = frozenset({"ServerSideApply=true"})


@dataclass
class SyncResult:
    phases_run: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)  # "Kind/name" of each hook created, in order
    seconds: float = 0.0


class ArgoCdSync:
    def __init__(self, plane: ControlPlane, helm: Helm, app: Application) -> None:
        self.plane, self.helm, self.app = plane, helm, app

    # --- the repo server's part --------------------------------------------------------------

    def render(self, chart: Path) -> list[dict[str, Any]]:
        version = self.plane.get("/version") or {}
        args = ["template", str(chart), "--name-template", self.app.name, "--namespace", self.app.namespace,
                "--kube-version", str(version.get("gitVersion", "v1.35.0"))]
        for api_version in self._api_versions():
            args += ["--api-versions", api_version]
        if not self.app.skip_crds:
            args.append("--include-crds")
        rendered = [doc for doc in yaml.safe_load_all(self.helm(*args).stdout) if doc]
        for doc in rendered:
            if doc["kind"] != "CustomResourceDefinition":
                group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
                where = doc["metadata"].get("namespace") or ""
                doc["metadata"].setdefault("annotations", {})[TRACKING_ANNOTATION] = (
                    f"{self.app.name}:{group}/{doc['kind']}:{where}/{doc['metadata']['name']}")
        return rendered

    def _api_versions(self) -> list[str]:
        groups = (self.plane.get("/apis") or {}).get("groups") or []
        return ["v1", *(version["groupVersion"] for group in groups for version in group["versions"])]

    # --- the application controller's part ----------------------------------------------------

    def sync(self, chart: Path, timeout: float = 300) -> SyncResult:
        started = time.monotonic()
        objects = self.render(chart)
        hooks = [(phase, doc) for doc in objects for phase in _hook_phases(doc)]
        resources = [doc for doc in objects if not _is_helm_hook(doc)]
        self._check_valid(objects)
        result = SyncResult()
        for phase in (PRE_SYNC, SYNC, POST_SYNC):
            in_phase = resources if phase == SYNC else [doc for hook_phase, doc in hooks if hook_phase == phase]
            if not in_phase:
                continue
            result.phases_run.append(phase)
            for wave in sorted({_wave(doc) for doc in in_phase}):
                in_wave = sorted((doc for doc in in_phase if _wave(doc) == wave), key=_kind_rank)
                if phase == SYNC:
                    self._apply(in_wave)
                else:
                    self._run_hooks(in_wave, result, started + timeout)
        for hook in {id(doc): doc for _, doc in hooks}.values():  # the operation succeeded: HookSucceeded hooks go
            if "hook-succeeded" in _delete_policies(hook):
                self._delete(hook)
        result.seconds = time.monotonic() - started
        return result

    def _check_valid(self, objects: list[dict[str, Any]]) -> None:
        served = self._served_kinds()
        in_sync = {(doc["spec"]["group"], doc["spec"]["names"]["kind"]) for doc in objects
                   if doc["kind"] == "CustomResourceDefinition"}
        skip = "SkipDryRunOnMissingResource=true" in self.app.sync_options
        for doc in objects:
            group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
            if (group, doc["kind"]) in served or (group, doc["kind"]) in in_sync or skip:
                continue
            raise SyncFailed(f"one or more synchronization tasks are not valid: {doc['kind']}.{group} "
                             f"{doc['metadata']['name']}: the server could not find the requested resource")

    def _served_kinds(self) -> set[tuple[str, str]]:
        kinds = {("", item["kind"]) for item in (self.plane.get("/api/v1") or {}).get("resources", [])}
        for group in (self.plane.get("/apis") or {}).get("groups") or []:
            for version in group["versions"]:
                listed = self.plane.get(f"/apis/{version['groupVersion']}") or {}
                kinds |= {(group["name"], item["kind"]) for item in listed.get("resources", [])}
        return kinds

    def _run_hooks(self, hooks: list[dict[str, Any]], result: SyncResult, deadline: float) -> None:
        for hook in hooks:
            if "before-hook-creation" in _delete_policies(hook):
                self._delete(hook)
            self._apply([hook])
            result.hooks.append(f"{hook['kind']}/{hook['metadata']['name']}")
        for hook in hooks:
            if hook["kind"] == "Job":
                self._wait_for_job(hook, deadline)

    def _wait_for_job(self, hook: dict[str, Any], deadline: float) -> None:
        path = f"/apis/batch/v1/namespaces/{self.app.namespace}/jobs/{hook['metadata']['name']}"
        while time.monotonic() < deadline:
            conditions = {c["type"] for c in ((self.plane.get(path) or {}).get("status") or {}).get("conditions", [])}
            if "Failed" in conditions:
                raise SyncFailed(f"hook Job {hook['metadata']['name']} failed: the operation stops "
                                 "(health Degraded)")
            if "Complete" in conditions:
                return
            time.sleep(0.2)
        raise SyncFailed(f"hook Job {hook['metadata']['name']} still running at the deadline")

    def _apply(self, objects: list[dict[str, Any]]) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as manifest:
            yaml.safe_dump_all(objects, manifest)
            manifest.flush()
            if "ServerSideApply=true" in self.app.sync_options:
                args = ["apply", "--server-side", "--force-conflicts", f"--field-manager={SSA_MANAGER}"]
            else:
                args = ["apply"]
            applied = self.plane.kubectl(*args, "-n", self.app.namespace, "-f", manifest.name, check=False)
        if applied.returncode != 0:
            raise SyncFailed(f"apply failed: {applied.stderr.strip()}")

    def _delete(self, hook: dict[str, Any]) -> None:
        """As the engine's delete: background propagation, so it is gone at once."""
        kind, name = hook["kind"], hook["metadata"]["name"]
        collection = _HOOK_COLLECTIONS[kind].format(namespace=self.app.namespace)
        deleted = self.plane.api("DELETE", f"{collection}/{name}", {"propagationPolicy": "Background"})
        if deleted.status_code not in (200, 202, 404):
            raise SyncFailed(f"could not delete hook {kind}/{name}: {deleted.text[:300]}")


# Where the hooks of our chart patch live (the engine finds them through discovery).
_HOOK_COLLECTIONS = {
    "ServiceAccount": "/api/v1/namespaces/{namespace}/serviceaccounts",
    "Job": "/apis/batch/v1/namespaces/{namespace}/jobs",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
}


def _is_helm_hook(doc: dict[str, Any]) -> bool:
    """Any helm.sh/hook is a hook, kept or dropped; the old crd-install is not (helm/hook.go IsHook)."""
    value = (doc["metadata"].get("annotations") or {}).get("helm.sh/hook")
    return value is not None and value != "crd-install"


def _hook_phases(doc: dict[str, Any]) -> list[str]:
    """Every phase the hook runs in (pre-upgrade,post-upgrade: both); none for only
    rollback/delete/test events, which are dropped."""
    if not _is_helm_hook(doc):
        return []
    events = doc["metadata"]["annotations"]["helm.sh/hook"].split(",")
    return sorted({_HELM_HOOK_PHASE[event.strip()] for event in events if event.strip() in _HELM_HOOK_PHASE},
                  key=[PRE_SYNC, SYNC, POST_SYNC].index)


def _wave(doc: dict[str, Any]) -> int:
    annotations = doc["metadata"].get("annotations") or {}
    return int(annotations.get("argocd.argoproj.io/sync-wave") or annotations.get("helm.sh/hook-weight") or 0)


def _kind_rank(doc: dict[str, Any]) -> tuple[int, str]:
    kind = doc["kind"]
    return (_KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER), doc["metadata"]["name"])


def _delete_policies(doc: dict[str, Any]) -> set[str]:
    value = (doc["metadata"].get("annotations") or {}).get("helm.sh/hook-delete-policy") or "before-hook-creation"
    return {policy.strip() for policy in value.split(",")}
