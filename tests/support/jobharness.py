"""Stands in for the kubelet and the Job controller, and for nothing else.

It watches Jobs that carry `helm.sh/hook`, runs the Job's container command as a local process
with the Job's env (literal values, ConfigMap refs, envFrom), its volumes mapped to local folders
and a TokenRequest token of the Job's ServiceAccount (so RBAC is the real apiserver's), records a
Pod with the container's termination message, and writes the Job status in the form the
apiserver's validation accepts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tests.support.controlplane import ControlPlane

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TERMINATION_LOG = "/dev/termination-log"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class JobHarness:
    def __init__(self, plane: ControlPlane, bin_dir: Path) -> None:
        self.plane = plane
        self.bin_dir = bin_dir
        self.runs: list[dict[str, Any]] = []  # what each handled Job did, for the tests to read
        self._handled: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._workdir = Path(tempfile.mkdtemp(prefix="calico-crd-hook-kubelet-"))

    def __enter__(self) -> "JobHarness":
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
                hooked = "helm.sh/hook" in (job["metadata"].get("annotations") or {})
                if hooked and uid not in self._handled and not (job.get("status") or {}).get("conditions"):
                    self._handled.add(uid)
                    self._run_job(job)
            self._stop.wait(0.2)

    # --- the kubelet's part ---------------------------------------------------------------------

    def _run_job(self, job: dict[str, Any]) -> None:
        namespace = job["metadata"]["namespace"]
        pod_spec = job["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        folder = Path(tempfile.mkdtemp(dir=self._workdir))
        mounts = self._mount_volumes(namespace, pod_spec, container, folder)
        mounts[TERMINATION_LOG] = str(folder / "termination-log")
        mounts[SERVICE_ACCOUNT_DIR] = str(self._service_account_files(namespace, pod_spec, folder))
        env = self._environment(namespace, container, mounts)
        command = list(container.get("command") or []) + list(container.get("args") or [])
        command[0] = shutil.which(command[0], path=str(self.bin_dir)) or command[0]
        started = _now()
        attempts = job["spec"].get("backoffLimit", 6) + 1
        for attempt in range(attempts):  # the Job controller: a new Pod per try, up to backoffLimit
            exit_code = self._run_pod(job, container, command, env, folder, started, attempt)
            if exit_code == 0:
                self._write_job_status(job, None, started, attempt + 1)
                return
            if _fails_the_job(job, container["name"], exit_code):
                self._write_job_status(job, "PodFailurePolicy", started, attempt + 1)
                return
        self._write_job_status(job, "BackoffLimitExceeded", started, attempts)

    def _run_pod(self, job: dict[str, Any], container: dict, command: list[str], env: dict[str, str],
                 folder: Path, started: str, attempt: int) -> int:
        deadline = job["spec"].get("activeDeadlineSeconds") or 600
        try:
            completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=deadline,
                                       stdin=subprocess.DEVNULL)
            exit_code, stdout, stderr = completed.returncode, completed.stdout, completed.stderr
        except subprocess.TimeoutExpired as expired:
            exit_code, stdout, stderr = 137, expired.stdout or "", expired.stderr or ""
        termination = folder / "termination-log"
        message = termination.read_text() if termination.exists() and termination.read_text() else (stderr or stdout)[-4096:]
        termination.unlink(missing_ok=True)  # each Pod has its own
        self.runs.append({"job": job["metadata"]["name"], "command": command, "env": env, "exit_code": exit_code,
                          "stdout": stdout, "stderr": stderr, "message": message})
        self._record_pod(job, container, exit_code, message, started, attempt)
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
            if "configMap" in volume:
                self._project_config_map(namespace, volume["configMap"], local)
            mounts[mount["mountPath"]] = str(local)  # emptyDir and configMap
        return mounts

    def _project_config_map(self, namespace: str, source: dict, local: Path) -> None:
        found = self.plane.get(f"/api/v1/namespaces/{namespace}/configmaps/{source['name']}")
        if found is None:
            raise RuntimeError(f"ConfigMap {source['name']} is missing: the Pod would not start")
        import base64

        data = {**{k: v.encode() for k, v in (found.get("data") or {}).items()},
                **{k: base64.b64decode(v) for k, v in (found.get("binaryData") or {}).items()}}
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            target = local / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[item["key"]])

    def _service_account_files(self, namespace: str, pod_spec: dict, folder: Path) -> Path:
        account = pod_spec.get("serviceAccountName") or "default"
        response = self.plane.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
                                  {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                   "spec": {"expirationSeconds": 3600}})
        response.raise_for_status()
        target = folder / "serviceaccount"
        target.mkdir()
        (target / "token").write_text(response.json()["status"]["token"])
        shutil.copyfile(self.plane.ca_file, target / "ca.crt")
        (target / "namespace").write_text(namespace)
        return target

    def _environment(self, namespace: str, container: dict, mounts: dict[str, str]) -> dict[str, str]:
        env = {"PATH": f"{self.bin_dir}{os.pathsep}/usr/bin:/bin", "HOME": str(self._workdir),
               # what the kubelet injects for the `kubernetes` Service: here, the test apiserver
               "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.plane.port),
               # the Pod's token mount, at the local folder standing in for it
               "CALICO_CRD_HOOK_TOKEN_FILE": f"{SERVICE_ACCOUNT_DIR}/token",
               "CALICO_CRD_HOOK_SERVICE_CA_FILE": f"{SERVICE_ACCOUNT_DIR}/ca.crt"}
        for source in container.get("envFrom") or []:
            reference = source.get("configMapRef")
            if reference:
                found = self.plane.get(f"/api/v1/namespaces/{namespace}/configmaps/{reference['name']}")
                if found is None and not reference.get("optional"):
                    raise RuntimeError(f"ConfigMap {reference['name']} is missing: the Pod would not start")
                env.update((found or {}).get("data") or {})
        for variable in container.get("env") or []:
            if "value" in variable:
                env[variable["name"]] = variable["value"]
            elif "configMapKeyRef" in (variable.get("valueFrom") or {}):
                ref = variable["valueFrom"]["configMapKeyRef"]
                found = self.plane.get(f"/api/v1/namespaces/{namespace}/configmaps/{ref['name']}") or {}
                env[variable["name"]] = (found.get("data") or {}).get(ref["key"], "")
        return {name: _map_path(value, mounts) for name, value in env.items()}

    def _record_pod(self, job: dict, container: dict, exit_code: int, message: str, started: str,
                    attempt: int) -> None:
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
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "message": message, "startedAt": started, "finishedAt": _now()}
        status = {"status": {"phase": "Succeeded" if exit_code == 0 else "Failed", "startTime": started,
                             "containerStatuses": [{"name": container["name"], "image": container["image"],
                                                    "imageID": "", "ready": False, "restartCount": 0,
                                                    "state": {"terminated": terminated}}]}}
        patched = self.plane.api("PATCH", f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/status",
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
