"""Benchmark: `calico-crd-hook apply` against `kubectl apply --server-side --force-conflicts` on the
same file and the same kind of apiserver, interleaved, a fresh control plane for every run.

    python bench/run.py [--runs 5] [--out bench/results.md] [--paths abcde]

Paths: (a) the reported upgrade v3.28.2 -> v3.29.1, (b) a rerun with nothing to change,
(c) v3.31.7 -> v3.32.1, (d) the rerun of (b) on a cluster that also holds 300 unrelated CRDs (20 of
them with 1 MB schemas), (e) the upgrade of (a) on CRDs the hook itself applied at v3.28.2 (the
shape of every upgrade after the first). Reports wall-time medians and ranges, the ratio
ours/kubectl, peak RSS, and the CPU each tool's run costs the client and the server.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "hook"))

from tests.support.assets import KUBERNETES_VERSION, control_plane_assets  # noqa: E402 - after the sys.path entry above
from tests.support.calico import manifest_path  # noqa: E402 - after the sys.path entry above
from tests.support.calico_cluster import install_crds_like_helm, load_documents, set_running_version  # noqa: E402 - after the sys.path entry above
from tests.support.controlplane import ControlPlane  # noqa: E402 - after the sys.path entry above
from tests.support.program import HOOK_COMMAND, hook_env  # noqa: E402 - after the sys.path entry above

NOTES_MARKER = "<!-- notes -->"


@dataclass(frozen=True)
class BenchPath:
    label: str
    installed: str  # what Helm installed first
    target: str
    rerun: bool  # the same tool applied the target once before the timed run
    unrelated_crds: int = 0  # other projects' CRDs in the cluster
    hook_applied_first: bool = False  # after Helm, calico-crd-hook applied the installed release


PATHS = (
    BenchPath("(a) upgrade v3.28.2 -> v3.29.1", "v3.28.2", "v3.29.1", rerun=False),
    BenchPath("(b) rerun at v3.29.1, nothing to change", "v3.28.2", "v3.29.1", rerun=True),
    BenchPath("(c) upgrade v3.31.7 -> v3.32.1", "v3.31.7", "v3.32.1", rerun=False),
    BenchPath("(d) rerun as (b), 300 unrelated CRDs", "v3.28.2", "v3.29.1", rerun=True, unrelated_crds=300),
    BenchPath("(e) as (a), the hook having applied v3.28.2", "v3.28.2", "v3.29.1", rerun=False,
              hook_applied_first=True),
)


@dataclass(frozen=True)
class Sample:
    seconds: float
    peak_rss_kib: int
    client_cpu: float = 0.0  # the tool's own user + system CPU seconds
    server_cpu: float = 0.0  # apiserver + etcd CPU seconds while the tool ran
    server_cpu_settled: float = 0.0  # the same, until the server went idle after it


# The server works on after a tool exits (OpenAPI rebuilds, watch events of the written CRDs):
# counted until a quarter second passes with less than 10 ms of server CPU, at most 5 s.
IDLE_WINDOW_SECONDS, IDLE_CPU_SECONDS, SETTLE_LIMIT_SECONDS = 0.25, 0.01, 5.0


def timed(command: list[str], env: dict[str, str], plane: ControlPlane) -> Sample:
    server_before = plane.server_cpu_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    server_during = plane.server_cpu_seconds() - server_before
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({process.returncode}): {process.stderr.read().decode()[-2000:]}")
    return Sample(seconds, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, server_during,
                  settled_server_cpu(plane) - server_before)


def settled_server_cpu(plane: ControlPlane) -> float:
    deadline = time.monotonic() + SETTLE_LIMIT_SECONDS
    used = plane.server_cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(IDLE_WINDOW_SECONDS)
        now = plane.server_cpu_seconds()
        if now - used < IDLE_CPU_SECONDS:
            return now
        used = now
    return used


def hook_command(plane: ControlPlane, target: str) -> list[str]:
    return [*HOOK_COMMAND, "apply", "--version", target,
            "--manifest", str(manifest_path(target)), "--kubeconfig", str(plane.kubeconfig())]


def kubectl_command(plane: ControlPlane, target: str) -> list[str]:
    return [str(plane.assets.kubectl), "--kubeconfig", str(plane.kubeconfig()), "apply", "--server-side",
            "--force-conflicts", "-f", str(manifest_path(target))]


def one_run(tool: str, path: BenchPath, assets, env: dict[str, str]) -> Sample:
    with tempfile.TemporaryDirectory(prefix="calico-crd-hook-bench-") as folder:
        plane = ControlPlane(assets, Path(folder)).start()
        try:
            install_crds_like_helm(plane, manifest_path(path.installed))
            set_running_version(plane, path.installed)
            serve_every_kind(plane, manifest_path(path.installed))
            crowd(plane, path.unrelated_crds)
            if path.hook_applied_first:
                timed(hook_command(plane, path.installed), {**env, "HOME": folder}, plane)
            command = hook_command(plane, path.target) if tool == "calico-crd-hook" else kubectl_command(plane, path.target)
            run_env = {**env, "HOME": folder}  # kubectl's discovery cache starts cold, as in a Job's Pod
            if path.rerun:
                timed(command, run_env, plane)
            settled_server_cpu(plane)  # the set-up's own after-work is not the tool's
            return timed(command, run_env, plane)
        finally:
            plane.stop()


def serve_every_kind(plane: ControlPlane, manifest: Path) -> None:
    """A real cluster has had its CRDs for long; a fresh one answers 429 for a second or two while
    each new kind's storage initializes. Wait that out so neither tool is timed on it."""
    for document in load_documents(manifest):
        spec = document["spec"]
        version = next(v["name"] for v in spec["versions"] if v.get("storage"))
        response = plane.api("GET", f"/apis/{spec['group']}/{version}/{spec['names']['plural']}?limit=1")
        if response.status_code != 200:
            raise RuntimeError(f"{spec['names']['plural']} not served: {response.status_code}")


