"""Stands in for the kubelet and the Job controller, and for nothing else.

It watches the hook Jobs of our chart (`helm.sh/hook`, the calico-crd-hook container), creates a
Pod per try, and runs the Job's container with the Job's env (literal values, ConfigMap refs,
envFrom, the downward API), its volumes, and a TokenRequest token of the Job's ServiceAccount at the
Pod's paths (so RBAC is the real apiserver's); then writes the container's termination message into
the Pod's status and the Job status in the form the apiserver's validation accepts.

Two ways to run the container: `ImageRunner` runs it in the image the Job names (built from our
Dockerfile with buildah), as the Pod's user, with every volume bind-mounted at its mount path, as the
kubelet would; `HostRunner` runs the same command as a local process of the test's virtual
environment, container paths mapped to local folders (fast: most scenarios are about Helm and the
cluster, not the image). Hook Jobs of other images (tigera-operator's pre-delete Job) are left
alone, as a kubelet that cannot pull their image would.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from tests.support.controlplane import ControlPlane

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TERMINATION_LOG = "/dev/termination-log"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ran(Protocol):
    returncode: int
    stdout: str
    stderr: str


class ContainerRunner(Protocol):
    def run(self, image: str, command: Sequence[str], env: dict[str, str], mounts: dict[str, str],
            user: str | None, timeout: float) -> Ran: ...


class HostRunner:
    """The container's command as a local process; paths inside mounts mapped to their folders."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir

    def run(self, image: str, command: Sequence[str], env: dict[str, str], mounts: dict[str, str],
            user: str | None, timeout: float) -> Ran:
        local_env = {name: _map_path(value, mounts) for name, value in env.items()}
        local_env.update(PATH=f"{self.bin_dir}{os.pathsep}/usr/bin:/bin", HOME=tempfile.gettempdir(),
                         # the Pod's token mount, at the local folder standing in for it
                         CALICO_CRD_HOOK_TOKEN_FILE=_map_path(f"{SERVICE_ACCOUNT_DIR}/token", mounts),
                         CALICO_CRD_HOOK_SERVICE_CA_FILE=_map_path(f"{SERVICE_ACCOUNT_DIR}/ca.crt", mounts))
        program = shutil.which(command[0], path=str(self.bin_dir)) or command[0]
        return subprocess.run([program, *command[1:]], env=local_env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


class ImageRunner:
    """The container in its image: buildah, chroot isolation, the Pod's user and mounts."""

    def __init__(self, buildah: Any, images: dict[str, str] | None = None) -> None:
        self.buildah = buildah
        self.images = images or {}  # the Job's image name -> the local image that stands for it

    def run(self, image: str, command: Sequence[str], env: dict[str, str], mounts: dict[str, str],
            user: str | None, timeout: float) -> Ran:
        moved = {path: _reachable(path) for path in mounts}
        binds = {moved[path]: local for path, local in mounts.items()}
        env = {name: _map_path(value, {path: moved[path] for path in mounts}) for name, value in env.items()}
        return self.buildah.run_container(self.images.get(image, image), command, env, binds, user, timeout)


def _reachable(path: str) -> str:
    """Where buildah's chroot isolation can bind `path`. A bind under /var/run, Debian's symlink
    to /run, must name /run (runc resolves the symlink inside the rootfs; buildah does not). /dev
    is the host's, read-only, so the termination-message file moves to /run/dev and the env that
    names it follows (the only liberty the harness takes with the Pod's paths)."""
    if path.startswith("/var/run/"):
        return path.removeprefix("/var")
    if path.startswith("/dev/"):
        return "/run" + path
    return path


class JobHarness:
    def __init__(self, plane: ControlPlane, runner: ContainerRunner) -> None:
        self.plane = plane
        self.runner = runner
        self.runs: list[dict[str, Any]] = []  # what each handled Job did, for the tests to read
        self._handled: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._workdir = Path(tempfile.mkdtemp(prefix="calico-crd-hook-kubelet-"))
        self._workdir.chmod(0o755)  # the container's user (65532) reads the mounted files

    def __enter__(self) -> JobHarness:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            listed = self.plane.api("GET", "/apis/batch/v1/jobs")
            for job in listed.json().get("items", []) if listed.ok else []:
                uid = job["metadata"]["uid"]
                if _ours(job) and uid not in self._handled and not (job.get("status") or {}).get("conditions"):
                    self._handled.add(uid)
                    self._run_job(job)
            self._stop.wait(0.2)

    # --- the kubelet's part ---------------------------------------------------------------------

    def _run_job(self, job: dict[str, Any]) -> None:
        started = _now()
        attempts = job["spec"].get("backoffLimit", 6) + 1
        for attempt in range(attempts):  # the Job controller: a new Pod per try, up to backoffLimit
            exit_code = self._run_pod(job, started, attempt)
            if exit_code == 0:
                self._write_job_status(job, None, started, attempt + 1)
                return
            if _fails_the_job(job, job["spec"]["template"]["spec"]["containers"][0]["name"], exit_code):
                self._write_job_status(job, "PodFailurePolicy", started, attempt + 1)
                return
        self._write_job_status(job, "BackoffLimitExceeded", started, attempts)

    def _run_pod(self, job: dict[str, Any], started: str, attempt: int) -> int:
        namespace = job["metadata"]["namespace"]
        pod_spec = job["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        pod = self._create_pod(job, attempt)
        folder = Path(tempfile.mkdtemp(dir=self._workdir))
        folder.chmod(0o755)
        mounts = self._mount_volumes(namespace, pod_spec, container, folder)
        termination = folder / "termination-log"
        termination.touch(mode=0o666)
        termination.chmod(0o666)  # writable by the container's user, as the kubelet's file is
        mounts[container.get("terminationMessagePath") or TERMINATION_LOG] = str(termination)
        mounts[SERVICE_ACCOUNT_DIR] = str(self._service_account_files(namespace, pod_spec, folder))
        env = self._environment(namespace, container, pod)
        command = list(container.get("command") or []) + list(container.get("args") or [])
        deadline = job["spec"].get("activeDeadlineSeconds") or 600
        try:
            ran = self.runner.run(container["image"], command, env, mounts, _user(pod_spec, container), deadline)
            exit_code, stdout, stderr = ran.returncode, ran.stdout, ran.stderr
        except subprocess.TimeoutExpired as expired:
            exit_code, stdout, stderr = 137, str(expired.stdout or ""), str(expired.stderr or "")
        written = termination.read_text()
        message = written or (stderr or stdout)[-4096:]  # FallbackToLogsOnError
        self.runs.append({"job": job["metadata"]["name"], "pod": pod["metadata"]["name"], "command": command,
                          "env": env, "exit_code": exit_code, "stdout": stdout, "stderr": stderr, "message": message})
        self._finish_pod(pod, container, exit_code, message, started)
        return exit_code

    def _mount_volumes(self, namespace: str, pod_spec: dict, container: dict, folder: Path) -> dict[str, str]:
        volumes = {volume["name"]: volume for volume in pod_spec.get("volumes") or []}
        mounts: dict[str, str] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            local = folder / "volumes" / mount["name"]
            if "hostPath" in volume:
                mounts[mount["mountPath"]] = volume["hostPath"]["path"]
                continue
            local.mkdir(parents=True)
            (folder / "volumes").chmod(0o755)
            local.chmod(0o777 if "emptyDir" in volume else 0o755)
            if "configMap" in volume:
                self._project_config_map(namespace, volume["configMap"], local)
            mounts[mount["mountPath"]] = str(local)  # emptyDir and configMap
        return mounts

    def _project_config_map(self, namespace: str, source: dict, local: Path) -> None:
        found = self.plane.get(f"/api/v1/namespaces/{namespace}/configmaps/{source['name']}")
        if found is None:
            raise RuntimeError(f"ConfigMap {source['name']} is missing: the Pod would not start")
        data = {**{k: v.encode() for k, v in (found.get("data") or {}).items()},
                **{k: base64.b64decode(v) for k, v in (found.get("binaryData") or {}).items()}}
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            target = local / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[item["key"]])
            target.chmod(0o644)  # the kubelet's default mode for ConfigMap files
            target.parent.chmod(0o755)

    def _service_account_files(self, namespace: str, pod_spec: dict, folder: Path) -> Path:
        account = pod_spec.get("serviceAccountName") or "default"
        response = self.plane.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                                  {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                   "spec": {"expirationSeconds": 3600}})
        response.raise_for_status()
        target = folder / "serviceaccount"
        target.mkdir(mode=0o755)
        (target / "token").write_text(response.json()["status"]["token"])
        shutil.copyfile(self.plane.ca_file, target / "ca.crt")
        (target / "namespace").write_text(namespace)
        for name in ("token", "ca.crt", "namespace"):
            (target / name).chmod(0o644)  # a projected token's default mode
        return target

    def _environment(self, namespace: str, container: dict, pod: dict) -> dict[str, str]:
        # what the kubelet injects for the `kubernetes` Service: here, the test apiserver
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.plane.port)}
        for source in container.get("envFrom") or []:
            reference = source.get("configMapRef")
            if reference:
                found = self.plane.get(f"/api/v1/namespaces/{namespace}/configmaps/{reference['name']}")
                if found is None and not reference.get("optional"):
                    raise RuntimeError(f"ConfigMap {reference['name']} is missing: the Pod would not start")
                env.update((found or {}).get("data") or {})
        for variable in container.get("env") or []:
            source = variable.get("valueFrom") or {}
            if "value" in variable:
                env[variable["name"]] = variable["value"]
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                found = self.plane.get(f"/api/v1/namespaces/{namespace}/configmaps/{ref['name']}") or {}
                env[variable["name"]] = (found.get("data") or {}).get(ref["key"], "")
            elif "fieldRef" in source:  # the downward API: the Pod's own metadata
                field = source["fieldRef"]["fieldPath"].removeprefix("metadata.")
                env[variable["name"]] = str(pod["metadata"][field])
        return env

    def _create_pod(self, job: dict, attempt: int) -> dict[str, Any]:
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name}-{job['metadata']['uid'][:5]}-{attempt}", "namespace": namespace,
                            "labels": {"job-name": name, "batch.kubernetes.io/job-name": name},
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                 "uid": job["metadata"]["uid"], "controller": True}]},
               "spec": {**job["spec"]["template"]["spec"], "nodeName": "harness"}}
        created = self.plane.api("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        if created.status_code != 201:
            raise RuntimeError(f"harness could not record the Pod: {created.text[:500]}")
        return created.json()

    def _finish_pod(self, pod: dict, container: dict, exit_code: int, message: str, started: str) -> None:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "message": message, "startedAt": started, "finishedAt": _now()}
        status = {"status": {"phase": "Succeeded" if exit_code == 0 else "Failed", "startTime": started,
                             "containerStatuses": [{"name": container["name"], "image": container["image"],
                                                    "imageID": "", "ready": False, "restartCount": 0,
                                                    "state": {"terminated": terminated}}]}}
        patched = self.plane.api("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status",
                                 status, content_type="application/merge-patch+json")
        if patched.status_code != 200:
            raise RuntimeError(f"harness could not write the Pod status: {patched.text[:500]}")

    # --- the Job controller's part ---------------------------------------------------------------

    def _write_job_status(self, job: dict, failure: str | None, started: str, pods: int) -> None:
        """Complete, or Failed for `failure` (BackoffLimitExceeded or PodFailurePolicy)."""
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        now = _now()
        if failure is None:
            conditions = [_condition("SuccessCriteriaMet", "CompletionsReached", now),
                          _condition("Complete", "CompletionsReached", now)]
            status = {"startTime": started, "completionTime": now, "succeeded": 1, "failed": pods - 1,
                      "active": 0, "ready": 0, "terminating": 0, "conditions": conditions}
        else:
            conditions = [_condition("FailureTarget", failure, now), _condition("Failed", failure, now)]
            status = {"startTime": started, "failed": pods, "active": 0, "ready": 0, "terminating": 0,
                      "conditions": conditions}
        patched = self.plane.api("PATCH", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}/status",
                                 {"status": status}, content_type="application/merge-patch+json")
        if patched.status_code != 200:
            raise RuntimeError(f"harness could not write the Job status: {patched.text[:500]}")