def crowd(plane: ControlPlane, count: int) -> None:
    """Other projects' CRDs, some large (Crossplane providers are like this)."""
    for index in range(count):
        group = f"crowd{index}.example.com"
        schema = {"type": "object", "description": "x" * (1_000_000 if index % 15 == 0 else 2_000),
                  "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
        crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": f"widgets.{group}"},
               "spec": {"group": group, "scope": "Namespaced",
                        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}]}}
        response = plane.api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        if response.status_code != 201:
            raise RuntimeError(f"could not create {crd['metadata']['name']}: {response.text[:300]}")


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
    return f"{os.cpu_count()} CPUs ({model}), {memory_kib / 1024 / 1024:.0f} GiB RAM, {platform.platform()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "bench" / "results.md"))
    parser.add_argument("--paths", default="abcde", help="which paths, by letter (a quick look: --paths ac --out -)")
    args = parser.parse_args()
    assets = control_plane_assets()
    env = hook_env()
    results: dict[tuple[str, str], list[Sample]] = {}
    for index in range(args.runs):
        for path in (path for path in PATHS if path.label[1] in args.paths):
            # interleaved, and each tool goes first every other round
            tools = ["calico-crd-hook", "kubectl"] if index % 2 == 0 else ["kubectl", "calico-crd-hook"]
            for tool in tools:
                sample = one_run(tool, path, assets, env)
                results.setdefault((path.label, tool), []).append(sample)
                print(f"run {index + 1}/{args.runs} {path.label} {tool}: {sample.seconds:.2f}s "
                      f"{sample.peak_rss_kib / 1024:.0f} MiB, CPU client {sample.client_cpu:.2f}s server "
                      f"{sample.server_cpu:.2f}s ({sample.server_cpu_settled:.2f}s until idle)", flush=True)
    report = render(results, args.runs)
    if args.out == "-":
        print(report)
        return 0
    out = Path(args.out)
    previous = out.read_text() if out.exists() else ""
    if NOTES_MARKER in previous:  # hand-written analysis below the marker survives a re-run
        report += "\n" + previous[previous.index(NOTES_MARKER):]
    out.write_text(report)
    print(report)
    return 0