def _ours(job: dict) -> bool:
    """A hook Job whose container is calico-crd-hook's."""
    containers = job["spec"]["template"]["spec"]["containers"]
    hooked = "helm.sh/hook" in (job["metadata"].get("annotations") or {})
    return hooked and containers[0]["name"] == "calico-crd-hook"


def _user(pod_spec: dict, container: dict) -> str | None:
    """uid[:gid] from the container's securityContext, else the Pod's; None: the image's USER."""
    context = {**(pod_spec.get("securityContext") or {}), **(container.get("securityContext") or {})}
    if "runAsUser" not in context:
        return None
    return f"{context['runAsUser']}:{context['runAsGroup']}" if "runAsGroup" in context else str(context["runAsUser"])


def _fails_the_job(job: dict, container_name: str, exit_code: int) -> bool:
    """The Job's podFailurePolicy: does a FailJob rule match this exit code?"""
    for rule in ((job["spec"].get("podFailurePolicy") or {}).get("rules") or []):
        codes = rule.get("onExitCodes")
        if rule["action"] != "FailJob" or not codes or codes.get("containerName", container_name) != container_name:
            continue
        matched = exit_code in codes["values"]
        if matched == (codes["operator"] == "In"):
            return True
    return False


def _condition(kind: str, reason: str, now: str) -> dict[str, str]:
    message = {"BackoffLimitExceeded": "Job has reached the specified backoff limit",
               "PodFailurePolicy": "Container calico-crd-hook matched a FailJob rule of the pod failure policy"
               }.get(reason, "Reached expected number of succeeded pods")
    return {"type": kind, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": now, "lastTransitionTime": now}


def _map_path(value: str, mounts: dict[str, str]) -> str:
    """A path inside a mount, as the container sees it, to the local folder behind that mount."""
    for mount_path, local in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return local + value[len(mount_path):]
    return value