def render(results: dict[tuple[str, str], list[Sample]], runs: int) -> str:
    kubectl_version = subprocess.run([str(control_plane_assets().kubectl), "version", "--client", "-o", "yaml"],
                                     capture_output=True, text=True).stdout
    kubectl_line = next((line.split(":", 1)[1].strip() for line in kubectl_version.splitlines()
                         if "gitVersion" in line), "?")
    import yaml

    lines = [
        "# Benchmark results",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/run.py --runs {runs}`.",
        "",
        f"- Machine: {machine()}",
        f"- kube-apiserver and etcd: Kubernetes {KUBERNETES_VERSION} test control plane on 127.0.0.1, "
        "a fresh one for every run",
        f"- kubectl {kubectl_line}; Python {platform.python_version()}; PyYAML {yaml.__version__} "
        f"(libyaml: {yaml.__with_libyaml__})",
        "- Same manifest file for both tools; runs interleaved, the first tool alternating each round;",
        "  wall time of the whole process (start-up included); peak RSS from wait4().",
        "- calico-crd-hook does more than kubectl: it validates offline, runs the read-only checks and",
        "  the server-side dry-run of every CRD it writes, waits for Established and creates the Tiers.",
        "",
        "| path | calico-crd-hook median (range) | kubectl median (range) | ratio ours/kubectl | "
        "ratio within each round: median (range) | peak RSS ours | peak RSS kubectl |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in (path for path in PATHS if (path.label, "kubectl") in results):
        ours, theirs = results[(path.label, "calico-crd-hook")], results[(path.label, "kubectl")]
        ours_median = statistics.median(s.seconds for s in ours)
        theirs_median = statistics.median(s.seconds for s in theirs)
        lines.append(
            f"| {path.label} | {ours_median:.2f} s ({_range(ours)}) | {theirs_median:.2f} s ({_range(theirs)}) | "
            f"{ours_median / theirs_median:.2f} | {_paired_ratios(ours, theirs)} | "
            f"{max(s.peak_rss_kib for s in ours) / 1024:.0f} MiB | {max(s.peak_rss_kib for s in theirs) / 1024:.0f} MiB |")
    lines += ["", "CPU seconds, medians (client: the tool's process; server: kube-apiserver + etcd during the run, "
              "and until the server went idle after it):", "",
              "| path | ours client | ours server | ours server until idle | kubectl client | kubectl server "
              "| kubectl server until idle | ours/kubectl, all CPU until idle |",
              "|---|---|---|---|---|---|---|---|"]
    for path in (path for path in PATHS if (path.label, "kubectl") in results):
        ours, theirs = results[(path.label, "calico-crd-hook")], results[(path.label, "kubectl")]
        ours_cpu, theirs_cpu = _cpu_medians(ours), _cpu_medians(theirs)
        lines.append(f"| {path.label} | " + " | ".join(f"{value:.2f}" for value in (*ours_cpu, *theirs_cpu)) +
                     f" | {(ours_cpu[0] + ours_cpu[2]) / (theirs_cpu[0] + theirs_cpu[2]):.2f} |")
    lines += ["", "All runs (seconds):", ""]
    for (label, tool), samples in results.items():
        lines.append(f"- {label}, {tool}: " + ", ".join(f"{s.seconds:.2f}" for s in samples))
    return "\n".join(lines) + "\n"


def _cpu_medians(samples: list[Sample]) -> tuple[float, float, float]:
    return (statistics.median(s.client_cpu for s in samples), statistics.median(s.server_cpu for s in samples),
            statistics.median(s.server_cpu_settled for s in samples))


def _paired_ratios(ours: list[Sample], theirs: list[Sample]) -> str:
    """Ours over kubectl's run of the same round: the two ran minutes apart at most, so this ratio
    does not move with the box's drift the way the ratio of medians can."""
    ratios = [mine.seconds / other.seconds for mine, other in zip(ours, theirs)]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def _range(samples: list[Sample]) -> str:
    return f"{min(s.seconds for s in samples):.2f}-{max(s.seconds for s in samples):.2f}"


if __name__ == "__main__":
    sys.exit(main())
